"""`benchmark=cifar100`: the python-format CIFAR-100 (`cifar-100-python/{train,test,meta}`).

Subdomains come from the 20 coarse superclasses: one generalist, then groups of superclasses
(config), then the 20 superclass specialists; or, with `benchmark.hierarchy=auto`, from the fine
classes the weak generalist confuses. The official train set is split by seed into
teacher training and transfer pool images; the official test set is the test split.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from csl_avalanche.benchmarks.features import FeatureSet
from csl_avalanche.benchmarks.image_features import ImageSplits, build_image_feature_set
from csl_avalanche.benchmarks.images import DatasetError, ImageArrays, require_root, split_images
from csl_avalanche.benchmarks.registry import SourceContext, register_source
from csl_avalanche.benchmarks.settings import Cifar100Settings
from csl_avalanche.core.errors import ConfigError
from csl_avalanche.core.hierarchy import Hierarchy, HierarchyError

FOLDER = "cifar-100-python"
LAYOUT = f"{FOLDER}/{{train,test,meta}} (the python-format pickles)"
HOW_TO_GET = (
    "Get cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and unpack it "
    "into data.root (torchvision.datasets.CIFAR100(root, download=True) does the same)."
)


def cifar100_folder(root: Path) -> Path:
    """`root/cifar-100-python`, or `root` itself when it is that folder."""
    for folder in (root / FOLDER, root):
        if all((folder / name).is_file() for name in ("train", "test", "meta")):
            return folder
    raise DatasetError(
        f"benchmark=cifar100: found no {FOLDER}/train, test and meta files under {root}. "
        + HOW_TO_GET
    )


def load_split(folder: Path, name: str) -> tuple[ImageArrays, np.ndarray]:
    """One pickle as images [N, 32, 32, 3] with fine labels, plus its coarse labels."""
    raw = _unpickle(folder / name)
    try:
        pixels = np.asarray(raw["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        fine, coarse = np.asarray(raw["fine_labels"]), np.asarray(raw["coarse_labels"])
    except (KeyError, ValueError) as err:
        raise DatasetError(
            f"benchmark=cifar100: {folder / name} is not a CIFAR-100 pickle "
            f"(needs data [N, 3072] uint8, fine_labels, coarse_labels; {err!r}). " + HOW_TO_GET
        ) from None
    if not len(pixels) == len(fine) == len(coarse):
        raise DatasetError(f"benchmark=cifar100: {folder / name} has mismatched field lengths")
    images = ImageArrays(pixels.transpose(0, 2, 3, 1).copy(), torch.as_tensor(fine).long())
    return images, coarse


def superclass_hierarchy(
    fine: np.ndarray, coarse: np.ndarray, coarse_names: list[str], groups: list
) -> Hierarchy:
    """[all] + `groups` (levels of groups of superclass names) + [each superclass], with each
    superclass replaced by its fine classes."""
    fine_of = [sorted({int(f) for f in fine[coarse == s]}) for s in range(len(coarse_names))]
    levels = [[coarse_names], *groups, [[name] for name in coarse_names]]
    try:
        by_superclass = Hierarchy.from_groups(levels, len(coarse_names), coarse_names)
        return Hierarchy(
            [
                [[c for s in group for c in fine_of[s]] for group in lvl]
                for lvl in by_superclass.levels
            ],
            num_classes=100,
        )
    except HierarchyError as err:
        raise ConfigError(f"benchmark.superclass_groups: {err}") from None


@register_source("cifar100")
def cifar100_features(settings: Cifar100Settings, context: SourceContext) -> FeatureSet:
    root = require_root(
        settings.data.root, what="benchmark=cifar100", layout=LAYOUT, how_to_get=HOW_TO_GET
    )
    folder = cifar100_folder(root)
    meta = _unpickle(folder / "meta")
    coarse_names = [_text(name) for name in meta.get("coarse_label_names", [])]
    if len(coarse_names) != 20:
        raise DatasetError(
            f"benchmark=cifar100: {folder / 'meta'} lacks the 20 coarse_label_names. " + HOW_TO_GET
        )
    train, train_coarse = load_split(folder, "train")
    test, _ = load_split(folder, "test")
    parts = split_images(
        train,
        settings.benchmark.splits,
        context.seed,
        what="benchmark.splits",
        parts=("teachers", "pool"),
    )
    groups = settings.benchmark.superclass_groups or []
    hierarchy = settings.benchmark.chosen_hierarchy(
        100,
        lambda: superclass_hierarchy(train.labels.numpy(), train_coarse, coarse_names, groups),
    )
    fine_names = [_text(name) for name in meta.get("fine_label_names", [])]
    return build_image_feature_set(
        ImageSplits(teachers=parts["teachers"], pool=parts["pool"], test=test),
        hierarchy,
        100,
        settings,
        context,
        class_names=fine_names if len(fine_names) == 100 else None,
    )


def _text(value: str | bytes) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as file:
            raw = pickle.load(file, encoding="latin1")
    except Exception as err:
        raise DatasetError(
            f"benchmark=cifar100: {path} is not a readable pickle ({type(err).__name__}). "
            + HOW_TO_GET
        ) from None
    if not isinstance(raw, dict):
        raise DatasetError(f"benchmark=cifar100: {path} holds a {type(raw).__name__}, not a dict")
    return {_text(key): value for key, value in raw.items()}
