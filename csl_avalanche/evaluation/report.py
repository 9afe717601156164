"""`python -m csl_avalanche.evaluation.report DIR`: aggregate every run below DIR (a Hydra
sweep or a run).

Runs are grouped by configuration: the resolved config minus the seed and the settings that
cannot change results (`core.inert_settings`: the cache folder, progress bars, resume, the
E-step's chunk size). Each group becomes one row of a table with the mean and spread (sample
standard deviation) over its seeds of the final accuracy, the PGR after each level and the
final mean forgetting; the table goes to DIR/report.md and the console, with two plots: PGR per
level per variant and each variant's mean accuracy matrix. Runs of `scenario=class_incremental`
get a table of their own (final average accuracy, final mean forgetting, backward transfer,
PGR, joint accuracy), their accuracy matrices (arrival x subdomain) and a plot of the average
accuracy against arrivals, one line per configuration.

Runs of one configuration may differ in their subdomains: with `benchmark.hierarchy=auto` each
seed chooses its own (results.json's `hierarchy` and `subdomains`), and with
`scenario.order=random` each seed has its own arrival order (`order`). The table still averages
over every seed: its numbers (accuracy on the whole test split, PGR per level, forgetting and
backward transfer averaged over the subdomains) are comparable across hierarchies, and the
hierarchy a seed led to is part of what the configuration does. An accuracy matrix is not: its
columns are subdomains (and an arrival matrix's rows are arrivals), so it averages only the runs
with the same subdomains, hierarchy and arrival order. A configuration whose runs differ gets
one matrix per group of seeds, titled with the seeds, and a warning naming it.

`--select val` (runs with a validation split, `benchmark.val_fraction`) reports, for each
configuration, the setting of the tuned keys with the best mean validation PGR and that
setting's test numbers (`select_by_validation`; docs/tuning.md), into DIR/selection.md.

Each run counts once: a results.json in a `replaced-<time>/` folder (an earlier run that
`resume=false` moved aside; see `experiments.resume`) is left out unless DIR is that folder,
and a second results.json of the same configuration and seed (a copy) is skipped; a warning
says so.

A run whose PGR is null at a level (results.json's `pgr_note` says why) counts as n/a there:
it is left out of that level's mean, and the cell says how many runs were n/a. A results.json
that cannot be read, lacks what the report reads or holds it malformed (a value of the wrong
kind, an accuracy outside [0, 1], an accuracy matrix of another shape than its levels (arrivals)
x subdomains), or whose matrix shape differs from that of the first run of its configuration,
is skipped with a warning naming it; it is an error only when no run is left. So is an output
file that cannot be written (a read-only DIR, a folder where report.md or a plot goes): the
error names it and the fix.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import reprlib
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from csl_avalanche.core.errors import ConfigError, reason, refuse  # noqa: E402
from csl_avalanche.core.inert_settings import without_inert_settings  # noqa: E402
from csl_avalanche.core.rules import NAME, Rule, list_of, optional, whole  # noqa: E402

RESULTS = "results.json"
# What a matrix column (subdomain) or row (arrival) means; `hierarchy` and `order` are absent
# from older results.json, and `order` from levels runs.
MATRIX_KEYS = ("subdomains", "hierarchy", "order")
REPLACED = re.compile(r"replaced-\d{8}-\d{6}(-\d+)?")
PGR_PLOT = "pgr_per_level.png"
MATRIX_PLOT = "accuracy_matrix.png"
AVERAGE_ACCURACY_PLOT = "average_accuracy.png"
ARRIVAL_MATRIX_PLOT = "arrival_accuracy_matrix.png"
SELECTION = "selection.md"
INCREMENTAL = "class_incremental"
LITERAL_TEXT = {"text.parse_math": False}  # labels are settings and names: `$` is no formula


@dataclass
class Variant:
    """The runs (one per seed) of one configuration."""

    settings: dict[str, str]  # flattened config, dotted keys
    runs: list[dict] = field(default_factory=list)
    paths: dict[int, Path] = field(default_factory=dict)  # seed -> the results.json it came from
    label: str = ""

    @property
    def seeds(self) -> list[int]:
        return sorted(run["seed"] for run in self.runs)

    def final_accuracy(self) -> list[float]:
        return [run["levels"][-1]["student_accuracy"] for run in self.runs]

    def pgr(self, level: int) -> list[float | None]:
        """Each run's PGR at `level` (None: n/a), for the runs that have the level."""
        return [run["levels"][level]["pgr"] for run in self.runs if level < len(run["levels"])]

    def mean_forgetting(self) -> list[float]:
        return [
            run["levels"][-1]["mean_forgetting"]
            for run in self.runs
            if "mean_forgetting" in run["levels"][-1]
        ]

    def final(self, key: str) -> list:
        """Each run's `key` after its last level (or arrival); None where it is null."""
        return [run[_stages(run)][-1].get(key) for run in self.runs]

    def final_test_accuracy(self) -> list[float]:
        return [run[_stages(run)][-1][TEST_ACCURACY[_stages(run)]] for run in self.runs]

    def num_levels(self) -> int:
        return max(len(run["levels"]) for run in self.runs)

    @property
    def scenario(self) -> str:
        return self.runs[0].get("scenario", "levels")

    def values(self, key: str) -> list[float | None]:
        """A top-level number of every run (None: n/a), e.g. `final_average_accuracy`."""
        return [run.get(key) for run in self.runs]

    def average_accuracy(self, arrival: int) -> list[float]:
        """Each run's average accuracy after `arrival`, for the runs that have it."""
        return [
            run["arrivals"][arrival]["average_accuracy"]
            for run in self.runs
            if arrival < len(run["arrivals"])
        ]

    def num_arrivals(self) -> int:
        return max(len(run["arrivals"]) for run in self.runs)

    def matrix_groups(self) -> list[list[dict]]:
        """The runs whose accuracy matrices can be averaged, in first-seen order: those with
        the same subdomains, hierarchy and arrival order (MATRIX_KEYS)."""
        groups: dict[str, list[dict]] = {}
        for run in self.runs:
            key = json.dumps([run.get(k) for k in MATRIX_KEYS])
            groups.setdefault(key, []).append(run)
        return list(groups.values())


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Dotted keys to printable values; `plugins` becomes `plugins=[a,b]` plus its knobs."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if name == "plugins" and isinstance(value, dict):
            flat[name] = "[" + ",".join(value) + "]"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, list) else str(value)
    return flat


