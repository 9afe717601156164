"""The checks that need more than the settings: the data (once the features are built, before
any training), the run folder (before Hydra creates it), and the process count.

`schema.read_settings` checks each setting on its own and against the others; these check them
against the world they run in.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from csl_avalanche.core import cosupervision as cs
from csl_avalanche.core.errors import ConfigError, refuse
from csl_avalanche.experiments.schema import RunSettings

RESULTS = "results.json"
TENSORBOARD = "tb"


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
    alpha = _lwf_weights(settings)
    if alpha is not None and len(alpha) < num_levels:
        raise ConfigError(
            f"plugins.lwf.alpha lists {len(alpha)} weights, but the hierarchy has {num_levels} "
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
    alpha = _lwf_weights(settings)
    if alpha is not None and len(alpha) < num_experiences:
        raise ConfigError(
            f"plugins.lwf.alpha lists {len(alpha)} weights, but the class-incremental stream "
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


class OutputDirCheck(Callback):
    """Hydra callback (configs/config.yaml): checks the run, or sweep, folder before Hydra
    creates it, which would otherwise fail inside Hydra with a traceback."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.sweep.dir")

    @staticmethod
    def _check(config: DictConfig, key: str) -> None:
        try:
            check_output_dir(Path(OmegaConf.select(config, key)), key)
        except ConfigError as err:  # Hydra turns an exception here into a warning
            refuse(err)


def _lwf_weights(settings: RunSettings) -> list | None:
    """LwF's per-experience weights, where `plugins.lwf.alpha` lists them."""
    lwf = settings.plugins.get("lwf")
    return lwf.alpha if lwf is not None and isinstance(lwf.alpha, list) else None
