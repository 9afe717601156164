"""The schema of every setting: typed dataclasses, each field with its rule and description.

`read_settings` walks a composed Hydra config against the schema in one pass, before any data
is read or model trained, and returns `RunSettings`, the
typed object the rest of the run works with. A wrong value, an unknown key or two settings
that contradict each other raise one ConfigError naming the key, the value and the fix, e.g.
`strategy.epochs must be a whole number >= 1, got 'abc'`.

The sections `benchmark`, `data`, `teacher` and `student` belong to the benchmark: their types
are its settings class (`benchmarks.settings.SOURCE_SETTINGS`). A plugin entry is
checked against its class (`training.plugins.continual`: the class is imported to read its
arguments).

The walk checks the composed config rather than letting OmegaConf type it at composition:
OmegaConf would coerce (`progress=yes` becomes true) and report a mistyped value as a
multi-line Hydra error with exit code 1, where this project's errors are one line with exit
code 2.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from csl_avalanche.benchmarks.settings import SourceSettings, source_settings
from csl_avalanche.core import cosupervision as cs
from csl_avalanche.core.confidence_loss import LOSSES
from csl_avalanche.core.errors import ConfigError
from csl_avalanche.core.learned_weights import WEIGHT_MODES
from csl_avalanche.core.rules import (
    BOOLEAN,
    LEARNING_RATE,
    NON_NEGATIVE,
    PATH,
    UNIT,
    Rule,
    build_settings,
    choice,
    either,
    list_of,
    optional,
    section,
    setting,
    whole,
)
from csl_avalanche.experiments.loggers import LOGGER_SETTINGS, logger_settings
from csl_avalanche.training.plugins.continual import (
    CONTINUAL_ONLY,
    CSL_REPLAY,
    HARD_LABELS_ONLY,
    KNOWN_ARGUMENTS,
    OWN_LOADER,
    TARGET,
    plugin_spec,
)

GROUND_TRUTH = "ground_truth"
STRATEGY_NAMES = ("csl", "w2s", GROUND_TRUTH)
SCENARIOS = ("levels", "class_incremental")
ARRIVAL_ORDERS = ("hierarchy", "random")  # or a list of finest-subdomain positions


def _is_denoise(value: Any) -> bool:
    try:
        cs.topk_of(value)
    except (ValueError, AttributeError):
        return False
    return True


DENOISE = Rule("all or topK with K >= 1 (top1, top3, ...)", _is_denoise)


@dataclass(frozen=True)
class StrategySettings:
    """`strategy.*`: how the student learns from the teachers (the strategy group)."""

    name: str = setting(choice(*STRATEGY_NAMES), "the strategy: csl, w2s, or ground_truth")
    assignment: str = setting(choice(*cs.TARGET_RULES), "the E-step's teacher assignment rule")
    labels: str = setting(choice(*cs.LABEL_KINDS), "train on the target's argmax or on it whole")
    denoise: str = setting(DENOISE, "noise reduction: keep the top-K consensus count, or all")
    reinit_student: bool = setting(BOOLEAN, "a fresh student at every level (the paper)")
    scale_epochs: bool = setting(BOOLEAN, "int(epochs / keep_rate) epochs per level")
    epochs: int = setting(whole(1), "epochs per level (and for the ceiling)")
    lr: float = setting(LEARNING_RATE, "Adam's learning rate, cosine schedule over each level")
    batch_size: int = setting(whole(1), "samples per training batch")
    chunk_size: int | None = setting(
        optional(whole(1)), "pool rows per E-step chunk; null: as many as fit in 256 MB"
    )
    reassign_every: int | None = setting(
        optional(whole(1)), "redo the E-step every E epochs of a level; null: once (the paper)"
    )
    loss: str = setting(choice(*LOSSES), "ce, or logconf (the auxiliary confidence loss)")
    logconf_alpha: float | None = setting(
        optional(UNIT), "logconf only: the confidence term's weight (null: 0.5)"
    )
    logconf_warmup: float | None = setting(
        optional(UNIT), "logconf only: fraction of a level's steps to ramp it in (null: 0.2)"
    )
    learned_weights: str | None = setting(
        optional(choice(*WEIGHT_MODES)),
        "learned only: one weight vector, or one per subdomain (null: per_subdomain)",
        default=None,
    )
    weights_lr: float | None = setting(
        optional(NON_NEGATIVE),
        "learned only: the teacher weights' gradient step (null: 1.0; 0: uniform)",
        default=None,
    )

    def check(self) -> None:
        """The confidence loss's and the learned weights' knobs only with them (else they
        would be silently ignored); learned weights without re-assignment passes."""
        given = [k for k in ("logconf_alpha", "logconf_warmup") if getattr(self, k) is not None]
        if given and self.loss != "logconf":
            raise ConfigError(
                f"strategy.{given[0]} sets the confidence loss, but strategy.loss={self.loss}; "
                f"add strategy.loss=logconf or drop strategy.{given[0]}"
            )
        given = [k for k in ("learned_weights", "weights_lr") if getattr(self, k) is not None]
        if given and self.assignment != "learned":
            raise ConfigError(
                f"strategy.{given[0]} sets the learned teacher weights, but "
                f"strategy.assignment={self.assignment}; add strategy.assignment=learned or drop "
                f"strategy.{given[0]}"
            )
        if self.assignment == "learned" and self.reassign_every is not None:
            raise ConfigError(
                "strategy.assignment=learned starts its weights uniform at each E-step, so "
                f"strategy.reassign_every={self.reassign_every} would reset them mid-level; drop "
                "strategy.reassign_every"
            )


@dataclass(frozen=True)
class ScenarioSettings:
    """`scenario.*`: the levels protocol, or class-incremental arrivals (the scenario group)."""

    name: str = setting(choice(*SCENARIOS), "levels (the paper's protocol) or class_incremental")
    order: Any = setting(
        either(choice(*ARRIVAL_ORDERS), list_of(whole(0))),
        "class_incremental: arrival order (hierarchy, random, or finest-subdomain positions)",
        default="hierarchy",
    )
    joint_reference: bool = setting(
        BOOLEAN, "class_incremental: also run the levels protocol on all data", default=True
    )


@dataclass(frozen=True)
class RunSettings:
    """Every setting of a run, typed. `plugins` maps each anti-forgetting plugin's name to its
    settings; `source` holds the benchmark's sections (benchmark, data, teacher, student)."""

    seed: int = setting(whole(0, 2**32 - 1), "seeds every random choice: same seed, same numbers")
    device: str = setting(choice("auto", "cpu", "cuda"), "where the student trains")
    cache_dir: str = setting(PATH, "teacher outputs, embeddings and weights, content-hashed")
    progress: bool = setting(BOOLEAN, "draw progress bars")
    resume: bool = setting(BOOLEAN, "continue a killed run in its folder; false: start over")
    strategy: StrategySettings = section("how the student learns (group: strategy)")
    scenario: ScenarioSettings = section("which protocol (group: scenario)")
    plugins: dict[str, Any] = section("anti-forgetting plugins by name (group: plugins)")
    loggers: dict[str, Any] = section("Avalanche loggers by name (group: loggers)")
    source: SourceSettings = section("the benchmark's sections (group: benchmark)")

    def check(self) -> None:
        """The settings that must agree with each other."""
        scenario, strategy = self.scenario.name, self.strategy.name
        if scenario == "class_incremental" and self.strategy.reinit_student:
            raise ConfigError(
                "strategy.reinit_student=true restarts the student at every experience, but "
                "with scenario=class_incremental the student is continual: it must keep what "
                "earlier arrivals taught it; drop the setting (the scenario sets false)"
            )
        for spec in self.plugins.values():
            if spec.target in CONTINUAL_ONLY and self.strategy.reinit_student:
                raise ConfigError(
                    f"plugins.{spec.name} acts on the student one level leaves to the next, but "
                    "strategy.reinit_student=true starts every level from a fresh student (it "
                    "would do nothing); add strategy.reinit_student=false, or drop "
                    f"plugins.{spec.name}"
                )
        if strategy == GROUND_TRUTH and scenario != "class_incremental":
            raise ConfigError(
                "strategy=ground_truth trains the class-incremental stream on true labels: add "
                "scenario=class_incremental; in the levels scenario the student on ground truth "
                "is the ceiling, reported as ceiling_accuracy"
            )
        for spec in self.plugins.values():
            if spec.target == CSL_REPLAY and (
                scenario != "class_incremental" or strategy == GROUND_TRUTH
            ):
                raise ConfigError(
                    f"plugins.{spec.name} (co-supervised replay) relabels earlier arrivals' "
                    f"samples with the teachers, but scenario={scenario} strategy={strategy} "
                    + (
                        "has no teachers; use plugins=[replay]"
                        if strategy == GROUND_TRUTH
                        else "relabels the whole pool at every level; use it with "
                        "scenario=class_incremental"
                    )
                )
        if self.strategy.reassign_every is not None:
            if strategy != "csl":
                raise ConfigError(
                    f"strategy.reassign_every repeats CSL's E-step, but strategy={strategy} has "
                    "none (its labels do not depend on the student); drop "
                    "strategy.reassign_every"
                )
            for spec in self.plugins.values():
                if spec.target in OWN_LOADER:
                    raise ConfigError(
                        "strategy.reassign_every replaces a level's training data mid-level, "
                        f"but plugins.{spec.name} builds its own training data once per level and "
                        "would drop the new data; use plugins=[ewc] or [lwf], or drop "
                        "strategy.reassign_every"
                    )
        if self.strategy.labels == "soft":
            for spec in self.plugins.values():
                if spec.target in HARD_LABELS_ONLY:
                    raise ConfigError(
                        f"plugins.{spec.name} ({spec.target}) cannot train with "
                        f"strategy.labels=soft: {HARD_LABELS_ONLY[spec.target]}; use "
                        "strategy.labels=hard or another plugin"
                    )
        if strategy == GROUND_TRUTH and self.strategy.labels != "hard":
            raise ConfigError(
                "strategy=ground_truth trains on the true classes, which are hard labels; drop "
                "strategy.labels=soft"
            )


