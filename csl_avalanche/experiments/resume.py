"""Resuming a killed run: the run folder's `checkpoint.pt` says what is done.

A run is a sequence of units of work: the ground-truth ceiling, then each level with its
evaluation (or, with scenario=class_incremental, the joint reference and then each arrival with
its evaluation). After each, `RunProgress` writes the checkpoint (atomically; see
`csl_avalanche.training.checkpoint` for what it holds). Running the same command again with the same
`hydra.run.dir` continues after the last completed unit, with the same numbers as an
uninterrupted run; a finished run is not run again. A folder holding a run of another
configuration is refused, naming the settings that differ; `resume=false` moves the folder's
old files aside (into `replaced-<time>/`) and starts over.

Under torchrun rank 0 alone opens the folder (cleans, compares, moves aside, rewinds the logs)
and writes the checkpoint; the other ranks then read the checkpoint it left.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from csl_avalanche.core.errors import ConfigError
from csl_avalanche.core.inert_settings import without_inert_settings
from csl_avalanche.distributed import is_main, main_only
from csl_avalanche.experiments.checks import RESULTS, TENSORBOARD
from csl_avalanche.storage.atomic import remove_stale_temporaries
from csl_avalanche.training.checkpoint import (
    load_strategy_state,
    log_sizes,
    read_checkpoint,
    rewind_logs,
    rng_state,
    set_rng_state,
    strategy_state,
    write_checkpoint,
)

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"
_MISSING = object()


def config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """`key: saved -> current` for every dotted key whose value differs."""
    differences = []
    for key in sorted(set(saved) | set(current), key=str):
        old, new = saved.get(key, _MISSING), current.get(key, _MISSING)
        if isinstance(old, dict) and isinstance(new, dict):
            differences += config_differences(old, new, f"{prefix}{key}.")
        elif old != new:
            differences.append(f"{prefix}{key}: {_show(old)} -> {_show(new)}")
    return differences


def _show(value: Any) -> str:
    return "(absent)" if value is _MISSING else repr(value)


class RunProgress:
    """What a run has completed. `open` restores it from the run folder; `save_ceiling`,
    `save_level` and `finish` record each unit as it completes."""

    def __init__(self, run_dir: Path, config: dict):
        self.run_dir = run_dir
        self.path = run_dir / CHECKPOINT
        self.state: dict = {
            "config": config,
            "ceiling": None,  # {"accuracy": float, "steps": int} once trained
            "levels": [],  # results.json's entry for each completed level
            "joint": None,  # class_incremental: {"accuracy": float} once the reference is trained
            "arrivals": [],  # class_incremental: results.json's entry for each completed arrival
            "train_seconds": [],  # one per completed level or arrival
            "strategy": None,  # checkpoint.strategy_state after the last completed level/arrival
            "rng": None,
            "logs": {},  # log file -> size at the checkpoint
            "results": None,  # the whole results.json once finished
        }

    @classmethod
    def open(cls, config: dict, run_dir: Path, *, resume: bool = True) -> RunProgress:
        """The progress of the run of `config` (the resolved config) in `run_dir`."""
        opened = main_only(lambda: cls._open(config, run_dir, resume))
        if opened is not None:  # rank 0 (or the only process)
            return opened
        progress = cls(run_dir, without_inert_settings(config))
        if resume and progress.path.exists():
            progress.state = read_checkpoint(progress.path)
        return progress

    @classmethod
    def _open(cls, config: dict, run_dir: Path, resume: bool) -> RunProgress:
        progress = cls(run_dir, without_inert_settings(config))
        remove_stale_temporaries(run_dir)  # a checkpoint or results.json cut off by a kill
        if not resume:
            progress._move_aside("resume=false")
            return progress
        if not progress.path.exists():
            progress._move_aside("they hold no checkpoint to resume from")
            return progress
        saved = read_checkpoint(progress.path)
        differences = config_differences(saved["config"], progress.state["config"])
        if differences:
            shown = "; ".join(differences[:8]) + (" ..." if len(differences) > 8 else "")
            raise ConfigError(
                f"{run_dir} holds a run of another configuration ({shown}); run the same "
                "settings to resume it, choose another hydra.run.dir, or add resume=false to "
                "move its files aside and start over"
            )
        progress.state = saved
        rewind_logs(saved["logs"], progress._log_folders())
        if not progress.finished:
            log.info("resuming after %s (%s)", progress.last_unit(), progress.done())
        return progress

    @property
    def finished(self) -> bool:
        return self.state["results"] is not None

    @property
    def ceiling(self) -> dict | None:
        return self.state["ceiling"]

    @property
    def levels(self) -> list[dict]:
        return self.state["levels"]

    @property
    def joint(self) -> dict | None:
        return self.state["joint"]

    @property
    def arrivals(self) -> list[dict]:
        return self.state["arrivals"]

    def last_unit(self) -> str:
        levels, arrivals = self.state["levels"], self.state["arrivals"]
        if arrivals:
            return f"arrival {arrivals[-1]['arrival']}"
        if levels:
            return f"level {levels[-1]['level']}"
        return "the joint reference" if self.joint else "the ceiling"

    def done(self) -> str:
        """`ceiling and levels 0-1 done`, for the log."""
        parts = ["ceiling"] + (["joint reference"] if self.joint else [])
        for kind, key in (("level", "levels"), ("arrival", "arrivals")):
            done = [unit[kind] for unit in self.state[key]]
            if done:
                parts.append(
                    f"{kind} {done[0]}" if len(done) == 1 else f"{kind}s {done[0]}-{done[-1]}"
                )
        return " and ".join(parts) + " done"

    def save_ceiling(self, accuracy: float, steps: int, evaluator: Any) -> None:
        self.state["ceiling"] = {"accuracy": accuracy, "steps": steps}
        self._save(evaluator)

    def save_joint(self, accuracy: float, evaluator: Any) -> None:
        self.state["joint"] = {"accuracy": accuracy}
        self._save(evaluator)

    def save_level(self, result: dict, train_seconds: float, strategy: Any) -> None:
        self._save_stage("levels", result, train_seconds, strategy)

    def save_arrival(self, result: dict, train_seconds: float, strategy: Any) -> None:
        self._save_stage("arrivals", result, train_seconds, strategy)

    def _save_stage(self, key: str, result: dict, train_seconds: float, strategy: Any) -> None:
        self.state[key].append(result)
        self.state["train_seconds"].append(train_seconds)
        if is_main():  # the only rank that writes it
            self.state["strategy"] = strategy_state(strategy)
        self._save(strategy.evaluator)

    def finish(self, results: dict) -> None:
        self.state["results"] = results
        self._save(None)

    def restore(self, strategy: Any) -> None:
        """Put the strategy, and the random generators, where the last completed level (or
        arrival) left them (nothing to do before the first)."""
        if self.state["strategy"] is not None:
            load_strategy_state(strategy, self.state["strategy"])
            set_rng_state(self.state["rng"])

    def _save(self, evaluator: Any) -> None:
        if not is_main():
            return
        for logger in [] if evaluator is None else evaluator.loggers:
            _flush(logger)
        self.state["rng"] = rng_state()
        self.state["logs"] = log_sizes(self._log_folders())
        write_checkpoint(self.state, self.path)

    def _log_folders(self) -> list[Path]:
        root = self.run_dir / TENSORBOARD
        return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []

    def _move_aside(self, why: str) -> None:
        """Move an earlier run's files out of the way, so its logs never mix with this run's."""
        old = [self.run_dir / name for name in (RESULTS, CHECKPOINT, TENSORBOARD)]
        old = [path for path in old if path.exists()]
        if not old:
            return
        stamp = time.strftime("replaced-%Y%m%d-%H%M%S")
        aside, count = self.run_dir / stamp, 1
        while aside.exists():
            aside, count = self.run_dir / f"{stamp}-{count}", count + 1
        aside.mkdir()
        for path in old:
            shutil.move(path, aside / path.name)
        log.info("moved an earlier run's files to %s: %s", aside, why)


def _flush(logger: Any) -> None:
    """Push what a logger has buffered to disk (TensorBoard's writer, a text log's file)."""
    for name in ("writer", "file"):
        target = getattr(logger, name, None)
        if target is not None and hasattr(target, "flush"):
            target.flush()
