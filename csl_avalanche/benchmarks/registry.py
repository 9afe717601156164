"""Benchmark sources by name, like timm's model registry: `benchmark.name` -> a FeatureSet.

A source is a function `(cfg, cache, seed) -> FeatureSet`, registered with
`@register_source("name")`; `csl_avalanche.benchmarks.sources` imports the built-in ones.
"""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig

from csl_avalanche.benchmarks.features import FeatureSet
from csl_avalanche.core.errors import ConfigError
from csl_avalanche.storage.cache import TensorCache

Source = Callable[[DictConfig, TensorCache, int], FeatureSet]
_SOURCES: dict[str, Source] = {}


def register_source(name: str) -> Callable[[Source], Source]:
    def register(fn: Source) -> Source:
        if name in _SOURCES:
            raise ValueError(f"benchmark source {name!r} is registered twice")
        _SOURCES[name] = fn
        return fn

    return register


def available_sources() -> list[str]:
    return sorted(_SOURCES)


def build_features(cfg: DictConfig, cache: TensorCache, seed: int) -> FeatureSet:
    """Run the source named by `cfg.benchmark.name`."""
    name = cfg.benchmark.name
    if name not in _SOURCES:
        raise ConfigError(f"unknown benchmark {name!r}; available: {available_sources()}")
    return _SOURCES[name](cfg, cache, seed)
