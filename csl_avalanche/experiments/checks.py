"""The checks that need more than the settings: the data (once the features are built, before
any training), the run folder (before Hydra creates it), the home folder Avalanche writes in
(before it is imported), and the process count; and how a refused check ends the command
(`stop`: once, under torchrun).

`schema.read_settings` checks each setting on its own and against the others; these check them
against the world they run in.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn, TextIO

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from csl_avalanche.core import cosupervision as cs
from csl_avalanche.core.errors import ConfigError, reason, refuse
from csl_avalanche.experiments.loggers import TENSORBOARD
from csl_avalanche.experiments.schema import RunSettings
from csl_avalanche.storage.atomic import unwritable_because
from csl_avalanche.storage.lock import lock_holder, take_lock
from csl_avalanche.training.plugins.continual import LWF

RESULTS = "results.json"
LOCK = ".lock"  # held by the run that owns the folder
# How long a rank other than 0 waits, once stopped by an error, for rank 0 to report it and
# end the run (torchrun then stops the others): far longer than rank 0 takes.
REPORT_WAIT_SECONDS = 20


def check_against_data(
    settings: RunSettings, *, pool_size: int, num_levels: int, by_domain: bool = False
) -> None:
    """The settings that depend on the data, checked once the features are built and before
    any training: one training batch fits in the pool (every level trains on at least one), a
    per-level list of LwF weights has one for every level, and the assignment rule suits the
    subdomains (classes, or input domains)."""
    if fault := cs.assignment_fault(settings.strategy.assignment, by_domain=by_domain):
        raise ConfigError(fault)
    batch_size = settings.strategy.batch_size
    if pool_size == 0:
        raise ConfigError(
            "the transfer pool is empty: there is nothing to train the student on; check the "
            "benchmark's data (benchmark.splits, data.path)"
        )
    if pool_size < batch_size:
        raise ConfigError(
            f"strategy.batch_size={batch_size} is larger than the transfer pool ({pool_size} "
            f"samples), so not one training batch fits; use strategy.batch_size={pool_size} or "
            "less"
        )
    lwf, alpha = _lwf_weights(settings)
    if alpha is not None and len(alpha) < num_levels:
        raise ConfigError(
            f"plugins.{lwf}.alpha lists {len(alpha)} weights, but the hierarchy has {num_levels} "
            f"levels; give one per level, or a single number"
        )


def check_arrivals_against_data(
    settings: RunSettings, *, arrival_sizes: Mapping[str, int], num_experiences: int
) -> None:
    """The class-incremental settings that depend on the data, checked before any training:
    one training batch fits in every arrival's pool samples (its first phase trains on all of
    them), and a list of LwF weights has one for each of the stream's `num_experiences`."""
    batch_size = settings.strategy.batch_size
    small = {name: size for name, size in arrival_sizes.items() if size < batch_size}
    if small:
        shown = ", ".join(f"{name} ({size})" for name, size in small.items())
        raise ConfigError(
            f"strategy.batch_size={batch_size} is larger than the pool samples of arrival "
            f"{shown}, so not one training batch fits; use strategy.batch_size="
            f"{min(small.values())} or less"
        )
    lwf, alpha = _lwf_weights(settings)
    if alpha is not None and len(alpha) < num_experiences:
        raise ConfigError(
            f"plugins.{lwf}.alpha lists {len(alpha)} weights, but the class-incremental stream "
            f"trains {num_experiences} experiences; give one per experience, or a single number"
        )


def check_output_dir(run_dir: Path, key: str = "hydra.run.dir") -> None:
    """The run folder can be created (or is a folder) and can take results.json and tb/."""
    existing = next(p for p in (run_dir, *run_dir.parents) if p.exists() or p == p.parent)
    if not existing.is_dir():
        where = "is a file" if existing == run_dir else f"is under the file {existing}"
        raise ConfigError(
            f"the run folder {run_dir} {where}, so the run cannot write there; choose another {key}"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"the run folder {run_dir} cannot be written ({existing} is not writable); "
            f"choose another {key}"
        )
    results, tensorboard = run_dir / RESULTS, run_dir / TENSORBOARD
    if results.is_dir() or (results.exists() and not os.access(results, os.W_OK)):
        raise ConfigError(
            f"{results} cannot be written ({'a folder' if results.is_dir() else 'read-only'}); "
            f"remove it or choose another {key}"
        )
    if tensorboard.exists() and not tensorboard.is_dir():
        raise ConfigError(
            f"{tensorboard} is a file where the run writes its TensorBoard logs; "
            f"remove it or choose another {key}"
        )


