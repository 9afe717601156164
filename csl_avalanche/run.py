"""`python -m csl_avalanche.run`: the Hydra entry point (configs: the `configs` package).

The settings are checked against their schema (`experiments.schema`) before the experiment
module, and with it Avalanche, is imported, so a wrong value costs about two seconds; the run
folder is checked (by `experiments.checks.OutputDirCheck`, a Hydra callback) before Hydra
creates it. `--help` lists the config groups and every setting with its description. What it
prints never fails on a terminal that cannot show a path's characters: they are written as
backslash escapes.
"""

from __future__ import annotations

import logging
import math
import sys
import warnings
from pathlib import Path

import hydra
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from csl_avalanche.core.errors import ConfigError, refuse
from csl_avalanche.experiments.checks import check_avalanche_home, stop
from csl_avalanche.experiments.schema import described, read_settings

# avalanche-lib imports qpsolvers, which warns about solvers that only GEM-style plugins use.
warnings.filterwarnings("ignore", message="no QP solver found", category=UserWarning)

log = logging.getLogger(__name__)


def summary_table(results: dict) -> str:
    """The per-level results as an aligned text table; PGR `n/a` where results.json has null."""
    head = (
        f"{'level':>5} {'teachers':>8} {'teacher_acc':>11} {'keep':>6} "
        f"{'student_acc':>11} {'PGR':>7}"
    )
    rows = [
        f"weak (level-0 generalist) accuracy {results['weak_accuracy']:.4f}   "
        f"ceiling (ground truth) accuracy {results['ceiling_accuracy']:.4f}",
        head,
        "-" * len(head),
    ]
    for lvl in results["levels"]:
        pgr = "n/a" if lvl["pgr"] is None else f"{lvl['pgr']:.3f}"
        rows.append(
            f"{lvl['level']:>5} {lvl['num_teachers']:>8} {lvl['teacher_accuracy']:>11.4f} "
            f"{lvl['keep_rate']:>6.3f} {lvl['student_accuracy']:>11.4f} {pgr:>7}"
        )
    return "\n".join(rows)


def arrival_table(results: dict) -> str:
    """The class-incremental results, one row per arrival, as an aligned text table: accuracy
    on the whole test split, average accuracy over the arrived subdomains, mean forgetting of
    the earlier ones, PGR; `-` where a value does not exist (no earlier arrival, ground truth's
    missing co-supervision statistics), `n/a` for a null PGR."""
    joint = results["joint_accuracy"]
    head = (
        f"{'arrival':>7} {'subdomain':>16} {'teachers':>8} {'keep':>6} {'accuracy':>8} "
        f"{'avg_acc':>7} {'forgetting':>10} {'PGR':>7}"
    )
    rows = [
        f"weak (level-0 generalist) accuracy {results['weak_accuracy']:.4f}   "
        f"ceiling (ground truth) accuracy {results['ceiling_accuracy']:.4f}",
        f"joint (levels protocol, all data at once) accuracy "
        f"{'n/a' if joint is None else f'{joint:.4f}'}",
        head,
        "-" * len(head),
    ]
    for entry in results["arrivals"]:
        rows.append(
            f"{entry['arrival']:>7} {entry['subdomain']:>16} "
            f"{_shown(entry.get('num_teachers'), 'd', 8)} "
            f"{_shown(entry.get('keep_rate'), '.3f', 6)} "
            f"{entry['accuracy']:>8.4f} {entry['average_accuracy']:>7.4f} "
            f"{_shown(entry['mean_forgetting'], '.4f', 10)} "
            f"{'n/a' if entry['pgr'] is None else format(entry['pgr'], '.3f'):>7}"
        )
    return "\n".join(rows)


def validation_line(results: dict) -> str | None:
    """The validation split's numbers after the last level (arrival), where there is one."""
    if "weak_val_accuracy" not in results:
        return None
    pgr = "n/a" if results["val_pgr"] is None else f"{results['val_pgr']:.3f}"
    return (
        f"validation: weak {results['weak_val_accuracy']:.4f}   ceiling "
        f"{results['ceiling_val_accuracy']:.4f}   student {results['val_accuracy']:.4f}   "
        f"PGR {pgr}"
    )


