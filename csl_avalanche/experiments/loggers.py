"""The `loggers` config group: which of Avalanche's loggers a run writes, and where.

Each strategy of a run (the ceiling, the configured strategy, the joint reference ...) logs
under its own name: `tensorboard` to tb/<name>/, `text` to tb/<name>/avalanche.log (together
today's files, the default), `csv` to csv/<name>/, `wandb` to one wandb run per strategy with
its files under wandb/<name>/. Only rank 0 builds loggers (`strategy_setup.make_evaluator`).

Resume: the log files of tb/ and csv/ are cut back to the checkpoint (`RunProgress`), so their
series continue without duplicates. A wandb run keeps its id in wandb/<name>/run_id and a
resumed run continues it (`resume="allow"`); wandb itself keeps the points it already has, so
a killed level's points stay and its rerun's points at the same steps are dropped (online), or
land in a second offline folder of the same id (offline).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from csl_avalanche.core.errors import ConfigError
from csl_avalanche.core.rules import NAME, build_settings, choice, optional, setting

CSV = "csv"
WANDB = "wandb"
TENSORBOARD = "tb"
TEXT_LOG = "avalanche.log"
WANDB_ID = "run_id"


@dataclass(frozen=True)
class TensorboardSettings:
    """`loggers.tensorboard`: no settings (tb/<strategy>/)."""


@dataclass(frozen=True)
class TextSettings:
    """`loggers.text`: no settings (tb/<strategy>/avalanche.log)."""


@dataclass(frozen=True)
class CSVSettings:
    """`loggers.csv`: no settings (csv/<strategy>/)."""


@dataclass(frozen=True)
class WandbSettings:
    mode: str = setting(
        choice("offline", "online"),
        "offline: files only; online: to your account",
        default="offline",
    )
    project: str = setting(NAME, "the wandb project", default="csl-avalanche")
    entity: str | None = setting(
        optional(NAME), "the wandb team or user; null: the account's default", default=None
    )
    group: str | None = setting(
        optional(NAME), "groups the run's strategies; null: the run folder's name", default=None
    )


LOGGER_SETTINGS: dict[str, type] = {
    "tensorboard": TensorboardSettings,
    "text": TextSettings,
    "csv": CSVSettings,
    "wandb": WandbSettings,
}


def logger_settings(entries: Any) -> dict[str, Any]:
    """`loggers` (name -> its settings) checked: a known name, each setting by its rule."""
    if not isinstance(entries, dict):
        raise ConfigError(f"loggers must map logger names to settings, got {entries!r}")
    settings = {}
    for name, entry in entries.items():
        if name not in LOGGER_SETTINGS:
            raise ConfigError(
                f"loggers.{name} is not a logger; pick among {', '.join(LOGGER_SETTINGS)} "
                "(e.g. loggers=[tensorboard,csv])"
            )
        settings[name] = build_settings(LOGGER_SETTINGS[name], entry or {}, f"loggers.{name}")
    return settings


def make_loggers(loggers: dict[str, Any], run_dir: Path, name: str) -> list:
    """Avalanche's loggers for the strategy `name` of the run in `run_dir`, in config order."""
    # Avalanche takes seconds to import: only once loggers are built, never to check settings.
    from avalanche.logging import CSVLogger, TensorboardLogger, TextLogger, WandBLogger

    built = []
    for kind, settings in loggers.items():
        if kind == "tensorboard":
            built.append(TensorboardLogger(tb_log_dir=str(_folder(run_dir, TENSORBOARD, name))))
        elif kind == "text":
            text_log = open(_folder(run_dir, TENSORBOARD, name) / TEXT_LOG, "a")  # noqa: SIM115
            built.append(TextLogger(text_log))
        elif kind == "csv":
            built.append(_continued(CSVLogger, _folder(run_dir, CSV, name)))
        else:
            built.append(_wandb_logger(WandBLogger, settings, run_dir, name))
    return built


def _folder(run_dir: Path, kind: str, name: str) -> Path:
    folder = run_dir / kind / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _continued(csv_logger: type, folder: Path) -> Any:
    """A CSVLogger in `folder` that continues the files a resumed run left (cut back to the
    checkpoint): the class opens them with "w" and writes the headers, so their earlier rows
    are put back."""
    files = ("training_results.csv", "eval_results.csv")
    earlier = {f: (folder / f).read_text() for f in files if (folder / f).is_file()}
    logger = csv_logger(log_folder=str(folder))
    for file_name, handle in zip(files, (logger.training_file, logger.eval_file), strict=True):
        if earlier.get(file_name):
            handle.seek(0)
            handle.truncate()
            handle.write(earlier[file_name])
            handle.flush()
    return logger


def _wandb_logger(wandb_logger: type, settings: WandbSettings, run_dir: Path, name: str) -> Any:
    """One wandb run for the strategy `name`, its files under wandb/<name>/. Its id is kept in
    wandb/<name>/run_id (drawn with `secrets`, not the run's seeded generators), so a resumed
    run continues the same wandb run."""
    folder = _folder(run_dir, WANDB, name)
    id_file = folder / WANDB_ID
    if not id_file.is_file():
        id_file.write_text(secrets.token_hex(8))
    params = {
        "id": id_file.read_text().strip(),
        "resume": "allow",
        "mode": settings.mode,
        "entity": settings.entity,
        "group": settings.group or run_dir.name,
        "reinit": "finish_previous",  # one strategy logs at a time; each its own run
    }
    logger = wandb_logger(
        project_name=settings.project, run_name=name, dir=str(folder), params=params
    )
    if not hasattr(logger.wandb, "viz"):
        logger.wandb = _WandbWithViz(logger.wandb)
    return logger


class _WandbWithViz:
    """The wandb module as Avalanche 0.6's WandBLogger reads it: wandb 0.19 moved
    `wandb.viz.CustomChart` to `wandb.plot.CustomChart`, which the logger checks every metric
    against (and it draws an id with the removed `wandb.util.generate_id` unless given one)."""

    def __init__(self, wandb: Any):
        self._wandb = wandb
        self.viz = SimpleNamespace(CustomChart=wandb.plot.CustomChart)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wandb, name)
