"""Any Avalanche plugin (or a user's own) as a config entry: a `_target_` and its arguments.

`plugins.<name>` in the config is a mapping with `_target_`, the dotted path of a plugin class,
and the keyword arguments it is built with (Hydra's `instantiate` convention; a nested mapping
with its own `_target_`, e.g. a storage policy, is built first). The shipped files in the
`plugins` config group (`replay`, `ewc`, `lwf`, ...) are such entries, and so is a user's
`+plugins.mine._target_=my.module.Plugin`. The plugins join the CSL strategy after its
CoSupervisionPlugin, so they only ever see the level's kept, teacher-labelled dataset.

Every entry is checked before anything trains: the target must import, and its arguments must
be ones the class takes. Where we know a plugin's arguments (`KNOWN_ARGUMENTS`: the shipped
ones), they are also checked against their rules (Avalanche checks them with bare asserts, or
not) and described by `--help`; a knob left out takes the class's own default. Classes are
imported only when an entry is read, so checking the other settings never imports Avalanche.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
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

TARGET = "_target_"


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
class CoSupervisedReplaySettings:
    mem_size: int = setting(whole(1), "pool rows kept over all earlier arrivals", default=200)
    batch_size_mem: int | None = setting(
        optional(whole(1)), "memory samples per batch; null: strategy.batch_size", default=None
    )
    distill: float = setting(
        NON_NEGATIVE,
        "weight of the MSE to the logits stored with each row (DER); 0: off",
        default=0.0,
    )


@dataclass(frozen=True)
class SISettings:
    si_lambda: float | list[float] = setting(
        either(NON_NEGATIVE, list_of(NON_NEGATIVE)), "penalty weight (or one per level)"
    )
    eps: float = setting(POSITIVE, "damping of the importance's denominator", default=1e-7)


@dataclass(frozen=True)
class MASSettings:
    lambda_reg: float = setting(NON_NEGATIVE, "penalty weight", default=1.0)
    alpha: float = setting(UNIT, "weight of the earlier importance against the new", default=0.5)


@dataclass(frozen=True)
class AGEMSettings:
    patterns_per_experience: int = setting(whole(1), "samples kept per earlier experience")
    sample_size: int = setting(whole(1), "memory samples per reference gradient")


@dataclass(frozen=True)
class GDumbSettings:
    mem_size: int = setting(whole(1), "samples kept, balanced over teacher labels", default=200)


@dataclass(frozen=True)
class RWalkSettings:
    ewc_lambda: float = setting(NON_NEGATIVE, "penalty weight", default=0.1)
    ewc_alpha: float = setting(UNIT, "moving-average factor of the Fisher (EWC++)", default=0.9)
    delta_t: int = setting(whole(1), "steps between score updates", default=10)


@dataclass(frozen=True)
class ShrinkPerturbSettings:
    shrink: float = setting(UNIT, "each weight's factor before adding the fresh draw", default=0.5)
    noise: float = setting(NON_NEGATIVE, "the weight of a fresh initialisation's draw", default=0.1)
    seed: int | None = setting(
        optional(whole(0, 2**32 - 1)), "seeds the fresh draws; null: the run's seed", default=None
    )


AVALANCHE = "avalanche.training.plugins."
LWF = AVALANCHE + "LwFPlugin"
SHRINK_PERTURB = "csl_avalanche.training.plugins.plasticity.ShrinkPerturbPlugin"
CSL_REPLAY = "csl_avalanche.training.plugins.cosupervised_replay.CoSupervisedReplayPlugin"

# The arguments of the plugin classes we ship a config file for, by `_target_`.
KNOWN_ARGUMENTS: dict[str, type] = {
    AVALANCHE + "ReplayPlugin": ReplaySettings,
    AVALANCHE + "EWCPlugin": EWCSettings,
    LWF: LwFSettings,
    "csl_avalanche.training.plugins.synaptic_intelligence.SynapticIntelligencePlugin": SISettings,
    AVALANCHE + "MASPlugin": MASSettings,
    AVALANCHE + "AGEMPlugin": AGEMSettings,
    AVALANCHE + "GDumbPlugin": GDumbSettings,
    AVALANCHE + "RWalkPlugin": RWalkSettings,
    CSL_REPLAY: CoSupervisedReplaySettings,
    SHRINK_PERTURB: ShrinkPerturbSettings,
}

# Plugins that act on the student a level leaves to the next: a fresh student at every level
# (strategy.reinit_student=true) makes them no-ops.
CONTINUAL_ONLY = {SHRINK_PERTURB}

# Plugins that build their own training loader or data once per experience (a re-assignment
# mid-level would not reach it): the replays' [current | memory] loaders, GDumb's buffer.
OWN_LOADER = {AVALANCHE + "ReplayPlugin", AVALANCHE + "GDumbPlugin", CSL_REPLAY}

# Plugins that cannot train on the soft labels' [x, y, soft target, task] batches, and why.
HARD_LABELS_ONLY = {
    AVALANCHE + "MASPlugin": "its importance pass accepts batches of [x, y, task] only",
}

# Plugins that declare distributed support (`supports_distributed`) but that we refuse under
# torchrun, and why.
NOT_DISTRIBUTED = {
    AVALANCHE + "ReplayPlugin": "its loader's batches are per process, so the global batch "
    "would grow with the process count",
    AVALANCHE + "GDumbPlugin": "each process would draw its buffer with its own random "
    "generator (not checked to agree across processes)",
}


@dataclass(frozen=True)
class PluginSpec:
    """One checked `plugins.<name>` entry: the class's dotted path and the keyword arguments
    it is built with, as written (a knob left out takes the class's own default)."""

    name: str
    target: str
    kwargs: dict = field(default_factory=dict)

    def plugin_class(self) -> type:
        return resolve_target(self.target, f"plugins.{self.name}")

    def build(self) -> Any:
        """A new plugin; an argument its class refuses (Avalanche asserts) is a ConfigError."""
        kwargs = {
            key: _instantiate(value, f"plugins.{self.name}.{key}")
            for key, value in self.kwargs.items()
        }
        try:
            return self.plugin_class()(**kwargs)
        except (AssertionError, ValueError, TypeError) as err:
            raise ConfigError(
                f"plugins.{self.name} ({self.target}) refuses its arguments {self.kwargs}: "
                f"{err or type(err).__name__}; fix them under plugins.{self.name}"
            ) from None


def resolve_target(path: Any, key: str) -> Any:
    """The object a dotted `_target_` path names, or a ConfigError saying how to fix it."""
    if not isinstance(path, str) or "." not in path:
        raise ConfigError(
            f"{key}.{TARGET} must be the dotted path of a class (module.Class), got {path!r}"
        )
    module_name, _, attribute = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(
            f"{key}.{TARGET}={path}: cannot import module {module_name} ({err}); check the "
            "spelling, or install the package that provides it"
        ) from None
    if not hasattr(module, attribute):
        raise ConfigError(f"{key}.{TARGET}={path}: module {module_name} has no {attribute}")
    return getattr(module, attribute)


def plugin_spec(name: str, entry: Any) -> PluginSpec:
    """The entry `plugins.<name>` checked: its target imports and takes these arguments."""
    key = f"plugins.{name}"
    if isinstance(entry, PluginSpec):
        return entry
    if not isinstance(entry, Mapping) or TARGET not in entry:
        raise ConfigError(
            f"{key} must be a mapping with {TARGET} (the plugin's class, e.g. "
            f"avalanche.training.plugins.ReplayPlugin) and its arguments, got {entry!r}; pick a "
            f"shipped file with plugins=[{name}] or set +{key}.{TARGET}=module.Class"
        )
    target = entry[TARGET]
    plugin_class = resolve_target(target, key)
    knobs = {k: v for k, v in entry.items() if k != TARGET}
    if target in KNOWN_ARGUMENTS:  # the knobs we declare, against their rules
        settings = KNOWN_ARGUMENTS[target]
        declared = {f.name for f in fields(settings)}
        build_settings(settings, {k: v for k, v in knobs.items() if k in declared}, key)
    _check_arguments(plugin_class, knobs, key)
    return PluginSpec(name, target, knobs)


def _check_arguments(plugin_class: Any, knobs: Mapping[str, Any], key: str) -> None:
    """Refuse a keyword the class does not take, or a required one left out."""
    try:
        signature = inspect.signature(plugin_class)
    except (TypeError, ValueError):  # a builtin without a signature: the build will tell
        return
    parameters = signature.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        accepted = None
    else:
        accepted = [
            n for n, p in parameters.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL
        ]
    for knob in knobs:
        if accepted is not None and knob not in accepted:
            raise ConfigError(
                f"{key}.{knob} is not an argument of {plugin_class.__qualname__}; it takes "
                f"{', '.join(accepted) or 'none'}"
            )
    missing = [
        n
        for n, p in parameters.items()
        if p.default is inspect.Parameter.empty
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and n not in knobs
    ]
    if missing:
        raise ConfigError(
            f"{key} ({plugin_class.__qualname__}) needs {', '.join(missing)}: set "
            + " ".join(f"+{key}.{n}=..." for n in missing)
        )


def _instantiate(value: Any, key: str) -> Any:
    """A nested `{_target_: ..., ...}` mapping built into its object (recursively)."""
    if isinstance(value, Mapping) and TARGET in value:
        spec = plugin_spec(key.removeprefix("plugins."), value)
        return spec.build()
    if isinstance(value, list):
        return [_instantiate(item, key) for item in value]
    return value


def distributed_refusal(spec: PluginSpec) -> str | None:
    """Why the plugin cannot run under torchrun, or None where it can: Avalanche's
    `supports_distributed` mark of its class, and what we know beyond it (NOT_DISTRIBUTED)."""
    if spec.target in NOT_DISTRIBUTED:
        return NOT_DISTRIBUTED[spec.target]
    if not getattr(spec.plugin_class(), "supports_distributed", False):
        return (
            "its class does not declare supports_distributed (Avalanche's mark of a plugin "
            "that runs data-parallel)"
        )
    return None


def build_continual_plugins(plugins: Mapping[str, Any] | None) -> list:
    """One plugin per entry of `plugins` (name -> its PluginSpec, or its mapping), in order."""
    return [plugin_spec(name, entry).build() for name, entry in (plugins or {}).items()]