def configuration(config: dict) -> dict[str, str]:
    """The flattened settings that tell one configuration from another: the resolved config
    without the seed (it tells the runs of one configuration apart) and the inert settings."""
    settings = without_inert_settings(config)
    settings.pop("seed", None)
    return flatten(settings)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def load_variants(root: Path, warn: Callable[[str], None] = _warn) -> list[Variant]:
    """Every readable results.json below `root` but those of replaced runs, grouped by
    configuration, in first-seen path order; `warn` (default: a `warning:` line on stderr)
    hears of each one left out."""
    if not root.is_dir():
        fault = "is not a folder" if root.exists() else "does not exist"
        raise ConfigError(f"{root} {fault}; give the folder of a run or of a sweep")
    found = sorted(root.rglob(RESULTS), key=_natural)
    paths = [path for path in found if not _replaced(path.relative_to(root))]
    if len(paths) < len(found):
        warn(
            f"left out {len(found) - len(paths)} results.json in replaced-<time> folders: "
            "earlier runs that resume=false moved aside (give such a folder as DIR to report it)"
        )
    variants: dict[str, Variant] = {}
    for path in paths:
        try:
            run, settings = read_run(path)
        except ConfigError as err:
            warn(f"skipping {err}")
            continue
        variant = variants.setdefault(json.dumps(settings, sort_keys=True), Variant(settings))
        if first := variant.paths.get(run["seed"]):
            warn(
                f"skipping {path}: it repeats {first} (the same configuration and seed "
                f"{run['seed']}); a run counts once"
            )
            continue
        if variant.runs and (shape := _shape(run)) != (expected := _shape(variant.runs[0])):
            first = variant.paths[variant.runs[0]["seed"]]
            warn(f"skipping {path}: {shape}, but {first} of the same configuration has {expected}")
            continue
        variant.runs.append(run)
        variant.paths[run["seed"]] = path
    if not variants:
        skipped = f" ({len(found)} skipped, see the warnings)" if found else ""
        raise ConfigError(
            f"no readable results.json below {root}{skipped}; give the folder of a run or of a "
            "sweep (hydra.run.dir or hydra.sweep.dir)"
        )
    _label(list(variants.values()))
    for variant in variants.values():
        if len(groups := variant.matrix_groups()) > 1:
            plot = ARRIVAL_MATRIX_PLOT if variant.scenario == INCREMENTAL else MATRIX_PLOT
            warn(
                f"the runs of '{variant.label}' differ in subdomains, hierarchy or arrival order "
                f"(seeds {' | '.join(map(_seed_list, groups))}): {plot} averages each group apart"
            )
    return list(variants.values())


