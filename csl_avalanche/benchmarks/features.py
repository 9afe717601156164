"""FeatureSet: everything CSL needs, as tensors; also the on-disk features-file format.

Every benchmark ends here: student embeddings of the transfer pool and the test split, ground
truth (for the ceiling and diagnostics only), the frozen teachers' class probabilities on both,
and the hierarchy. Users with embeddings and teacher outputs computed elsewhere save the same
fields with `torch.save` and run `benchmark=features data.path=FILE`. `class_names` (optional)
names the classes where the benchmark has names, for results.json's `hierarchy_names`.

With a fine-tuned student (`student.finetune=true` on the image benchmarks) `train_x` and
`test_x` hold the student's preprocessed images instead, [N, 3, H, W] (uint8, or floating point
in [0, 1]): the student network normalises and augments them itself. Features files always
hold embeddings.

Teacher outputs are the largest tensors by far ([T, N, C]: 24 GB of float16 for 800k samples,
1000 classes and 15 teachers), so they are never converted or copied whole: they stay as stored
(float16 halves them; any floating-point dtype loads), memory-mapped, and are read a chunk of
rows at a time through `FeatureSet.teacher_probs`, which computes in float32. A features file
holds probabilities (`teacher_train_probs`, `teacher_test_probs`) or, instead, logits
(`teacher_train_logits`, `teacher_test_logits`), which the same reader turns into
probabilities (a softmax per chunk). The student inputs may also be stored in any floating-point
dtype and the labels and domains in any integer dtype: they are converted on loading to float32
and int64, what the linear probe and the losses compute in (a converted tensor is a copy in
memory; float32 tensors stay memory-mapped). Every value is checked, in one chunked reading of
the file: no NaN or Inf in the embeddings or logits, teacher probabilities that are
probabilities (non-negative rows summing to 1), and logits that are not (probabilities saved
under the logits keys would go through a second softmax).

Subdomains are usually class sets. When they are input domains instead (DomainNet: a sketch
specialist knows every class, but only sketches), the optional `train_domains`/`test_domains`
give each sample's domain and `subdomains` lists domain indices: the hierarchy then partitions
domains, and the test stream is split by domain.
"""

from __future__ import annotations

import codecs
import difflib
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from csl_avalanche.benchmarks.checks import (
    SAMPLE_AXES,
    finite_fault,
    logits_fault,
    probability_fault,
)
from csl_avalanche.core.errors import ConfigError, reason
from csl_avalanche.core.hierarchy import Hierarchy, HierarchyError


class FeaturesFileError(ConfigError):
    """A features file that is missing, incomplete, or whose fields disagree."""


