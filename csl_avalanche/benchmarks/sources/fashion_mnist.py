"""`benchmark=fashion_mnist`: Zalando's Fashion-MNIST (70,000 28x28 grey images, 10 classes).

The four IDX files (plain or gzip) are read from `data.root`, from torchvision's
`<data.root>/FashionMNIST/raw` layout, or, without `data.root`, from
/usr/share/datasets/fashion-mnist (Debian's `dataset-fashion-mnist`). `data.download=true`
fetches them with torchvision where a network exists.

All 70,000 images (the train and t10k files together) are split, stratified and seeded, into
four disjoint parts: backbone pretraining, teacher training, transfer pool and test. The strong
student is a small CNN pretrained with labels on the pretraining part only -- an offline
stand-in for a foundation model trained on other data; the weak teachers are linear models on
average-pooled pixels, each trained for the same number of steps on its own classes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from pathlib import Path

import torch

from csl_avalanche.benchmarks.features import FeatureSet
from csl_avalanche.benchmarks.idx import IdxFormatError, read_idx
from csl_avalanche.benchmarks.pipeline import build_feature_set, split_tensors
from csl_avalanche.benchmarks.registry import SourceContext, register_source
from csl_avalanche.benchmarks.settings import Budget, FashionMnistSettings
from csl_avalanche.core.errors import ConfigError
from csl_avalanche.models.factories import pooled_linear_teacher, small_cnn_backbone

log = logging.getLogger(__name__)

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
NUM_CLASSES = len(CLASSES)


class DatasetNotFoundError(ConfigError, FileNotFoundError):
    """The dataset is not where it was looked for; the message says how to get it."""


def candidate_dirs(root: str | os.PathLike[str] | None) -> list[Path]:
    """Where the IDX files are looked for, in order."""
    if root is None:
        return [DEBIAN_DIR]
    root = Path(root).expanduser()
    return [root, root / "FashionMNIST" / "raw"]


def _find(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_files(root: str | os.PathLike[str] | None) -> dict[str, Path]:
    """The four IDX files from the first candidate folder that holds all of them."""
    dirs = candidate_dirs(root)
    partial: list[str] = []
    for directory in dirs:
        found = {key: _find(directory, name) for key, name in FILES.items()}
        if all(found.values()):
            return found  # type: ignore[return-value]
        missing = [FILES[key] for key, path in found.items() if path is None]
        if len(missing) < len(FILES):
            partial.append(f"{directory} lacks {', '.join(missing)}")
    where = " or ".join(str(d) for d in dirs)
    detail = f" ({'; '.join(partial)})" if partial else ""
    raise DatasetNotFoundError(
        f"Fashion-MNIST not found: expected the four IDX files {', '.join(FILES.values())} "
        f"(each plain or .gz) in {where}{detail}. To get them: `apt-get install "
        f"dataset-fashion-mnist` (Debian/Ubuntu; files go to {DEBIAN_DIR}, used when "
        "data.root is unset), or add data.download=true to fetch them with torchvision into "
        "data.root (or <cache_dir>/datasets without one; network needed), or point "
        "data.root=DIR at a folder holding the files (directly or in torchvision's "
        "DIR/FashionMNIST/raw layout)."
    )


def download(root: str | os.PathLike[str]) -> None:
    """Fetch the files with torchvision into `<root>/FashionMNIST/raw` (needs a network)."""
    from torchvision.datasets import FashionMNIST

    log.info("downloading Fashion-MNIST into %s", root)
    try:
        FashionMNIST(str(Path(root).expanduser()), train=True, download=True)
        FashionMNIST(str(Path(root).expanduser()), train=False, download=True)
    except Exception as err:  # no network, a proxy, a full disk ...
        raise DatasetNotFoundError(
            f"data.download=true could not fetch Fashion-MNIST into {root} "
            f"({type(err).__name__}: {err}). Without a network, install it with `apt-get "
            "install dataset-fashion-mnist` or copy the four IDX files into data.root."
        ) from None


def load_fashion_mnist(
    root: str | os.PathLike[str] | None = None, *, download_to: str | os.PathLike[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """All images (train, then t10k) as [N, H*W] floats in [0, 1] and labels as [N] longs.

    `download_to`: where to fetch the files with torchvision if they are not found.
    """
    try:
        files = find_files(root)
    except DatasetNotFoundError:
        if download_to is None:
            raise
        try:
            files = find_files(download_to)  # fetched by an earlier run
        except DatasetNotFoundError:
            download(download_to)
            files = find_files(download_to)
    images, labels = [], []
    for split in ("train", "test"):
        x = read_idx(files[f"{split}_images"])
        y = read_idx(files[f"{split}_labels"])
        _check_pair(files[f"{split}_images"], x, files[f"{split}_labels"], y)
        images.append(x.reshape(len(x), -1).float() / 255.0)
        labels.append(y.long())
    if images[0].shape[1] != images[1].shape[1]:
        raise IdxFormatError(
            f"{files['train_images']} and {files['test_images']} hold images of different "
            f"sizes ({images[0].shape[1]} vs {images[1].shape[1]} pixels)"
        )
    return torch.cat(images), torch.cat(labels)


def _check_pair(image_path: Path, x: torch.Tensor, label_path: Path, y: torch.Tensor) -> None:
    if x.dim() != 3 or x.dtype != torch.uint8:
        raise IdxFormatError(
            f"{image_path} should hold unsigned-byte images [N, H, W], got {x.dtype} "
            f"{list(x.shape)}"
        )
    if x.shape[1] != x.shape[2]:
        raise IdxFormatError(f"{image_path} holds non-square images {list(x.shape[1:])}")
    if y.dim() != 1 or y.dtype != torch.uint8:
        raise IdxFormatError(
            f"{label_path} should hold unsigned-byte labels [N], got {y.dtype} {list(y.shape)}"
        )
    if len(x) != len(y):
        raise IdxFormatError(f"{image_path} has {len(x)} images but {label_path} {len(y)} labels")
    if len(y) and int(y.max()) >= NUM_CLASSES:
        raise IdxFormatError(
            f"{label_path} holds label {int(y.max())}; Fashion-MNIST labels are 0..9"
        )


@register_source("fashion_mnist")
def fashion_mnist_features(settings: FashionMnistSettings, context: SourceContext) -> FeatureSet:
    data_cfg = settings.data
    download_to = None
    if data_cfg.download:
        download_to = data_cfg.root or Path(context.cache_dir).expanduser() / "datasets"
    x, y = load_fashion_mnist(data_cfg.root, download_to=download_to)
    side = int(round(x.shape[1] ** 0.5))
    data = split_tensors(x, y, settings.benchmark.splits, context.seed)
    hierarchy = settings.benchmark.chosen_hierarchy(
        NUM_CLASSES, lambda: settings.benchmark.given_hierarchy(NUM_CLASSES, CLASSES)
    )
    student, teacher = settings.student, settings.teacher
    return build_feature_set(
        data,
        hierarchy,
        make_backbone=lambda: small_cnn_backbone(side, student.channels, student.embed_dim),
        backbone_budget=student.pretrain,
        make_teacher=lambda: pooled_linear_teacher(side, teacher.pool, NUM_CLASSES),
        teacher_budget=Budget(teacher.steps, teacher.batch_size, teacher.lr),
        backbone_config={"arch": "small_cnn", "side": side, **asdict(student)},
        teacher_config={"arch": "pooled_linear", "side": side, **asdict(teacher)},
        cache=context.cache,
        seed=context.seed,
        progress=context.progress,
        class_names=CLASSES,
    )
