"""The run's settings, checked: every key of the configs with the rule its value must follow.

`check_settings` runs before any data is read or model trained (and before Avalanche is
imported), so a mistyped value costs seconds, not a feature extraction. Each rule says what a
valid value is; the error names the key, the value and that requirement, e.g.
`strategy.epochs must be a whole number >= 1, got 'abc'`. A key a benchmark does not define
(`student.pretrain` for image benchmarks) is not checked. `check_output_dir` checks that a run
can write its results before it starts.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf

from csl_avalanche.core import cosupervision as cs
from csl_avalanche.core.clustering import AUTO, LEVELS_KEY, check_sizes
from csl_avalanche.core.confidence_loss import LOSSES
from csl_avalanche.core.errors import ConfigError, refuse

STRATEGY_NAMES = ("csl", "w2s", "ground_truth")  # strategy_setup.STRATEGIES, and ground truth
SCENARIOS = ("levels", "class_incremental")
ARRIVAL_ORDERS = ("hierarchy", "random")  # or a list of finest-subdomain positions
RESULTS = "results.json"
TENSORBOARD = "tb"
_ABSENT = object()


@dataclass(frozen=True)
class Rule:
    """`requirement` says what a valid value is, as the error message words it."""

    requirement: str
    accepts: Callable[[Any], bool]


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A finite int or float (a bool is not a number here)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def whole(minimum: int, maximum: int | None = None) -> Rule:
    bound = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
    return Rule(
        f"a whole number {bound}",
        lambda v: _is_whole(v) and v >= minimum and (maximum is None or v <= maximum),
    )


def number(bound: str, within: Callable[[float], bool]) -> Rule:
    """A finite number for which `within` holds; `bound` words it ("> 0", "in (0, 1]")."""
    return Rule(f"a finite number {bound}", lambda v: _is_number(v) and within(v))


def choice(*options: str) -> Rule:
    return Rule(f"one of {', '.join(options)}", lambda v: v in options)


def optional(rule: Rule) -> Rule:
    return Rule(f"null or {rule.requirement}", lambda v: v is None or rule.accepts(v))


def list_of(rule: Rule) -> Rule:
    plural = rule.requirement.removeprefix("a ").replace("number", "numbers")
    return Rule(
        f"a non-empty list of {plural}",
        lambda v: isinstance(v, list) and bool(v) and all(rule.accepts(x) for x in v),
    )


def either(first: Rule, second: Rule) -> Rule:
    return Rule(
        f"{first.requirement}, or {second.requirement}",
        lambda v: first.accepts(v) or second.accepts(v),
    )


def _is_denoise(value: Any) -> bool:
    try:
        cs.topk_of(value)
    except (ValueError, AttributeError):
        return False
    return True


def _are_fractions(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and bool(value)
        and all(_is_number(f) and f > 0 for f in value.values())
        and sum(value.values()) <= 1 + 1e-9
    )


BOOLEAN = Rule("true or false", lambda v: isinstance(v, bool))
PATH = Rule("a folder path", lambda v: isinstance(v, str) and v.strip() != "")
POSITIVE = number("> 0", lambda v: v > 0)
NON_NEGATIVE = number(">= 0", lambda v: v >= 0)
FRACTION = number("in (0, 1]", lambda v: 0 < v <= 1)
UNIT = number("in [0, 1]", lambda v: 0 <= v <= 1)
# Every model here trains with Adam, which moves each weight by up to about lr per step: a rate
# above 1 is a mistyped exponent (1e4 for 1e-4), and above ~3e37 overflows inside torch.
LEARNING_RATE = FRACTION
DENOISE = Rule("all or topK with K >= 1 (top1, top3, ...)", _is_denoise)
FRACTIONS = Rule(
    "a mapping of part -> fraction of every class, each > 0 and summing to at most 1",
    _are_fractions,
)

SETTINGS: dict[str, Rule] = {
    "seed": whole(0, 2**32 - 1),
    "device": choice("auto", "cpu", "cuda"),
    "progress": BOOLEAN,
    "resume": BOOLEAN,
    "cache_dir": PATH,
    "scenario.name": choice(*SCENARIOS),
    "scenario.order": either(choice(*ARRIVAL_ORDERS), list_of(whole(0))),
    "scenario.joint_reference": BOOLEAN,
    "strategy.name": choice(*STRATEGY_NAMES),
    "strategy.assignment": choice(*cs.TARGET_RULES),
    "strategy.labels": choice(*cs.LABEL_KINDS),
    "strategy.denoise": DENOISE,
    "strategy.reinit_student": BOOLEAN,
    "strategy.scale_epochs": BOOLEAN,
    "strategy.epochs": whole(1),
    "strategy.lr": LEARNING_RATE,
    "strategy.batch_size": whole(1),
    "strategy.chunk_size": optional(whole(1)),
    "strategy.reassign_every": optional(whole(1)),
    "strategy.loss": choice(*LOSSES),
    "strategy.logconf_alpha": UNIT,
    "strategy.logconf_warmup": UNIT,
    "benchmark.splits": FRACTIONS,
    "benchmark.val_splits": FRACTIONS,
    "benchmark.teacher_fraction": FRACTION,
    "benchmark.teachers_per_level": list_of(whole(1)),
    "benchmark.hierarchy": Rule(
        f"null, {AUTO}, or a list of levels, each a list of groups of classes",
        lambda v: v is None or v == AUTO or isinstance(v, list),
    ),
    LEVELS_KEY: optional(list_of(whole(2))),
    "benchmark.auto_holdout": number("in (0, 1)", lambda v: 0 < v < 1),
    "data.download": BOOLEAN,
    "data.image_size": optional(whole(1)),
    "data.crop_pct": optional(FRACTION),
    "data.batch_size": optional(whole(1)),
    "data.num_workers": optional(whole(0)),
    "teacher.pool": whole(1),
    "teacher.steps": whole(1),
    "teacher.batch_size": whole(1),
    "teacher.lr": LEARNING_RATE,
    "teacher.pretrained": BOOLEAN,
    "student.hidden": whole(1),
    "student.embed_dim": whole(1),
    "student.channels": list_of(whole(1)),
    "student.pretrain.steps": whole(1),
    "student.pretrain.batch_size": whole(1),
    "student.pretrain.lr": LEARNING_RATE,
    "student.pretrained": BOOLEAN,
    "student.finetune": BOOLEAN,
}

# plugins.<name>.<knob>: the keyword arguments each anti-forgetting plugin accepts.
PLUGIN_SETTINGS: dict[str, dict[str, Rule]] = {
    "replay": {"mem_size": whole(1), "batch_size_mem": optional(whole(1))},
    "ewc": {
        "ewc_lambda": NON_NEGATIVE,
        "mode": choice("separate", "online"),
        "decay_factor": optional(UNIT),
    },
    "lwf": {"alpha": either(NON_NEGATIVE, list_of(NON_NEGATIVE)), "temperature": POSITIVE},
}


def check_settings(cfg: DictConfig) -> None:
    """Raise ConfigError naming the first setting of `cfg` that breaks its rule."""
    for key, rule in SETTINGS.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is not _ABSENT:
            _check(key, _plain(value), rule)
    check_plugin_settings(_plain(cfg.get("plugins")))
    check_scenario(cfg)
    check_auto_hierarchy(cfg)


def check_scenario(cfg: DictConfig) -> None:
    """The settings that must agree with the scenario and each other: the class-incremental
    student is continual, the ground-truth strategy is that scenario's diagnostic (in the
    levels scenario the student on ground truth is the ceiling), and re-assignment inside a
    level needs CSL's E-step and a loader it may replace."""
    scenario = OmegaConf.select(cfg, "scenario.name", default="levels")
    strategy = OmegaConf.select(cfg, "strategy.name", default="csl")
    if scenario == "class_incremental" and OmegaConf.select(cfg, "strategy.reinit_student"):
        raise ConfigError(
            "strategy.reinit_student=true restarts the student at every experience, but with "
            "scenario=class_incremental the student is continual: it must keep what earlier "
            "arrivals taught it; drop the setting (the scenario sets false)"
        )
    if strategy == "ground_truth" and scenario != "class_incremental":
        raise ConfigError(
            "strategy=ground_truth trains the class-incremental stream on true labels: add "
            "scenario=class_incremental; in the levels scenario the student on ground truth is "
            "the ceiling, reported as ceiling_accuracy"
        )
    if OmegaConf.select(cfg, "strategy.reassign_every") is not None:
        if strategy != "csl":
            raise ConfigError(
                f"strategy.reassign_every repeats CSL's E-step, but strategy={strategy} has none "
                "(its labels do not depend on the student); drop strategy.reassign_every"
            )
        if "replay" in (cfg.get("plugins") or {}):
            raise ConfigError(
                "strategy.reassign_every replaces a level's training data mid-level, but the "
                "replay plugin builds its loader once per level and would drop the new data; "
                "use plugins=[ewc] or [lwf], or drop strategy.reassign_every"
            )
    if strategy == "ground_truth" and OmegaConf.select(cfg, "strategy.labels") != "hard":
        raise ConfigError(
            "strategy=ground_truth trains on the true classes, which are hard labels; drop "
            "strategy.labels=soft"
        )