def check_avalanche_home() -> None:
    """Avalanche's first import creates `~/.avalanche/config.json` (the place is fixed: no
    setting or variable moves it) and fails with a traceback where it cannot: checked before
    Avalanche is imported."""
    config = Path(os.path.expanduser("~/.avalanche/config.json"))
    if config.is_file():
        return
    try:
        config.parent.mkdir(parents=True, exist_ok=True)
        writable = os.access(config.parent, os.W_OK)
        fault = None if writable else "not writable"
    except OSError as err:
        fault = reason(err)
    if fault:
        raise ConfigError(
            f"Avalanche keeps its settings in {config} and cannot create it ({fault}); set HOME "
            f"to a writable folder (it is {os.environ.get('HOME', 'unset')})"
        )


def layout_dependence(settings: RunSettings) -> dict[str, str]:
    """What besides the settings the results depend on, each with the setting that makes
    them depend on it: `world_size` (the process count) and `device`. A resumed run may change
    the others (`RunProgress.check_layout`).

    Elsewhere P processes take one process's steps (the confidence loss hardens the whole
    batch on every rank) and a device changes only the last digits of float sums (a linear
    probe computes in float32 on CPU and GPU alike). A fine-tuned student draws each rank's
    random crops and dropout from its own stream, normalises each share with its own
    BatchNorm statistics, and on a GPU its convolutions run in TF32 by default."""
    depends: dict[str, str] = {}
    student = getattr(settings.source, "student", None)
    if getattr(student, "finetune", False):
        depends["world_size"] = depends["device"] = "student.finetune=true"
    return depends


def launched_by_torchrun() -> bool:
    """torchrun (and Avalanche's helper) mark each process with LOCAL_RANK."""
    return "LOCAL_RANK" in os.environ


def stop(err: ConfigError) -> NoReturn:
    """End the command with `err`'s one-line message and exit code 2 (`core.errors.refuse`),
    printed once under torchrun.

    Every rank meets the same error (the settings, the data and the run folder are the same
    for all, and an error found by one rank is passed to the others), so rank 0 reports it. The
    other ranks (torchrun numbers them in RANK) wait for rank 0 to end, which makes torchrun
    stop them: its summary then names rank 0's exit code 2 as the root cause. A rank still
    running after the wait met the error alone, and reports it itself.
    """
    if launched_by_torchrun() and os.environ.get("RANK") != "0":
        time.sleep(REPORT_WAIT_SECONDS)
    refuse(err)


def take_run_folder(run_dir: Path) -> TextIO:
    """The lock of the run folder `run_dir` (`storage.lock`), held until the returned file is
    closed or the process ends; a ConfigError naming the run that holds it."""
    path = run_dir / LOCK
    try:
        lock = take_lock(path)
    except OSError as err:
        raise ConfigError(
            f"cannot lock the run folder {run_dir} ({path}): {unwritable_because(err, path)}, "
            "or choose another hydra.run.dir"
        ) from None
    if lock is None:
        pid, _, host = lock_holder(path).partition("@")
        holder = f"process {pid} on {host}" if pid and host else "a process"
        raise ConfigError(
            f"{run_dir} is in use by another run ({holder}): two runs in one folder would mix "
            "their logs and results; wait for it to end (or stop it) and run again to resume, or "
            "choose another hydra.run.dir"
        )
    return lock


class OutputDirCheck(Callback):
    """Hydra callback (configs/config.yaml): checks the run, or sweep, folder before Hydra
    creates it, which would otherwise fail inside Hydra with a traceback; and that no other
    run holds the run folder, before Hydra writes its `.hydra/` files there. (The run takes
    the folder's lock itself, in `RunProgress.open`: this is the early look.)"""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.run.dir")
        run_dir = Path(OmegaConf.select(config, "hydra.run.dir"))

        def probe() -> None:
            if run_dir.is_dir():
                take_run_folder(run_dir).close()

        try:
            if launched_by_torchrun():  # rank 0 looks, every rank learns the answer
                from csl_avalanche import distributed  # joined by launch.TorchrunLaunch

                distributed.main_only(probe)
            else:
                probe()
        except ConfigError as err:
            stop(err)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.sweep.dir")

    @staticmethod
    def _check(config: DictConfig, key: str) -> None:
        try:
            check_output_dir(Path(OmegaConf.select(config, key)), key)
        except ConfigError as err:  # Hydra turns an exception here into a warning
            stop(err)


def _lwf_weights(settings: RunSettings) -> tuple[str, list] | tuple[None, None]:
    """The LwF entry's name and its per-experience weights, where its `alpha` lists them."""
    for spec in settings.plugins.values():
        alpha = spec.kwargs.get("alpha")
        if spec.target == LWF and isinstance(alpha, list):
            return spec.name, alpha
    return None, None
