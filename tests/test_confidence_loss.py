"""The auxiliary confidence loss (csl_avalanche.core.confidence_loss) on cases computed by hand and
against a pair-by-pair reading of the greedy rule; then in the strategies (its ramp over each
level's steps) and on the command line (alpha 0 is plain cross-entropy; every strategy, both
label kinds, the class-incremental scenario, the continual plugins)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from avalanche.training.plugins import EvaluationPlugin, SupervisedPlugin
from conftest import cli, make_feature_set
from continual_helpers import SMALL_PLUGINS

from csl_avalanche.benchmarks.features import save_features
from csl_avalanche.benchmarks.streams import make_csl_benchmark
from csl_avalanche.core.confidence_loss import (
    WeightRamp,
    hardened_labels,
    logconf_loss,
    teacher_classes,
)
from csl_avalanche.models.factories import linear_probe
from csl_avalanche.strategies import CSLStrategy
from csl_avalanche.training.plugins.continual import build_continual_plugins


def greedy_by_pairs(probs: torch.Tensor, quota: torch.Tensor) -> torch.Tensor:
    """The greedy balanced assignment as its docstring words it, one pair at a time."""
    batch, classes = probs.shape
    pairs = sorted(
        ((probs[i, c].item(), i, c) for i in range(batch) for c in range(classes)),
        key=lambda pair: (-pair[0], pair[1], pair[2]),
    )
    labels, left = [-1] * batch, quota.tolist()
    for _, i, c in pairs:
        if labels[i] < 0 and left[c] > 0:
            labels[i], left[c] = c, left[c] - 1
    return torch.tensor(labels)


def test_hardening_keeps_the_teacher_counts_by_hand():
    # Pairs by probability: (s2, c0) 0.7 takes class 0's one place; (s0, c0) 0.6 and
    # (s1, c0) 0.5 find it full; (s1, c1) 0.4, then (s0, c1) 0.3 fill class 1. The argmax
    # would give class 0 to all three.
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.7, 0.2, 0.1]])
    assert hardened_labels(probs, torch.tensor([1, 2, 0])).tolist() == [1, 1, 0]


def test_hardening_over_several_rounds_by_hand():
    # (s0, c0) 0.9 takes class 0; s1 and s2 then go to class 1, highest first.
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]])
    assert hardened_labels(probs, torch.tensor([1, 2])).tolist() == [0, 1, 1]
    assert hardened_labels(probs, torch.tensor([2, 1])).tolist() == [0, 0, 1]
    assert hardened_labels(probs, torch.tensor([0, 3])).tolist() == [1, 1, 1]


def test_hardening_ties_go_to_the_lower_sample_then_the_lower_class():
    probs = torch.full((2, 2), 0.5)
    assert hardened_labels(probs, torch.tensor([1, 1])).tolist() == [0, 1]
    assert hardened_labels(probs, torch.tensor([2, 0])).tolist() == [0, 0]


def test_hardening_with_ample_quota_is_the_argmax():
    probs = torch.tensor([[0.2, 0.8], [0.6, 0.4], [0.1, 0.9]])
    assert hardened_labels(probs, torch.tensor([1, 2])).tolist() == [1, 0, 1]


@pytest.mark.parametrize("seed", range(40))
def test_hardening_is_the_greedy_rule_and_keeps_every_count_exactly(seed):
    g = torch.Generator().manual_seed(seed)
    batch = int(torch.randint(1, 30, (1,), generator=g))
    classes = int(torch.randint(1, 8, (1,), generator=g))
    probs = torch.randn(batch, classes, generator=g).mul(2).softmax(dim=1)
    if seed % 2:  # many ties
        probs = (probs * 4).round() / 4
    teacher = torch.randint(classes, (batch,), generator=g)
    quota = torch.bincount(teacher, minlength=classes)
    labels = hardened_labels(probs, quota)
    assert torch.equal(labels, greedy_by_pairs(probs, quota))
    assert torch.equal(torch.bincount(labels, minlength=classes), quota)


def test_hardening_ranks_a_diverged_students_nans_last():
    probs = torch.tensor([[float("nan"), float("nan")], [0.3, 0.7], [0.6, 0.4]])
    assert hardened_labels(probs, torch.tensor([2, 1])).tolist() == [0, 1, 0]


def test_hardening_refuses_quotas_that_do_not_fit_the_batch():
    with pytest.raises(ValueError, match="summing to the batch size 3"):
        hardened_labels(torch.full((3, 2), 0.5), torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="each of the 2 classes"):
        hardened_labels(torch.full((3, 2), 0.5), torch.tensor([1, 1, 1]))


def test_teacher_classes_are_the_indices_or_the_rows_argmax():
    assert teacher_classes(torch.tensor([2, 0])).tolist() == [2, 0]
    rows = torch.tensor([[0.1, 0.2, 0.7], [0.4, 0.4, 0.2]])
    assert teacher_classes(rows).tolist() == [2, 0]


@pytest.mark.parametrize(
    "target", [torch.tensor([0, 2, 1, 2]), torch.tensor([[0.5, 0.25, 0.25]] * 4)]
)
def test_weight_zero_is_plain_cross_entropy_bit_for_bit(target):
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(logconf_loss(logits, target, 0.0), F.cross_entropy(logits, target))


def test_the_mixture_by_hand_and_no_gradient_through_the_hardened_labels():
    # Softmax of these logits: s0 and s1 both prefer class 0; the teacher says classes 0 and
    # 1 once each, so s0 (the more confident) keeps class 0 and s1 is hardened to class 1.
    logits = torch.tensor([[2.0, 0.0], [1.0, 0.0]], requires_grad=True)
    teacher = torch.tensor([1, 0])
    loss = logconf_loss(logits, teacher, 0.25)
    fixed = logits.detach().requires_grad_(True)
    expected = 0.75 * F.cross_entropy(fixed, teacher) + 0.25 * F.cross_entropy(
        fixed, torch.tensor([0, 1])
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    expected.backward()
    assert torch.allclose(logits.grad, fixed.grad)


def test_soft_targets_set_the_quota_by_their_argmax():
    logits = torch.tensor([[2.0, 0.0], [1.0, 0.0]])
    soft = torch.tensor([[0.4, 0.6], [0.9, 0.1]])
    expected = 0.5 * F.cross_entropy(logits, soft) + 0.5 * F.cross_entropy(
        logits, torch.tensor([0, 1])
    )
    assert logconf_loss(logits, soft, 0.5).item() == pytest.approx(expected.item(), rel=1e-6)


def test_the_weight_must_be_a_fraction():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        logconf_loss(torch.zeros(2, 2), torch.tensor([0, 1]), 1.5)


@pytest.mark.parametrize(
    ("step", "total", "alpha", "warmup", "weight"),
    [
        (0, 100, 0.5, 0.2, 0.0),  # the ramp starts at 0
        (10, 100, 0.5, 0.2, 0.25),  # halfway up the 20-step ramp
        (20, 100, 0.5, 0.2, 0.5),  # the top of the ramp
        (99, 100, 0.5, 0.2, 0.5),
        (0, 100, 0.75, 0.0, 0.75),  # no warm-up: alpha from the first step
        (50, 100, 0.8, 1.0, 0.4),  # the ramp over the whole level
        (0, 1, 0.5, 0.2, 0.0),
        (3, 10, 0.0, 0.5, 0.0),  # alpha 0 stays 0
    ],
)
def test_the_weight_ramps_linearly_to_alpha(step, total, alpha, warmup, weight):
    assert WeightRamp.for_level(total, alpha, warmup).weight(step) == pytest.approx(weight)


def test_a_level_planned_once_weighs_each_step_as_alpha_step_over_the_ramp_bit_for_bit():
    """What the ramp was before re-assignment could replan it: a level without passes keeps
    its numbers exactly."""
    ramp = WeightRamp.for_level(137, 0.5, 0.2)
    assert all(ramp.weight(step) == 0.5 * step / (0.2 * 137) for step in range(28))


@pytest.mark.parametrize(
    ("switch", "new_total", "expected"),
    [
        # 100 steps, alpha .5, warm-up .2: .025 per step. At step 8 (weight .2) the level now
        # has 50 steps: the rest of the ramp, .3, over steps 8..10 (end .2 * 50): .15 per step.
        (8, 50, {7: 0.175, 8: 0.2, 9: 0.35, 10: 0.5, 30: 0.5}),
        # 200 steps: the end moves to 40, .3 over 32 steps.
        (8, 200, {8: 0.2, 24: 0.2 + 0.3 * 16 / 32, 39: 0.2 + 0.3 * 31 / 32, 40: 0.5}),
        # 20 steps: the new end (4) has passed; the ramp ends at the next step.
        (8, 20, {8: 0.2, 9: 0.5}),
        # After the ramp: alpha stays.
        (30, 50, {30: 0.5, 31: 0.5}),
    ],
)
def test_a_replanned_ramp_keeps_the_weight_at_the_switch_and_ends_at_the_new_warmup(
    switch, new_total, expected
):
    ramp = WeightRamp.for_level(100, 0.5, 0.2)
    replanned = ramp.replanned(switch, new_total)
    for step, weight in expected.items():
        assert (ramp if step < switch else replanned).weight(step) == pytest.approx(weight)


# --- the student's loss in the strategies and on the command line ---------------------------

QUICK = ("strategy.epochs=3", "strategy.lr=0.05", "strategy.batch_size=16")


class WeightRecorder(SupervisedPlugin):
    """The confidence weight, step and level length at every training step."""

    def __init__(self):
        super().__init__()
        self.levels: list[list[tuple[int, int, float]]] = []

    def before_training_exp(self, strategy, **kwargs):
        self.levels.append([])

    def before_backward(self, strategy, **kwargs):
        step = strategy.clock.train_exp_iterations
        self.levels[-1].append((step, strategy.level_steps, strategy.confidence_weight()))


@pytest.mark.parametrize("plugins", [{}, {"replay": SMALL_PLUGINS["replay"]}])
def test_the_strategy_ramps_the_weight_over_each_levels_steps(tiny_features, plugins):
    recorder = WeightRecorder()
    strategy = CSLStrategy(
        model=linear_probe(tiny_features.train_x.shape[1], tiny_features.num_classes),
        features=tiny_features,
        loss="logconf",
        logconf_alpha=0.6,
        logconf_warmup=0.5,
        lr=0.01,
        epochs=2,
        batch_size=16,
        device="cpu",
        evaluator=EvaluationPlugin(loggers=[]),
        plugins=[*build_continual_plugins(plugins), recorder],
    )
    for experience in make_csl_benchmark(tiny_features).train_stream:
        strategy.train(experience, eval_streams=[])
    assert len(recorder.levels) == 2
    for level in recorder.levels:
        steps = [step for step, _, _ in level]
        total = level[0][1]
        assert steps == list(range(len(level))) and total == len(level)  # every step, once
        weights = [weight for _, _, weight in level]
        assert weights[0] == 0.0 and weights[total // 2 :] == [0.6] * (total - total // 2)
        assert weights[total // 4] == pytest.approx(0.6 * (total // 4) / (total / 2))


def run(run_dir, *overrides: str) -> dict:
    outcome = cli(run_dir, *overrides, cache_dir=run_dir.parent / "cache")
    assert outcome.code == 0, outcome.err
    return json.loads((run_dir / "results.json").read_text())


@pytest.fixture(scope="module")
def features_file(tmp_path_factory) -> list[str]:
    path = tmp_path_factory.mktemp("features") / "tiny.pt"
    save_features(make_feature_set(noise=1.5), path)  # overlapping classes: not 100% accurate
    return ["benchmark=features", f"data.path={path}", *QUICK]


def accuracies(results: dict) -> list[float]:
    entries = results.get("levels") or results["arrivals"]
    return [entry.get("student_accuracy", entry.get("accuracy")) for entry in entries]


@pytest.mark.usefixtures("single_threaded")
@pytest.mark.parametrize("labels", ["hard", "soft"])
def test_logconf_with_alpha_0_gives_the_numbers_of_ce(tmp_path, features_file, labels):
    common = (*features_file, f"strategy.labels={labels}", "plugins=[lwf]")
    ce = run(tmp_path / "ce", *common)
    zero = run(tmp_path / "zero", *common, "strategy.loss=logconf", "strategy.logconf_alpha=0")
    assert zero["levels"] == ce["levels"]  # accuracies, PGR, label statistics: all equal
    assert zero["config"]["strategy"]["loss"] == "logconf"
    confident = run(tmp_path / "one", *common, "strategy.loss=logconf", "strategy.logconf_alpha=1")
    assert accuracies(confident) != accuracies(ce)  # the option reaches the loss
    assert confident["ceiling_accuracy"] == ce["ceiling_accuracy"]  # but not the ceiling


@pytest.mark.usefixtures("single_threaded")
@pytest.mark.parametrize("strategy", ["csl", "w2s", "ground_truth"])
def test_logconf_trains_class_incrementally_with_the_continual_plugins(
    tmp_path, features_file, strategy
):
    common = (*features_file, "scenario=class_incremental", f"strategy={strategy}")
    ce = run(tmp_path / f"{strategy}-ce", *common, "plugins=[replay,ewc,lwf]")
    results = run(tmp_path / strategy, *common, "strategy.loss=logconf", "plugins=[replay,ewc,lwf]")
    numbers = accuracies(results) + [results["final_average_accuracy"]]
    assert len(results["arrivals"]) == 2
    assert all(math.isfinite(number) for number in numbers)
    assert results["final_accuracy"] > 0.35  # it learned (chance 1/4)
    assert accuracies(results) != accuracies(ce)  # the option reaches the arrivals' loss
