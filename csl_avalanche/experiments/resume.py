"""Resuming a killed run: the run folder's `checkpoint.pt` says what is done.

A run is a sequence of units of work: the ground-truth ceiling, then each level with its
evaluation (or, with scenario=class_incremental, the joint reference and then each arrival with
its evaluation). After each, `RunProgress` writes the checkpoint (atomically; see
`csl_avalanche.training.checkpoint` for what it holds). Running the same command again with the same
`hydra.run.dir` continues after the last completed unit, with the same numbers as an
uninterrupted run; a finished run is not run again. A folder holding a run of another
configuration is refused, naming the settings that differ; `resume=false` moves the folder's
old files aside (into `replaced-<time>/`) and starts over.

A run folder belongs to one run at a time: `RunProgress.open` takes its lock
(`checks.take_run_folder`: an OS lock that ends with the process, so a killed run leaves none)
and a second run in the same folder is refused, naming the first. A resumed run must also read
the same inputs (`inputs_identity`, compared once the features are built) and, where the
results depend on them, run with the same process count and device as the completed units
(`check_layout`). Every path the checkpoint records is relative to the run folder, so a moved
folder resumes too.

Under torchrun rank 0 alone opens the folder (locks, cleans, compares, moves aside, rewinds the
logs) and writes the checkpoint; the other ranks then read the checkpoint it left.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

import torch

from csl_avalanche.benchmarks.features import VAL_FIELDS, FeatureSet
from csl_avalanche.core.errors import ConfigError
from csl_avalanche.core.inert_settings import without_inert_settings
from csl_avalanche.distributed import is_main, main_only
from csl_avalanche.experiments.checks import RESULTS, TENSORBOARD, take_run_folder
from csl_avalanche.experiments.loggers import CSV, WANDB
from csl_avalanche.storage.atomic import remove_stale_temporaries, unwritable_because
from csl_avalanche.storage.cache import fingerprint
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
# The checkpoint's format. 2: the inputs' identity, each unit's process count and device, log
# paths relative to the run folder. A checkpoint of another format is refused.
FORMAT = 2
# How much of a tensor `inputs_identity` hashes at a time (its bytes are copied once).
HASH_CHUNK_BYTES = 64 << 20
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


def inputs_identity(features: FeatureSet) -> str:
    """A hash of everything the run reads from its benchmark: every field of the FeatureSet
    (student inputs, labels, teacher outputs, hierarchy, names). Each tensor is hashed a chunk
    at a time, so memory-mapped teacher outputs larger than memory are never read whole."""
    fields = []
    for field in dataclasses.fields(features):
        value = getattr(features, field.name)
        if field.name in VAL_FIELDS and value is None:
            continue  # no validation split: the identity of a run made before there was one
        if isinstance(value, torch.Tensor):
            value = [list(value.shape), str(value.dtype), [fingerprint(c) for c in _chunks(value)]]
        fields.append([field.name, value])
    return fingerprint(fields)


def _chunks(tensor: torch.Tensor) -> Iterator[torch.Tensor]:
    flat = tensor.detach().reshape(-1)  # a view of a contiguous (memory-mapped) tensor
    step = max(1, HASH_CHUNK_BYTES // flat.element_size())
    for start in range(0, len(flat), step):
        yield flat[start : start + step]


class RunProgress:
    """What a run has completed. `open` locks the run folder and restores the progress from
    it; `save_ceiling`, `save_level` and `finish` record each unit as it completes; `close`
    (or leaving a `with` block) releases the folder."""

    def __init__(self, run_dir: Path, config: dict):
        self.run_dir = run_dir
        self.path = run_dir / CHECKPOINT
        # This session's process count and device, recorded with each unit (`check_layout`).
        self.layout: dict | None = None
        self._lock: TextIO | None = None
        self.state: dict = {
            "format": FORMAT,
            "config": config,
            "inputs": None,  # inputs_identity of the features the units were trained on
            # {"accuracy": float, "steps": int, "world_size": int, "device": str} once trained
            "ceiling": None,
            "levels": [],  # results.json's entry for each completed level
            "joint": None,  # class_incremental: {"accuracy": float, ...} once trained
            "arrivals": [],  # class_incremental: results.json's entry for each completed arrival
            "train_seconds": [],  # one per completed level or arrival
            "strategy": None,  # checkpoint.strategy_state after the last completed level/arrival
            "rng": None,
            "logs": {},  # log file (relative to the run folder) -> size at the checkpoint
            "results": None,  # the whole results.json once finished
        }

    @classmethod
    def open(cls, config: dict, run_dir: Path, *, resume: bool = True) -> RunProgress:
        """The progress of the run of `config` (the resolved config) in `run_dir`, which it
        holds until `close`."""
        opened = main_only(lambda: cls._open(config, run_dir, resume))
        if opened is not None:  # rank 0 (or the only process)
            return opened
        progress = cls(run_dir, without_inert_settings(config))
        if resume and progress.path.exists():
            progress.state = progress._read()
        return progress

    @classmethod
    def _open(cls, config: dict, run_dir: Path, resume: bool) -> RunProgress:
        progress = cls(run_dir, without_inert_settings(config))
        progress._lock = take_run_folder(run_dir)
        try:
            progress._restore(resume)
        except BaseException:
            progress.close()
            raise
        return progress

    def _restore(self, resume: bool) -> None:
        remove_stale_temporaries(self.run_dir)  # a checkpoint or results.json cut off by a kill
        if not resume:
            self._move_aside("resume=false")
            return
        if not self.path.exists():
            self._move_aside("they hold no checkpoint to resume from")
            return
        saved = self._read()
        differences = config_differences(saved["config"], self.state["config"])
        if differences:
            shown = "; ".join(differences[:8]) + (" ..." if len(differences) > 8 else "")
            raise ConfigError(
                f"{self.run_dir} holds a run of another configuration ({shown}); run the same "
                "settings to resume it, choose another hydra.run.dir, or add resume=false to "
                "move its files aside and start over"
            )
        self.state = saved
        rewind_logs(saved["logs"], self.run_dir, self._log_folders())
        if not self.finished:
            log.info("resuming after %s (%s)", self.last_unit(), self.done())

    def _read(self) -> dict:
        """The checkpoint, refused unless it holds every key of this version's format."""
        saved = read_checkpoint(self.path)
        missing = [key for key in self.state if not isinstance(saved, dict) or key not in saved]
        if missing:
            raise ConfigError(
                f"checkpoint {self.path} lacks {', '.join(missing)} (an older version's "
                "checkpoint, or not a run's): add resume=false to move it aside and start over, "
                "or choose another hydra.run.dir"
            )
        if saved["format"] != FORMAT:
            raise ConfigError(
                f"checkpoint {self.path} has format {saved['format']!r}, this version reads "
                f"format {FORMAT}: add resume=false to move it aside and start over, or choose "
                "another hydra.run.dir"
            )
        return saved

    def close(self) -> None:
        """Release the run folder (the lock also ends with the process)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> RunProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_inputs(self, identity: str) -> None:
        """Refuse to continue a run whose units were trained on other inputs (`identity`:
        `inputs_identity` of the features built now); record it for a new run."""
        saved = self.state["inputs"]
        if saved is not None and saved != identity:
            raise ConfigError(
                f"{self.run_dir} holds a run made on other inputs: the features, teacher "
                "outputs or hierarchy built now differ from those of its checkpoint (a changed "
                "features file, data folder or cache entry); add resume=false to move its files "
                "aside and start over, or choose another hydra.run.dir"
            )
        self.state["inputs"] = identity

    def check_layout(self, world_size: int, device: str, depends_on: Mapping[str, str]) -> None:
        """Record this session's process count and device, for each unit it completes, and
        refuse to continue where a completed unit had another one that the results depend on.
        `depends_on` maps `world_size` and `device` to the setting that makes the results
        depend on it (`checks.layout_dependence`)."""
        self.layout = {"world_size": world_size, "device": device}
        for unit, recorded in self._units():
            for key, setting in depends_on.items():
                if recorded[key] != self.layout[key]:
                    raise ConfigError(self._layout_refusal(unit, recorded, key, setting))

    def _layout_refusal(self, unit: str, recorded: dict, key: str, setting: str) -> str:
        """Why a completed `unit` cannot be continued with this session's process count or
        device (`key`), and how to resume it."""
        if key == "world_size":
            count, now = recorded["world_size"], self.layout["world_size"]
            how = (
                f"torchrun --nproc_per_node={count} -m csl_avalanche.run"
                if count > 1
                else "python -m csl_avalanche.run"
            )
            return (
                f"{self.run_dir}: {unit} ran with {count} process(es), this run has {now}; with "
                f"{setting} the results depend on the process count: resume with {how} and the "
                "same settings, or add resume=false to start over"
            )
        device, now = recorded["device"], self.layout["device"]
        return (
            f"{self.run_dir}: {unit} ran on {device}, this run on {now}; with {setting} the "
            f"results depend on the device: resume with device={device.split(':')[0]}, or add "
            "resume=false to start over"
        )

    def _units(self) -> Iterator[tuple[str, dict]]:
        """(name, record) of every completed unit."""
        for name, unit in (("the ceiling", self.ceiling), ("the joint reference", self.joint)):
            if unit is not None:
                yield name, unit
        for kind, key in (("level", "levels"), ("arrival", "arrivals")):
            for unit in self.state[key]:
                yield f"{kind} {unit[kind]}", unit

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

    def save_ceiling(
        self, accuracy: float, steps: int, evaluator: Any, val_accuracy: float | None = None
    ) -> None:
        """`val_accuracy`: on the validation split, where there is one (None: not recorded)."""
        record = {"accuracy": accuracy, "steps": steps, **_validation(val_accuracy)}
        self.state["ceiling"] = {**record, **self.layout}
        self._save(evaluator)

    def save_joint(
        self, accuracy: float, evaluator: Any, val_accuracy: float | None = None
    ) -> None:
        self.state["joint"] = {"accuracy": accuracy, **_validation(val_accuracy), **self.layout}
        self._save(evaluator)

    def save_level(self, result: dict, train_seconds: float, strategy: Any) -> None:
        self._save_stage("levels", result, train_seconds, strategy)

    def save_arrival(self, result: dict, train_seconds: float, strategy: Any) -> None:
        self._save_stage("arrivals", result, train_seconds, strategy)

    def _save_stage(self, key: str, result: dict, train_seconds: float, strategy: Any) -> None:
        self.state[key].append({**result, **self.layout})
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
        folders = self._log_folders()
        try:
            for logger in [] if evaluator is None else evaluator.loggers:
                _flush(logger)
        except OSError as err:  # a full disk, found as the buffered log lines are written
            logs = self.run_dir / TENSORBOARD
            raise ConfigError(
                f"cannot write the logs in {logs}: {unwritable_because(err, logs)}, then run the "
                "same command again (it continues after the last saved unit)"
            ) from None
        self.state["rng"] = rng_state()
        self.state["logs"] = log_sizes(self.run_dir, folders)
        write_checkpoint(self.state, self.path)

    def _log_folders(self) -> list[Path]:
        """The folders of log files cut back on resume: tb/<strategy> (TensorBoard, the text
        log) and csv/<strategy>. wandb keeps its own records (`experiments.loggers`)."""
        roots = [self.run_dir / TENSORBOARD, self.run_dir / CSV]
        return sorted(p for root in roots if root.is_dir() for p in root.iterdir() if p.is_dir())

    def _move_aside(self, why: str) -> None:
        """Move an earlier run's files out of the way, so its logs never mix with this run's."""
        old = [self.run_dir / name for name in (RESULTS, CHECKPOINT, TENSORBOARD, CSV, WANDB)]
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


def _validation(val_accuracy: float | None) -> dict:
    """A unit's record of its validation accuracy: none without a validation split."""
    return {} if val_accuracy is None else {"val_accuracy": val_accuracy}


def _flush(logger: Any) -> None:
    """Push what a logger has buffered to disk (TensorBoard's writer, a text log's file)."""
    for name in ("writer", "file"):
        target = getattr(logger, name, None)
        if target is not None and hasattr(target, "flush"):
            target.flush()
