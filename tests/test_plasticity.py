"""Shrink and perturb between levels: the update on a hand-computed case, the fresh draw's
seeding (repeatable, global generators untouched), the plugin in a continual CSL stream, and
the refusal with a fresh student."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from conftest import assert_clean_error, cli
from continual_helpers import run_csl
from test_continual import WeightProbe

from csl_avalanche.core.plasticity import shrink_perturb
from csl_avalanche.training.plugins.continual import build_continual_plugins
from csl_avalanche.training.plugins.plasticity import ShrinkPerturbPlugin, fresh_parameters

SHRINK_PERTURB = "csl_avalanche.training.plugins.plasticity.ShrinkPerturbPlugin"


def test_shrink_perturb_on_a_hand_computed_case():
    weights = {"w": torch.tensor([1.0, -2.0]), "b": torch.tensor([3.0])}
    fresh = {"w": torch.tensor([10.0, 20.0])}  # b has no initialiser: kept
    moved = shrink_perturb(weights, fresh, shrink=0.5, noise=0.1)
    assert torch.equal(moved["w"], torch.tensor([1.5, 1.0]))  # 0.5*1+0.1*10, 0.5*-2+0.1*20
    assert torch.equal(moved["b"], torch.tensor([3.0]))
    identity = shrink_perturb(weights, fresh, shrink=1.0, noise=0.0)
    assert all(torch.equal(identity[k], weights[k]) for k in weights)
    assert torch.equal(shrink_perturb(weights, fresh, shrink=0.0, noise=1.0)["w"], fresh["w"])


def test_the_fresh_draw_is_the_layers_own_initialiser_seeded_and_leaves_global_rng_alone():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    fresh = fresh_parameters(model, seed=7)
    assert torch.equal(torch.rand(3), expected_next)  # the global generator did not move
    assert sorted(fresh) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    # shrink=0, noise=1 is a fresh initialisation: what nn.Linear draws from that seed.
    torch.manual_seed(7)
    first = torch.nn.Linear(4, 3)
    assert torch.equal(fresh["0.weight"], first.weight) and torch.equal(fresh["0.bias"], first.bias)
    again = fresh_parameters(model, seed=7)
    assert all(torch.equal(again[k], fresh[k]) for k in fresh)
    other = fresh_parameters(model, seed=8)
    assert not torch.equal(other["0.weight"], fresh["0.weight"])


def test_the_plugin_moves_the_weights_before_every_experience_but_the_first():
    model = torch.nn.Linear(3, 2)
    strategy = SimpleNamespace(model=model, clock=SimpleNamespace(train_exp_counter=0))
    plugin = ShrinkPerturbPlugin(shrink=0.5, noise=0.2, seed=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plugin.before_training_exp(strategy)
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before)

    strategy.clock.train_exp_counter = 2
    fresh = fresh_parameters(model, seed=3 * 1_000_003 + 2)
    plugin.before_training_exp(strategy)
    for name, value in model.state_dict().items():
        assert torch.allclose(value, 0.5 * before[name] + 0.2 * fresh[name])


def test_without_a_seed_the_plugin_takes_the_runs_seed_without_drawing():
    torch.manual_seed(5)  # what the run does with `seed` before it builds a strategy
    expected_next = torch.rand(2)
    torch.manual_seed(5)
    assert ShrinkPerturbPlugin().seed == 5
    assert torch.equal(torch.rand(2), expected_next)


def test_in_a_continual_csl_stream_each_level_starts_from_the_moved_weights(tiny_features):
    probe = WeightProbe()
    spec = {"_target_": SHRINK_PERTURB, "shrink": 0.5, "noise": 0.1, "seed": 0}
    (plugin,) = build_continual_plugins({"shrink_perturb": spec})
    assert isinstance(plugin, ShrinkPerturbPlugin)
    strategy, _ = run_csl(tiny_features, reinit_student=False, probes=(plugin, probe))
    # The probe runs after the plugin: level 1 starts from level 0's weights, moved.
    fresh = fresh_parameters(strategy.model, seed=1)
    for name, end in probe.at_end[0].items():
        assert torch.allclose(probe.at_start[1][name], 0.5 * end + 0.1 * fresh[name])


def test_a_fresh_student_at_every_level_is_refused_and_bad_knobs_are_named(tmp_path):
    refused = cli(tmp_path / "run", "plugins=[shrink_perturb]")  # reinit_student=true
    assert_clean_error(refused, "plugins.shrink_perturb", "strategy.reinit_student=false")
    wrong = cli(
        tmp_path / "run",
        "strategy.reinit_student=false",
        "plugins=[shrink_perturb]",
        "plugins.shrink_perturb.shrink=1.5",
    )
    assert_clean_error(wrong, "plugins.shrink_perturb.shrink must be a finite number in [0, 1]")
