"""Shared test helpers: tiny feature sets and a runner for `python -m csl_avalanche.run`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from csl_avalanche.data.features import FeatureSet

warnings.filterwarnings("ignore", message="no QP solver found")
REPO = Path(__file__).resolve().parents[1]


def make_feature_set(
    n: int = 240, m: int = 120, d: int = 8, c: int = 4, seed: int = 0, noise: float = 0.25
) -> FeatureSet:
    """Separable Gaussian clusters with a 1 -> 2 hierarchy over 4 classes.

    The generalist is right on 60% of samples; each specialist on 90% of its own classes.
    """
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(c, d, generator=g) * 3

    def draw(k):
        y = torch.arange(k) % c
        return centers[y] + noise * torch.randn(k, d, generator=g), y

    train_x, train_y = draw(n)
    test_x, test_y = draw(m)
    subdomains = [list(range(c)), [0, 1], [2, 3]]

    def teacher_probs(y, classes, accuracy):
        k = len(y)
        probs = torch.full((k, c), 0.0)
        right = torch.rand(k, generator=g) < accuracy
        wrong = torch.tensor(classes)[torch.randint(len(classes), (k,), generator=g)]
        label = torch.where(right, y, wrong)
        probs[torch.arange(k), label] = 0.7
        for cls in classes:
            probs[:, cls] += 0.3 / len(classes)
        return probs / probs.sum(1, keepdim=True)

    def all_teachers(y):
        return torch.stack(
            [
                teacher_probs(y, subdomains[0], 0.6),
                teacher_probs(y, subdomains[1], 0.9),
                teacher_probs(y, subdomains[2], 0.9),
            ]
        )

    return FeatureSet(
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        teacher_train_probs=all_teachers(train_y),
        teacher_test_probs=all_teachers(test_y),
        levels=[[0], [1, 2]],
        subdomains=subdomains,
    ).validate()


@pytest.fixture
def tiny_features() -> FeatureSet:
    return make_feature_set()


@pytest.fixture
def single_threaded(monkeypatch):
    """Tiny models gain nothing from threads, and on a busy 2-core runner OpenMP's thread
    synchronisation makes each small step many times slower."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_cli(run_dir: Path, *overrides: str, cache_dir: Path | None = None) -> dict:
    """Run `python -m csl_avalanche.run` in a subprocess; return its results.json."""
    cache = cache_dir or run_dir.parent / "cache"
    cmd = [
        sys.executable,
        "-m",
        "csl_avalanche.run",
        f"hydra.run.dir={run_dir}",
        f"cache_dir={cache}",
        "progress=false",
        *overrides,
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=run_dir.parent)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads((run_dir / "results.json").read_text())