def check_auto_hierarchy(cfg: DictConfig) -> None:
    """`benchmark.hierarchy=auto` with what it needs: `auto_levels` (set only with auto), and
    a benchmark whose teachers this project trains on class subdomains."""
    name = OmegaConf.select(cfg, "benchmark.name")
    levels = OmegaConf.select(cfg, LEVELS_KEY)
    if OmegaConf.select(cfg, "benchmark.hierarchy") != AUTO:
        if levels is not None:
            raise ConfigError(
                f"{LEVELS_KEY}={list(levels)} sets the levels of an automatic hierarchy, but "
                f"benchmark.hierarchy is not {AUTO}; add benchmark.hierarchy={AUTO} or drop "
                f"{LEVELS_KEY}"
            )
        return
    why = {
        "features": "the features file gives the teachers, and with them the hierarchy",
        "domainnet": "its subdomains are input domains (benchmark.domain_groups), not classes",
    }
    if name in why:
        raise ConfigError(
            f"benchmark.hierarchy={AUTO} groups the classes a trained generalist confuses, "
            f"which benchmark={name} cannot do: {why[name]}; drop benchmark.hierarchy={AUTO}"
        )
    if OmegaConf.select(cfg, "teacher.heads"):
        raise ConfigError(
            f"benchmark.hierarchy={AUTO} chooses the subdomains before the teachers train, but "
            "teacher.heads gives teachers trained elsewhere for a fixed hierarchy; drop one"
        )
    if levels is None:
        raise ConfigError(
            f"benchmark.hierarchy={AUTO} needs {LEVELS_KEY}, the number of subdomains of each "
            f"level after the generalist, e.g. {LEVELS_KEY}=[2,5]"
        )
    check_sizes(list(levels), num_classes=None)


