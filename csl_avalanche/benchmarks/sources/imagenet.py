"""`benchmark=imagenet_w2s`: the paper's ImageNet weak-to-strong setting.

`data.root` holds `train/<wnid>/` and `val/<wnid>/` (what torchvision's ImageNet class
produces). Teachers train on (a fraction of) the train split; the 50,000 validation images are
split by seed into the transfer pool and the test set (40,000 / 10,000 with the default
fractions). Classes are the sorted wnids, so contiguous class blocks are contiguous indices.
"""

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
from csl_avalanche.benchmarks.settings import ImageNetSettings
from csl_avalanche.benchmarks.sources.imagefolder import class_hierarchy

WHAT = "benchmark=imagenet_w2s"
LAYOUT = "train/<wnid>/<image> and val/<wnid>/<image>"
HOW_TO_GET = (
    "Download ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar and ILSVRC2012_devkit_t12.tar.gz "
    "from https://image-net.org into data.root and run torchvision.datasets.ImageNet(root, "
    "split='train') and split='val' once: it unpacks them into this layout."
)


@register_source("imagenet_w2s")
def imagenet_features(settings: ImageNetSettings, context: SourceContext) -> FeatureSet:
    root = require_root(settings.data.root, what=WHAT, layout=LAYOUT, how_to_get=HOW_TO_GET)
    heads_given = bool(settings.teacher.heads)
    teachers, classes = None, None
    if not heads_given:  # teacher heads from a file need no train split
        classes, paths, labels = scan_class_folders(
            root / "train", what=WHAT, how_to_get=HOW_TO_GET
        )
        teachers = ImageFiles(root / "train", tuple(paths), torch.tensor(labels))
        fraction = float(settings.benchmark.teacher_fraction)
        if fraction < 1.0:
            teachers = split_images(
                teachers,
                {"teachers": fraction},
                context.seed,
                what="benchmark.teacher_fraction",
                parts=("teachers",),
            )["teachers"]
    classes, paths, labels = scan_class_folders(
        root / "val", what=WHAT, how_to_get=HOW_TO_GET, classes=classes
    )
    val = ImageFiles(root / "val", tuple(paths), torch.tensor(labels))
    parts = split_images(
        val,
        settings.benchmark.val_splits,
        context.seed,
        what="benchmark.val_splits",
        parts=("pool", "test"),
    )
    return build_image_feature_set(
        ImageSplits(teachers=teachers, pool=parts["pool"], test=parts["test"]),
        class_hierarchy(settings.benchmark, classes),
        len(classes),
        settings,
        context,
        class_names=classes,
    )