def _shape(run: dict) -> str:
    """A run's accuracy matrix shape, e.g. `3 x 4 levels x subdomains`."""
    stages = _stages(run)
    return f"{len(run[stages])} x {len(run['subdomains'])} {stages} x subdomains"


def _seed_list(runs: list[dict]) -> str:
    return ",".join(str(seed) for seed in sorted(run["seed"] for run in runs))


def _replaced(path: Path) -> bool:
    """Whether `path` lies in a folder where `resume=false` moved an earlier run's files
    (`replaced-%Y%m%d-%H%M%S`, then `-1`, `-2`, ... if taken: experiments.resume)."""
    return any(REPLACED.fullmatch(part) for part in path.parts[:-1])


def read_run(path: Path) -> tuple[dict, dict[str, str]]:
    """One results.json, with what the report reads, and its configuration (`configuration`);
    ConfigError names the file and the fault."""
    try:
        run = json.loads(path.read_text())
    except (OSError, ValueError) as err:  # ValueError: bad UTF-8, bad JSON, 5000-digit number
        raise ConfigError(f"{path}: not a readable JSON file ({err})") from None
    except RecursionError:  # JSON nested deeper than Python's stack
        raise ConfigError(f"{path}: not a readable JSON file (nested too deeply)") from None
    if problem := _lacks(run):
        raise ConfigError(f"{path}: not a run's results.json ({problem})")
    try:
        return run, configuration(run["config"])
    except RecursionError:
        raise ConfigError(f"{path}: not a run's results.json (config nested too deeply)") from None


def _is_list_of(value: object, accepts: Callable[[object], bool]) -> bool:
    return isinstance(value, list) and all(accepts(item) for item in value)


# What the report reads of a results.json, each value with its rule: keys that must be there,
# and keys checked where they are (absent from older results.json or from one scenario).
OBJECT = Rule("an object", lambda v: isinstance(v, dict))
ACCURACY = Rule("a number from 0 to 1", lambda v: _is_number(v) and 0 <= v <= 1)
NUMBER_OR_NULL = Rule("a number or null", lambda v: v is None or _is_number(v))
CLASS = whole(0).accepts
NAMES = Rule("a non-empty list of names", list_of(NAME).accepts)
HIERARCHY = Rule(
    "a list of levels, each a list of groups of class indices",
    lambda v: _is_list_of(v, lambda lvl: _is_list_of(lvl, lambda g: _is_list_of(g, CLASS))),
)
RUN = {"config": OBJECT, "seed": whole(0), "subdomains": NAMES}
RUN_WHERE_THERE = {"hierarchy": HIERARCHY, "order": NAMES}
STAGE = {
    "levels": {"student_accuracy": ACCURACY, "pgr": NUMBER_OR_NULL},
    "arrivals": {"average_accuracy": ACCURACY},
}
# The validation numbers are there in runs with a validation split (benchmark.val_fraction).
VALIDATION = {"val_accuracy": ACCURACY, "val_pgr": NUMBER_OR_NULL}
STAGE_WHERE_THERE = {
    "levels": {"mean_forgetting": NUMBER_OR_NULL, **VALIDATION},
    "arrivals": {"accuracy": ACCURACY, "pgr": NUMBER_OR_NULL, **VALIDATION},
}
# The test accuracy of a stage, by the run's stages.
TEST_ACCURACY = {"levels": "student_accuracy", "arrivals": "accuracy"}
ARRIVALS_SUMMARY = {
    "final_average_accuracy": ACCURACY,
    "final_mean_forgetting": NUMBER_OR_NULL,
    "final_backward_transfer": NUMBER_OR_NULL,
    "pgr": NUMBER_OR_NULL,
    "joint_accuracy": optional(ACCURACY),
}


