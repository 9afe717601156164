"""Isolation: a strategy leaves the benchmark as it found it, ground truth reaches no label the
student trains on (only the `oracle` rule and the diagnostics read it), and the soft-label loss
refuses a column that is not a matrix of soft targets."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from avalanche.benchmarks.scenarios.dataset_scenario import DatasetExperience
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin
from test_domain_subdomains import domain_feature_set
from test_strategy import make_csl

from csl_avalanche.benchmarks.features import FeatureSet
from csl_avalanche.benchmarks.streams import labelled_dataset, make_csl_benchmark
from csl_avalanche.core import cosupervision as cs
from csl_avalanche.strategies import StudentTemplate
from csl_avalanche.training.loader import materialize

pytestmark = pytest.mark.usefixtures("single_threaded")

# Diagnostics: the only level statistics allowed to depend on the pool's ground truth.
DIAGNOSTICS = ("teacher_accuracy", "label_precision", "label_recall", "assignment_accuracy")


class KeptData(SupervisedPlugin):
    """Records, per level, the dataset the student trains on: [x, y, (soft target,) task]."""

    def __init__(self):
        super().__init__()
        self.levels: list[list[torch.Tensor]] = []

    def after_train_dataset_adaptation(self, strategy, **kwargs):
        self.levels.append(materialize(strategy.experience.dataset))


def train_every_level(features: FeatureSet, benchmark, **options) -> tuple[list[dict], list]:
    """Per level: the statistics (without timings) and the student's test accuracy after it;
    and the datasets the student trained on."""
    kept = KeptData()
    strategy = make_csl(features, plugins=[kept], **options)
    levels = []
    for experience in benchmark.train_stream:
        strategy.train(experience, eval_streams=[])
        stats = strategy.level_statistics[-1].as_dict()
        del stats["estep_seconds"]
        with torch.no_grad():
            predictions = strategy.model(features.test_x).argmax(dim=1)
        accuracy = (predictions == features.test_y).float().mean().item()
        levels.append({**stats, "test_accuracy": accuracy})
    return levels, kept.levels


def stream_contents(benchmark) -> list[tuple]:
    return [
        (len(e.dataset), len(e.dataset[0]), list(e.dataset.targets), hasattr(e, "level_statistics"))
        for e in benchmark.train_stream
    ]


def test_two_strategies_on_one_benchmark_leave_its_stream_alone_and_match_fresh_runs(
    tiny_features,
):
    shared = make_csl_benchmark(tiny_features)
    before = stream_contents(shared)
    hard, _ = train_every_level(tiny_features, shared, labels="hard", denoise="top1")
    soft, _ = train_every_level(tiny_features, shared, labels="soft", denoise="top1")
    assert hard[1]["keep_rate"] < 1 and soft[1]["keep_rate"] < 1  # level 1 really filtered

    # The stream still holds the whole pool with its generalist-routed labels, 3 columns
    # (no soft targets), and no level's statistics: no strategy wrote to it.
    assert stream_contents(shared) == before
    assert [entry[:2] for entry in before] == [(len(tiny_features.train_y), 3)] * 2

    # Each strategy's results are those of the same strategy on a benchmark of its own.
    fresh = make_csl_benchmark(tiny_features)
    assert hard == train_every_level(tiny_features, fresh, labels="hard", denoise="top1")[0]
    fresh = make_csl_benchmark(tiny_features)
    assert soft == train_every_level(tiny_features, fresh, labels="soft", denoise="top1")[0]


class LevelDatasets(SupervisedPlugin):
    """After each level: the length of the experience dataset that EWC and LwF read then."""

    def __init__(self):
        super().__init__()
        self.lengths: list[int] = []

    def after_training_exp(self, strategy, **kwargs):
        self.lengths.append(len(strategy.experience.dataset))


def test_replay_and_the_after_level_plugins_see_the_kept_data_of_the_copy(tiny_features):
    n = len(tiny_features.train_y)
    read = LevelDatasets()
    replay = ReplayPlugin(mem_size=2 * n)  # room for every sample of both levels
    strategy = make_csl(tiny_features, plugins=[replay, read], denoise="top1")
    benchmark = make_csl_benchmark(tiny_features)
    for experience in benchmark.train_stream:
        strategy.train(experience, eval_streams=[])
    kept = [round(s.keep_rate * n) for s in strategy.level_statistics]
    assert kept[0] == n and kept[1] < n
    assert read.lengths == kept
    assert len(replay.storage_policy.buffer) == sum(kept)
    assert [len(e.dataset) for e in benchmark.train_stream] == [n, n]


def without_diagnostics(level: dict) -> dict:
    return {key: value for key, value in level.items() if key not in DIAGNOSTICS}


def permuted_ground_truth(features: FeatureSet) -> FeatureSet:
    """The same pool with its classes (and domains) shuffled across samples."""
    order = torch.randperm(len(features.train_y), generator=torch.Generator().manual_seed(1))
    changes = {"train_y": features.train_y[order]}
    if features.by_domain:
        changes["train_domains"] = features.train_domains[order]
    permuted = dataclasses.replace(features, **changes).validate()
    assert (permuted.units("train") != features.units("train")).float().mean() > 0.3
    return permuted


@pytest.mark.parametrize(
    "by_domain, rule, labels",
    [
        (False, rule, labels)
        for rule in ("class_partition", "likelihood", "kl", "posterior")
        for labels in ("hard", "soft")
    ]
    + [(True, rule, labels) for rule in ("likelihood", "kl") for labels in ("hard", "soft")],
)
def test_permuting_the_ground_truth_changes_no_label_and_no_result(
    tiny_features, by_domain, rule, labels
):
    features = domain_feature_set(n=96) if by_domain else tiny_features
    options = {"assignment": rule, "labels": labels, "denoise": "top2" if by_domain else "top1"}
    results, trained_on = train_every_level(features, make_csl_benchmark(features), **options)
    permuted = permuted_ground_truth(features)
    results_p, trained_on_p = train_every_level(permuted, make_csl_benchmark(permuted), **options)

    # The selection had something to choose (likelihood labels each sample with the teacher
    # most confident in the student's own top-1 class, which top1 then keeps every time; so
    # does posterior here, whose mixture leans on that teacher).
    if rule not in ("likelihood", "posterior"):
        assert results[1]["keep_rate"] < 1
    # Kept samples, their labels and soft targets, level by level, are the same tensors.
    assert len(trained_on) == len(trained_on_p) == 2
    for columns, columns_p in zip(trained_on, trained_on_p, strict=True):
        assert len(columns) == len(columns_p) == (4 if labels == "soft" else 3)
        assert all(torch.equal(a, b) for a, b in zip(columns, columns_p, strict=True))
    # Epochs, keep rates and the student's test accuracy agree; only the diagnostics, which
    # read the permuted ground truth, differ.
    assert results[1]["teacher_accuracy"] != results_p[1]["teacher_accuracy"]
    assert [without_diagnostics(r) for r in results] == [without_diagnostics(r) for r in results_p]


@pytest.mark.parametrize("rule", cs.TARGET_RULES)
def test_assign_teachers_is_given_ground_truth_for_the_oracle_only(
    tiny_features, monkeypatch, rule
):
    benchmark = make_csl_benchmark(tiny_features)
    given = []
    assign = cs.assign_teachers

    def spy(*args, targets=None, **kwargs):
        given.append(targets)
        return assign(*args, targets=targets, **kwargs)

    monkeypatch.setattr(cs, "assign_teachers", spy)
    strategy = make_csl(tiny_features, assignment=rule, denoise="all")
    for experience in benchmark.train_stream:
        strategy.train(experience, eval_streams=[])
    if rule in ("ensemble", "posterior"):
        assert given == []  # a mixture of the teachers, weighted or not, assigns none
    elif rule == "oracle":
        assert len(given) == 1 and torch.equal(given[0], tiny_features.train_y)
    else:
        assert given == [None]


def soft_student(features: FeatureSet) -> StudentTemplate:
    torch.manual_seed(0)
    return StudentTemplate(
        model=torch.nn.Linear(features.train_x.shape[1], features.num_classes),
        lr=0.05,
        epochs=1,
        batch_size=16,
        labels="soft",
        evaluator=EvaluationPlugin(),
    )


def experience_of(features: FeatureSet, soft_targets: torch.Tensor | None) -> DatasetExperience:
    dataset = labelled_dataset(features.train_x, features.train_y, soft_targets)
    return DatasetExperience(dataset=dataset, current_experience=0)


def test_soft_loss_refuses_a_dataset_without_soft_targets(tiny_features):
    """[x, y, task]: column 2 is the task label, which cross_entropy would take for classes."""
    with pytest.raises(ValueError) as error:
        soft_student(tiny_features).train(experience_of(tiny_features, None), eval_streams=[])
    message = str(error.value)
    assert "labels='soft' needs datasets of [x, y, soft_target, task]" in message
    assert "got a 3-column batch whose column 2 is torch.int64 of shape [16]" in message
    assert "a floating [16, 4] batch" in message


def test_soft_loss_refuses_soft_targets_of_the_wrong_width(tiny_features):
    wide = torch.full((len(tiny_features.train_y), 5), 0.2)
    with pytest.raises(ValueError, match=r"column 2 is torch.float32 of shape \[16, 5\]"):
        soft_student(tiny_features).train(experience_of(tiny_features, wide), eval_streams=[])


def test_soft_loss_refuses_targets_that_are_not_probabilities(tiny_features):
    logits = torch.randn(len(tiny_features.train_y), tiny_features.num_classes)
    with pytest.raises(ValueError, match="not a probability vector per sample .*row sums"):
        soft_student(tiny_features).train(experience_of(tiny_features, logits), eval_streams=[])


class FirstStep(SupervisedPlugin):
    """The loss and the gradients of the first training step."""

    def __init__(self):
        super().__init__()
        self.loss, self.grads = None, None

    def after_backward(self, strategy, **kwargs):
        if self.loss is None:
            self.loss = strategy.loss.item()
            self.grads = [p.grad.clone() for p in strategy.model.parameters()]


def test_soft_loss_is_the_cross_entropy_with_the_soft_targets():
    """By hand: logits (log 3, 0) for both samples, so the student says (3/4, 1/4); targets
    (3/4, 1/4) and (1/10, 9/10). Loss: the mean of -(.75 log .75 + .25 log .25) = 0.5623 and
    -(.1 log .75 + .9 log .25) = 1.2764. Gradient of the logits: (softmax - target) / 2 =
    (0, 0) and (.325, -.325); the inputs (1, 0) and (0, 2) give the weights' (0, .65) and
    (0, -.65). Hard labels (0 and 1) would give (-.125, .5) and (.125, -.5)."""
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([math.log(3), 0.0]))
    first = FirstStep()
    student = StudentTemplate(
        model=model,
        lr=0.1,
        epochs=1,
        batch_size=2,
        labels="soft",
        plugins=[first],
        evaluator=EvaluationPlugin(),
    )
    soft = torch.tensor([[0.75, 0.25], [0.1, 0.9]])
    dataset = labelled_dataset(torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 1]), soft)
    student.train(DatasetExperience(dataset=dataset, current_experience=0), eval_streams=[])
    assert first.loss == pytest.approx((0.5623351 + 1.2764331) / 2, rel=1e-5)
    weight, bias = first.grads
    torch.testing.assert_close(weight, torch.tensor([[0.0, 0.65], [0.0, -0.65]]))
    torch.testing.assert_close(bias, torch.tensor([0.325, -0.325]))
