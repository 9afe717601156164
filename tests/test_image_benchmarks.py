"""Image benchmarks end to end on tiny fake datasets in each real layout, with tiny
random-initialised timm models (and a randomly initialised torchvision AlexNet)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, features_from_config, run_cli
from PIL import Image
from results_checks import check_against_cached_features, compose_config

from csl_avalanche.benchmarks.image_features import TeacherHeadsError
from csl_avalanche.benchmarks.images import DatasetError
from csl_avalanche.models.registry import create_model
from csl_avalanche.storage.cache import TensorCache

# Tiny models, tiny images, short budgets: only the plumbing is under test.
TINY = [
    "teacher.arch=test_resnet",
    "teacher.pretrained=false",
    "student.arch=test_vit",
    "student.pretrained=false",
    "data.image_size=32",
    "data.num_workers=0",
    "data.batch_size=64",
    "teacher.steps=10",
    "teacher.batch_size=16",
    "teacher.lr=1e-3",
    "strategy.epochs=2",
    "strategy.batch_size=8",
    "strategy.lr=0.01",
]
PALETTE = np.array(
    [[220, 40, 40], [40, 220, 40], [40, 40, 220], [220, 220, 40], [40, 220, 220], [220, 40, 220]]
)


def fake_image(label: int, rng: np.random.Generator, size=(18, 16), domain: int = 0) -> np.ndarray:
    """A noisy image whose colour says its class; domain 1 is the colour negative."""
    base = np.broadcast_to(PALETTE[label % len(PALETTE)], (*size, 3)).astype(float)
    image = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
    return 255 - image if domain % 2 else image


def write_class_tree(root: Path, classes: list[str], per_class: int, seed: int = 0, domain=0):
    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            suffix = "png" if i % 2 else "jpg"  # both decoders
            Image.fromarray(fake_image(label, rng, domain=domain)).save(
                root / name / f"{name}_{i}.{suffix}"
            )


def write_cifar100(root: Path, train_per_class: int = 2, test_per_class: int = 1) -> None:
    """The python-format pickles (latin1 dicts of bytes keys, as the real ones)."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    coarse_of = [c % 20 for c in range(100)]
    coarse_names = [
        "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
        "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
        "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
        "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates", "people",
        "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
    ]  # fmt: skip
    for name, per_class in (("train", train_per_class), ("test", test_per_class)):
        fine = [c for c in range(100) for _ in range(per_class)]
        pixels = np.stack(
            [fake_image(c, rng, size=(32, 32)).transpose(2, 0, 1).reshape(-1) for c in fine]
        )
        batch = {
            b"filenames": [f"{i}.png".encode() for i in range(len(fine))],
            b"batch_label": name.encode(),
            b"fine_labels": fine,
            b"coarse_labels": [coarse_of[c] for c in fine],
            b"data": pixels,
        }
        (folder / name).write_bytes(pickle.dumps(batch))
    meta = {
        b"fine_label_names": [f"fine{c}".encode() for c in range(100)],
        b"coarse_label_names": [n.encode() for n in coarse_names],
    }
    (folder / "meta").write_bytes(pickle.dumps(meta))


pytestmark = pytest.mark.usefixtures("single_threaded")


def compose_cfg(*overrides: str):
    return compose_config(*TINY, *overrides)


@pytest.fixture(scope="module")
def imagefolder_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imagefolder") / "data"
    write_class_tree(root, ["apple", "bird", "car", "dog"], per_class=12)
    return root


def test_imagefolder_end_to_end_with_a_local_student_checkpoint(tmp_path, imagefolder_root):
    torch.manual_seed(3)
    checkpoint = tmp_path / "student.pt"
    student = create_model("test_vit", num_classes=1000, image_size=32)
    torch.save(student.state_dict(), checkpoint)  # with a 1000-class head: skipped on load
    overrides = [
        "benchmark=imagefolder",
        f"data.root={imagefolder_root}",
        f"student.checkpoint={checkpoint}",
        "benchmark.hierarchy=[[[apple,bird,car,dog]],[[apple,bird],[car,dog]]]",
        *TINY,
    ]
    results = run_cli(tmp_path / "run", *overrides)
    assert [lvl["num_teachers"] for lvl in results["levels"]] == [1, 2]
    assert set(results["levels"][-1]["subdomain_accuracy"]) == {"classes_0-1", "classes_2-3"}
    check_against_cached_features(results, tmp_path / "cache", *overrides)


