"""Checks of a finished run's results.json against the features it cached (for the CLI
end-to-end tests): numbers recomputed independently of the code that printed them."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import features_from_config
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from csl_avalanche.benchmarks.streams import make_csl_benchmark
from csl_avalanche.storage.cache import TensorCache


def compose_config(*overrides: str) -> DictConfig:
    """The configuration `python -m csl_avalanche.run` composes from these overrides."""
    with initialize_config_module(config_module="csl_avalanche.configs", version_base="1.3"):
        return compose(config_name="config", overrides=["progress=false", *overrides])


def check_against_cached_features(results: dict, cache: Path, *overrides: str) -> None:
    """The run's numbers agree with the features it cached: the weak accuracy is the
    generalist's argmax accuracy on the test split, and each level's student accuracy is the
    mean of its per-subdomain accuracies weighted by the subdomains' test sizes."""
    store = TensorCache(cache)
    features = features_from_config(compose_config(*overrides), store, seed=results["seed"])
    assert store.misses == 0  # the very features the run used
    generalist = features.teacher_test_probs[0].argmax(dim=1)
    weak = (generalist == features.test_y).float().mean().item()
    assert results["weak_accuracy"] == pytest.approx(weak)
    benchmark = make_csl_benchmark(features)
    names = benchmark.subdomain_names()
    sizes = [len(experience.dataset) for experience in benchmark.test_stream]
    assert sum(sizes) == len(features.test_y)
    for level in results["levels"]:
        accuracies = [level["subdomain_accuracy"][name] for name in names]
        weighted = sum(a * n for a, n in zip(accuracies, sizes, strict=True)) / sum(sizes)
        assert level["student_accuracy"] == pytest.approx(weighted)
