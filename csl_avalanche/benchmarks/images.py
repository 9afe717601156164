"""Labelled image collections (files on disk, or decoded arrays) and folder-tree scanning.

An image collection knows how to load its i-th image and how to name its content for the cache
key without reading every pixel: files by relative path, size and modification time; arrays by
a hash of their bytes. DatasetError is the one-line error for a missing or malformed dataset.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from csl_avalanche.benchmarks.splits import checked_split
from csl_avalanche.core.errors import ConfigError, reason

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


class DatasetError(ConfigError):
    """A dataset that is missing or not in the layout its benchmark reads."""


@dataclass(frozen=True)
class ImageFiles:
    """Images stored as files under `root` (paths relative to it), with labels [N]."""

    root: Path
    paths: tuple[str, ...]
    labels: torch.Tensor
    domains: torch.Tensor | None = None  # [N] input domain per image (DomainNet), or None

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> Image.Image:
        path = self.root / self.paths[index]
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except Exception as err:  # PIL's decoders raise many types on damaged files
            raise DatasetError(
                f"cannot read image {path} ({reason(err)}); replace or delete the file"
            ) from None

    def describe_class(self, rows: torch.Tensor) -> str:
        """The folder that holds the images `rows` (of one class): 'class folder ROOT/cat'."""
        parents = [os.path.dirname(self.paths[int(i)]) for i in rows]
        return f"class folder {self.root / os.path.commonpath(parents)}"

    def identity(self) -> str:
        """A hash of every file's relative path, size and mtime: changes when any file does."""
        digest = hashlib.sha256()
        for path in self.paths:
            stat = (self.root / path).stat()
            digest.update(f"{path}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()

    def subset(self, index: torch.Tensor) -> ImageFiles:
        rows = index.tolist()
        return replace(
            self,
            paths=tuple(self.paths[i] for i in rows),
            labels=self.labels[index],
            domains=None if self.domains is None else self.domains[index],
        )


@dataclass(frozen=True)
class ImageArrays:
    """Decoded images as one uint8 array [N, H, W, 3] (or [N, H, W]), with labels [N]."""

    pixels: np.ndarray
    labels: torch.Tensor
    domains: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.pixels)

    def load(self, index: int) -> Image.Image:
        return Image.fromarray(self.pixels[index]).convert("RGB")

    def describe_class(self, rows: torch.Tensor) -> str:
        """The class of the images `rows`: 'class 17'."""
        return f"class {int(self.labels[rows[0]])}"

    def identity(self) -> str:
        digest = hashlib.sha256(f"{self.pixels.shape}{self.pixels.dtype}".encode())
        digest.update(np.ascontiguousarray(self.pixels).tobytes())
        return digest.hexdigest()

    def subset(self, index: torch.Tensor) -> ImageArrays:
        return replace(
            self,
            pixels=self.pixels[index.numpy()],
            labels=self.labels[index],
            domains=None if self.domains is None else self.domains[index],
        )


Images = ImageFiles | ImageArrays


class TransformedImages(Dataset):
    """A torch Dataset of preprocessed image tensors (no labels), for batched extraction."""

    def __init__(self, images: Images, transform: Callable[[Image.Image], torch.Tensor]):
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(self.images.load(index))


def split_images(
    images: Images, fractions: Mapping[str, float], seed: int, *, what: str, parts: Sequence[str]
) -> dict[str, Images]:
    """Seeded, disjoint `parts` with the same class (and domain) proportions in each.

    `fractions` maps each part's name to its fraction of every class; `what` names the config
    key in errors.
    """
    strata = images.labels
    if images.domains is not None:  # stratify by (domain, class)
        strata = images.domains * (int(images.labels.max()) + 1) + images.labels

    def describe(stratum: int, count: int) -> str:
        where = images.describe_class((strata == stratum).nonzero().flatten())
        return f"{where} holds {count} image{'s' * (count != 1)}"

    split = checked_split(strata, fractions, seed, what=what, parts=parts, describe=describe)
    return {name: images.subset(index) for name, index in split.items()}


def scan_class_folders(
    root: Path, *, what: str, how_to_get: str, classes: list[str] | None = None
) -> tuple[list[str], list[str], list[int]]:
    """Read `root/<class>/<image>`: (sorted class names, image paths relative to root, labels).

    `classes` fixes the class list (and so the label numbering), e.g. to make `val/` agree with
    `train/`. Errors say what `what` expected at `root` and `how_to_get` it.
    """
    layout = f"{root}/<class>/<image> (one folder per class, {', '.join(IMAGE_EXTENSIONS[:3])} ...)"
    if not root.is_dir():
        raise DatasetError(f"{what}: {root} is not a folder; expected {layout}. {how_to_get}")
    found = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not found:
        raise DatasetError(
            f"{what}: {root} holds no class folders; expected {layout}. {how_to_get}"
        )
    if classes is not None and set(found) != set(classes):
        extra, lacking = sorted(set(found) - set(classes)), sorted(set(classes) - set(found))
        raise DatasetError(
            f"{what}: the class folders of {root} differ from the expected classes "
            f"(unexpected: {extra[:5]}, missing: {lacking[:5]}). {how_to_get}"
        )
    classes = classes if classes is not None else found
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = _image_files(root / name)
        if not files:
            raise DatasetError(
                f"{what}: class folder {root / name} holds no images "
                f"({', '.join(IMAGE_EXTENSIONS)}); expected {layout}. {how_to_get}"
            )
        paths += [f"{name}/{file}" for file in files]
        labels += [label] * len(files)
    return classes, paths, labels


def _image_files(folder: Path) -> list[str]:
    """Image file names in `folder` and its subfolders (relative to it), sorted."""
    found = []
    for parent, _dirs, files in os.walk(folder):
        prefix = os.path.relpath(parent, folder)
        for file in files:
            if file.lower().endswith(IMAGE_EXTENSIONS):
                found.append(file if prefix == "." else f"{prefix}/{file}")
    return sorted(found)


def require_root(cfg_root: str | None, *, what: str, layout: str, how_to_get: str) -> Path:
    """`data.root` as a Path, or a DatasetError saying which layout to point it at."""
    if not cfg_root:
        raise DatasetError(f"{what} needs data.root=DIR holding {layout}. {how_to_get}")
    root = Path(cfg_root).expanduser()
    if not root.is_dir():
        raise DatasetError(
            f"{what}: data.root={root} is not a folder; expected {layout}. {how_to_get}"
        )
    return root
