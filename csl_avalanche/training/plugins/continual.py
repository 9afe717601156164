"""Avalanche's anti-forgetting plugins (replay, EWC, LwF), built from the `plugins` config group.

They join the CSL strategy after its CoSupervisionPlugin, so they only ever see the level's
kept, teacher-labelled dataset: ReplayPlugin stores `strategy.experience.dataset`, EWC's
importance pass re-reads it with the hard pseudo-labels, LwF records its classes from it.
Each config file holds the plugin's own keyword arguments, checked by
`settings.check_plugin_settings` (Avalanche itself checks them with bare asserts, or not).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import EWCPlugin, LwFPlugin, ReplayPlugin

from csl_avalanche.experiments.settings import check_plugin_settings

# The same names as settings.PLUGIN_SETTINGS, which says what each accepts.
CONTINUAL_PLUGINS: dict[str, Callable[..., SupervisedPlugin]] = {
    "replay": ReplayPlugin,
    "ewc": EWCPlugin,
    "lwf": LwFPlugin,
}


def build_continual_plugins(config: Mapping[str, Mapping[str, Any]] | None) -> list:
    """One plugin per entry of `config` (name -> keyword arguments), in the config's order."""
    check_plugin_settings(config)
    return [CONTINUAL_PLUGINS[name](**kwargs) for name, kwargs in (config or {}).items()]