def _lacks(run: object) -> str | None:
    """What a results.json lacks (or holds malformed) of what the report reads, or None."""
    if not isinstance(run, dict):
        return f"holds a JSON {type(run).__name__}, not an object"
    stages = _stages(run)
    missing = [
        k for k in ("config", "seed", stages, "subdomains", "accuracy_matrix") if k not in run
    ]
    if missing:
        return f"no {', '.join(missing)}"
    if fault := _fault(run, RUN) or _fault(run, RUN_WHERE_THERE, required=False):
        return fault
    if not _is_list_of(run[stages], OBJECT.accepts) or not run[stages]:
        return f"`{stages}` is not a non-empty list of objects"
    for index, stage in enumerate(run[stages]):
        where = f"{stages}[{index}]."
        if fault := _fault(stage, STAGE[stages], where) or _fault(
            stage, STAGE_WHERE_THERE[stages], where, required=False
        ):
            return fault
    if stages == "arrivals" and (fault := _fault(run, ARRIVALS_SUMMARY)):
        return fault
    rows, cols = len(run[stages]), len(run["subdomains"])
    if not (
        _is_list_of(run["accuracy_matrix"], lambda row: _is_list_of(row, ACCURACY.accepts))
        and [len(row) for row in run["accuracy_matrix"]] == [cols] * rows
    ):
        return f"`accuracy_matrix` is not {rows} rows ({stages}) of {cols} numbers from 0 to 1"
    return None


def _fault(
    record: dict, rules: dict[str, Rule], where: str = "", required: bool = True
) -> str | None:
    """The first key of `rules` that `record` lacks (if `required`) or holds a value its rule
    refuses, said with `where` (the record's place in the file, e.g. `levels[0].`); or None."""
    for key, rule in rules.items():
        if key not in record:
            if required:
                return f"no {where}{key} ({rule.requirement})"
        elif not rule.accepts(record[key]):
            return f"`{where}{key}` is not {rule.requirement} (got {reprlib.repr(record[key])})"
    return None


def _is_number(value: object) -> bool:
    """A number a float holds: no bool, no NaN or infinity, no int too large (10**400)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _stages(run: dict) -> str:
    """The key of a run's stages: `arrivals` (class-incremental) or `levels`."""
    return "arrivals" if run.get("scenario") == INCREMENTAL else "levels"


