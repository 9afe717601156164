"""`strategy.reassign_every`: the E-step and the selection repeated inside a level with the
current student (online EM), the paper's single pass when the period is the level's epochs."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from avalanche.core import SupervisedPlugin
from conftest import cli
from test_strategy import make_csl

from csl_avalanche.benchmarks.streams import make_csl_benchmark
from csl_avalanche.strategies import CSLStrategy


class RecordEpochs(SupervisedPlugin):
    """After the co-supervision plugin: what each epoch trains on, and the schedule's end."""

    def __init__(self):
        super().__init__()
        self.samples: list[tuple[int, int, int]] = []  # (level, epoch, samples in the loader)
        self.ends: list[tuple[int, int, float]] = []  # (schedule length, steps taken, last lr)

    def before_training_epoch(self, strategy, **kwargs):
        level = strategy.experience.level
        self.samples.append(
            (level, strategy.clock.train_exp_epochs, len(strategy.dataloader.columns))
        )

    def after_training_exp(self, strategy, **kwargs):
        lr = strategy.optimizer.param_groups[0]["lr"]
        self.ends.append((strategy.lr_scheduler.T_max, strategy.clock.train_exp_iterations, lr))


def test_each_pass_relabels_with_the_current_student_and_trains_on_its_kept_samples(
    tiny_features,
):
    recorder = RecordEpochs()
    strategy = make_csl(
        tiny_features,
        plugins=[recorder],
        epochs=4,
        denoise="top1",
        scale_epochs=False,
        reassign_every=1,
    )
    calls, students = [], []
    results = strategy.cosupervision._results

    def spy(strategy, experience, *args):
        calls.append(experience.level)
        students.append(strategy.model.weight.detach().clone())
        return results(strategy, experience, *args)

    strategy.cosupervision._results = spy
    for experience in make_csl_benchmark(tiny_features).train_stream:
        strategy.train(experience, eval_streams=[])

    level0, level1 = strategy.level_statistics
    assert level0.reassignments == ()  # the generalist's level routes nothing
    assert calls == [0, 1, 1, 1, 1]  # level 1: its first pass, then epochs 1, 2 and 3
    assert [r["epoch"] for r in level1.reassignments] == [1, 2, 3]
    n = len(tiny_features.train_y)
    rates = [level1.keep_rate] + [r["keep_rate"] for r in level1.reassignments]
    # Each epoch trains on the samples its own pass kept.
    assert [s for level, _, s in recorder.samples if level == 1] == [round(r * n) for r in rates]
    # Every pass saw the student as trained up to it.
    assert all(not torch.equal(a, b) for a, b in itertools.pairwise(students[1:]))
    for record in level1.reassignments:
        assert 0 < record["label_precision"] <= 1 and 0 <= record["assignment_accuracy"] <= 1
    # The cosine schedule still ends at the level's last step, at a learning rate of zero.
    length, steps, lr = recorder.ends[1]
    assert length == steps and lr == pytest.approx(0, abs=1e-9)


@pytest.mark.parametrize("scale", ["true", "false"])
def test_a_period_of_the_levels_epochs_reproduces_the_paper_exactly(tmp_path, scale):
    runs = {}
    for name, extra in (("paper", []), ("period", ["strategy.reassign_every=6"])):
        outcome = cli(
            tmp_path / f"{name}-{scale}",
            "strategy.epochs=6",
            f"strategy.scale_epochs={scale}",
            *extra,
            cache_dir=tmp_path / "cache",
        )
        assert outcome.code == 0, outcome.err
        runs[name] = json.loads((tmp_path / f"{name}-{scale}" / "results.json").read_text())
    for paper, period in zip(runs["paper"]["levels"], runs["period"]["levels"], strict=True):
        assert period.pop("reassignments") == paper.pop("reassignments") == []
        assert period == paper
    assert runs["paper"]["accuracy_matrix"] == runs["period"]["accuracy_matrix"]


def test_reassignment_changes_a_digits_run_and_records_its_passes(tmp_path):
    outcome = cli(tmp_path / "run", "strategy.epochs=6", "strategy.reassign_every=2")
    assert outcome.code == 0, outcome.err
    levels = json.loads((tmp_path / "run" / "results.json").read_text())["levels"]
    assert levels[0]["reassignments"] == []
    for level in levels[1:]:
        # 6 epochs scaled by the keep rate, a period of 2 scaled alike: passes at 2 and 4.
        assert [r["epoch"] for r in level["reassignments"]] == [2, 4]
        assert 0 < level["student_accuracy"] <= 1