def test_second_run_reuses_every_cached_tensor(tmp_path, imagefolder_root):
    cfg = compose_cfg("benchmark=imagefolder", f"data.root={imagefolder_root}")
    first = TensorCache(tmp_path / "cache")
    features = features_from_config(cfg, first, seed=0)
    # features: student on pool and test, teacher on teachers, pool and test; heads; probs
    assert first.misses == 7 and first.hits == 0
    second = TensorCache(tmp_path / "cache")
    again = features_from_config(cfg, second, seed=0)
    assert second.misses == 0 and second.hits == 7
    torch.testing.assert_close(again.teacher_test_probs, features.teacher_test_probs)
    assert features.train_x.shape[1] == 64 and features.num_classes == 4
    assert features.hierarchy.teachers_per_level() == [1, 2, 4]

    # A changed file changes the key of everything extracted from its split.
    (imagefolder_root / "dog" / "dog_0.jpg").touch()
    (imagefolder_root / "dog" / "dog_0.jpg").write_bytes(
        (imagefolder_root / "dog" / "dog_2.jpg").read_bytes()
    )
    third = TensorCache(tmp_path / "cache")
    features_from_config(cfg, third, seed=0)
    assert third.misses > 0


def test_imagefolder_auto_hierarchy_is_chosen_once_and_named(tmp_path, imagefolder_root):
    auto = ["benchmark.hierarchy=auto", "benchmark.auto_levels=[2]"]
    cfg = compose_cfg("benchmark=imagefolder", f"data.root={imagefolder_root}", *auto)
    features = features_from_config(cfg, TensorCache(tmp_path / "cache"), seed=0)
    assert features.hierarchy.teachers_per_level() == [1, 2]
    assert features.class_names == ["apple", "bird", "car", "dog"]
    again = TensorCache(tmp_path / "cache")
    assert features_from_config(cfg, again, seed=0).hierarchy == features.hierarchy
    assert again.misses == 0  # the probe's confusion came from the cache too
    assert list((tmp_path / "cache").glob("auto-confusion-*.pt"))


def test_teacher_heads_from_a_file(tmp_path, imagefolder_root):
    cfg = compose_cfg("benchmark=imagefolder", f"data.root={imagefolder_root}")
    trained = features_from_config(cfg, TensorCache(tmp_path / "cache"), seed=0)
    heads = [{"weight": torch.randn(4, 96), "bias": torch.zeros(4)} for _ in range(7)]
    torch.save(heads, tmp_path / "heads.pt")
    cfg = compose_cfg(
        "benchmark=imagefolder",
        f"data.root={imagefolder_root}",
        f"teacher.heads={tmp_path}/heads.pt",
    )
    loaded = features_from_config(cfg, TensorCache(tmp_path / "cache"), seed=0)
    assert loaded.teacher_train_probs.shape == trained.teacher_train_probs.shape
    assert not torch.allclose(loaded.teacher_train_probs, trained.teacher_train_probs)
    torch.save(heads[:3], tmp_path / "heads.pt")
    with pytest.raises(TeacherHeadsError, match="list of 7 linear heads"):
        features_from_config(cfg, TensorCache(tmp_path / "cache"), seed=0)


@pytest.mark.parametrize(
    "benchmark, expected",
    [
        ("imagefolder", r"needs data.root=DIR holding <root>/<class>/<image>"),
        ("cifar100", r"found no cifar-100-python/train, test and meta files under .*kriz/cifar"),
        ("imagenet_w2s", r"train is not a folder; expected .*torchvision.datasets.ImageNet"),
        ("domainnet", r"lacks domain folders \(none found\).*ai.bu.edu/M3SDA"),
    ],
)
def test_missing_data_says_what_was_expected_where(tmp_path, benchmark, expected):
    root = [] if benchmark == "imagefolder" else [f"data.root={tmp_path}"]
    with pytest.raises(DatasetError, match=expected):
        features_from_config(compose_cfg(f"benchmark={benchmark}", *root), TensorCache(tmp_path), 0)


