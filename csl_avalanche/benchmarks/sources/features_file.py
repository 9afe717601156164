"""`benchmark=features data.path=FILE`: precomputed embeddings and teacher outputs."""

from __future__ import annotations

from omegaconf import DictConfig

from csl_avalanche.benchmarks.features import FeatureSet, FeaturesFileError, load_features
from csl_avalanche.benchmarks.registry import register_source
from csl_avalanche.storage.cache import TensorCache


@register_source("features")
def features_file(cfg: DictConfig, cache: TensorCache, seed: int) -> FeatureSet:
    if not cfg.data.get("path"):
        raise FeaturesFileError("benchmark=features needs data.path=FILE (a torch.save'd dict)")
    return load_features(cfg.data.path)
