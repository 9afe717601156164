"""`python -m csl_avalanche.run` end to end: the embedded default, and a hand-made features file
whose weak, ceiling and student accuracies are known in advance; when PGR means something."""

import dataclasses
import json
import subprocess
from types import SimpleNamespace

import pytest
import torch
from conftest import CLI_ENV, cli, cli_command, make_feature_set, run_cli

from csl_avalanche.benchmarks.features import save_features
from csl_avalanche.benchmarks.pipeline import split_tensors
from csl_avalanche.benchmarks.sources.digits import load_digits_tensors
from csl_avalanche.core.cosupervision import pgr, pgr_note
from csl_avalanche.core.errors import ConfigError
from csl_avalanche.run import pgr_warnings, summary_table
from csl_avalanche.training.plugins.divergence import DivergencePlugin


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("default") / "run"
    return run_dir, run_cli(run_dir)


def test_default_run_writes_results(default_run):
    run_dir, results = default_run
    assert {"weak_accuracy", "ceiling_accuracy", "levels", "timings", "config", "seed"} <= set(
        results
    )
    assert results["weak_accuracy"] < results["ceiling_accuracy"]
    levels = results["levels"]
    assert [lvl["level"] for lvl in levels] == [0, 1, 2]
    assert [lvl["num_teachers"] for lvl in levels] == [1, 2, 5]
    for lvl in levels:
        assert {"student_accuracy", "pgr", "teacher_accuracy", "subdomain_accuracy"} <= set(lvl)
        assert {"keep_rate", "label_precision", "label_recall", "assignment_accuracy"} <= set(lvl)
        assert isinstance(lvl["pgr"], float) and "pgr_note" not in lvl
        assert len(lvl["subdomain_accuracy"]) == 5
    assert levels[0]["keep_rate"] == 1.0
    assert len(results["timings"]["train_seconds"]) == 3
    assert len(results["timings"]["estep_seconds"]) == 3
    assert results["config"]["strategy"]["name"] == "csl"
    assert list((run_dir / "tb" / "csl").glob("events.out.tfevents.*"))
    assert list((run_dir / "tb" / "ceiling").glob("events.out.tfevents.*"))
    assert json.loads((run_dir / "results.json").read_text()) == results
    assert [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")] == []


def test_student_accuracy_is_the_test_size_weighted_mean_of_subdomain_accuracy(default_run):
    """Two Avalanche metrics over the same test stream agree, with the test split's class
    counts recomputed here from the digits data and the configured split."""
    _, results = default_run
    x, y = load_digits_tensors()
    test_y = split_tensors(x, y, results["config"]["benchmark"]["splits"], seed=0).test[1]
    sizes = {
        f"classes_{a}-{a + 1}": int(((test_y == a) | (test_y == a + 1)).sum())
        for a in (0, 2, 4, 6, 8)
    }
    assert sum(sizes.values()) == len(test_y)
    for lvl in results["levels"]:
        per_subdomain = lvl["subdomain_accuracy"]
        weighted = sum(per_subdomain[name] * n for name, n in sizes.items()) / len(test_y)
        assert lvl["student_accuracy"] == pytest.approx(weighted, abs=1e-9)


def test_the_default_is_the_levels_scenario_with_the_numbers_of_the_readme(default_run):
    _, results = default_run
    assert results["scenario"] == "levels"
    assert results["config"]["scenario"] == {"name": "levels"}
    assert [round(lvl["pgr"], 3) for lvl in results["levels"]] == [0.388, 0.507, 0.627]


def test_same_config_and_seed_give_the_same_numbers(default_run, tmp_path):
    _, first = default_run
    second = run_cli(tmp_path / "again")  # also reuses the cache of the first run
    for key in ("weak_accuracy", "ceiling_accuracy"):
        assert first[key] == second[key]
    assert [lvl["student_accuracy"] for lvl in first["levels"]] == [
        lvl["student_accuracy"] for lvl in second["levels"]
    ]


def test_tensorboard_has_pgr_and_level_statistics(default_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, results = default_run
    events = EventAccumulator(str(run_dir / "tb" / "csl"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert "PGR/eval_phase/test_stream" in tags
    assert "CSL/keep_rate/train_stream" in tags
    pgr_logged = [e.value for e in events.Scalars("PGR/eval_phase/test_stream")]
    assert pgr_logged == pytest.approx([lvl["pgr"] for lvl in results["levels"]], abs=1e-6)


def test_bad_config_key_is_refused(tmp_path):
    with pytest.raises(AssertionError, match="Could not override 'strategy.lrr'"):
        run_cli(tmp_path / "bad", "strategy.lrr=0.1")


def _routed(labels: torch.Tensor, route: list[int]) -> torch.Tensor:
    """A teacher that answers class route[y] for a sample of class y, with probability 0.97."""
    probs = torch.full((len(labels), 4), 0.01)
    probs[torch.arange(len(labels)), torch.tensor(route)[labels]] = 0.97
    return probs


def known_features():
    """make_feature_set's separable clusters with deterministic teachers: the generalist merges
    class 1 into 0 and 3 into 2 (right on exactly half of a balanced split); the specialists
    of {0, 1} and {2, 3} are right on their own classes."""
    base = make_feature_set()

    def teachers(y):
        return torch.stack(
            [_routed(y, [0, 0, 2, 2]), _routed(y, [0, 1, 0, 0]), _routed(y, [2, 2, 2, 3])]
        )

    return dataclasses.replace(
        base, teacher_train_probs=teachers(base.train_y), teacher_test_probs=teachers(base.test_y)
    ).validate()


def test_accuracies_and_pgr_on_a_features_file_with_known_answers(tmp_path, single_threaded):
    """Weak = 1/2 by construction; the ceiling and a student on correct labels separate the
    clusters (1.0); at level 0 the student learns the generalist's merged classes (1/2, PGR 0);
    at level 1 class_partition routes each merged prediction to the specialist that owns it,
    which is right, so the student is right everywhere (PGR 1)."""
    path = tmp_path / "known.pt"
    save_features(known_features(), path)
    saved = torch.load(path)
    generalist = saved["teacher_test_probs"][0].argmax(dim=1)
    assert (generalist == saved["test_y"]).float().mean().item() == 0.5

    outcome = cli(
        tmp_path / "run",
        "benchmark=features",
        f"data.path={path}",
        "strategy.denoise=all",
        "strategy.lr=0.05",
        "strategy.batch_size=32",
    )
    assert outcome.code == 0, outcome.err
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["weak_accuracy"] == 0.5
    assert results["ceiling_accuracy"] == 1.0
    assert [lvl["student_accuracy"] for lvl in results["levels"]] == [0.5, 1.0]
    assert [lvl["pgr"] for lvl in results["levels"]] == [0.0, 1.0]
    assert [lvl["teacher_accuracy"] for lvl in results["levels"]] == [0.5, 1.0]


def test_pgr_needs_a_gap():
    assert pgr(0.8, 0.6, 1.0) == pytest.approx(0.5)
    assert pgr(0.5, 0.6, 1.0) == pytest.approx(-0.25)
    for ceiling in (0.6, 0.5):
        with pytest.raises(ValueError, match="no gap to recover"):
            pgr(0.7, 0.6, ceiling)


def test_pgr_note_says_why_pgr_means_nothing():
    assert pgr_note(0.6, 0.9) is None
    assert pgr_note(0.9, 0.9) == (
        "the ceiling accuracy (0.9000) is not above the weak accuracy (0.9000): "
        "there is no gap to recover"
    )
    assert "(0.8500) is not above the weak accuracy (0.9000)" in pgr_note(0.9, 0.85)
    assert "no samples of class(es) [3, 7]" in pgr_note(0.6, 0.9, missing_classes=[3, 7])
    assert pgr_note(0.6, 0.9, student_steps=0) == ("the student ran no training step at this level")
    assert pgr_note(0.6, 0.9, ceiling_steps=0) == "the ground-truth ceiling ran no training step"
    # An untrained ceiling is the first reason given, whatever else is wrong.
    assert "ceiling ran no" in pgr_note(0.9, 0.5, missing_classes=[1], ceiling_steps=0)


def test_table_shows_na_and_warns_once_per_reason():
    def level(index, pgr_value, note=None):
        lvl = {"level": index, "num_teachers": 1 + index, "teacher_accuracy": 0.5}
        lvl |= {"keep_rate": 1.0, "student_accuracy": 0.75, "pgr": pgr_value}
        return lvl | ({"pgr_note": note} if note else {})

    results = {
        "weak_accuracy": 0.9,
        "ceiling_accuracy": 0.8,
        "levels": [level(0, None, "no gap"), level(1, None, "no gap"), level(2, 0.25)],
    }
    rows = summary_table(results).splitlines()
    assert rows[3].split()[-1] == "n/a" and rows[4].split()[-1] == "n/a"
    assert rows[5].split()[-1] == "0.250"
    assert pgr_warnings(results) == ["warning: PGR is n/a at level 0, 1: no gap"]


def test_divergence_plugin_remembers_a_bad_loss_until_the_epoch_ends_and_checks_weights():
    plugin = DivergencePlugin("csl", "use a lower strategy.lr (now 0.5)")
    model = torch.nn.Linear(2, 2)
    strategy = SimpleNamespace(
        model=model,
        device="cpu",
        experience=SimpleNamespace(label="level 2"),
        clock=SimpleNamespace(train_exp_epochs=3),
    )
    plugin.before_training_epoch(strategy)
    for loss in (1.0, float("inf"), 0.5):  # a later finite loss does not hide the Inf
        strategy.loss = torch.tensor(loss)
        plugin.after_training_iteration(strategy)
    with pytest.raises(ConfigError) as stopped:
        plugin.after_training_epoch(strategy)
    assert str(stopped.value) == (
        "csl level 2: the training loss became NaN or Inf in epoch 4: the student diverged; "
        "use a lower strategy.lr (now 0.5)"
    )
    plugin.before_training_epoch(strategy)  # a new epoch starts clean
    plugin.after_training_iteration(strategy)
    plugin.after_training_epoch(strategy)
    plugin.after_training_exp(strategy)  # finite weights: nothing to say

    with torch.no_grad():
        model.bias[1] = float("nan")
    with pytest.raises(ConfigError, match=r"csl level 2: the student's weights \['bias'\] are NaN"):
        plugin.after_training_exp(strategy)


def test_a_run_folder_the_terminal_cannot_print_does_not_stop_the_run(tmp_path):
    """A non-ASCII run folder on an ASCII terminal: its path is printed with escapes. (Hydra's
    override grammar takes a non-ASCII value only in quotes.)"""
    path = tmp_path / "features.pt"
    save_features(make_feature_set(), path)
    run_dir = tmp_path / "runs" / "é"
    overrides = ("benchmark=features", f"data.path={path}", "strategy.epochs=1")
    cmd = [
        *cli_command(tmp_path, *overrides, cache_dir=tmp_path / "cache"),
        "strategy.batch_size=32",
        f"hydra.run.dir='{run_dir}'",  # after cli_command's own: the last one counts
    ]
    env = {**CLI_ENV, "PYTHONIOENCODING": "ascii", "LC_ALL": "C"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "Logging error" not in proc.stderr
    assert f"results: {tmp_path}/runs/\\xe9/results.json" in proc.stdout
    assert json.loads((run_dir / "results.json").read_text())["levels"]