@dataclass(frozen=True)
class FeatureSet:
    train_x: torch.Tensor  # [N, D] student inputs of the pool (or images [N, 3, H, W])
    train_y: torch.Tensor  # [N] ground truth (ceiling and diagnostics only)
    test_x: torch.Tensor  # [M, D] (or [M, 3, H, W])
    test_y: torch.Tensor  # [M]
    # [T, N, C] and [T, M, C], as stored: probabilities, or logits when `teacher_logits`; read
    # them through `teacher_probs`.
    teacher_train_probs: torch.Tensor
    teacher_test_probs: torch.Tensor
    levels: list[list[int]]  # teacher indices per level; level 0 is one generalist
    subdomains: list[list[int]]  # classes (or domains) of each teacher
    train_domains: torch.Tensor | None = None  # [N] domain of each pool sample, or None
    test_domains: torch.Tensor | None = None  # [M]
    teacher_logits: bool = False  # the teacher outputs above are logits, not probabilities
    class_names: Sequence[str] | None = None  # one per class, where the benchmark has names
    # The validation split (all three, or none): labelled samples from the test split's
    # distribution that neither the student nor the teachers train on (`benchmarks.validation`).
    val_x: torch.Tensor | None = None  # [V, D] (or [V, 3, H, W])
    val_y: torch.Tensor | None = None  # [V]
    teacher_val_probs: torch.Tensor | None = None  # [T, V, C], stored as the other outputs

    def teacher_probs(
        self,
        split: str,
        teachers: slice | Sequence[int] = slice(None),
        rows: slice | torch.Tensor = slice(None),
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Class probabilities [K, n, C], float32, of `teachers` on `rows` (a slice, or an index
        tensor) of `split` ("train": the pool, "test", "val": the validation split).

        Only that chunk is read (from the memory map) and moved to `device` in its stored
        dtype, then converted; logits get their softmax here. Callers iterate over chunks of
        rows, so that no [T, N, C] float32 tensor is ever built.
        """
        if split not in SPLITS or (split == "val" and not self.has_validation):
            raise ValueError(f"split must be one of {self.splits()}, got {split!r}")
        stored = getattr(self, f"teacher_{split}_probs")
        if isinstance(teachers, slice):
            chunk = stored[teachers, rows]
        elif isinstance(rows, torch.Tensor):  # two index lists: broadcast to [K, n]
            chunk = stored[torch.as_tensor(list(teachers))[:, None], rows[None, :]]
        else:
            chunk = stored[list(teachers), rows]
        chunk = chunk.to(device).float()
        return chunk.softmax(dim=-1) if self.teacher_logits else chunk

    @property
    def has_validation(self) -> bool:
        """True when the features carry a validation split."""
        return self.val_x is not None

    def splits(self) -> tuple[str, ...]:
        """The splits the features hold: train (the pool), test, and val where there is one."""
        return SPLITS if self.has_validation else SPLITS[:2]

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

    def validate(self, *, images: bool = True, values: bool = True) -> FeatureSet:
        """Check every shape, dtype and index; raise FeaturesFileError naming what disagrees.

        `images=False` (features files) requires embeddings [N, D]; otherwise the student
        inputs may also be images [N, 3, H, W], uint8 or floating point. `values` also reads
        every value once, in chunks (finite inputs and logits, probabilities that are
        probabilities); sources whose tensors the cache checked as they were computed or loaded
        skip that second reading.
        """
        if images and self.holds_images:
            for name in ("train_x", "test_x"):
                _check_images(name, getattr(self, name))
        else:
            _check_tensor("train_x", self.train_x, dims=2, floating=True, images=images)
            _check_tensor("test_x", self.test_x, dims=2, floating=True)
        _check_tensor("train_y", self.train_y, dims=1, floating=False)
        _check_tensor("test_y", self.test_y, dims=1, floating=False)
        train_key, test_key, _ = self.teacher_keys()
        _check_tensor(train_key, self.teacher_train_probs, dims=3, floating=True)
        _check_tensor(test_key, self.teacher_test_probs, dims=3, floating=True)
        n, *sample = self.train_x.shape
        d = f"D={sample[0]}" if len(sample) == 1 else f"images of {sample}"
        m = self.test_x.shape[0]
        t, _, c = self.teacher_train_probs.shape
        if n == 0:
            raise FeaturesFileError("train_x holds no samples (N=0): the transfer pool is empty")
        if m == 0:
            raise FeaturesFileError(
                "test_x holds no samples (M=0): the test split is empty, nothing to evaluate on"
            )
        if c == 0:
            raise FeaturesFileError(f"{train_key} has C=0 classes")
        if 0 in sample:
            raise FeaturesFileError(
                f"train_x has shape {list(self.train_x.shape)} ({d}): its samples hold no "
                "values, so the student has nothing to learn from; save embeddings with D >= 1"
            )
        expect = {
            "train_y": (self.train_y, (n,)),
            "test_x": (self.test_x, (m, *sample)),
            "test_y": (self.test_y, (m,)),
            train_key: (self.teacher_train_probs, (t, n, c)),
            test_key: (self.teacher_test_probs, (t, m, c)),
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
                    f"outside 0..{c - 1} (C={c} from the teacher outputs)"
                )
        names = self.class_names
        if names is not None and not (
            isinstance(names, list | tuple)
            and len(names) == c
            and all(isinstance(name, str) for name in names)
        ):
            shown = repr(names) if len(repr(names)) <= 60 else f"{repr(names)[:57]}..."
            raise FeaturesFileError(
                f"class_names must be a list of {c} strings, one per class (C={c}), got {shown}"
            )
        self._validate_validation(images, sample, t, c)
        if values:
            self._validate_values()
        self._validate_domains(n, m)
        if len(self.subdomains) != t:
            raise FeaturesFileError(
                f"subdomains lists {len(self.subdomains)} teachers, but the teacher "
                f"outputs hold T={t}"
            )
        try:
            self.hierarchy  # noqa: B018 - validates levels and subdomains
        except HierarchyError as err:
            raise FeaturesFileError(f"levels/subdomains: {err}") from None
        return self

    def _validate_validation(self, images: bool, sample: list[int], t: int, c: int) -> None:
        """The validation split, where there is one: all three fields, shaped as the test split
        (V >= 1 samples of the pool's shape, T teachers, C classes), labels in 0..C-1."""
        given = [name for name in VAL_FIELDS if getattr(self, name) is not None]
        if not given:
            return
        val_key = self.teacher_keys()[2]
        if len(given) < len(VAL_FIELDS):
            missing = [name for name in VAL_FIELDS if name not in given]
            shown = [val_key if name == "teacher_val_probs" else name for name in missing]
            raise FeaturesFileError(
                f"a validation split needs val_x, val_y and {val_key} together; {shown} missing"
            )
        if images and self.holds_images:
            _check_images("val_x", self.val_x)
        else:
            _check_tensor("val_x", self.val_x, dims=2, floating=True)
        _check_tensor("val_y", self.val_y, dims=1, floating=False)
        _check_tensor(val_key, self.teacher_val_probs, dims=3, floating=True)
        v = self.val_x.shape[0]
        if v == 0:
            raise FeaturesFileError(
                "val_x holds no samples (V=0): leave the validation split out instead"
            )
        expect = {
            "val_x": (self.val_x, (v, *sample)),
            "val_y": (self.val_y, (v,)),
            val_key: (self.teacher_val_probs, (t, v, c)),
        }
        for name, (tensor, shape) in expect.items():
            if tuple(tensor.shape) != shape:
                raise FeaturesFileError(
                    f"{name} has shape {list(tensor.shape)}, expected {list(shape)} (V={v} "
                    f"validation samples of the pool's shape {list(sample)}, T={t} teachers, "
                    f"C={c})"
                )
        if self.val_y.min() < 0 or self.val_y.max() >= c:
            raise FeaturesFileError(
                f"val_y holds labels in [{int(self.val_y.min())}, {int(self.val_y.max())}], "
                f"outside 0..{c - 1} (C={c} from the teacher outputs)"
            )

    def teacher_keys(self) -> tuple[str, str, str]:
        """The names of the teacher outputs, as a features file stores them."""
        return TEACHER_KEYS["logits" if self.teacher_logits else "probs"]

    def _validate_values(self) -> None:
        """Finite student inputs; teacher outputs that are probabilities (or finite logits), on
        every split. Each tensor is read once, a chunk at a time."""
        axes = IMAGE_AXES if self.holds_images else SAMPLE_AXES
        splits = self.splits()
        for split in splits:
            if fault := finite_fault(f"{split}_x", getattr(self, f"{split}_x"), axes):
                raise FeaturesFileError(f"{fault}; the student inputs must be finite numbers")
        for key, split in zip(self.teacher_keys(), splits, strict=False):
            outputs = getattr(self, f"teacher_{split}_probs")
            if self.teacher_logits and (fault := logits_fault(key, outputs)):
                probs_keys = " and ".join(TEACHER_KEYS["probs"][:2])
                raise FeaturesFileError(
                    f"{fault}; teacher logits must be finite numbers, and probabilities go "
                    f"under {probs_keys} instead"
                )
            if not self.teacher_logits and (fault := probability_fault(key, outputs)):
                raise FeaturesFileError(
                    f"{fault}; teacher outputs must be probabilities, non-negative rows summing "
                    "to 1 (softmax of finite logits)"
                )

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


SPLITS = ("train", "test", "val")
VAL_FIELDS = ("val_x", "val_y", "teacher_val_probs")
OPTIONAL_FIELDS = ("train_domains", "test_domains", "class_names", *VAL_FIELDS)
INTEGER_FIELDS = ("train_y", "test_y", "train_domains", "test_domains", "val_y")
# A features file's teacher outputs on each split: probabilities, or logits
# (FeatureSet.teacher_logits).
TEACHER_KEYS = {
    "probs": ("teacher_train_probs", "teacher_test_probs", "teacher_val_probs"),
    "logits": ("teacher_train_logits", "teacher_test_logits", "teacher_val_logits"),
}
IMAGE_AXES = ("image", "channel", "row", "column")
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6


def load_features(path: str | os.PathLike[str]) -> FeatureSet:
    """Read, convert (see the module doc) and validate a features file written with
    `torch.save(dict)`, reading every value once; errors name the file."""
    path = Path(path).expanduser()
    raw = _load_file(path)
    if not isinstance(raw, dict):
        raise FeaturesFileError(f"{path} holds a {type(raw).__name__}, expected a dict")
    kinds = [kind for kind, keys in TEACHER_KEYS.items() if any(key in raw for key in keys)]
    if len(kinds) > 1:
        present = [key for keys in TEACHER_KEYS.values() for key in keys if key in raw]
        raise FeaturesFileError(
            f"{path} holds both teacher probabilities and logits ({present}); keep one kind"
        )
    kind = kinds[0] if kinds else "probs"
    # File key -> FeatureSet field: teacher outputs of either kind fill the teacher fields.
    keys = dict(zip(_file_keys(kind), _file_keys("probs"), strict=True))
    if unknown := [key for key in raw if key not in keys]:
        known = [*_file_keys("probs"), *TEACHER_KEYS["logits"]]
        close = difflib.get_close_matches(str(unknown[0]), known, n=1)
        guess = f" (did you mean {close[0]!r}?)" if close else ""
        raise FeaturesFileError(
            f"{path} holds the unknown key {unknown[0]!r}{guess}; a features file's keys are "
            f"{', '.join(known)}"
        )
    missing = [key for key in keys if key not in raw and key not in OPTIONAL_FIELDS]
    if missing:
        raise FeaturesFileError(
            f"{path} lacks keys {missing}; a features file needs {_file_keys('probs')} (or "
            "teacher_train_logits and teacher_test_logits instead of the probabilities)"
        )
    try:
        levels = [[int(t) for t in lvl] for lvl in raw["levels"]]
        subdomains = [[int(c) for c in sub] for sub in raw["subdomains"]]
    except (TypeError, ValueError):
        raise FeaturesFileError(
            f"{path}: `levels` and `subdomains` must be lists of lists of integers"
        ) from None
    tensors = {}
    for key, name in keys.items():
        if name in ("levels", "subdomains", "class_names"):
            continue
        value = raw.get(key)
        if not isinstance(value, torch.Tensor) and not (name in OPTIONAL_FIELDS and value is None):
            raise FeaturesFileError(f"{path}: {key} is a {type(value).__name__}, not a tensor")
        # Teacher outputs stay as stored (compact, memory-mapped): they are converted a chunk
        # at a time when read, and checked in their own precision.
        tensors[name] = value if key in TEACHER_KEYS[kind] else _standard_dtype(name, value)
    try:
        features = FeatureSet(
            **tensors,
            levels=levels,
            subdomains=subdomains,
            teacher_logits=kind == "logits",
            class_names=raw.get("class_names"),
        )
        return features.validate(images=False)
    except FeaturesFileError as err:
        raise FeaturesFileError(f"{path}: {err}") from None


def _file_keys(kind: str) -> list[str]:
    """The keys of a features file whose teacher outputs are of `kind` (probs or logits)."""
    names = [f.name for f in fields(FeatureSet) if f.name != "teacher_logits"]
    by_field = dict(zip(TEACHER_KEYS["probs"], TEACHER_KEYS[kind], strict=True))
    return [by_field.get(n, n) for n in names]


def _load_file(path: Path) -> object:
    """What `torch.save` wrote to `path`, memory-mapped; a FeaturesFileError that says what
    the path is otherwise (missing, a folder, empty, text, another format)."""
    how_to_write = (
        "write one with torch.save(dict(train_x=..., train_y=..., test_x=..., test_y=..., "
        "teacher_train_probs=..., teacher_test_probs=..., levels=..., subdomains=...), FILE) "
        "(see the README)"
    )
    if path.is_dir():
        raise FeaturesFileError(
            f"data.path={path} is a directory; point it at the features file ({how_to_write})"
        )
    if not path.is_file():
        raise FeaturesFileError(f"features file {path} not found; {how_to_write}")
    with open(path, "rb") as file:
        head = file.read(512)
    if not head:
        raise FeaturesFileError(f"features file {path} is empty (0 bytes); {how_to_write}")
    if head.startswith(ZIP_MAGIC):
        load = {"mmap": True}
    elif _is_text(head):
        first = head.decode("utf-8", errors="replace").split("\n")[0][:40]
        raise FeaturesFileError(
            f"{path} is not a torch.save file: it holds text (starting {first!r}); {how_to_write}"
        )
    else:  # the pre-1.6 format, which cannot be memory-mapped, or something else
        load = {}
    try:
        return torch.load(path, map_location="cpu", weights_only=True, **load)
    except Exception as err:
        if "numpy" in str(err):  # weights_only refuses numpy's array constructors
            raise FeaturesFileError(
                f"{path} holds numpy values{_numpy_keys(path)}; a features file holds torch "
                "tensors and Python lists of ints: convert arrays with torch.from_numpy(array) "
                "and numbers with int(number) before torch.save"
            ) from None
        raise FeaturesFileError(
            f"{path} is not a torch.save file ({reason(err)}); {how_to_write}"
        ) from None


def _numpy_keys(path: Path) -> str:
    """The keys of the saved dict whose values hold numpy arrays or scalars, worded for an
    error (' under keys [...]'; '' where they cannot be found).

    The file is never unpickled unrestricted: it is loaded again with `weights_only=True`,
    allowing only numpy's array, dtype and scalar constructors, which build arrays and run no
    other code (an object array's items still pass the weights_only checks). This reads the
    arrays into memory, once, to word an error."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    constructors = [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype]
    dtypes = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    try:
        with torch.serialization.safe_globals([*constructors, *dtypes]):
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not only numpy values, or a torch without safe_globals
        return ""
    if not isinstance(raw, dict):
        return ""
    return f" under keys {[key for key, value in raw.items() if _holds_numpy(value)]}"


def _holds_numpy(value: object) -> bool:
    """Whether `value` is, or a list, tuple or dict in it holds, a numpy array or scalar."""
    if isinstance(value, np.ndarray | np.generic):
        return True
    if isinstance(value, dict):
        value = list(value.values())
    return isinstance(value, list | tuple) and any(_holds_numpy(item) for item in value)


def _is_text(head: bytes) -> bool:
    """Whether a file's first bytes are printable UTF-8 (its last character may be cut)."""
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return all(char.isprintable() or char in "\t\r\n" for char in text)


def _standard_dtype(name: str, tensor: torch.Tensor | None) -> torch.Tensor | None:
    """float32 for any floating-point tensor, int64 for integer labels and domains."""
    if tensor is None:
        return None
    if tensor.is_floating_point() and tensor.dtype != torch.float32:
        return tensor.float()
    integer = not tensor.is_floating_point() and not tensor.is_complex()
    if name in INTEGER_FIELDS and integer and tensor.dtype != torch.int64:
        return tensor.long()
    return tensor


def save_features(features: FeatureSet, path: str | os.PathLike[str]) -> None:
    """A features file that `load_features` reads back (teacher logits stay logits)."""
    kind = "logits" if features.teacher_logits else "probs"
    values = [getattr(features, name) for name in _file_keys("probs")]
    torch.save(dict(zip(_file_keys(kind), values, strict=True)), path)


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
