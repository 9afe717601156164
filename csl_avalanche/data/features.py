"""FeatureSet: everything CSL needs, as tensors; also the on-disk features-file format.

Every benchmark ends here: student embeddings of the transfer pool and the test split, ground
truth (for the ceiling and diagnostics only), the frozen teachers' class probabilities on both,
and the hierarchy. Users with embeddings and teacher outputs computed elsewhere save the same
fields with `torch.save` and run `benchmark=features data.path=FILE`.

With a fine-tuned student (`student.finetune=true` on the image benchmarks) `train_x` and
`test_x` hold the student's preprocessed images instead, [N, 3, H, W] (uint8, or floating point
in [0, 1]): the student network normalises and augments them itself. Features files always
hold embeddings.

Subdomains are usually class sets. When they are input domains instead (DomainNet: a sketch
specialist knows every class, but only sketches), the optional `train_domains`/`test_domains`
give each sample's domain and `subdomains` lists domain indices: the hierarchy then partitions
domains, and the test stream is split by domain.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from csl_avalanche.errors import ConfigError
from csl_avalanche.hierarchy import Hierarchy, HierarchyError


class FeaturesFileError(ConfigError):
    """A features file that is missing, incomplete, or whose fields disagree."""


@dataclass(frozen=True)
class FeatureSet:
    train_x: torch.Tensor  # [N, D] student inputs of the pool (or images [N, 3, H, W])
    train_y: torch.Tensor  # [N] ground truth (ceiling and diagnostics only)
    test_x: torch.Tensor  # [M, D] (or [M, 3, H, W])
    test_y: torch.Tensor  # [M]
    teacher_train_probs: torch.Tensor  # [T, N, C]
    teacher_test_probs: torch.Tensor  # [T, M, C]
    levels: list[list[int]]  # teacher indices per level; level 0 is one generalist
    subdomains: list[list[int]]  # classes (or domains) of each teacher
    train_domains: torch.Tensor | None = None  # [N] domain of each pool sample, or None
    test_domains: torch.Tensor | None = None  # [M]

    @property
    def num_classes(self) -> int:
        return self.teacher_train_probs.shape[2]

    @property
    def by_domain(self) -> bool:
        """True when subdomains are input domains rather than class sets."""
        return self.train_domains is not None

    @property
    def num_units(self) -> int:
        """How many things the subdomains partition: classes, or domains."""
        if not self.by_domain:
            return self.num_classes
        return 1 + max((max(sub) for sub in self.subdomains if sub), default=-1)

    def units(self, split: str) -> torch.Tensor:
        """Each sample's subdomain unit ("train": pool, "test"): its domain, or its class."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        domains = self.train_domains if split == "train" else self.test_domains
        return domains if self.by_domain else getattr(self, f"{split}_y")

    @property
    def hierarchy(self) -> Hierarchy:
        """Levels of class sets, or of domain sets when `by_domain`."""
        return Hierarchy.from_teacher_lists(self.levels, self.subdomains, self.num_units)

    @property
    def holds_images(self) -> bool:
        """True when the student inputs are images [N, 3, H, W] (a fine-tuned student)."""
        return self.train_x.dim() == 4

    def validate(self, *, images: bool = True) -> FeatureSet:
        """Check every shape, dtype and index; raise FeaturesFileError naming what disagrees.

        `images=False` (features files) requires embeddings [N, D]; otherwise the student
        inputs may also be images [N, 3, H, W], uint8 or floating point.
        """
        if images and self.holds_images:
            for name in ("train_x", "test_x"):
                _check_images(name, getattr(self, name))
        else:
            _check_tensor("train_x", self.train_x, dims=2, floating=True, images=images)
            _check_tensor("test_x", self.test_x, dims=2, floating=True)
        _check_tensor("train_y", self.train_y, dims=1, floating=False)
        _check_tensor("test_y", self.test_y, dims=1, floating=False)
        _check_tensor("teacher_train_probs", self.teacher_train_probs, dims=3, floating=True)
        _check_tensor("teacher_test_probs", self.teacher_test_probs, dims=3, floating=True)
        n, *sample = self.train_x.shape
        d = f"D={sample[0]}" if len(sample) == 1 else f"images of {sample}"
        m = self.test_x.shape[0]
        t, _, c = self.teacher_train_probs.shape
        expect = {
            "train_y": (self.train_y, (n,)),
            "test_x": (self.test_x, (m, *sample)),
            "test_y": (self.test_y, (m,)),
            "teacher_train_probs": (self.teacher_train_probs, (t, n, c)),
            "teacher_test_probs": (self.teacher_test_probs, (t, m, c)),
        }
        for name, (tensor, shape) in expect.items():
            if tuple(tensor.shape) != shape:
                raise FeaturesFileError(
                    f"{name} has shape {list(tensor.shape)}, expected {list(shape)} "
                    f"(N={n} pool samples, M={m} test samples, {d}, T={t} teachers, C={c})"
                )
        for name, labels in (("train_y", self.train_y), ("test_y", self.test_y)):
            if len(labels) and (labels.min() < 0 or labels.max() >= c):
                raise FeaturesFileError(
                    f"{name} holds labels in [{int(labels.min())}, {int(labels.max())}], "
                    f"outside 0..{c - 1} (C={c} from the teacher probabilities)"
                )
        for name in ("teacher_train_probs", "teacher_test_probs"):
            _check_probabilities(name, getattr(self, name))
        self._validate_domains(n, m)
        if len(self.subdomains) != t:
            raise FeaturesFileError(
                f"subdomains lists {len(self.subdomains)} teachers, but the teacher "
                f"probabilities hold T={t}"
            )
        try:
            self.hierarchy  # noqa: B018 - validates levels and subdomains
        except HierarchyError as err:
            raise FeaturesFileError(f"levels/subdomains: {err}") from None
        return self

    def _validate_domains(self, n: int, m: int) -> None:
        if (self.train_domains is None) != (self.test_domains is None):
            raise FeaturesFileError("train_domains and test_domains must be given together")
        if not self.by_domain:
            return
        for name, domains, size in (
            ("train_domains", self.train_domains, n),
            ("test_domains", self.test_domains, m),
        ):
            _check_tensor(name, domains, dims=1, floating=False)
            if len(domains) != size:
                raise FeaturesFileError(f"{name} has {len(domains)} entries, expected {size}")
            if len(domains) and (domains.min() < 0 or domains.max() >= self.num_units):
                raise FeaturesFileError(
                    f"{name} holds domains outside 0..{self.num_units - 1}, the domains that "
                    "`subdomains` lists"
                )


