"""`python -m csl_avalanche.run` end to end on the embedded default."""

import json

import pytest
from conftest import run_cli


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
        gap = results["ceiling_accuracy"] - results["weak_accuracy"]
        expected = (lvl["student_accuracy"] - results["weak_accuracy"]) / gap
        assert lvl["pgr"] == pytest.approx(expected)
        assert len(lvl["subdomain_accuracy"]) == 5
    assert levels[0]["keep_rate"] == 1.0
    assert len(results["timings"]["train_seconds"]) == 3
    assert len(results["timings"]["estep_seconds"]) == 3
    assert results["config"]["strategy"]["name"] == "csl"
    assert list((run_dir / "tb" / "csl").glob("events.out.tfevents.*"))
    assert list((run_dir / "tb" / "ceiling").glob("events.out.tfevents.*"))
    assert json.loads((run_dir / "results.json").read_text()) == results


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
    pgr = [e.value for e in events.Scalars("PGR/eval_phase/test_stream")]
    assert pgr == pytest.approx([lvl["pgr"] for lvl in results["levels"]], abs=1e-6)


def test_bad_config_key_is_refused(tmp_path):
    with pytest.raises(AssertionError, match="Could not override 'strategy.lrr'"):
        run_cli(tmp_path / "bad", "strategy.lrr=0.1")