def objective(results: dict) -> dict | float:
    """What the job returns: its results; with a validation split (benchmark.val_fraction > 0,
    or a features file's) the validation PGR after the last level (arrival), NaN where it is
    n/a: the number a Hydra sweeper such as Optuna's optimises (docs/tuning.md)."""
    if "weak_val_accuracy" not in results:
        return results
    return math.nan if results["val_pgr"] is None else results["val_pgr"]


def _shown(value: float | None, spec: str, width: int) -> str:
    return format("-" if value is None else format(value, spec), f">{width}")


def pgr_warnings(results: dict) -> list[str]:
    """One `warning:` line per reason why PGR is n/a, naming the levels (or arrivals) it
    applies to."""
    unit = "arrival" if results.get("scenario") == "class_incremental" else "level"
    units_by_note: dict[str, list[str]] = {}
    for entry in results[f"{unit}s"]:
        if entry.get("pgr_note"):
            units_by_note.setdefault(entry["pgr_note"], []).append(str(entry[unit]))
    return [
        f"warning: PGR is n/a at {unit} {', '.join(units)}: {note}"
        for note, units in units_by_note.items()
    ]


CONFIGS = "csl_avalanche.configs"
GROUPS = ("benchmark", "strategy", "scenario", "plugins", "loggers")
HELP_WIDTH = 36


def settings_help(overrides: list[str]) -> str:
    """The config groups with their options, then every setting of the config that `overrides`
    compose, with its value and description (`--help`; `--help benchmark=cifar100` shows that
    benchmark's settings)."""
    from importlib.resources import files

    root = files(CONFIGS)
    lines = ["python -m csl_avalanche.run [group=option ...] [key=value ...]", "", "Groups:"]
    for group in GROUPS:
        options = sorted(p.name[: -len(".yaml")] for p in root.joinpath(group).iterdir()
                         if p.name.endswith(".yaml"))  # fmt: skip
        lines.append(f"  {group:<10} {', '.join(options)}")
    with initialize_config_module(CONFIGS, version_base="1.3"):
        cfg = compose("config", overrides)
    read_settings(cfg)
    entries = [(key, _value(value), text) for key, value, text in described(cfg)]
    lines += ["", f"Settings ({' '.join(overrides) or 'the defaults'}):"]
    for key, value, text in entries:
        setting = f"{key}={value}"
        if len(setting) > HELP_WIDTH:  # a long value: the description on the next line
            lines += [f"  {setting}", f"  {'':<{HELP_WIDTH}}  {text}"]
        else:
            lines.append(f"  {setting:<{HELP_WIDTH}}  {text}")
    lines += ["", "Hydra's own options: --hydra-help. Documentation: README.md and docs/."]
    return "\n".join(lines)


def _value(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value).replace(" ", "")


def main() -> dict | float | None:
    """The command line: `--help` prints `settings_help`; anything else runs Hydra's job."""
    for stream in (sys.stdout, sys.stderr):  # a run folder named runs/é on an ASCII terminal
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    args = sys.argv[1:]
    if "--help" in args or "-h" in args:
        try:
            print(settings_help([a for a in args if a not in ("--help", "-h")]))
        except ConfigError as err:
            refuse(err)
        return None
    return run_job()


@hydra.main(version_base="1.3", config_path="pkg://csl_avalanche.configs", config_name="config")
def run_job(cfg: DictConfig) -> dict | float:
    """One run; returns `objective(results)`."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        read_settings(cfg)
        check_avalanche_home()
        from csl_avalanche.experiments.runner import run_experiment  # Avalanche: seconds to import

        results = run_experiment(cfg, run_dir)
    except ConfigError as err:  # its message says what to fix: no traceback
        stop(err)
    from csl_avalanche.distributed import is_main

    if not is_main():  # under torchrun, rank 0 reports for all (the same results)
        return objective(results)
    incremental = results.get("scenario") == "class_incremental"
    print(arrival_table(results) if incremental else summary_table(results))
    if line := validation_line(results):
        print(line)
    for line in pgr_warnings(results):
        print(line, file=sys.stderr)
    tensorboard = "tensorboard" in (results["config"].get("loggers") or {})
    view = f"   tensorboard --logdir {run_dir / 'tb'}" if tensorboard else ""
    print(f"results: {run_dir / 'results.json'}{view}")
    return objective(results)


if __name__ == "__main__":
    main()
