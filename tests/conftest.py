"""Shared test helpers: tiny feature sets and a runner for `python -m csl_avalanche.run`."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from csl_avalanche.benchmarks.features import FeatureSet
from csl_avalanche.core.hierarchy import Hierarchy

warnings.filterwarnings("ignore", message="no QP solver found")
REPO = Path(__file__).resolve().parents[1]


def make_feature_set(
    n: int = 240,
    m: int = 120,
    d: int = 8,
    c: int = 4,
    seed: int = 0,
    noise: float = 0.25,
    hierarchy: list[list[list[int]]] | None = None,
) -> FeatureSet:
    """Separable Gaussian clusters with a hierarchy of teachers over `c` classes (default: 1 -> 2,
    the classes' two halves). The generalist is right on 60% of samples; each other teacher on
    90% of its own classes (and says one of its own classes otherwise)."""
    hierarchy = hierarchy or [[list(range(c))], [list(range(c // 2)), list(range(c // 2, c))]]
    levels, subdomains = Hierarchy(hierarchy, c).teacher_lists()
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(c, d, generator=g) * 3

    def draw(k):
        y = torch.arange(k) % c
        return centers[y] + noise * torch.randn(k, d, generator=g), y

    def teacher(y, classes, accuracy):
        right = torch.rand(len(y), generator=g) < accuracy
        wrong = torch.tensor(classes)[torch.randint(len(classes), (len(y),), generator=g)]
        probs = torch.zeros(len(y), c)
        probs[torch.arange(len(y)), torch.where(right, y, wrong)] = 0.7
        probs[:, classes] += 0.3 / len(classes)
        return probs / probs.sum(1, keepdim=True)

    def teachers(y):
        return torch.stack(
            [teacher(y, sub, 0.6 if i == 0 else 0.9) for i, sub in enumerate(subdomains)]
        )

    (train_x, train_y), (test_x, test_y) = draw(n), draw(m)
    return FeatureSet(
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        teacher_train_probs=teachers(train_y),
        teacher_test_probs=teachers(test_y),
        levels=levels,
        subdomains=subdomains,
    ).validate()


def crash_on_call(monkeypatch, module, name: str, call: int) -> None:
    """Make `module.name` raise RuntimeError("simulated crash") at its `call`-th call (from 1),
    and behave as before otherwise: a run killed at a chosen point, in-process."""
    original, calls = getattr(module, name), []

    def crashing(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise RuntimeError("simulated crash")
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, crashing)


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


CLI_ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def cli_command(run_dir: Path, *overrides: str, cache_dir: Path | None = None) -> list[str]:
    """`python -m csl_avalanche.run` writing into run_dir (cache beside it unless given)."""
    cache = cache_dir or run_dir.parent / "cache"
    return [
        sys.executable,
        "-m",
        "csl_avalanche.run",
        f"hydra.run.dir={run_dir}",
        f"cache_dir={cache}",
        "progress=false",
        *overrides,
    ]


def run_cli(run_dir: Path, *overrides: str, cache_dir: Path | None = None) -> dict:
    """Run `python -m csl_avalanche.run` in a subprocess; return its results.json."""
    cmd = cli_command(run_dir, *overrides, cache_dir=cache_dir)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=CLI_ENV, cwd=run_dir.parent)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads((run_dir / "results.json").read_text())


@dataclass
class CliOutcome:
    """What `python -m csl_avalanche.run` did: exit code and what it printed."""

    code: int
    out: str
    err: str


def cli(run_dir: Path, *overrides: str, cache_dir: Path | None = None) -> CliOutcome:
    """Run the command line's `main` in this process (as `python -m csl_avalanche.run` would,
    without the seconds of a new interpreter): for the many bad-input cases."""
    from csl_avalanche.run import main

    cache = cache_dir or run_dir.parent / "cache"
    argv = [f"hydra.run.dir={run_dir}", f"cache_dir={cache}", "progress=false", *overrides]
    out, err = io.StringIO(), io.StringIO()
    saved = sys.argv
    sys.argv = ["csl_avalanche.run", *argv]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = saved
    return CliOutcome(code, out.getvalue(), err.getvalue())


def assert_clean_error(outcome: CliOutcome, *phrases: str) -> str:
    """The run stopped with exit code 2 and one `error: ...` line (no traceback) that contains
    every phrase; returns the message."""
    lines = [line for line in outcome.err.splitlines() if line.strip()]
    assert "Traceback" not in outcome.err, outcome.err
    assert outcome.code == 2, f"exit code {outcome.code}:\n{outcome.err}"
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, outcome.err
    for phrase in phrases:
        assert phrase in errors[0], f"{phrase!r} not in {errors[0]!r}"
    return errors[0]


def features_from_config(cfg, cache, seed: int = 0):
    """The FeatureSet the composed config `cfg` describes, built into `cache`, as a run builds
    it: the settings read (and checked) by the schema, then the benchmark's source."""
    import csl_avalanche.benchmarks.sources  # noqa: F401 - registers the sources
    from csl_avalanche.benchmarks.registry import SourceContext, build_features
    from csl_avalanche.experiments.schema import read_settings

    settings = read_settings(cfg)
    context = SourceContext(cache, seed, settings.device, settings.progress)
    return build_features(settings.source, context)
