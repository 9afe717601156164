"""`benchmark=text_file`: a user's own labelled texts (`benchmark.text_files` reads them),
with the hierarchy given as levels of groups of label names, or `auto`."""

from __future__ import annotations

from csl_avalanche.benchmarks.features import FeatureSet
from csl_avalanche.benchmarks.registry import SourceContext, register_source
from csl_avalanche.benchmarks.settings import TextFileSettings
from csl_avalanche.benchmarks.text_features import build_text_feature_set
from csl_avalanche.benchmarks.text_files import read_labelled_texts
from csl_avalanche.benchmarks.texts import capped
from csl_avalanche.core.clustering import AUTO, LEVELS_KEY
from csl_avalanche.core.errors import ConfigError
from csl_avalanche.core.hierarchy import Hierarchy, HierarchyError


@register_source("text_file")
def text_file_features(settings: TextFileSettings, context: SourceContext) -> FeatureSet:
    benchmark, data = settings.benchmark, settings.data
    if benchmark.hierarchy is None:
        raise ConfigError(
            "benchmark=text_file needs its hierarchy: benchmark.hierarchy as levels of groups of "
            "label names, e.g. '[[[a,b,c,d]],[[a,b],[c,d]]]', or "
            f"benchmark.hierarchy={AUTO} with {LEVELS_KEY}, e.g. {LEVELS_KEY}=[2,4]"
        )
    corpus = read_labelled_texts(data.path, data.text_column, data.label_column)
    corpus = capped(corpus, benchmark.max_per_class)
    names = list(corpus.class_names)
    hierarchy = benchmark.chosen_hierarchy(len(names), lambda: _given(benchmark.hierarchy, names))
    return build_text_feature_set(corpus, hierarchy, settings, context)


def _given(levels: list, names: list[str]) -> Hierarchy:
    """Levels of groups of label names; a number in the config is the label written so (YAML
    reads `[[0, 1]]` as numbers, but labels read from a file are names)."""
    named = [[[str(member) for member in group] for group in level] for level in levels]
    try:
        return Hierarchy.from_groups(named, len(names), names)
    except HierarchyError as err:
        raise ConfigError(f"benchmark.hierarchy: {err}") from None
