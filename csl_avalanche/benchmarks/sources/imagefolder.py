"""`benchmark=imagefolder`: any `<root>/<class>/<image>` tree, split by seed into teacher
training, transfer pool and test images; the hierarchy is given as class groups in the config,
or contiguous blocks of the (sorted) class folders."""

from __future__ import annotations

import torch

from csl_avalanche.benchmarks.features import FeatureSet
from csl_avalanche.benchmarks.image_features import ImageSplits, build_image_feature_set
from csl_avalanche.benchmarks.images import (
    ImageFiles,
    require_root,
    scan_class_folders,
    split_images,
)
from csl_avalanche.benchmarks.registry import SourceContext, register_source
from csl_avalanche.benchmarks.settings import BenchmarkSettings, ImageFolderSettings
from csl_avalanche.core.clustering import AutoHierarchy
from csl_avalanche.core.errors import ConfigError
from csl_avalanche.core.hierarchy import Hierarchy, HierarchyError

LAYOUT = "<root>/<class>/<image> (one folder of images per class)"
HOW_TO_GET = (
    "Any tree that torchvision.datasets.ImageFolder reads works; class folders are numbered in "
    "sorted order."
)


@register_source("imagefolder")
def imagefolder_features(settings: ImageFolderSettings, context: SourceContext) -> FeatureSet:
    what = "benchmark=imagefolder"
    root = require_root(settings.data.root, what=what, layout=LAYOUT, how_to_get=HOW_TO_GET)
    classes, paths, labels = scan_class_folders(root, what=what, how_to_get=HOW_TO_GET)
    images = ImageFiles(root, tuple(paths), torch.tensor(labels))
    parts = split_images(
        images,
        settings.benchmark.splits,
        context.seed,
        what="benchmark.splits",
        parts=("teachers", "pool", "test"),
    )
    hierarchy = class_hierarchy(settings.benchmark, classes)
    return build_image_feature_set(
        ImageSplits(**parts), hierarchy, len(classes), settings, context, class_names=classes
    )


def class_hierarchy(benchmark: BenchmarkSettings, classes: list[str]) -> Hierarchy | AutoHierarchy:
    """`benchmark.hierarchy` (levels of groups of class names or indices, or auto), or else
    `benchmark.teachers_per_level` contiguous blocks of classes."""
    return benchmark.chosen_hierarchy(len(classes), lambda: _given(benchmark, classes))


def _given(benchmark: BenchmarkSettings, classes: list[str]) -> Hierarchy:
    if benchmark.hierarchy:
        return benchmark.given_hierarchy(len(classes), classes)
    try:
        return Hierarchy.contiguous_blocks(len(classes), list(benchmark.teachers_per_level))
    except HierarchyError as err:
        raise ConfigError(f"benchmark.teachers_per_level: {err}") from None
