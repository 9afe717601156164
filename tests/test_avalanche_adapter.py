"""Any Avalanche class-incremental benchmark as a CSL stream, on in-memory tensors (offline)."""

from __future__ import annotations

import pytest
import torch
from avalanche.benchmarks.scenarios.deprecated.generators import nc_benchmark, ni_benchmark
from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.plugins import EvaluationPlugin
from torch import nn
from torch.utils.data import TensorDataset

from csl_avalanche.benchmarks.avalanche_adapter import (
    AvalancheAdapterError,
    avalanche_hierarchy,
    csl_benchmark_from_avalanche,
    features_from_avalanche,
    pairwise_groups,
    stream_tensors,
)
from csl_avalanche.benchmarks.settings import Budget
from csl_avalanche.core.errors import ConfigError
from csl_avalanche.models.factories import linear_probe
from csl_avalanche.storage.cache import InvalidValueError, TensorCache
from csl_avalanche.strategies import CSLStrategy

CLASS_ORDER = [3, 0, 5, 1, 2, 4]  # experiences {0, 3}, {1, 5}, {2, 4}
DIM = 6


def clusters(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(6, DIM, generator=torch.Generator().manual_seed(99)) * 3
    y = torch.arange(n) % 6
    return centers[y] + 0.5 * torch.randn(n, DIM, generator=g), y


def split_benchmark(kind: str = "nc"):
    (x, y), (xt, yt) = clusters(360, 0), clusters(120, 1)
    if kind == "nc":  # the legacy generator behind SplitMNIST, SplitCIFAR100, ...
        return nc_benchmark(
            TensorDataset(x, y),
            TensorDataset(xt, yt),
            3,
            task_labels=False,
            fixed_class_order=CLASS_ORDER,
        )
    make = _make_taskaware_tensor_classification_dataset
    return class_incremental_benchmark(
        {"train": make(x, y, targets=y), "test": make(xt, yt, targets=yt)},
        class_order=CLASS_ORDER,
        num_experiences=3,
    )


def test_pairwise_groups():
    assert pairwise_groups(2) == []
    assert pairwise_groups(4) == [[[0, 1], [2, 3]]]
    assert pairwise_groups(5) == [[[0, 1, 2, 3], [4]], [[0, 1], [2, 3], [4]]]


@pytest.mark.parametrize("kind", ["nc", "class_incremental"])
def test_hierarchy_from_experiences(kind):
    bench = split_benchmark(kind)
    hierarchy = avalanche_hierarchy(bench)  # pairwise: 1 -> 2 -> 3
    assert hierarchy.as_lists() == [
        [[0, 1, 2, 3, 4, 5]],
        [[0, 1, 3, 5], [2, 4]],
        [[0, 3], [1, 5], [2, 4]],
    ]
    assert avalanche_hierarchy(bench, groups=[]).teachers_per_level() == [1, 3]
    grouped = avalanche_hierarchy(bench, groups=[[[0], [1, 2]]])
    assert grouped.levels[1] == ((0, 3), (1, 2, 4, 5))


def test_bad_groups_and_overlapping_classes():
    bench = split_benchmark()
    with pytest.raises(AvalancheAdapterError, match="names experiences \\[7\\]"):
        avalanche_hierarchy(bench, groups=[[[0, 1], [7]]])
    with pytest.raises(AvalancheAdapterError, match="do not form a hierarchy"):
        avalanche_hierarchy(bench, groups=[[[0], [1]]])  # experience 2 left out
    with pytest.raises(AvalancheAdapterError, match="single group"):
        avalanche_hierarchy(bench, groups=[[[0, 1, 2]]])
    x, y = clusters(60, 0)
    new_instances = ni_benchmark(TensorDataset(x, y), TensorDataset(x, y), 2, task_labels=False)
    with pytest.raises(AvalancheAdapterError, match="disjoint class sets"):
        avalanche_hierarchy(new_instances)


def mlp():
    return nn.Sequential(nn.Linear(DIM, 16), nn.ReLU())


def linear_teacher():
    return nn.Linear(DIM, 6)


def test_built_models_give_a_csl_stream(tmp_path):
    bench = split_benchmark()
    cache = TensorCache(tmp_path)
    kwargs = dict(
        make_backbone=mlp,
        backbone_budget=Budget(50, 32, 0.01),
        make_teacher=linear_teacher,
        teacher_budget=Budget(30, 16, 0.01),
        cache=cache,
        seed=0,
    )
    csl = csl_benchmark_from_avalanche(bench, **kwargs)
    features = csl.features
    assert features.hierarchy.teachers_per_level() == [1, 2, 3]
    # default splits: pretrain/teachers/pool 0.2/0.3/0.5 of the 360 train samples
    assert features.train_x.shape == (180, 16)
    assert features.teacher_train_probs.shape == (6, 180, 6)
    assert len(features.test_y) == 120  # the benchmark's whole test stream
    assert len(csl.train_stream) == 3
    assert csl.subdomain_names() == ["classes_0-3", "classes_1-5", "classes_2-4"]
    assert len(csl.test_stream) == 3
    # the train stream carries teacher labels, never ground truth
    level0_y = torch.tensor([int(s[1]) for s in csl.train_stream[0].dataset])
    assert torch.equal(level0_y, features.teacher_train_probs[0].argmax(dim=1))
    misses = cache.misses
    again = features_from_avalanche(bench, **kwargs)
    assert cache.misses == misses  # all from the cache
    assert torch.equal(again.teacher_train_probs, features.teacher_train_probs)

    # the CSL strategy runs on it, coarse to fine
    strategy = CSLStrategy(
        model=linear_probe(16, 6),
        features=features,
        lr=0.05,
        epochs=10,
        batch_size=32,
        seed=0,
        evaluator=EvaluationPlugin(accuracy_metrics(stream=True), loggers=[]),
    )
    for experience in strategy.levels(csl.train_stream):
        strategy.train(experience, eval_streams=[])
    accuracy = strategy.eval(csl.test_stream)["Top1_Acc_Stream/eval_phase/test_stream"]
    assert accuracy > 0.5


def test_supplied_models(tmp_path):
    bench = split_benchmark("class_incremental")
    torch.manual_seed(0)
    backbone = mlp()
    teachers = [linear_teacher() for _ in range(6)]
    features = features_from_avalanche(
        bench, backbone=backbone, teachers=teachers, cache=tmp_path, seed=1
    )
    assert len(features.train_y) == 360  # no pretraining or teacher split needed: all pool
    x_pool, y_pool = stream_tensors(bench.train_stream)
    assert torch.equal(features.train_y, y_pool)
    with torch.no_grad():
        assert torch.allclose(features.train_x, backbone(x_pool))
        for k, teacher in enumerate(teachers):
            assert torch.allclose(features.teacher_train_probs[k], teacher(x_pool).softmax(1))
    with pytest.raises(AvalancheAdapterError, match="holds 2 models.*needs 6"):
        features_from_avalanche(bench, backbone=backbone, teachers=teachers[:2], cache=tmp_path)
    with pytest.raises(AvalancheAdapterError, match="exactly one of backbone= and make_backbone="):
        features_from_avalanche(bench, teachers=teachers, cache=tmp_path)


def test_a_backbone_with_nan_outputs_is_refused_and_not_cached(tmp_path):
    bench = split_benchmark()
    backbone = mlp()
    with torch.no_grad():
        backbone[0].bias[3] = float("nan")
    teachers = [linear_teacher() for _ in range(6)]
    message = r"embeddings\['pool'\] holds NaN at index \[0, 0, 3\].*check their weights"
    with pytest.raises(InvalidValueError, match=message):
        features_from_avalanche(bench, backbone=backbone, teachers=teachers, cache=tmp_path)
    assert not list(tmp_path.glob("embeddings-*"))


def test_supplied_backbone_with_trained_teachers(tmp_path):
    bench = split_benchmark()
    features = features_from_avalanche(
        bench,
        backbone=mlp(),
        make_teacher=linear_teacher,
        teacher_budget=Budget(30, 16, 0.01),
        splits={"teachers": 0.5, "pool": 0.5},
        cache=tmp_path,
    )
    assert len(features.train_y) == 180
    generalist = features.teacher_test_probs[0].argmax(dim=1)
    assert (generalist == features.test_y).float().mean() > 0.5
    with pytest.raises(AvalancheAdapterError, match="splits must name exactly"):
        features_from_avalanche(
            bench,
            backbone=mlp(),
            make_teacher=linear_teacher,
            teacher_budget=Budget(30, 16, 0.01),
            splits={"pretrain": 0.2, "pool": 0.5},
            cache=tmp_path,
        )


def test_auto_groups_join_the_experiences_whose_classes_the_probe_confuses(tmp_path):
    (x, y), (xt, yt) = clusters(360, 0), clusters(120, 1)
    x[y == 1] = x[y == 0]  # class 1 (experience 1) looks exactly like class 0 (experience 0)
    bench = nc_benchmark(
        TensorDataset(x, y), TensorDataset(xt, yt), 3, task_labels=False,
        fixed_class_order=CLASS_ORDER,
    )  # fmt: skip
    kwargs = dict(
        make_backbone=mlp,
        backbone_budget=Budget(20, 32, 0.01),
        make_teacher=linear_teacher,
        teacher_budget=Budget(60, 16, 0.05),
        cache=TensorCache(tmp_path),
        seed=0,
    )
    features = features_from_avalanche(bench, groups="auto", auto_levels=[2], **kwargs)
    assert features.hierarchy.as_lists() == [
        [[0, 1, 2, 3, 4, 5]],
        [[0, 1, 3, 5], [2, 4]],
        [[0, 3], [1, 5], [2, 4]],
    ]
    with pytest.raises(ConfigError, match=r"auto_levels=\[3\].*2\.\.2"):
        features_from_avalanche(bench, groups="auto", auto_levels=[3], **kwargs)
    supplied = {**kwargs, "make_teacher": None, "teachers": [linear_teacher()] * 6}
    with pytest.raises(AvalancheAdapterError, match="make_teacher="):
        features_from_avalanche(bench, groups="auto", auto_levels=[2], **supplied)


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(DIM, 6)

    def forward(self, x):
        return self.linear(x)


class SquashedHead(Head):
    def forward(self, x):
        return 4 * torch.tanh(self.linear(x))


SquashedHead.__name__ = "Head"  # the same repr as Head's, another forward


def built_by(cls):
    return lambda: cls()  # one line of source for every class


def zero_init(model: nn.Module) -> nn.Module:
    for parameter in model.parameters():
        nn.init.zeros_(parameter)
    return model


@pytest.mark.parametrize(
    "factories",
    [
        pytest.param((built_by(Head), built_by(SquashedHead)), id="forward"),
        pytest.param((linear_teacher, lambda: zero_init(linear_teacher())), id="init"),
    ],
)
def test_factories_with_equal_reprs_but_other_code_share_no_cache_entry(tmp_path, factories):
    bench = split_benchmark()
    assert repr(factories[0]()) == repr(factories[1]())
    for factory in factories:
        features_from_avalanche(
            bench,
            groups="auto",
            auto_levels=[2],
            make_backbone=factory,
            backbone_budget=Budget(10, 16, 0.01),
            make_teacher=factory,
            teacher_budget=Budget(10, 16, 0.01),
            cache=tmp_path,
        )
    for entry in ("auto-confusion", "backbone", "teachers", "embeddings", "teacher-logits"):
        assert len(list(tmp_path.glob(f"{entry}-*.pt"))) == 2, entry


def test_supplied_models_with_equal_weights_but_other_code_share_no_cache_entry(tmp_path):
    bench = split_benchmark()
    torch.manual_seed(0)
    plain = Head()
    squashed = SquashedHead()
    squashed.load_state_dict(plain.state_dict())
    teachers = [linear_teacher() for _ in range(6)]
    for backbone in (plain, squashed):
        features_from_avalanche(bench, backbone=backbone, teachers=teachers, cache=tmp_path)
    assert len(list(tmp_path.glob("embeddings-*.pt"))) == 2


def test_auto_settings_that_cannot_work_are_refused_before_any_data_is_read(tmp_path):
    (x, y), (xt, yt) = clusters(120, 0), clusters(60, 1)
    two = nc_benchmark(TensorDataset(x, y), TensorDataset(xt, yt), 2, task_labels=False)
    kwargs = dict(backbone=mlp(), make_teacher=linear_teacher, teacher_budget=Budget(5, 8, 0.01))
    no_level = r'auto_levels=\[3\]: no level fits .* drop groups="auto"'
    with pytest.raises(ConfigError, match=no_level):
        features_from_avalanche(two, groups="auto", auto_levels=[3], cache=tmp_path, **kwargs)
    only_auto = 'auto_holdout= are used with groups="auto" only'
    with pytest.raises(AvalancheAdapterError, match=only_auto):
        features_from_avalanche(split_benchmark(), auto_holdout=0.3, cache=tmp_path, **kwargs)
    assert not list(tmp_path.glob("*.pt"))