def test_imagefolder_end_to_end_with_a_finetuned_student(tmp_path, imagefolder_root):
    torch.manual_seed(4)
    checkpoint = tmp_path / "student.pt"
    torch.save(create_model("test_resnet", num_classes=0).state_dict(), checkpoint)
    overrides = [
        "benchmark=imagefolder",
        f"data.root={imagefolder_root}",
        *TINY,
        "student.arch=test_resnet",
        f"student.checkpoint={checkpoint}",
        "student.finetune=true",
        "data.image_size=24",
        "strategy.epochs=1",
    ]
    results = run_cli(tmp_path / "run", *overrides)
    assert [lvl["num_teachers"] for lvl in results["levels"]] == [1, 2, 4]
    check_against_cached_features(results, tmp_path / "cache", *overrides)
    assert results["config"]["student"]["finetune"] is True
    # The student's inputs are cached images, not embeddings.
    cached = {path.name.split("-")[1] for path in (tmp_path / "cache").glob("student-*.pt")}
    assert cached == {"pixels"}
    pool = torch.load(next((tmp_path / "cache").glob("student-pixels-*.pt")), weights_only=True)
    assert pool["value"].dtype == torch.uint8 and pool["value"].shape[1:] == (3, 24, 24)


def test_cifar100_end_to_end(tmp_path):
    write_cifar100(tmp_path / "data")
    results = run_cli(
        tmp_path / "run",
        "benchmark=cifar100",
        f"data.root={tmp_path / 'data'}",
        "strategy.denoise=all",
        *TINY,
    )
    assert [lvl["num_teachers"] for lvl in results["levels"]] == [1, 4, 20]
    assert len(results["levels"][-1]["subdomain_accuracy"]) == 20


def test_imagenet_w2s_end_to_end_with_torchvision_alexnet_teachers(tmp_path):
    wnids = [f"n0{i:07d}" for i in range(8)]
    write_class_tree(tmp_path / "data" / "train", wnids, per_class=4, seed=1)
    write_class_tree(tmp_path / "data" / "val", wnids, per_class=5, seed=2)
    results = run_cli(
        tmp_path / "run",
        "benchmark=imagenet_w2s",
        f"data.root={tmp_path / 'data'}",
        *TINY,
        "teacher.arch=torchvision:alexnet",  # AlexNet needs at least 63x63 inputs
        "data.image_size=64",
    )
    assert [lvl["num_teachers"] for lvl in results["levels"]] == [1, 2, 4, 8]
    config = results["config"]
    assert config["benchmark"]["val_splits"] == {"pool": 0.8, "test": 0.2}


def test_domainnet_end_to_end_with_domain_subdomains(tmp_path):
    for domain, name in enumerate(["real", "sketch"]):
        write_class_tree(
            tmp_path / "data" / name,
            ["cat", "cup", "sun"],
            per_class=10,
            seed=domain,
            domain=domain,
        )
    results = run_cli(
        tmp_path / "run",
        "benchmark=domainnet",
        f"data.root={tmp_path / 'data'}",
        *TINY,
    )
    assert results["config"]["strategy"]["assignment"] == "likelihood"  # works by default
    assert [lvl["num_teachers"] for lvl in results["levels"]] == [1, 2]
    assert set(results["levels"][-1]["subdomain_accuracy"]) == {"domains_0", "domains_1"}


def test_bad_checkpoint_is_one_line_on_the_command_line(tmp_path, imagefolder_root):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"\x00garbage")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "csl_avalanche.run",
            "benchmark=imagefolder",
            f"data.root={imagefolder_root}",
            f"hydra.run.dir={tmp_path / 'run'}",
            f"cache_dir={tmp_path / 'cache'}",
            *TINY,
            f"student.checkpoint={bad}",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: student.checkpoint={bad} is not a readable weights file")
