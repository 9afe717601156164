"""Learned teacher weights (`strategy.assignment=learned`): the math on hand-made cases, and the
strategy that trains them with the student in both scenarios."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from conftest import assert_clean_error, cli, make_feature_set, run_cli
from continual_helpers import arrival_csl, run_csl
from results_checks import compose_config

from csl_avalanche import distributed
from csl_avalanche.benchmarks.arrivals import by_arrival, make_arrival_benchmark
from csl_avalanche.core import cosupervision as cs
from csl_avalanche.core import learned_weights as lw
from csl_avalanche.core.errors import ConfigError
from csl_avalanche.experiments.runner import torchrun_refusals
from csl_avalanche.experiments.schema import read_settings

# Two teachers over three classes, two samples: q[i, k, c].
PROBS = torch.tensor(
    [
        [[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]],
        [[0.2, 0.6, 0.2], [0.5, 0.25, 0.25]],
    ]
)


def test_weights_are_a_distribution_for_any_logits():
    logits = torch.tensor([[0.0, 0.0], [3.0, -40.0], [100.0, 100.5]])
    w = lw.teacher_weights(logits)
    assert (w >= 0).all()
    assert torch.allclose(w.sum(dim=1), torch.ones(3))
    assert torch.allclose(w[0], torch.tensor([0.5, 0.5]))


def test_weighted_targets_mix_each_sample_by_its_subdomains_weights():
    # Subdomain 0: weights (1/4, 3/4) = softmax(0, ln 3); subdomain 1: uniform.
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])
    targets = lw.weighted_targets(logits, PROBS, torch.tensor([0, 1]))
    expected = torch.tensor(
        [
            [0.25 * 0.7 + 0.75 * 0.1, 0.25 * 0.2 + 0.75 * 0.1, 0.25 * 0.1 + 0.75 * 0.8],
            [0.35, 0.425, 0.225],
        ]
    )
    assert torch.allclose(targets, expected)


def test_the_logit_gradient_is_the_students_loss_gradient_by_hand_and_by_autograd():
    # A student predicting (1/2, 1/4, 1/4) on both samples, both in subdomain 0, uniform weights.
    student = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]]))
    logits = torch.zeros(1, 2)
    subdomain = torch.zeros(2, dtype=torch.long)
    grad = lw.logit_gradient(logits, PROBS, subdomain, student)
    # g_k = mean_i CE(p_i, q_ik): teacher 0: (0.7 ln2 + 0.3 ln4 + 0.2 ln2 + 0.8 ln4) / 2
    # = 3.1 ln2 / 2; teacher 1: (0.1 ln2 + 0.9 ln4 + 0.5 ln2 + 0.5 ln4) / 2 = 3.4 ln2 / 2.
    g = torch.tensor([3.1, 3.4]) * math.log(2) / 2
    by_hand = 0.5 * (g - g.mean())  # w_j (g_j - sum_k w_k g_k), w = 1/2
    assert torch.allclose(grad, by_hand.unsqueeze(0))

    free = logits.clone().requires_grad_(True)
    targets = lw.weighted_targets(free, PROBS, subdomain)
    loss = -(targets * torch.log_softmax(student, dim=1)).sum(dim=1).mean()
    loss.backward()
    assert torch.allclose(grad, free.grad)
    # Descent moves weight to teacher 0, whose labels the student finds likelier.
    stepped = lw.teacher_weights(lw.gradient_step(logits, grad, 1.0))
    assert stepped[0, 0] > 0.5 and torch.allclose(stepped.sum(), torch.tensor(1.0))


def test_a_subdomain_without_samples_keeps_its_weights():
    student = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]]))
    grad = lw.logit_gradient(torch.zeros(2, 2), PROBS, torch.tensor([1, 1]), student)
    assert torch.equal(grad[0], torch.zeros(2))
    assert (grad[1] != 0).all()


def test_rate_zero_keeps_the_weights_uniform():
    logits = lw.initial_logits(3, 4)
    grad = torch.randn(3, 4)
    assert torch.equal(lw.gradient_step(logits, grad, 0.0), logits)
    assert torch.allclose(lw.teacher_weights(logits), torch.full((3, 4), 0.25))


def test_the_estep_gives_learned_the_uniform_mixture_and_the_class_partition_route():
    student = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    owner = torch.tensor([0, 0, 1])
    results = cs.sample_results(student, PROBS, "learned", "soft", "all", class_to_teacher=owner)
    ensemble = cs.sample_results(student, PROBS, "ensemble", "soft", "all")
    assert torch.equal(results.assignment, torch.tensor([0, 1]))
    assert torch.allclose(results.soft, ensemble.soft)
    assert torch.equal(results.labels, ensemble.labels)


@pytest.mark.parametrize("mode", lw.WEIGHT_MODES)
def test_levels_train_the_weights_as_distributions_recorded_per_epoch(mode):
    strategy, _ = run_csl(
        make_feature_set(), assignment="learned", learned_weights=mode, reinit_student=True
    )
    level0, level1 = strategy.level_statistics
    assert level0.teacher_weights == ()  # the generalist's level is not routed
    history = torch.tensor(level1.teacher_weights)  # [epochs, S, K]
    assert history.shape == (level1.epochs, 2 if mode == "per_subdomain" else 1, 2)
    assert (history >= 0).all()
    assert torch.allclose(history.sum(dim=2), torch.ones(history.shape[:2]))
    assert not torch.allclose(history[-1], torch.full_like(history[-1], 0.5))  # they learned
    assert "teacher_weights" in level1.as_dict() and "teacher_weights" not in level0.as_dict()


def test_rate_zero_trains_exactly_as_the_ensemble_with_the_same_denoising():
    features = make_feature_set()
    learned, _ = run_csl(features, assignment="learned", weights_lr=0.0, denoise="top3")
    ensemble, _ = run_csl(features, assignment="ensemble", denoise="top3")
    history = torch.tensor(learned.level_statistics[1].teacher_weights)
    assert torch.equal(history, torch.full_like(history, 0.5))
    for name, value in ensemble.model.state_dict().items():
        assert torch.allclose(learned.model.state_dict()[name], value, atol=1e-6), name


@pytest.mark.parametrize("labels", ["hard", "soft"])
def test_class_incremental_arrivals_train_weights_over_the_arrived_teachers(labels):
    features = make_feature_set()
    benchmark = make_arrival_benchmark(features, [1, 0])
    strategy = arrival_csl(features, assignment="learned", labels=labels)
    for group in by_arrival(benchmark.train_stream):
        for experience in group:
            strategy.train(experience, eval_streams=[])
    routed = [s for s in strategy.level_statistics if s.teacher_weights]
    # The routed phase of each arrival: the generalist and 1, then 2, arrived specialists.
    assert [torch.tensor(s.teacher_weights).shape[1:] for s in routed] == [(2, 2), (3, 3)]
    for stats in routed:
        history = torch.tensor(stats.teacher_weights)
        assert torch.allclose(history.sum(dim=2), torch.ones(history.shape[:2]))


def test_results_json_and_tensorboard_hold_the_weights_of_each_epoch(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    results = run_cli(run_dir, "strategy.assignment=learned", "strategy.epochs=2")
    levels = results["levels"]
    assert "teacher_weights" not in levels[0]
    for level in levels[1:]:
        history = level["teacher_weights"]
        assert len(history) == level["epochs"]
        assert len(history[-1]) == level["num_teachers"]  # per subdomain, the default
        assert all(math.isclose(sum(row), 1.0, rel_tol=1e-5) for row in history[-1])
    events = EventAccumulator(str(run_dir / "tb" / "csl"))
    events.Reload()
    tag = "CSL/teacher_weight/exp1/subdomain0/teacher0"
    values = [event.value for event in events.Scalars(tag)]
    assert values == pytest.approx([row[0][0] for row in levels[1]["teacher_weights"]])


@pytest.mark.parametrize(
    "overrides, phrases",
    [
        (("strategy.weights_lr=0.5",), ("strategy.weights_lr", "strategy.assignment=learned")),
        (
            ("strategy.learned_weights=global", "strategy.assignment=kl"),
            ("strategy.learned_weights", "assignment=kl"),
        ),
        (
            ("strategy.assignment=learned", "strategy.reassign_every=1"),
            ("strategy.reassign_every=1", "drop strategy.reassign_every"),
        ),
        (
            ("strategy.assignment=learned", "strategy.weights_lr=-1"),
            ("strategy.weights_lr must be", "-1"),
        ),
    ],
)
def test_misused_learned_weight_settings_are_refused_up_front(tmp_path, overrides, phrases):
    assert_clean_error(cli(tmp_path / "run", *overrides), *phrases)
    assert not (tmp_path / "cache").exists()  # before any data


def test_learned_weights_are_refused_under_torchrun(monkeypatch):
    base = read_settings(compose_config())
    learned = read_settings(compose_config("strategy.assignment=learned"))
    assert torchrun_refusals(base) == {}
    refusals = torchrun_refusals(learned)
    distributed.check_world(refusals)  # one process: fine
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    distributed.check_world(torchrun_refusals(base))
    with pytest.raises(ConfigError, match="torchrun: strategy.assignment=learned: each rank"):
        distributed.check_world(refusals)


def test_the_weights_and_the_student_never_depend_on_the_pools_ground_truth():
    features = make_feature_set()
    shuffled = dataclasses.replace(
        features, train_y=features.train_y[torch.randperm(len(features.train_y))]
    ).validate()
    runs = [
        run_csl(f, assignment="learned", plugin_names=("replay",))[0] for f in (features, shuffled)
    ]
    first, second = (strategy.level_statistics[1].teacher_weights for strategy in runs)
    assert first == second
    for name, value in runs[0].model.state_dict().items():
        assert torch.equal(runs[1].model.state_dict()[name], value), name