def _natural(path: Path) -> list[tuple[int, int | str]]:
    """Hydra's job folders 0, 1, ..., 10 in numeric order."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in path.parts]


def _label(variants: list[Variant]) -> None:
    """Name each variant by the settings that vary between variants (among those that have it)."""
    keys = list(dict.fromkeys(k for v in variants for k in v.settings))
    varying = [k for k in keys if len({v.settings[k] for v in variants if k in v.settings}) > 1]
    for variant in variants:
        parts = [f"{k}={variant.settings[k]}" for k in varying if k in variant.settings]
        variant.label = " ".join(parts) or "all runs"


def mean_spread(values: Sequence[float | None]) -> tuple[float, float]:
    """(mean, sample standard deviation) of the numbers among `values` (None: n/a); the spread
    of a single number is 0 (inf: too large for a float); NaN if there is none."""
    numbers = [v for v in values if v is not None]
    if not numbers:
        return math.nan, math.nan
    try:  # exact arithmetic: huge numbers (a PGR over a tiny gap) overflow only the spread
        spread = statistics.stdev(numbers) if len(numbers) > 1 else 0.0
    except OverflowError:
        spread = math.inf
    return float(statistics.mean(numbers)), spread


def _cell(values: Sequence[float | None]) -> str:
    """`mean ± sd`, `n/a` if every value is, `–` if there is none; `(k n/a)` when some are."""
    mean, spread = mean_spread(values)
    unknown = sum(v is None for v in values)
    if math.isnan(mean):
        return "n/a" if unknown else "–"
    return f"{mean:.3f} ± {spread:.3f}" + (f" ({unknown} n/a)" if unknown else "")


def markdown_table(variants: list[Variant]) -> str:
    """One row per variant: seeds, final accuracy, PGR per level, final mean forgetting."""
    levels = max(v.num_levels() for v in variants)
    head = ["variant", "seeds", "final accuracy"]
    head += [f"PGR L{level}" for level in range(levels)] + ["mean forgetting"]
    rows = [head, ["---"] * len(head)]
    for v in variants:
        row = [v.label, ",".join(map(str, v.seeds)), _cell(v.final_accuracy())]
        row += [_cell(v.pgr(level)) for level in range(levels)]
        rows.append([*row, _cell(v.mean_forgetting())])
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def arrival_table(variants: list[Variant]) -> str:
    """One row per class-incremental variant: seeds, final average accuracy, final mean
    forgetting, final backward transfer, final PGR, joint accuracy."""
    keys = {
        "final average accuracy": "final_average_accuracy",
        "final mean forgetting": "final_mean_forgetting",
        "backward transfer": "final_backward_transfer",
        "PGR": "pgr",
        "joint accuracy": "joint_accuracy",
    }
    head = ["variant", "seeds", *keys]
    rows = [head, ["---"] * len(head)]
    for v in variants:
        row = [v.label, ",".join(map(str, v.seeds))]
        rows.append(row + [_cell(v.values(key)) for key in keys.values()])
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def plot_average_accuracy(variants: list[Variant], path: Path) -> None:
    """Average accuracy over the arrived subdomains against arrivals, a line per variant."""
    _plot_per_step(
        variants,
        path,
        steps=lambda v: v.num_arrivals(),
        values=lambda v, arrival: v.average_accuracy(arrival),
        xlabel="arrival",
        ylabel="average accuracy over arrived subdomains\n(mean ± sd over seeds)",
    )


def plot_pgr(variants: list[Variant], path: Path) -> None:
    """PGR against levels, a line per variant."""
    _plot_per_step(
        variants,
        path,
        steps=lambda v: v.num_levels(),
        values=lambda v, level: v.pgr(level),
        xlabel="level",
        ylabel="PGR (mean ± sd over seeds)",
    )


@matplotlib.rc_context(LITERAL_TEXT)
def _plot_per_step(
    variants: list[Variant],
    path: Path,
    *,
    steps: Callable[[Variant], int],
    values: Callable[[Variant, int], list[float]],
    xlabel: str,
    ylabel: str,
) -> None:
    """One line per variant of the mean ± sd over seeds of `values(variant, step)`, with the
    legend beside the lines (variant labels can be long)."""
    fig, ax = plt.subplots(figsize=(11, 4.5))
    ax.set_prop_cycle(color=plt.cm.tab20.colors)  # 20 distinct colours: one per variant
    for v in variants:
        points = range(steps(v))
        means, spreads = zip(*(mean_spread(values(v, step)) for step in points), strict=True)
        ax.errorbar(list(points), means, yerr=spreads, marker="o", capsize=3, label=v.label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xticks(range(max(steps(v) for v in variants)))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(fig, path, bbox_inches="tight")  # room for the legend, however long


@matplotlib.rc_context(LITERAL_TEXT)
def plot_accuracy_matrices(variants: list[Variant], path: Path, rows_are: str = "level") -> None:
    """One heatmap per variant: mean over seeds of accuracy[level (or arrival), subdomain]; a
    variant whose runs differ in subdomains gets one per group of seeds (`matrix_groups`)."""
    panels = []
    for v in variants:
        groups = v.matrix_groups()
        for runs in groups:
            title = v.label if len(groups) == 1 else f"{v.label}\nseeds {_seed_list(runs)}"
            panels.append((title, runs))
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (title, runs) in zip(axes.flat, panels, strict=False):
        mean = mean_matrix(runs)
        image = ax.imshow(mean, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        subdomains = runs[0]["subdomains"]
        ax.set_xticks(range(len(subdomains)), subdomains, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(mean)))
        ax.set_ylabel(f"after {rows_are}")
        ax.set_title(title, fontsize=8)
        for i, row in enumerate(mean):
            for j, value in enumerate(row):
                color = "k" if value > 0.6 else "w"
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color=color)
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    _save(fig, path)


def mean_matrix(runs: list[dict]) -> list[list[float]]:
    """The cell-by-cell mean of the runs' accuracy matrices (of one shape)."""
    matrices = [run["accuracy_matrix"] for run in runs]
    return [
        [statistics.fmean(cells) for cells in zip(*rows, strict=True)]
        for rows in zip(*matrices, strict=True)
    ]


