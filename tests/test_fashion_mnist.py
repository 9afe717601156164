"""benchmark=fashion_mnist: IDX parsing, the three folder layouts, errors, CLI end to end.

Fake datasets are tiny (8x8 images, a few per class) and written by the tests; the real-data
test runs only where Debian's `dataset-fashion-mnist` is installed.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from results_checks import check_against_cached_features

from csl_avalanche.benchmarks.idx import IdxFormatError, read_idx, write_idx
from csl_avalanche.benchmarks.sources import fashion_mnist
from csl_avalanche.benchmarks.sources.fashion_mnist import (
    DEBIAN_DIR,
    FILES,
    DatasetNotFoundError,
    find_files,
    load_fashion_mnist,
)
from csl_avalanche.core.errors import ConfigError

SIDE = 8


def fake_images(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable fake images: class c lights up its own pixel block, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10, dtype=np.uint8), per_class)
    images = rng.integers(0, 60, size=(len(labels), SIDE, SIDE))
    for i, c in enumerate(labels):
        row, col = divmod(int(c), 4)
        images[i, 2 * row : 2 * row + 2, 2 * col : 2 * col + 2] += 180
    order = rng.permutation(len(labels))
    return images[order].astype(np.uint8), labels[order]


def write_fake_dataset(
    folder: Path, *, gz: bool, train_per_class: int = 12, test_per_class: int = 4
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for split, per_class, seed in (("train", train_per_class, 0), ("test", test_per_class, 1)):
        images, labels = fake_images(per_class, seed)
        write_idx(folder / (FILES[f"{split}_images"] + suffix), images)
        write_idx(folder / (FILES[f"{split}_labels"] + suffix), labels)
    return folder


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path, gz, dtype):
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    if dtype == np.uint8:
        array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("a.idx.gz" if gz else "a.idx")
    write_idx(path, array)
    assert path.read_bytes()[:2] == (b"\x1f\x8b" if gz else b"\x00\x00")
    back = read_idx(path)
    assert back.shape == (2, 3, 4)
    np.testing.assert_array_equal(back.numpy(), array)


@pytest.mark.parametrize(
    ("layout", "gz"),
    [("root", False), ("root", True), ("torchvision", False), ("torchvision", True)],
)
def test_layouts(tmp_path, layout, gz):
    folder = tmp_path if layout == "root" else tmp_path / "FashionMNIST" / "raw"
    write_fake_dataset(folder, gz=gz)
    files = find_files(tmp_path)
    assert all(path.parent == folder for path in files.values())
    x, y = load_fashion_mnist(tmp_path)
    assert x.shape == (160, SIDE * SIDE) and x.dtype == torch.float32
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    assert y.dtype == torch.long and torch.equal(y.bincount(), torch.full((10,), 16))
    # train images come first, then t10k
    train_images, train_labels = fake_images(12, 0)
    assert torch.equal(y[:120], torch.from_numpy(train_labels).long())
    assert torch.allclose(x[0], torch.from_numpy(train_images[0]).flatten().float() / 255)


def test_debian_folder_is_the_default(tmp_path, monkeypatch):
    write_fake_dataset(tmp_path / "debian", gz=True)
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "debian")
    x, _ = load_fashion_mnist(None)
    assert len(x) == 160


def test_missing_dataset_says_where_and_how(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        load_fashion_mnist(tmp_path)
    message = str(err.value)
    assert isinstance(err.value, ConfigError)
    for needle in (
        *FILES.values(),
        str(tmp_path),
        str(tmp_path / "FashionMNIST" / "raw"),
        "apt-get install dataset-fashion-mnist",
        "data.download=true",
        "data.root=",
    ):
        assert needle in message
    assert "\n" not in message


def test_partial_dataset_names_the_missing_file(tmp_path):
    write_fake_dataset(tmp_path, gz=False)
    (tmp_path / FILES["test_labels"]).unlink()
    with pytest.raises(DatasetNotFoundError, match=f"{tmp_path} lacks {FILES['test_labels']}"):
        load_fashion_mnist(tmp_path)


def _corrupt(path: Path, data: bytes) -> None:
    path.write_bytes(data)


@pytest.mark.parametrize(
    ("target", "corruption", "match"),
    [
        ("train_images", lambda raw: b"\x08\x03" + raw[2:], "not an IDX file: magic number"),
        ("train_images", lambda raw: raw[:-7], "truncated or corrupt"),
        ("train_images", lambda raw: raw[:6], "ends inside its header"),
        ("train_labels", lambda raw: raw[:2], "too short"),
        ("train_labels", lambda raw: raw[:-1], "truncated or corrupt"),
        ("test_images", lambda raw: gzip.compress(raw)[:-10], "damaged gzip"),
    ],
)
def test_malformed_files(tmp_path, target, corruption, match):
    write_fake_dataset(tmp_path, gz=False)
    path = tmp_path / FILES[target]
    _corrupt(path, corruption(path.read_bytes()))
    with pytest.raises(IdxFormatError, match=match) as err:
        load_fashion_mnist(tmp_path)
    assert str(path) in str(err.value)


def test_inconsistent_files(tmp_path):
    write_fake_dataset(tmp_path, gz=False)
    write_idx(tmp_path / FILES["train_labels"], np.zeros(7, dtype=np.uint8))
    with pytest.raises(IdxFormatError, match="120 images but .* 7 labels"):
        load_fashion_mnist(tmp_path)
    write_idx(tmp_path / FILES["train_labels"], np.full(120, 10, dtype=np.uint8))
    with pytest.raises(IdxFormatError, match="labels are 0..9"):
        load_fashion_mnist(tmp_path)
    write_idx(tmp_path / FILES["train_labels"], np.zeros(120, dtype=np.int32))
    with pytest.raises(IdxFormatError, match="unsigned-byte labels"):
        load_fashion_mnist(tmp_path)


def test_download_fetches_into_root(tmp_path, monkeypatch):
    def fake_download(root):
        write_fake_dataset(Path(root) / "FashionMNIST" / "raw", gz=True)

    monkeypatch.setattr(fashion_mnist, "download", fake_download)
    x, _ = load_fashion_mnist(tmp_path / "data", download_to=tmp_path / "data")
    assert len(x) == 160


def test_failed_download_explains(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(DatasetNotFoundError, match="could not fetch .*network is unreachable"):
        load_fashion_mnist(tmp_path, download_to=tmp_path)


TINY = (
    "benchmark=fashion_mnist",
    "student.pretrain.steps=30",
    "teacher.steps=30",
    "strategy.epochs=2",
    "strategy.batch_size=16",
)


def test_cli_end_to_end_on_fake_data(tmp_path):
    root = write_fake_dataset(tmp_path / "data", gz=True, train_per_class=30, test_per_class=10)
    overrides = [*TINY, f"data.root={root}"]
    results = run_cli(tmp_path / "run", *overrides)
    assert [lvl["num_teachers"] for lvl in results["levels"]] == [1, 2, 5]
    assert results["config"]["benchmark"]["hierarchy"][2] == [
        [0, 6],
        [2, 4],
        [1, 3],
        [5, 7],
        [8, 9],
    ]
    check_against_cached_features(results, tmp_path / "cache", *overrides)
    # Each class lights its own pixel block: the ground-truth ceiling learns it well above
    # chance (0.1 over ten classes; it reaches 0.45 here).
    assert results["ceiling_accuracy"] > 0.1 + 0.2


def test_cli_missing_dataset_is_one_paragraph(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "csl_avalanche.run",
            f"hydra.run.dir={tmp_path / 'run'}",
            f"cache_dir={tmp_path / 'cache'}",
            "progress=false",
            "benchmark=fashion_mnist",
            f"data.root={tmp_path / 'nowhere'}",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "apt-get install dataset-fashion-mnist" in proc.stderr + proc.stdout


@pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_real_fashion_mnist(tmp_path):
    """The real data loads whole, and a reduced run shows weak-to-strong generalisation."""
    x, y = load_fashion_mnist(None)
    assert x.shape == (70000, 784)
    assert torch.equal(y.bincount(), torch.full((10,), 7000))
    assert read_idx(DEBIAN_DIR / "t10k-labels-idx1-ubyte.gz").shape == (10000,)
    results = run_cli(
        tmp_path / "run",
        "benchmark=fashion_mnist",
        "benchmark.splits={pretrain: 0.05, teachers: 0.15, pool: 0.1, test: 0.05}",
        "student.pretrain.steps=200",
        "student.pretrain.batch_size=64",
    )
    assert results["ceiling_accuracy"] > results["weak_accuracy"] + 0.05
    assert results["levels"][-1]["pgr"] > 0.2
