"""`benchmark=features data.path=FILE`: precomputed embeddings and teacher outputs."""

from __future__ import annotations

from csl_avalanche.benchmarks.features import FeatureSet, FeaturesFileError, load_features
from csl_avalanche.benchmarks.registry import SourceContext, register_source
from csl_avalanche.benchmarks.settings import FeaturesSettings


@register_source("features")
def features_file(settings: FeaturesSettings, context: SourceContext) -> FeatureSet:
    if not settings.data.path:
        raise FeaturesFileError("benchmark=features needs data.path=FILE (a torch.save'd dict)")
    return load_features(settings.data.path)
