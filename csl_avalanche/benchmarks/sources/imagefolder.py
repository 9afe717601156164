"""`benchmark=imagefolder`: any `<root>/<class>/<image>` tree, split by seed into teacher
training, transfer pool and test images; the hierarchy is given as class groups in the config,
or contiguous blocks of the (sorted) class folders."""

from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf

from csl_avalanche.benchmarks.features import FeatureSet
from csl_avalanche.benchmarks.image_features import ImageSplits, build_image_feature_set
from csl_avalanche.benchmarks.images import (
    ImageFiles,
    require_root,
    scan_class_folders,
    split_images,
)
from csl_avalanche.benchmarks.registry import register_source
from csl_avalanche.core.clustering import AutoHierarchy, configured_hierarchy
from csl_avalanche.core.errors import ConfigError
from csl_avalanche.core.hierarchy import Hierarchy, HierarchyError
from csl_avalanche.storage.cache import TensorCache

LAYOUT = "<root>/<class>/<image> (one folder of images per class)"
HOW_TO_GET = (
    "Any tree that torchvision.datasets.ImageFolder reads works; class folders are numbered in "
    "sorted order."
)


@register_source("imagefolder")
def imagefolder_features(cfg: DictConfig, cache: TensorCache, seed: int) -> FeatureSet:
    what = "benchmark=imagefolder"
    root = require_root(cfg.data.root, what=what, layout=LAYOUT, how_to_get=HOW_TO_GET)
    classes, paths, labels = scan_class_folders(root, what=what, how_to_get=HOW_TO_GET)
    images = ImageFiles(root, tuple(paths), torch.tensor(labels))
    parts = split_images(
        images,
        cfg.benchmark.splits,
        seed,
        what="benchmark.splits",
        parts=("teachers", "pool", "test"),
    )
    hierarchy = class_hierarchy(cfg.benchmark, classes)
    return build_image_feature_set(
        ImageSplits(**parts), hierarchy, len(classes), cfg, cache, seed, class_names=classes
    )


def class_hierarchy(benchmark: DictConfig, classes: list[str]) -> Hierarchy | AutoHierarchy:
    """`benchmark.hierarchy` (levels of groups of class names or indices, or auto), or else
    `benchmark.teachers_per_level` contiguous blocks of classes."""
    return configured_hierarchy(benchmark, len(classes), lambda: _given(benchmark, classes))


def _given(benchmark: DictConfig, classes: list[str]) -> Hierarchy:
    key = "benchmark.hierarchy" if benchmark.get("hierarchy") else "benchmark.teachers_per_level"
    try:
        if benchmark.get("hierarchy"):
            return Hierarchy.from_groups(OmegaConf.to_object(benchmark.hierarchy), classes)
        return Hierarchy.contiguous_blocks(len(classes), list(benchmark.teachers_per_level))
    except HierarchyError as err:
        raise ConfigError(f"{key}: {err}") from None