OPTIONAL_FIELDS = ("train_domains", "test_domains")


def load_features(path: str | os.PathLike[str]) -> FeatureSet:
    """Read and validate a features file written with `torch.save(dict)`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FeaturesFileError(
            f"features file {path} not found; write one with torch.save(dict(train_x=..., "
            "train_y=..., test_x=..., test_y=..., teacher_train_probs=..., "
            "teacher_test_probs=..., levels=..., subdomains=...), FILE) (see the README)"
        )
    try:
        raw = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as err:
        raise FeaturesFileError(f"{path} is not a torch.save file ({err})") from None
    names = [f.name for f in fields(FeatureSet)]
    if not isinstance(raw, dict):
        raise FeaturesFileError(f"{path} holds a {type(raw).__name__}, expected a dict")
    missing = [name for name in names if name not in raw and name not in OPTIONAL_FIELDS]
    if missing:
        raise FeaturesFileError(f"{path} lacks keys {missing}; a features file needs {names}")
    try:
        levels = [[int(t) for t in lvl] for lvl in raw["levels"]]
        subdomains = [[int(c) for c in sub] for sub in raw["subdomains"]]
    except (TypeError, ValueError):
        raise FeaturesFileError(
            f"{path}: `levels` and `subdomains` must be lists of lists of integers"
        ) from None
    tensors = {name: raw.get(name) for name in names if name not in ("levels", "subdomains")}
    for name, value in tensors.items():
        if not isinstance(value, torch.Tensor) and not (name in OPTIONAL_FIELDS and value is None):
            raise FeaturesFileError(f"{path}: {name} is a {type(value).__name__}, not a tensor")
    return FeatureSet(**tensors, levels=levels, subdomains=subdomains).validate(images=False)


def save_features(features: FeatureSet, path: str | os.PathLike[str]) -> None:
    torch.save({f.name: getattr(features, f.name) for f in fields(FeatureSet)}, path)


def _check_tensor(
    name: str, tensor: torch.Tensor, *, dims: int, floating: bool, images: bool = False
) -> None:
    """`images`: say in the message that 4-D images [N, 3, H, W] would also do."""
    if tensor.dim() != dims:
        alternative = " (embeddings [N, D]), or 4 (images [N, 3, H, W])" if images else ""
        raise FeaturesFileError(
            f"{name} must have {dims} dimensions{alternative}, got {list(tensor.shape)}"
        )
    if tensor.is_floating_point() != floating:
        kind = "a floating-point" if floating else "an integer"
        raise FeaturesFileError(f"{name} must be {kind} tensor, got {tensor.dtype}")


def _check_images(name: str, tensor: torch.Tensor) -> None:
    if tensor.dim() != 4 or tensor.shape[1] != 3:
        raise FeaturesFileError(
            f"{name} must be images [N, 3, H, W] (3 colour channels), "
            f"got shape {list(tensor.shape)}"
        )
    if tensor.dtype != torch.uint8 and not tensor.is_floating_point():
        raise FeaturesFileError(
            f"{name} images must be uint8 or floating point, got {tensor.dtype}"
        )


def _check_probabilities(name: str, probs: torch.Tensor) -> None:
    if probs.numel() == 0:
        return
    sums = probs.sum(dim=2)
    if probs.min() < 0 or (sums - 1).abs().max() > 1e-3:
        worst = int((sums - 1).abs().flatten().argmax())
        teacher, sample = divmod(worst, sums.shape[1])
        raise FeaturesFileError(
            f"{name} must hold probabilities (non-negative, each row summing to 1); "
            f"teacher {teacher}, sample {sample} sums to {float(sums[teacher, sample]):.4f}. "
            "Apply softmax to logits before saving"
        )
