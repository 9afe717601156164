"""Avalanche's anti-forgetting plugins (replay, EWC, LwF), built from the `plugins` config group.

They join the CSL strategy after its CoSupervisionPlugin, so they only ever see the level's
kept, teacher-labelled dataset: ReplayPlugin stores `strategy.experience.dataset`, EWC's
importance pass re-reads it with the hard pseudo-labels, LwF records its classes from it.
Each plugin's settings class names the keyword arguments it takes, with their rules
(Avalanche itself checks them with bare asserts, or not); a knob left out takes Avalanche's
own default.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from csl_avalanche.core.errors import ConfigError
from csl_avalanche.core.rules import (
    NON_NEGATIVE,
    POSITIVE,
    UNIT,
    build_settings,
    choice,
    either,
    list_of,
    optional,
    setting,
    whole,
)


@dataclass(frozen=True)
class ReplaySettings:
    mem_size: int = setting(whole(1), "samples kept over all earlier levels", default=200)
    batch_size_mem: int | None = setting(
        optional(whole(1)), "memory samples per batch; null: strategy.batch_size", default=None
    )


@dataclass(frozen=True)
class EWCSettings:
    ewc_lambda: float = setting(NON_NEGATIVE, "penalty weight")
    mode: str = setting(
        choice("separate", "online"), "one penalty per earlier level, or online", default="separate"
    )
    decay_factor: float | None = setting(
        optional(UNIT), "online only: the importance's decay", default=None
    )

    def check(self) -> None:
        if (self.mode == "online") != (self.decay_factor is not None):
            raise ConfigError(
                "plugins.ewc.decay_factor must be a number in [0, 1] with plugins.ewc.mode=online "
                f"and null with mode=separate, got mode={self.mode} and "
                f"decay_factor={self.decay_factor}"
            )


@dataclass(frozen=True)
class LwFSettings:
    alpha: float | list[float] = setting(
        either(NON_NEGATIVE, list_of(NON_NEGATIVE)),
        "distillation weight (or one per level)",
        default=1.0,
    )
    temperature: float = setting(POSITIVE, "softmax temperature of the distillation", default=2.0)


@dataclass(frozen=True)
class ContinualPlugin:
    """An Avalanche plugin class (by name in `avalanche.training.plugins`, imported only when
    built, so checking settings never imports Avalanche) and its settings class."""

    class_name: str
    settings: type

    def build(self, settings: Any) -> Any:
        plugins = importlib.import_module("avalanche.training.plugins")
        return getattr(plugins, self.class_name)(**asdict(settings))


CONTINUAL_PLUGINS: dict[str, ContinualPlugin] = {
    "replay": ContinualPlugin("ReplayPlugin", ReplaySettings),
    "ewc": ContinualPlugin("EWCPlugin", EWCSettings),
    "lwf": ContinualPlugin("LwFPlugin", LwFSettings),
}


def plugin_settings(name: str, knobs: Any) -> Any:
    """The settings of the plugin `name` from its keyword arguments (a mapping), checked."""
    if name not in CONTINUAL_PLUGINS:
        raise ConfigError(
            f"unknown plugin {name!r} in plugins; choose from {sorted(CONTINUAL_PLUGINS)}"
        )
    settings = CONTINUAL_PLUGINS[name].settings
    return (
        knobs if isinstance(knobs, settings) else build_settings(settings, knobs, f"plugins.{name}")
    )


def build_continual_plugins(plugins: Mapping[str, Any] | None) -> list:
    """One plugin per entry of `plugins` (name -> its settings, or their mapping), in order."""
    built = []
    for name, knobs in (plugins or {}).items():
        settings = plugin_settings(name, knobs)  # refuses an unknown plugin or knob
        built.append(CONTINUAL_PLUGINS[name].build(settings))
    return built
