"""`benchmark=wordnet`: WordNet's noun and verb synsets, each labelled with its supersense.

Read from Debian's `wordnet-base` (/usr/share/wordnet) or `data.root`
(`csl_avalanche.benchmarks.wordnet`). A text is "lemma: gloss"; a class is a supersense, a
lexicographer file of nouns or verbs (40 in WordNet 3.0: noun.Tops, which holds the tops
themselves, is none), capped at `benchmark.max_per_class` texts. The hierarchy is WordNet's
own: one generalist, then verbs | concrete nouns | abstract nouns, then the groups of
`benchmark.finer_groups`; or `benchmark.hierarchy` (groups of supersense names, or auto).
"""

from __future__ import annotations

from csl_avalanche.benchmarks.features import FeatureSet
from csl_avalanche.benchmarks.registry import SourceContext, register_source
from csl_avalanche.benchmarks.settings import WordNetBenchmark, WordNetSettings
from csl_avalanche.benchmarks.text_features import build_text_feature_set
from csl_avalanche.benchmarks.texts import capped, labelled_texts
from csl_avalanche.benchmarks.wordnet import (
    GROUPS,
    find_wordnet,
    read_synsets,
    supersense_groups,
)
from csl_avalanche.core.errors import ConfigError
from csl_avalanche.core.hierarchy import Hierarchy, HierarchyError


@register_source("wordnet")
def wordnet_features(settings: WordNetSettings, context: SourceContext) -> FeatureSet:
    synsets = read_synsets(find_wordnet(settings.data.root))
    groups = supersense_groups(synsets)
    kept = [synset for synset in synsets if synset.lexname in groups]
    corpus = labelled_texts([s.text for s in kept], [s.lexname for s in kept])
    corpus = capped(corpus, settings.benchmark.max_per_class)
    names = list(corpus.class_names)
    hierarchy = settings.benchmark.chosen_hierarchy(
        len(names), lambda: supersense_hierarchy(names, groups, settings.benchmark)
    )
    return build_text_feature_set(corpus, hierarchy, settings, context)


def supersense_hierarchy(
    names: list[str], groups: dict[str, str], benchmark: WordNetBenchmark
) -> Hierarchy:
    """`benchmark.hierarchy` (levels of groups of supersense names), or WordNet's own: all, then
    verbs | concrete nouns | abstract nouns (`groups`), then `benchmark.finer_groups`."""
    if benchmark.hierarchy:
        key, levels = "benchmark.hierarchy", benchmark.hierarchy
    else:
        by_group = [[name for name in names if groups[name] == group] for group in GROUPS]
        key = "benchmark.finer_groups"
        levels = [[names], [group for group in by_group if group], *benchmark.finer_groups]
    try:
        return Hierarchy.from_groups(levels, len(names), names)
    except HierarchyError as err:
        raise ConfigError(f"{key}: {err}") from None