def check_plugin_settings(plugins: Mapping[str, Mapping[str, Any]] | None) -> None:
    """The `plugins` group: known plugins, known knobs, each knob within its rule."""
    plugins = plugins or {}
    for name, knobs in plugins.items():
        if name not in PLUGIN_SETTINGS:
            raise ConfigError(
                f"unknown plugin {name!r} in plugins; choose from {sorted(PLUGIN_SETTINGS)}"
            )
        rules = PLUGIN_SETTINGS[name]
        if not isinstance(knobs, dict):
            raise ConfigError(f"plugins.{name} must map settings to values, got {knobs!r}")
        for knob, value in knobs.items():
            if knob not in rules:
                raise ConfigError(
                    f"plugins.{name}.{knob} is not a setting of the {name} plugin; "
                    f"its settings are {sorted(rules)}"
                )
            _check(f"plugins.{name}.{knob}", value, rules[knob])
    ewc = plugins.get("ewc")
    if ewc is not None:
        mode, decay = ewc.get("mode", "separate"), ewc.get("decay_factor")
        if (mode == "online") != (decay is not None):
            raise ConfigError(
                "plugins.ewc.decay_factor must be a number in [0, 1] with plugins.ewc.mode=online "
                f"and null with mode=separate, got mode={mode} and decay_factor={decay}"
            )


def check_against_data(
    cfg: DictConfig, *, pool_size: int, num_levels: int, by_domain: bool = False
) -> None:
    """The settings that depend on the data, checked once the features are built and before
    any training: one training batch fits in the pool (every level trains on at least one), a
    per-level list of LwF weights has one for every level, and the assignment rule suits the
    subdomains (classes, or input domains)."""
    if fault := cs.assignment_fault(cfg.strategy.assignment, by_domain=by_domain):
        raise ConfigError(fault)
    batch_size = cfg.strategy.batch_size
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
    alpha = OmegaConf.select(cfg, "plugins.lwf.alpha")
    if isinstance(alpha, ListConfig) and len(alpha) < num_levels:
        raise ConfigError(
            f"plugins.lwf.alpha lists {len(alpha)} weights, but the hierarchy has {num_levels} "
            f"levels; give one per level, or a single number"
        )


def check_arrivals_against_data(
    cfg: DictConfig, *, arrival_sizes: Mapping[str, int], num_experiences: int
) -> None:
    """The class-incremental settings that depend on the data, checked before any training:
    one training batch fits in every arrival's pool samples (its first phase trains on all of
    them), and a list of LwF weights has one for each of the stream's `num_experiences`."""
    batch_size = cfg.strategy.batch_size
    small = {name: size for name, size in arrival_sizes.items() if size < batch_size}
    if small:
        shown = ", ".join(f"{name} ({size})" for name, size in small.items())
        raise ConfigError(
            f"strategy.batch_size={batch_size} is larger than the pool samples of arrival "
            f"{shown}, so not one training batch fits; use strategy.batch_size="
            f"{min(small.values())} or less"
        )
    alpha = OmegaConf.select(cfg, "plugins.lwf.alpha")
    if isinstance(alpha, ListConfig) and len(alpha) < num_experiences:
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


def _plain(value: Any) -> Any:
    """OmegaConf containers as plain dicts and lists (resolved)."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _check(key: str, value: Any, rule: Rule) -> None:
    if not rule.accepts(value):
        raise ConfigError(f"{key} must be {rule.requirement}, got {value!r}")
