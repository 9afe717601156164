"""`benchmark=features data.path=FILE`: precomputed embeddings and teacher outputs."""

from __future__ import annotations

from omegaconf import DictConfig

from csl_avalanche.cache import TensorCache
from csl_avalanche.data.features import FeatureSet, FeaturesFileError, load_features
from csl_avalanche.data.registry import register_source


@register_source("features")
def features_file(cfg: DictConfig, cache: TensorCache, seed: int) -> FeatureSet:
    if not cfg.data.get("path"):
        raise FeaturesFileError("benchmark=features needs data.path=FILE (a torch.save'd dict)")
    return load_features(cfg.data.path)