class RecordBatches(SupervisedPlugin):
    """The inputs of every training batch, per (level, epoch), and the confidence weight and
    the level's planned steps at every step."""

    def __init__(self):
        super().__init__()
        self.epochs: dict[tuple[int, int], list[torch.Tensor]] = {}
        self.weights: list[list[tuple[int, float]]] = []  # per level: (planned steps, weight)

    def before_training_exp(self, strategy, **kwargs):
        self.weights.append([])

    def before_training_iteration(self, strategy, **kwargs):
        key = (strategy.experience.level, strategy.clock.train_exp_epochs)
        self.epochs.setdefault(key, []).append(strategy.mb_x.clone())
        self.weights[-1].append((strategy.level_steps, strategy.confidence_weight()))


def train_levels(features, **options) -> tuple[RecordBatches, CSLStrategy]:
    recorder = RecordBatches()
    strategy = make_csl(features, plugins=[recorder], **options)
    for experience in make_csl_benchmark(features).train_stream:
        strategy.train(experience, eval_streams=[])
    return recorder, strategy


def test_each_pass_reshuffles_as_a_level_without_reassignment_does(tiny_features):
    """A pass that keeps the same samples with the same labels (every sample kept, labels that
    ignore the student) changes nothing: the epochs draw the permutations of a level without
    re-assignment, and the student ends with the same weights, bit for bit."""
    options = dict(epochs=4, denoise="all", assignment="ensemble", scale_epochs=False)
    passes, reassigned = train_levels(tiny_features, reassign_every=1, **options)
    plain, paper = train_levels(tiny_features, **options)
    assert len(reassigned.level_statistics[1].reassignments) == 3  # epochs 1, 2 and 3
    firsts = [passes.epochs[(1, epoch)][0] for epoch in range(4)]
    assert all(not torch.equal(a, b) for a, b in itertools.combinations(firsts, 2))  # reshuffled
    assert passes.epochs.keys() == plain.epochs.keys()
    for key, batches in plain.epochs.items():
        assert all(map(torch.equal, passes.epochs[key], batches)), key
    assert torch.equal(reassigned.model.weight, paper.model.weight)


def test_the_confidence_weight_ramps_on_continuously_across_a_pass(tiny_features):
    """A pass that changes the level's step count keeps the weight where it was and ramps on
    linearly to alpha at the warm-up fraction of the level's new length."""
    alpha, warmup = 0.6, 0.5
    recorder, strategy = train_levels(
        tiny_features,
        epochs=4,
        lr=0.01,  # the first pass keeps fewer samples than the level's start: fewer steps
        denoise="top1",
        scale_epochs=False,
        reassign_every=1,
        loss="logconf",
        logconf_alpha=alpha,
        logconf_warmup=warmup,
    )
    planned, weights = zip(*recorder.weights[1], strict=True)
    switches = [s for s in range(1, len(planned)) if planned[s] != planned[s - 1]]
    assert switches and switches[0] < warmup * planned[0]  # a pass changed the plan mid-ramp
    assert weights[0] == 0 and all(a <= b <= alpha for a, b in itertools.pairwise(weights))
    for start, stop in itertools.pairwise([0, *switches, len(weights)]):
        # Each plan ramps linearly from where the last one left off to alpha at the warm-up
        # fraction of the level's steps as now planned, then stays at alpha.
        end = max(warmup * planned[start], start + 1)
        ramp = [weights[s] for s in range(start, stop) if s < end]
        steps = [b - a for a, b in itertools.pairwise(ramp)]
        assert max(steps, default=0) - min(steps, default=0) < 1e-12
        if start and weights[start - 1] < alpha:  # no jump: the old plan's increment again
            assert ramp[0] - weights[start - 1] == pytest.approx(
                weights[start - 1] - weights[start - 2]
            )
        assert all(weights[s] == alpha for s in range(start, stop) if s >= end)
        if stop > end > start and weights[start] < alpha:
            assert weights[math.ceil(end) - 1] < alpha  # reached at the end, not before


def test_every_pass_first_shares_rank_0s_model(tiny_features):
    """Under torchrun each rank's training steps move its BatchNorm statistics apart: a pass
    inside a level first gives every rank rank 0's model (`share_model`, as the end of every
    level does), so that all ranks label their blocks with one student."""
    strategy = make_csl(
        tiny_features, epochs=3, denoise="top1", scale_epochs=False, reassign_every=1
    )
    events = []
    share, estep = strategy.share_model, strategy.cosupervision._results
    strategy.share_model = lambda: events.append("share") or share()
    strategy.cosupervision._results = lambda *args: events.append("E-step") or estep(*args)
    for experience in make_csl_benchmark(tiny_features).train_stream:
        strategy.train(experience, eval_streams=[])
    level_1 = ["E-step", "share", "E-step", "share", "E-step", "share"]  # passes at epochs 1, 2
    assert events == ["E-step", "share", *level_1]