def write_report(root: Path) -> str:
    """Write report.md and the plots into `root`; return the table(s)."""
    variants = load_variants(root)
    levels = [v for v in variants if v.scenario != INCREMENTAL]
    incremental = [v for v in variants if v.scenario == INCREMENTAL]
    tables, sections = [], []
    if levels:
        table = markdown_table(levels)
        plot_pgr(levels, root / PGR_PLOT)
        plot_accuracy_matrices(levels, root / MATRIX_PLOT)
        tables.append(table)
        sections.append(
            "Mean ± sample standard deviation over seeds. Final accuracy and mean forgetting are "
            "taken after the last level; forgetting per finest subdomain is the best accuracy "
            "after any earlier level minus the accuracy now. PGR n/a: PGR is null in "
            "results.json (its `pgr_note` says why) and is left out of the mean.\n\n"
            f"{table}\n\n"
            f"![PGR per level]({PGR_PLOT})\n\n"
            f"![accuracy per level and subdomain]({MATRIX_PLOT})\n"
        )
    if incremental:
        table = arrival_table(incremental)
        plot_average_accuracy(incremental, root / AVERAGE_ACCURACY_PLOT)
        plot_accuracy_matrices(incremental, root / ARRIVAL_MATRIX_PLOT, rows_are="arrival")
        tables.append(table)
        sections.append(
            "## Class-incremental runs\n\n"
            "Mean ± sample standard deviation over seeds, after the last arrival. Average "
            "accuracy: over the arrived subdomains; forgetting of a subdomain: its best "
            "accuracy since its arrival minus the accuracy now, averaged over the subdomains "
            "that arrived before the last; backward transfer: the mean change of those since "
            "right after their arrival; PGR: of the accuracy on the whole test split; joint "
            "accuracy: the levels protocol on all the data, in the same run (n/a: skipped).\n\n"
            f"{table}\n\n"
            f"![average accuracy against arrivals]({AVERAGE_ACCURACY_PLOT})\n\n"
            f"![accuracy per arrival and subdomain]({ARRIVAL_MATRIX_PLOT})\n"
        )
    runs = sum(len(v.runs) for v in variants)
    report = f"# CSL report: {runs} runs, {len(variants)} configurations\n\n" + "\n".join(sections)
    try:
        (root / "report.md").write_text(report)
    except OSError as err:
        raise _unwritable(root / "report.md", err) from None
    return "\n\n".join(tables)


