"""Benchmark sources by name, like timm's model registry: `benchmark.name` -> a FeatureSet.

A source is a function `(settings, context) -> FeatureSet`, registered with
`@register_source("name")`; `benchmarks.settings.SOURCE_SETTINGS[name]` is the class of the
settings it takes (which config sections it reads and what each value may be), so the run's
settings are checked before any data is read. `csl_avalanche.benchmarks.sources` imports the
built-in ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from csl_avalanche.benchmarks.features import FeatureSet
from csl_avalanche.benchmarks.settings import SOURCE_SETTINGS, SourceSettings, source_settings
from csl_avalanche.core.errors import ConfigError
from csl_avalanche.storage.cache import TensorCache


@dataclass(frozen=True)
class SourceContext:
    """What a source needs besides its settings: where to cache, the seed, the device to
    extract on (`auto`, `cpu`, `cuda`) and whether to draw progress bars."""

    cache: TensorCache
    seed: int
    device: str = "auto"
    progress: bool = True
    cache_dir: Path | None = None  # the cache's root folder (a download may land below it)


Source = Callable[[Any, SourceContext], FeatureSet]


_SOURCES: dict[str, Source] = {}


def register_source(name: str) -> Callable[[Source], Source]:
    def register(fn: Source) -> Source:
        if name in _SOURCES:
            raise ValueError(f"benchmark source {name!r} is registered twice")
        if name not in SOURCE_SETTINGS:
            raise ValueError(f"benchmark source {name!r} has no settings class in SOURCE_SETTINGS")
        _SOURCES[name] = fn
        return fn

    return register


def build_features(settings: SourceSettings, context: SourceContext) -> FeatureSet:
    """Run the source named by `settings.benchmark.name`."""
    name = settings.benchmark.name
    source_settings(name)  # a ConfigError for an unknown name
    if name not in _SOURCES:
        raise ConfigError(f"benchmark {name!r} has no source registered; import its module")
    return _SOURCES[name](settings, context)