RUN_KEYS = (
    "seed",
    "device",
    "cache_dir",
    "progress",
    "resume",
    "strategy",
    "scenario",
    "plugins",
    "loggers",
)


def read_settings(cfg: DictConfig | Mapping[str, Any]) -> RunSettings:
    """The composed config `cfg` as RunSettings, every value checked against its rule (and
    unknown keys refused); raises ConfigError naming the first setting that is wrong."""
    config = plain_config(cfg)
    benchmark = config.get("benchmark")
    name = benchmark.get("name") if isinstance(benchmark, dict) else None
    settings_class = source_settings(name)  # refuses an unknown benchmark
    source_keys = [f.name for f in dataclasses.fields(settings_class)]
    for key in config:
        if key not in RUN_KEYS and key not in source_keys:
            raise ConfigError(
                f"{key} is not a setting of benchmark={name}; the settings are "
                f"{', '.join([*RUN_KEYS, *source_keys])}"
            )
    values = {key: config[key] for key in RUN_KEYS if key in config}
    values["source"] = {key: config[key] for key in source_keys if key in config}
    return build_settings(
        RunSettings,
        values,
        sections={
            "source": lambda v: build_settings(settings_class, v),
            "plugins": lambda v: {
                name: plugin_spec(name, entry) for name, entry in (v or {}).items()
            },
            "loggers": logger_settings,
        },
    )