def select_by_validation(root: Path, tune: Sequence[str] | None = None) -> str:
    """`--select val`: for each configuration, the setting of the tuned keys with the best
    mean validation PGR over its seeds, and its test numbers; written to DIR/selection.md,
    returned as a table.

    The tuned keys are `tune`, or by default every setting that varies between the runs' variants
    (seed aside): a sweep over the tuned keys alone is one configuration. The other settings
    tell configurations apart, so `--tune strategy.logconf_alpha` on a sweep over strategies
    picks an alpha for each strategy. A run without validation numbers (no validation split)
    is refused."""
    variants = load_variants(root)
    for variant in variants:
        for run in variant.runs:
            if "val_pgr" not in run[_stages(run)][-1]:
                raise ConfigError(
                    f"--select val picks by validation PGR, but {variant.paths[run['seed']]} has "
                    "none (a run without a validation split); run the sweep with "
                    "benchmark.val_fraction above 0 (docs/tuning.md), or report without --select"
                )
    tuned = _tuned_keys(variants, tune)
    groups: dict[str, list[Variant]] = {}
    for variant in variants:
        rest = {k: v for k, v in variant.settings.items() if k not in tuned}
        groups.setdefault(json.dumps(rest, sort_keys=True), []).append(variant)
    configurations = [
        Variant({k: v for k, v in members[0].settings.items() if k not in tuned})
        for members in groups.values()
    ]
    _label(configurations)
    head = ["configuration", "chosen setting", "candidates", "seeds", "validation PGR"]
    head += ["test accuracy", "test PGR"]
    rows = [head, ["---"] * len(head)]
    for configuration, members in zip(configurations, groups.values(), strict=True):
        best = best_by_validation(members)
        if best is None:
            rows.append([configuration.label, "n/a: no validation PGR", str(len(members))])
            rows[-1] += ["–"] * (len(head) - 3)
            continue
        chosen = " ".join(f"{k}={best.settings[k]}" for k in tuned if k in best.settings)
        rows.append(
            [
                configuration.label,
                chosen or "(the only one)",
                str(len(members)),
                ",".join(map(str, best.seeds)),
                _cell(best.final("val_pgr")),
                _cell(best.final_test_accuracy()),
                _cell(best.final("pgr")),
            ]
        )
    table = "\n".join("| " + " | ".join(row) + " |" for row in rows)
    text = (
        f"# Selected by validation PGR: {len(variants)} settings, tuned keys "
        f"{', '.join(tuned) or '(none)'}\n\n"
        "For each configuration, the setting of the tuned keys with the best mean validation "
        "PGR (after the last level or arrival, over its seeds), and its numbers: mean ± sample "
        "standard deviation over seeds.\n\n"
        f"{table}\n"
    )
    try:
        (root / SELECTION).write_text(text)
    except OSError as err:
        raise _unwritable(root / SELECTION, err) from None
    return table


def best_by_validation(variants: Sequence[Variant]) -> Variant | None:
    """The variant with the highest mean validation PGR (n/a runs left out; the first of equal
    ones); None if none has one."""
    scored = [(mean_spread(v.final("val_pgr"))[0], index) for index, v in enumerate(variants)]
    scored = [(score, index) for score, index in scored if not math.isnan(score)]
    if not scored:
        return None
    return variants[max(scored, key=lambda pair: (pair[0], -pair[1]))[1]]


def _tuned_keys(variants: Sequence[Variant], tune: Sequence[str] | None) -> list[str]:
    """`tune`, each checked to be a setting of the runs; by default the settings that vary."""
    keys = list(dict.fromkeys(k for v in variants for k in v.settings))
    varying = [k for k in keys if len({v.settings.get(k) for v in variants}) > 1]
    if tune is None:
        return varying
    for key in tune:
        if key not in keys:
            raise ConfigError(
                f"--tune {key}: not a setting of these runs; the settings that vary here are "
                f"{', '.join(varying) or '(none)'}"
            )
    return list(tune)


def _save(fig: plt.Figure, path: Path, **options: Any) -> None:
    """Write `fig` as a PNG to `path` and close it."""
    try:
        fig.savefig(path, dpi=120, **options)
    except OSError as err:
        raise _unwritable(path, err) from None
    finally:
        plt.close(fig)


def _unwritable(path: Path, err: OSError) -> ConfigError:
    """The user-facing error for an output file of the report that cannot be written."""
    if path.is_dir():
        return ConfigError(f"{path} is a folder; move it out of the way: the report writes there")
    return ConfigError(
        f"cannot write {path} ({reason(err)}); make {path.parent} writable, or copy the runs "
        "to a writable folder and report that"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="a sweep or run directory")
    parser.add_argument(
        "--select",
        choices=["val"],
        help="val: per configuration, the tuned setting with the best validation PGR, and its "
        f"test numbers (written to DIR/{SELECTION})",
    )
    parser.add_argument(
        "--tune",
        nargs="+",
        metavar="KEY",
        help="with --select: the tuned settings (dotted keys); default: every setting that varies",
    )
    args = parser.parse_args(argv)
    if args.tune and not args.select:
        parser.error("--tune names the keys --select val tunes: add --select val")
    try:
        if args.select:
            table = select_by_validation(args.directory, args.tune)
        else:
            table = write_report(args.directory)
    except ConfigError as err:
        refuse(err)
    print(table)
    print(f"report: {args.directory / (SELECTION if args.select else 'report.md')}")


if __name__ == "__main__":
    main()
