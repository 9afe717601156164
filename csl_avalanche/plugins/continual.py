"""Avalanche's anti-forgetting plugins (replay, EWC, LwF), built from the `plugins` config group.

They join the CSL strategy after its CoSupervisionPlugin, so they only ever see the level's
kept, teacher-labelled dataset: ReplayPlugin stores `strategy.experience.dataset`, EWC's
importance pass re-reads it with the hard pseudo-labels, LwF records its classes from it.
Each config file holds the plugin's own keyword arguments, so a misspelled knob is a TypeError.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import EWCPlugin, LwFPlugin, ReplayPlugin


def _ewc(ewc_lambda: float, mode: str = "separate", decay_factor: float | None = None):
    # EWCPlugin checks these with bare asserts; say what to set instead.
    if mode not in ("separate", "online"):
        raise ValueError(f"plugins.ewc.mode must be separate or online, got {mode!r}")
    if (mode == "online") != (decay_factor is not None):
        raise ValueError("plugins.ewc.decay_factor is required with mode=online and only then")
    return EWCPlugin(ewc_lambda=ewc_lambda, mode=mode, decay_factor=decay_factor)


CONTINUAL_PLUGINS: dict[str, Callable[..., SupervisedPlugin]] = {
    "replay": ReplayPlugin,
    "ewc": _ewc,
    "lwf": LwFPlugin,
}


def build_continual_plugins(config: Mapping[str, Mapping[str, Any]] | None) -> list:
    """One plugin per entry of `config` (name -> keyword arguments), in the config's order."""
    plugins = []
    for name, kwargs in (config or {}).items():
        if name not in CONTINUAL_PLUGINS:
            raise KeyError(f"unknown plugin {name!r}; choose from {sorted(CONTINUAL_PLUGINS)}")
        plugins.append(CONTINUAL_PLUGINS[name](**kwargs))
    return plugins
