"""Subdomains that are input domains (DomainNet): every teacher knows every class, the
hierarchy partitions domains, the test stream is split by domain."""

from __future__ import annotations

import pytest
import torch

from csl_avalanche.benchmarks.features import (
    FeatureSet,
    FeaturesFileError,
    load_features,
    save_features,
)
from csl_avalanche.benchmarks.streams import make_csl_benchmark
from csl_avalanche.core.errors import ConfigError
from csl_avalanche.core.estep import level_results
from csl_avalanche.training.plugins.cosupervision import CoSupervisionPlugin


def domain_feature_set(n: int = 40, m: int = 20, c: int = 3) -> FeatureSet:
    """Two domains; teacher 0 the generalist, teachers 1 and 2 the domain specialists."""
    g = torch.Generator().manual_seed(0)
    train_y, test_y = torch.arange(n) % c, torch.arange(m) % c
    train_d, test_d = (torch.arange(n) // c) % 2, (torch.arange(m) // c) % 2

    def probs(k):
        return torch.rand(3, k, c, generator=g).softmax(dim=2)

    return FeatureSet(
        train_x=torch.randn(n, 4, generator=g),
        train_y=train_y,
        test_x=torch.randn(m, 4, generator=g),
        test_y=test_y,
        teacher_train_probs=probs(n),
        teacher_test_probs=probs(m),
        levels=[[0], [1, 2]],
        subdomains=[[0, 1], [0], [1]],
        train_domains=train_d,
        test_domains=test_d,
    ).validate()


def test_hierarchy_partitions_domains_and_the_test_stream_splits_by_domain():
    features = domain_feature_set()
    assert features.by_domain and features.num_units == 2 and features.num_classes == 3
    assert features.hierarchy.as_lists() == [[[0, 1]], [[0], [1]]]
    benchmark = make_csl_benchmark(features)
    assert benchmark.subdomain_names() == ["domains_0", "domains_1"]
    sizes = [len(exp.dataset) for exp in benchmark.test_stream]
    assert sizes == [int((features.test_domains == d).sum()) for d in (0, 1)]


def test_features_file_keeps_domains(tmp_path):
    features = domain_feature_set()
    save_features(features, tmp_path / "f.pt")
    loaded = load_features(tmp_path / "f.pt")
    assert torch.equal(loaded.test_domains, features.test_domains)
    plain = {k: v for k, v in torch.load(tmp_path / "f.pt").items() if "domains" not in k}
    plain["subdomains"] = [[0, 1, 2], [0, 1], [2]]
    torch.save(plain, tmp_path / "plain.pt")  # files without the domain fields still load
    assert not load_features(tmp_path / "plain.pt").by_domain


def test_domains_outside_the_hierarchy_are_rejected():
    features = domain_feature_set()
    bad = features.train_domains.clone()
    bad[0] = 5
    with pytest.raises(FeaturesFileError, match="train_domains holds domains outside 0..1"):
        FeatureSet(**{**features.__dict__, "train_domains": bad}).validate()


def test_assignment_by_class_is_rejected_and_the_oracle_uses_domains():
    features = domain_feature_set()
    logits = torch.randn(len(features.train_y), features.num_classes)
    with pytest.raises(ConfigError, match="use strategy.assignment=likelihood or kl"):
        CoSupervisionPlugin(features, assignment="class_partition")  # refused when built
    oracle = CoSupervisionPlugin(features, assignment="oracle")
    results = level_results(
        features,
        features.hierarchy.teacher_slice(1),
        lambda rows: logits[rows],
        rule="oracle",
        labels="hard",
        criterion="all",
        class_to_teacher=features.hierarchy.class_to_teacher(1),
        targets=oracle._oracle_units(),
        chunk_size=7,
    )
    assert torch.equal(results.assignment, features.train_domains)
