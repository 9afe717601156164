"""The bad-input catalogue, data side: features files, image trees, cache faults, IDX files.

Every case runs the command line in-process and requires exit code 2, no traceback, and a
one-line message with the file or tensor, the bad value or index, and a word of the fix.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import assert_clean_error, cli, features_from_config, make_feature_set
from hydra import compose, initialize_config_module
from test_fashion_mnist import write_fake_dataset
from test_features_file import saved
from test_image_benchmarks import TINY, write_class_tree

from csl_avalanche.benchmarks import checks
from csl_avalanche.benchmarks.checks import finite_fault, probability_fault
from csl_avalanche.benchmarks.features import FeatureSet, load_features, save_features
from csl_avalanche.benchmarks.sources.fashion_mnist import FILES
from csl_avalanche.storage.cache import CacheError, InvalidValueError, TensorCache

NAN, INF = float("nan"), float("inf")
BASE = make_feature_set()
# A tiny digits run: seconds of preparation, for the cache cases.
DIGITS = ["student.pretrain.steps=5", "teacher.steps=5", "strategy.epochs=1"]


def poked(tensor: torch.Tensor, index: tuple, value) -> torch.Tensor:
    """A copy of `tensor` with `value` at `index`."""
    copy = tensor.clone()
    copy[index] = torch.as_tensor(value, dtype=copy.dtype)
    return copy


def file_with(**changes) -> Callable[[Path], Path]:
    return lambda tmp_path: saved(tmp_path, **changes)


def written(content: bytes | None) -> Callable[[Path], Path]:
    """A path holding `content` (None: a directory)."""

    def make(tmp_path: Path) -> Path:
        path = tmp_path / "features.pt"
        path.mkdir() if content is None else path.write_bytes(content)
        return path

    return make


def saved_as(features: FeatureSet) -> Callable[[Path], Path]:
    def make(tmp_path: Path) -> Path:
        save_features(features, tmp_path / "features.pt")
        return tmp_path / "features.pt"

    return make


def written_with_torch(value) -> Callable[[Path], Path]:
    def make(tmp_path: Path) -> Path:
        torch.save(value, tmp_path / "features.pt")
        return tmp_path / "features.pt"

    return make


FEATURES_CASES = {
    "nan-in-train_x": (
        file_with(train_x=poked(BASE.train_x, (5, 3), NAN)),
        ["train_x holds NaN at sample 5, feature 3", "finite"],
    ),
    "inf-in-test_x": (
        file_with(test_x=poked(BASE.test_x, (7, 0), INF)),
        ["test_x holds Inf at sample 7, feature 0", "finite"],
    ),
    "nan-probability-row": (
        file_with(teacher_train_probs=poked(BASE.teacher_train_probs, (1, 5), NAN)),
        ["teacher_train_probs holds NaN at teacher 1, sample 5", "softmax"],
    ),
    "inf-in-test-probs": (
        file_with(teacher_test_probs=poked(BASE.teacher_test_probs, (2, 3, 1), -INF)),
        ["teacher_test_probs holds -Inf at teacher 2, sample 3, class 1", "softmax"],
    ),
    "negative-probability": (
        file_with(
            teacher_train_probs=poked(BASE.teacher_train_probs, (2, 17), [0.6, -0.1, 0.3, 0.2])
        ),
        ["teacher 2, sample 17 has a negative probability -0.1000", "softmax"],
    ),
    "row-sum": (
        file_with(teacher_test_probs=poked(BASE.teacher_test_probs, (2, 17), [0.6, 0.2, 0.2, 0.2])),
        ["teacher_test_probs", "teacher 2, sample 17 sums to 1.2000", "softmax"],
    ),
    "probabilities-saved-as-logits": (
        saved_as(replace(BASE, teacher_logits=True)),
        [
            "teacher_train_logits holds probabilities, not logits",
            "under teacher_train_probs and teacher_test_probs instead",
        ],
    ),
    "numpy-arrays": (
        file_with(train_x=BASE.train_x.numpy(), test_y=BASE.test_y.numpy()),
        ["holds numpy values under keys ['train_x', 'test_y']", "torch.from_numpy(array)"],
    ),
    "empty-file": (written(b""), ["features.pt is empty (0 bytes)", "torch.save"]),
    "text-file": (
        written(b"train_x,train_y\n0.1,3\n"),
        ["features.pt is not a torch.save file: it holds text", "train_x,train_y", "torch.save"],
    ),
    "binary-junk": (written(b"\x00\x93garbage" * 10), ["is not a torch.save file", "torch.save"]),
    "directory": (written(None), ["data.path=", "features.pt is a directory", "torch.save"]),
    "missing-file": (lambda tmp_path: tmp_path / "absent.pt", ["absent.pt not found", "write"]),
    "not-a-dict": (written_with_torch([1, 2]), ["features.pt holds a list, expected a dict"]),
    "empty-pool": (
        file_with(
            train_x=BASE.train_x[:0],
            train_y=BASE.train_y[:0],
            teacher_train_probs=BASE.teacher_train_probs[:, :0],
        ),
        ["train_x holds no samples (N=0)", "transfer pool is empty"],
    ),
    "empty-test-split": (
        file_with(
            test_x=BASE.test_x[:0],
            test_y=BASE.test_y[:0],
            teacher_test_probs=BASE.teacher_test_probs[:, :0],
        ),
        ["test_x holds no samples (M=0)", "test split is empty"],
    ),
    "wrong-shape": (
        file_with(test_x=torch.zeros(120, 9)),
        ["test_x has shape [120, 9], expected [120, 8]", "D=8"],
    ),
    "zero-features": (
        file_with(train_x=torch.zeros(240, 0), test_x=torch.zeros(120, 0)),
        ["train_x has shape [240, 0] (D=0)", "D >= 1"],
    ),
    "class-names-a-string": (
        file_with(class_names="abcd"),
        ["class_names must be a list of 4 strings, one per class", "got 'abcd'"],
    ),
    "misspelled-key": (
        file_with(class_name=["a", "b", "c", "d"]),
        ["unknown key 'class_name'", "did you mean 'class_names'?", "train_x, train_y"],
    ),
    "labels-out-of-range": (
        file_with(train_y=poked(BASE.train_y, (4,), 7)),
        ["train_y holds labels in [0, 7], outside 0..3", "C=4"],
    ),
}


@pytest.mark.parametrize("case", FEATURES_CASES)
def test_bad_features_file(tmp_path, case):
    make, phrases = FEATURES_CASES[case]
    path = make(tmp_path)
    outcome = cli(tmp_path / "run", "benchmark=features", f"data.path={path}")
    assert_clean_error(outcome, str(path), *phrases)


# --- image trees -------------------------------------------------------------------------

CLASSES = ["apple", "bird", "car", "dog"]


def image_tree(tmp_path: Path, per_class: int = 6) -> Path:
    root = tmp_path / "data"
    write_class_tree(root, CLASSES, per_class=per_class)
    return root


def truncate(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[:60])
    return path


def keep_one(folder: Path) -> None:
    for path in sorted(folder.iterdir())[1:]:
        path.unlink()


IMAGE_CASES = {
    "truncated-image": (
        lambda root: truncate(root / "car" / "car_3.png"),
        [],
        ["cannot read image", "car/car_3.png", "truncated", "replace or delete"],
    ),
    "truncated-image-in-a-worker": (
        lambda root: truncate(root / "car" / "car_2.jpg"),
        ["data.num_workers=1"],
        ["cannot read image", "car/car_2.jpg", "replace or delete"],
    ),
    "not-an-image": (
        lambda root: (root / "dog" / "dog_1.png").write_bytes(b"<html>not a png</html>"),
        [],
        ["cannot read image", "dog/dog_1.png", "cannot identify image file"],
    ),
    "too-few-images-in-a-class": (
        lambda root: keep_one(root / "bird"),
        [],
        ["class folder", "bird holds 1 image,", "needs at least 3", "benchmark.splits"],
    ),
}


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_bad_image_tree(tmp_path, case):
    damage, overrides, phrases = IMAGE_CASES[case]
    root = image_tree(tmp_path)
    damage(root)
    outcome = cli(
        tmp_path / "run",
        "benchmark=imagefolder",
        f"data.root={root}",
        *TINY,
        *overrides,
        "benchmark.teachers_per_level=[1,2]",
    )
    message = assert_clean_error(outcome, *phrases)
    assert str(root) in message


def test_domain_class_with_too_few_images(tmp_path):
    for domain, name in enumerate(["real", "sketch"]):
        write_class_tree(tmp_path / "data" / name, ["cat", "cup"], per_class=4, domain=domain)
    keep_one(tmp_path / "data" / "sketch" / "cup")
    outcome = cli(tmp_path / "run", "benchmark=domainnet", f"data.root={tmp_path}/data", *TINY)
    assert_clean_error(
        outcome, f"class folder {tmp_path}/data/sketch/cup holds 1 image,", "needs at least 3"
    )


@pytest.mark.parametrize(
    ("override", "phrases"),
    [
        (
            "benchmark.splits.pretrain=0.001",
            [
                "benchmark.splits: class 0 has 178 samples",
                "needs at least 501",
                "raise the smallest fraction",
            ],
        ),
        ("~benchmark.splits.test", ["benchmark.splits must name exactly", "'test'"]),
    ],
    ids=["class-too-small-for-a-split", "a-split-missing"],
)
def test_bad_tensor_splits(tmp_path, override, phrases):
    assert_clean_error(cli(tmp_path / "run", *DIGITS, override), *phrases)


# --- the cache ---------------------------------------------------------------------------


def no_space(obj, file, *args, **kwargs):
    """torch.save on a full disk: part of the file is written, then the write fails."""
    file.write(b"PK\x03\x04partial")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def denied(src, dst):
    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))


@pytest.mark.parametrize(
    ("target", "fault", "phrases"),
    [
        ("torch.save", no_space, ["No space left on device", "free space", "cache_dir="]),
        ("os.replace", denied, ["Permission denied", "cache_dir=", "writable folder"]),
    ],
    ids=["full-disk", "read-only"],
)
def test_unwritable_cache_fails_first_and_leaves_no_temporary_files(
    tmp_path, monkeypatch, target, fault, phrases
):
    monkeypatch.setattr(target, fault)
    cache = tmp_path / "cache"
    cache.mkdir()
    outcome = cli(tmp_path / "run", *DIGITS, cache_dir=cache)
    assert_clean_error(outcome, f"cache folder {cache}", *phrases)
    assert list(cache.iterdir()) == []  # no temporary file left behind


@pytest.mark.parametrize(
    ("where", "phrases"),
    [
        ("under-a-file", ["Not a directory", "cache_dir="]),
        ("a-file", ["a file of that name exists", "cache_dir="]),
    ],
)
def test_cache_dir_that_cannot_be_a_folder(tmp_path, where, phrases):
    (tmp_path / "file").write_text("x")
    cache = tmp_path / "file" / "cache" if where == "under-a-file" else tmp_path / "file"
    outcome = cli(tmp_path / "run", *DIGITS, cache_dir=cache)
    assert_clean_error(outcome, f"cannot create the cache folder {cache}", *phrases)


@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory) -> Path:
    """A cache holding every tensor of the tiny digits run."""
    cache = tmp_path_factory.mktemp("digits") / "cache"
    with initialize_config_module(config_module="csl_avalanche.configs", version_base="1.3"):
        cfg = compose(config_name="config", overrides=DIGITS)
    features_from_config(cfg, TensorCache(cache), seed=0)
    return cache


def copied(cache: Path, tmp_path: Path) -> Path:
    target = tmp_path / "cache"
    target.mkdir()
    for path in cache.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


def nan_probabilities(path: Path) -> None:
    payload = torch.load(path, weights_only=True)
    payload["value"]["pool"][1, 5] = NAN
    torch.save(payload, path)


@pytest.mark.parametrize(
    ("entry", "damage", "phrases"),
    [
        (
            "teacher-probs",
            nan_probabilities,
            ["holds bad values: teacher_train_probs holds NaN at teacher 1, sample 5"],
        ),
        ("embeddings", lambda path: truncate(path), ["is unreadable", "zip archive"]),
    ],
    ids=["entry-holding-nan", "truncated-entry"],
)
def test_bad_cache_entry_names_its_file(tmp_path, digits_cache, entry, damage, phrases):
    cache = copied(digits_cache, tmp_path)
    (path,) = cache.glob(f"{entry}-*.pt")
    damage(path)
    outcome = cli(tmp_path / "run", *DIGITS, cache_dir=cache)
    assert_clean_error(outcome, f"cache file {path}", *phrases, "delete it")


def test_a_diverged_backbone_is_refused_and_not_cached(tmp_path, monkeypatch):
    import csl_avalanche.benchmarks.pipeline as pipeline

    def diverge(model, *args, **kwargs):  # as a too-large learning rate would
        model = fit_classifier(model, *args, **kwargs)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.fill_(float("nan"))
        return model

    fit_classifier = pipeline.fit_classifier
    monkeypatch.setattr(pipeline, "fit_classifier", diverge)
    outcome = cli(tmp_path / "run", *DIGITS)
    assert_clean_error(
        outcome,
        "computed backbone: backbone weights['0.weight'] holds NaN at index [0, 0]",
        "lower its learning rate (student.pretrain.lr)",
        "Nothing was cached",
    )
    assert list((tmp_path / "cache").iterdir()) == []


# --- Fashion-MNIST -----------------------------------------------------------------------


def test_truncated_fashion_mnist_file(tmp_path):
    root = write_fake_dataset(tmp_path / "fmnist", gz=False)
    path = root / FILES["train_images"]
    path.write_bytes(path.read_bytes()[:-100])
    outcome = cli(tmp_path / "run", "benchmark=fashion_mnist", f"data.root={root}")
    assert_clean_error(outcome, str(path), "holds", "truncated or corrupt")


# --- what works --------------------------------------------------------------------------


def test_mixed_dtypes_load_and_run(tmp_path):
    path = saved(
        tmp_path,
        train_x=BASE.train_x.double(),
        test_x=BASE.test_x,
        teacher_train_probs=BASE.teacher_train_probs.half(),
        teacher_test_probs=BASE.teacher_test_probs.bfloat16(),
        train_y=BASE.train_y.int(),
        test_y=BASE.test_y.to(torch.uint8),
    )
    features = load_features(path)
    assert features.train_x.dtype == features.test_x.dtype == torch.float32
    assert features.train_y.dtype == features.test_y.dtype == torch.int64
    # Teacher outputs stay as stored (compact); they are read in float32 a chunk at a time.
    assert features.teacher_train_probs.dtype == torch.float16
    assert features.teacher_test_probs.dtype == torch.bfloat16
    assert features.teacher_probs("test", [2], slice(3, 5)).dtype == torch.float32
    outcome = cli(
        tmp_path / "run",
        "benchmark=features",
        f"data.path={path}",
        "strategy.epochs=1",
        "strategy.batch_size=16",
    )
    assert outcome.code == 0, outcome.err
    assert (tmp_path / "run" / "results.json").is_file()


def test_stale_temporary_files_of_dead_runs_are_removed(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid, host = int(dead.stdout), socket.gethostname()
    stale = tmp_path / f"teacher-probs-abc.tmp{pid}@{host}"
    stale_old_name = tmp_path / f"backbone-abc.tmp{pid}"  # before names carried the host
    live = tmp_path / f"embeddings-def.tmp{os.getpid()}@{host}"
    # On a folder shared between machines, another machine's writer cannot be judged by pid.
    elsewhere = tmp_path / f"teachers-abc.tmp{pid}@another-host.cluster"
    kept = tmp_path / "embeddings-def.pt"
    for path in (stale, stale_old_name, live, elsewhere, kept):
        path.write_bytes(b"partial")
    TensorCache(tmp_path)
    assert sorted(tmp_path.iterdir()) == sorted([live, elsewhere, kept])


# --- the checks themselves ---------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1 << 22, 7], ids=["one-chunk", "many-chunks"])
def test_checks_find_the_first_fault_across_chunks(monkeypatch, chunk):
    monkeypatch.setattr(checks, "CHUNK_ELEMENTS", chunk)
    x = torch.zeros(50, 6)
    x[31, 4], x[40, 0] = INF, NAN
    assert finite_fault("x", x, ("sample", "feature")) == "x holds Inf at sample 31, feature 4"
    probs = torch.full((3, 20, 4), 0.25)
    assert probability_fault("p", probs) is None
    probs[2, 9] = torch.tensor([0.5, 0.5, 0.5, -0.5])  # sums to 1: only the sign is wrong
    probs[2, 15] = NAN  # a NaN row sums to NaN, which no comparison catches
    assert probability_fault("p", probs).endswith(
        "teacher 2, sample 9 has a negative probability -0.5000"
    )
    probs[1, 19] = NAN
    assert probability_fault("p", probs) == "p holds NaN at teacher 1, sample 19, class 0"


def test_cache_checks_loaded_and_computed_values(tmp_path):
    cache = TensorCache(tmp_path)
    check = lambda value: finite_fault("v", value)  # noqa: E731
    with pytest.raises(
        InvalidValueError,
        match=r"computed thing: v holds NaN at index \[1\]\. "
        "Lower the lr. Nothing was cached",
    ):
        cache.get_or_compute(
            "thing", "k", lambda: torch.tensor([0.0, NAN]), check=check, cause="Lower the lr."
        )
    assert list(tmp_path.iterdir()) == []
    torch.save({"key": "k", "value": torch.tensor([INF])}, cache.path("thing", "k"))
    with pytest.raises(CacheError, match=r"thing-k.pt holds bad values: v holds Inf.*delete it"):
        cache.get_or_compute("thing", "k", lambda: torch.zeros(1), check=check)
