"""What a valid setting is, said once beside the field it checks.

A typed settings dataclass declares each field with `setting(rule, help)`: the rule says
what a valid value is (in the words an error message uses: `strategy.epochs must be a whole
number >= 1, got 'abc'`) and the help is the one-line description `--help` shows. The
experiments floor walks a composed config against these dataclasses in one pass; the
dataclasses themselves know nothing of Hydra.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from csl_avalanche.core.errors import ConfigError


@dataclass(frozen=True)
class Rule:
    """`requirement` says what a valid value is, as the error message words it."""

    requirement: str
    accepts: Callable[[Any], bool]

    def check(self, key: str, value: Any) -> None:
        if not self.accepts(value):
            raise ConfigError(f"{key} must be {self.requirement}, got {value!r}")


def setting(rule: Rule, help: str, **field_kwargs: Any) -> Any:
    """A dataclass field with its rule and one-line description (`default=` where the
    shipped configs may leave the key out)."""
    return dataclasses.field(metadata={"rule": rule, "help": help}, **field_kwargs)


def section(help: str, **field_kwargs: Any) -> Any:
    """A dataclass field that holds a nested settings dataclass, with its description."""
    return dataclasses.field(metadata={"help": help}, **field_kwargs)


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A finite int or float (a bool is not a number here; an int of any size is finite, and
    too large for `math.isfinite`)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


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


def _are_fractions(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and bool(value)
        and all(_is_number(f) and f > 0 for f in value.values())
        and sum(value.values()) <= 1 + 1e-9
    )


BOOLEAN = Rule("true or false", lambda v: isinstance(v, bool))
PATH = Rule("a folder path", lambda v: isinstance(v, str) and v.strip() != "")
FILE = optional(Rule("a file path", lambda v: isinstance(v, str) and v.strip() != ""))
NAME = Rule("a name", lambda v: isinstance(v, str) and v.strip() != "")
POSITIVE = number("> 0", lambda v: v > 0)
NON_NEGATIVE = number(">= 0", lambda v: v >= 0)
FRACTION = number("in (0, 1]", lambda v: 0 < v <= 1)
UNIT = number("in [0, 1]", lambda v: 0 <= v <= 1)
# Every model here trains with Adam, which moves each weight by up to about lr per step: a rate
# above 1 is a mistyped exponent (1e4 for 1e-4), and above ~3e37 overflows inside torch.
LEARNING_RATE = FRACTION
FRACTIONS = Rule(
    "a mapping of part -> fraction of every class, each > 0 and summing to at most 1",
    _are_fractions,
)
GROUPS = Rule(
    "a list of levels, each a list of groups of names",
    lambda v: isinstance(v, list) and all(isinstance(level, list) for level in v),
)
NAMES = optional(
    Rule("a list of names", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v))
)


def build_settings(
    cls: type,
    value: Any,
    prefix: str = "",
    sections: Mapping[str, Callable[[Any], Any]] | None = None,
) -> Any:
    """An instance of the settings dataclass `cls` from the plain mapping `value` (keys named
    `prefix.key` in errors): an unknown key, a missing one or a value its rule refuses raises
    ConfigError. A field holding a settings dataclass is built the same way, unless `sections`
    gives its builder; then the instance's own `check` (cross-field rules) runs, if it has one."""
    if not isinstance(value, dict):
        raise ConfigError(f"{prefix or 'the config'} must map settings to values, got {value!r}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in value:
        if key not in known:
            raise ConfigError(
                f"{_dotted(prefix, key)} is not a setting; the settings"
                f"{f' of {prefix}' if prefix else ''} are {', '.join(known)}"
            )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, field in known.items():
        key = _dotted(prefix, name)
        if name not in value:
            if field.default is dataclasses.MISSING:
                raise ConfigError(f"{key} is missing; add it to the config")
        elif sections and name in sections:
            kwargs[name] = sections[name](value[name])
        elif "rule" in field.metadata:
            field.metadata["rule"].check(key, value[name])
            kwargs[name] = value[name]
        else:
            kwargs[name] = build_settings(hints[name], value[name], key)
    settings = cls(**kwargs)
    if hasattr(settings, "check"):
        settings.check()
    return settings


def _dotted(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
