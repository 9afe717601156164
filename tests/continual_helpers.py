"""Runs a CSL student on a tiny feature set through the Python API, as the forgetting tests do."""

from __future__ import annotations

import pytest
import torch
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.plugins import EvaluationPlugin
from conftest import REPO

from csl_avalanche.benchmarks.features import FeatureSet
from csl_avalanche.benchmarks.streams import make_csl_benchmark
from csl_avalanche.evaluation.metrics import SubdomainForgettingMetric
from csl_avalanche.models.factories import linear_probe
from csl_avalanche.strategies import CSLStrategy
from csl_avalanche.training.plugins.continual import build_continual_plugins

PLUGINS = "avalanche.training.plugins."
SHIPPED_FILES = sorted((REPO / "configs" / "plugins").glob("*.yaml"))
# Shipped plugins refused in a scenario (co-supervised replay rehearses earlier arrivals).
REFUSED_IN = {("csl_replay", "levels")}
SHIPPED_CASES = [
    pytest.param(path, scenario, id=f"{path.stem}-{scenario}")
    for path in SHIPPED_FILES
    for scenario in ("levels", "class_incremental")
    if (path.stem, scenario) not in REFUSED_IN
]
SMALL_PLUGINS = {
    "replay": {"_target_": PLUGINS + "ReplayPlugin", "mem_size": 40, "batch_size_mem": 8},
    "ewc": {"_target_": PLUGINS + "EWCPlugin", "ewc_lambda": 10.0},
    "lwf": {"_target_": PLUGINS + "LwFPlugin", "alpha": 1.0, "temperature": 2.0},
}


def make_csl(
    features: FeatureSet,
    plugin_names: tuple[str, ...] = (),
    *,
    labels: str = "hard",
    reinit_student: bool = False,
    probes: tuple = (),
    epochs: int = 2,
    **options,
) -> tuple[CSLStrategy, SubdomainForgettingMetric]:
    """A small seeded CSL strategy with the named anti-forgetting plugins (SMALL_PLUGINS) and
    a forgetting metric; `options` go to CSLStrategy (e.g. loss=)."""
    torch.manual_seed(0)
    names = make_csl_benchmark(features).subdomain_names()
    forgetting = SubdomainForgettingMetric(names)
    plugins = build_continual_plugins({name: SMALL_PLUGINS[name] for name in plugin_names})
    strategy = CSLStrategy(
        model=linear_probe(features.train_x.shape[1], features.num_classes),
        features=features,
        labels=labels,
        reinit_student=reinit_student,
        lr=0.01,
        epochs=epochs,
        batch_size=16,
        device="cpu",
        evaluator=EvaluationPlugin(
            accuracy_metrics(experience=True, stream=True), forgetting, loggers=[]
        ),
        plugins=[*plugins, *probes],
        **options,
    )
    return strategy, forgetting


def arrival_csl(features: FeatureSet, *plugins, **options) -> CSLStrategy:
    """A small seeded continual CSL strategy for the class-incremental stream (batches of 8:
    its arrivals are small) with `plugins`; `options` go to CSLStrategy (e.g. labels=)."""
    torch.manual_seed(0)
    return CSLStrategy(
        model=linear_probe(features.train_x.shape[1], features.num_classes),
        features=features,
        reinit_student=False,
        lr=0.01,
        epochs=2,
        batch_size=8,
        device="cpu",
        evaluator=EvaluationPlugin(loggers=[]),
        plugins=list(plugins),
        **options,
    )


def run_csl(features: FeatureSet, plugin_names: tuple[str, ...] = (), **kwargs):
    """Train every level, evaluating the test stream after each; returns (strategy, metric).
    Seeded, so that the outcome does not depend on which tests ran before."""
    strategy, forgetting = make_csl(features, plugin_names, **kwargs)
    benchmark = make_csl_benchmark(features)
    for experience in benchmark.train_stream:
        strategy.train(experience, eval_streams=[])
        strategy.eval(benchmark.test_stream)
    return strategy, forgetting