def plain_config(cfg: DictConfig | Mapping[str, Any]) -> dict:
    """The config as plain dicts and lists, without Hydra's own `hydra` node (which a Hydra
    callback's config carries)."""
    if isinstance(cfg, DictConfig):
        # Hydra's node holds values only a running job can resolve (hydra.job.num): drop it
        # before resolving.
        ours = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
        return OmegaConf.to_container(ours, resolve=True)
    return {key: value for key, value in cfg.items() if key != "hydra"}


def described(cfg: DictConfig | Mapping[str, Any]) -> Iterator[tuple[str, Any, str]]:
    """(key, value, description) for every setting of the composed config `cfg`, in the
    schema's order: what `--help` lists. A key without a rule or description raises, so the
    schema cannot fall behind the configs (tests compose every shipped combination)."""
    config = plain_config(cfg)
    settings_class = source_settings(config["benchmark"]["name"])
    yield from _described(RunSettings, config, "", {"source": settings_class})


def _described(
    cls: type, value: dict, prefix: str, replaced: Mapping[str, type] = {}
) -> Iterator[tuple[str, Any, str]]:
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        name = field.name
        key = f"{prefix}.{name}" if prefix else name
        kind = replaced.get(name, hints[name])
        if name == "source":
            yield from _described(kind, value, "")
        elif name == "plugins":
            for plugin, entry in (value.get("plugins") or {}).items():
                yield from _described_plugin(plugin, entry)
        elif name == "loggers":
            for logger, entry in (value.get("loggers") or {}).items():
                yield from _described(LOGGER_SETTINGS[logger], entry or {}, f"loggers.{logger}")
        elif dataclasses.is_dataclass(kind):
            if name in value:
                yield from _described(kind, value[name], key)
        elif name in value:
            if "rule" not in field.metadata or not field.metadata.get("help"):
                raise ConfigError(f"{key} has no rule or description in the schema")
            yield key, value[name], field.metadata["help"]


def _described_plugin(name: str, entry: dict) -> Iterator[tuple[str, Any, str]]:
    """A plugin entry's class and arguments: described by the class's settings where we ship
    the plugin, else as the class's keyword arguments."""
    target = entry.get(TARGET)
    yield f"plugins.{name}.{TARGET}", target, "the plugin's class"
    knobs = {key: value for key, value in entry.items() if key != TARGET}
    if target in KNOWN_ARGUMENTS:
        yield from _described(KNOWN_ARGUMENTS[target], knobs, f"plugins.{name}")
    else:
        for key, value in knobs.items():
            yield f"plugins.{name}.{key}", value, f"keyword argument of {target}"
