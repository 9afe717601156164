"""The validation split (`benchmark.val_fraction`, or a features file's `val_x`/`val_y`): carved
out of the pool by class and seed, never trained on, evaluated with every level and arrival,
kept across a resume; and the report's `--select val`."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from conftest import assert_clean_error, cli, crash_on_call, make_feature_set
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import csl_avalanche.experiments.class_incremental as incremental
import csl_avalanche.experiments.levels as levels
from csl_avalanche.benchmarks.arrivals import make_arrival_benchmark
from csl_avalanche.benchmarks.features import FeaturesFileError, load_features, save_features
from csl_avalanche.benchmarks.streams import make_csl_benchmark
from csl_avalanche.benchmarks.validation import validation_rows, with_validation
from csl_avalanche.core.errors import ConfigError
from csl_avalanche.evaluation.report import main as report_main
from csl_avalanche.evaluation.report import select_by_validation
from csl_avalanche.run import objective

pytestmark = pytest.mark.usefixtures("single_threaded")

FAST = ("strategy.epochs=2", "strategy.lr=0.05", "strategy.batch_size=16")
STAGE_KEYS = {"levels": "levels", "class_incremental": "arrivals"}


def features_run(tmp_path, features, *overrides: str):
    """`python -m csl_avalanche.run` (in-process) on `features` saved as a features file."""
    path = tmp_path / "features.pt"
    if not path.exists():
        tmp_path.mkdir(exist_ok=True)
        save_features(features, path)
    return cli(tmp_path / "run", "benchmark=features", f"data.path={path}", *FAST, *overrides)


def read_results(run_dir) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def generalist_accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    return (probs[0].argmax(dim=1) == labels).float().mean().item()


# --- carving the split ----------------------------------------------------------------------


def test_validation_rows_take_the_floor_of_the_fraction_of_each_class_by_seed():
    labels = torch.tensor([0] * 10 + [1] * 5 + [2])
    rows = validation_rows(labels, 0.3, seed=0)
    # floor(0.3 x 10) = 3 of class 0, floor(0.3 x 5) = 1 of class 1, floor(0.3 x 1) = 0 of 2.
    assert labels[rows].tolist() == [0, 0, 0, 1]
    assert rows.tolist() == sorted(set(rows.tolist()))
    assert torch.equal(validation_rows(labels, 0.3, seed=0), rows)
    drawn = {tuple(validation_rows(labels, 0.3, seed=s).tolist()) for s in range(5)}
    assert len(drawn) > 1  # the seed draws the rows


def test_the_validation_rows_leave_the_pool_and_nothing_else_changes():
    features = make_feature_set(n=240, m=120)
    carved = with_validation(features, 0.25, seed=3)
    val = validation_rows(features.train_y, 0.25, seed=3)
    pool = torch.tensor([i for i in range(240) if i not in set(val.tolist())])
    assert len(val) == 60 and len(pool) == 180  # 60 of each of 4 classes -> 15 each
    assert torch.equal(carved.val_x, features.train_x[val])
    assert torch.equal(carved.val_y, features.train_y[val])
    assert torch.equal(carved.teacher_val_probs, features.teacher_train_probs[:, val])
    assert torch.equal(carved.train_x, features.train_x[pool])
    assert torch.equal(carved.train_y, features.train_y[pool])
    assert torch.equal(carved.teacher_train_probs, features.teacher_train_probs[:, pool])
    # No validation row is a pool row (the rows are distinct points), and the test split is
    # the same tensors.
    pool_rows = {tuple(x.tolist()) for x in carved.train_x}
    assert not any(tuple(x.tolist()) in pool_rows for x in carved.val_x)
    assert carved.test_x is features.test_x and carved.test_y is features.test_y
    assert carved.teacher_test_probs is features.teacher_test_probs
    carved.validate()


def test_the_student_streams_hold_only_the_pool_left_after_carving():
    features = with_validation(make_feature_set(n=240, m=120), 0.25, seed=0)
    benchmark = make_csl_benchmark(features)
    assert len(benchmark.ceiling_stream[0].dataset) == 180
    for experience in benchmark.train_stream:
        assert len(experience.dataset) == 180
    val = benchmark.val_stream[0].dataset
    assert len(val) == 60
    assert torch.equal(torch.stack([val[i][0] for i in range(len(val))]), features.val_x)
    arrivals = make_arrival_benchmark(features, [0, 1])
    covered = torch.cat([arrival.samples for arrival in arrivals.arrivals]).sort().values
    assert covered.tolist() == list(range(180))
    assert len(arrivals.val_stream[0].dataset) == 60


def test_val_fraction_zero_keeps_the_features_and_the_streams():
    features = make_feature_set()
    assert with_validation(features, 0, seed=0) is features
    assert make_csl_benchmark(features).val_stream is None
    assert make_arrival_benchmark(features, [0, 1]).val_stream is None


def test_a_default_run_writes_no_validation_numbers(tmp_path):
    outcome = features_run(tmp_path, make_feature_set())
    assert outcome.code == 0, outcome.err
    results = read_results(tmp_path / "run")
    assert not [key for key in results if "val" in key]
    assert not [key for lvl in results["levels"] for key in lvl if "val" in key]
    assert "validation:" not in outcome.out


# --- results.json -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        (),
        ("strategy=w2s",),
        ("scenario=class_incremental",),
        ("scenario=class_incremental", "strategy=ground_truth"),
    ],
    ids=["levels-csl", "levels-w2s", "incremental-csl", "incremental-ground-truth"],
)
def test_every_stage_reports_validation_and_test_numbers(tmp_path, overrides):
    features = make_feature_set(n=240, m=120)
    outcome = features_run(tmp_path, features, "benchmark.val_fraction=0.1", *overrides)
    assert outcome.code == 0, outcome.err
    results = read_results(tmp_path / "run")
    carved = with_validation(features, 0.1, seed=0)
    weak = generalist_accuracy(carved.teacher_val_probs, carved.val_y)
    assert results["weak_val_accuracy"] == pytest.approx(weak)
    assert 0 <= results["ceiling_val_accuracy"] <= 1
    stages = results[STAGE_KEYS[results["scenario"]]]
    for stage in stages:
        assert 0 <= stage["val_accuracy"] <= 1
        gap = results["ceiling_val_accuracy"] - weak
        assert stage["val_pgr"] == pytest.approx((stage["val_accuracy"] - weak) / gap)
        assert stage["pgr"] is not None
    last = stages[-1]
    assert results["val_accuracy"] == last["val_accuracy"]
    assert results["val_pgr"] == last["val_pgr"]
    assert results["test_pgr"] == last["pgr"]
    accuracy = last.get("student_accuracy", last.get("accuracy"))
    assert results["test_accuracy"] == accuracy
    if results["scenario"] == "class_incremental":
        assert 0 <= results["joint_val_accuracy"] <= 1
    if not overrides:  # TensorBoard: PGR on validation, against the validation reference
        events = EventAccumulator(str(tmp_path / "run" / "tb" / "csl"))
        events.Reload()
        logged = [event.value for event in events.Scalars("PGR/eval_phase/val_stream")]
        assert logged == pytest.approx([stage["val_pgr"] for stage in stages], rel=1e-5)
    assert f"student {results['val_accuracy']:.4f}" in outcome.out


@pytest.mark.parametrize(
    ("scenario", "module"),
    [("levels", levels), ("class_incremental", incremental)],
    ids=["levels", "class_incremental"],
)
def test_a_resumed_run_reproduces_the_validation_numbers(tmp_path, monkeypatch, scenario, module):
    features = make_feature_set(n=240, m=120)
    overrides = ("benchmark.val_fraction=0.1", f"scenario={scenario}")
    assert features_run(tmp_path / "whole", features, *overrides).code == 0
    expected = read_results(tmp_path / "whole" / "run")

    crash_on_call(monkeypatch, module, "subdomain_accuracy", 2)  # the second level (arrival)
    crashed = features_run(tmp_path, features, *overrides)
    assert crashed.code != 0 and "simulated crash" in crashed.err
    monkeypatch.undo()
    resumed = features_run(tmp_path, features, *overrides)
    assert resumed.code == 0, resumed.err
    results = read_results(tmp_path / "run")
    for key in ("weak_val_accuracy", "ceiling_val_accuracy", "val_accuracy", "val_pgr"):
        assert results[key] == expected[key]
    stages = STAGE_KEYS[scenario]
    assert [s["val_pgr"] for s in results[stages]] == [s["val_pgr"] for s in expected[stages]]
    for key in ("timings", "config"):  # the runs' folders differ
        del results[key], expected[key]
    assert results == expected


def test_the_job_returns_the_validation_pgr_for_a_sweeper_and_the_results_otherwise():
    plain = {"levels": [{"pgr": 0.5}]}
    assert objective(plain) is plain
    assert objective({**plain, "weak_val_accuracy": 0.7, "val_pgr": 0.25}) == 0.25
    assert math.isnan(objective({**plain, "weak_val_accuracy": 0.7, "val_pgr": None}))


# --- a features file's own validation split -----------------------------------------------------


def with_file_validation(features, v: int = 40):
    """`features` with a validation split of its own: `v` more samples of the same clusters."""
    extra = make_feature_set(n=v, m=4, seed=1)
    return replace(
        features,
        val_x=features.train_x[:v] + 0.01 * extra.train_x,
        val_y=features.train_y[:v].clone(),
        teacher_val_probs=extra.teacher_train_probs,
    )


def test_a_features_file_carries_its_validation_split(tmp_path):
    features = with_file_validation(make_feature_set(n=240, m=120))
    save_features(features, tmp_path / "features.pt")
    loaded = load_features(tmp_path / "features.pt")
    assert torch.equal(loaded.val_x, features.val_x) and len(loaded.train_y) == 240
    outcome = features_run(tmp_path, features)
    assert outcome.code == 0, outcome.err
    results = read_results(tmp_path / "run")
    weak = generalist_accuracy(features.teacher_val_probs, features.val_y)
    assert results["weak_val_accuracy"] == pytest.approx(weak)
    assert "val_pgr" in results["levels"][-1]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: replace(f, val_y=f.val_y[:-1]), "val_y has shape [39], expected [40]"),
        (
            lambda f: replace(f, teacher_val_probs=f.teacher_val_probs[:1]),
            "teacher_val_probs has shape [1, 40, 4], expected [3, 40, 4]",
        ),
        (lambda f: replace(f, val_x=f.val_x[:, :3]), "val_x has shape [40, 3], expected [40, 8]"),
        (lambda f: replace(f, val_y=None), "needs val_x, val_y and teacher_val_probs together"),
        (lambda f: replace(f, val_y=f.val_y + 4), "val_y holds labels in [4, 7], outside 0..3"),
    ],
)
def test_a_malformed_validation_split_in_a_features_file_is_refused(tmp_path, change, message):
    save_features(change(with_file_validation(make_feature_set())), tmp_path / "features.pt")
    with pytest.raises(FeaturesFileError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_features(tmp_path / "features.pt")


def test_val_fraction_with_a_features_file_that_has_a_validation_split_is_refused(tmp_path):
    features = with_file_validation(make_feature_set())
    outcome = features_run(tmp_path, features, "benchmark.val_fraction=0.1")
    assert_clean_error(
        outcome, "benchmark.val_fraction=0.1", "holds one already", "drop benchmark.val_fraction"
    )


# --- bad settings -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1", "-0.1", "abc", "1.5"])
def test_a_val_fraction_outside_0_1_is_refused_before_anything_runs(tmp_path, value):
    outcome = cli(tmp_path / "run", f"benchmark.val_fraction={value}")
    assert_clean_error(outcome, "benchmark.val_fraction must be a finite number in [0, 1)")
    assert not (tmp_path / "cache").exists()  # refused before the benchmark was built


def test_a_val_fraction_too_small_for_any_class_is_refused(tmp_path):
    outcome = features_run(tmp_path, make_feature_set(n=240), "benchmark.val_fraction=0.01")
    assert_clean_error(
        outcome, "benchmark.val_fraction=0.01 takes no sample", "benchmark.val_fraction=0.017"
    )


# --- the report's --select val ------------------------------------------------------------------


def tuning_run(seed: int, alpha: float, strategy: str, val_pgr: float, test_pgr: float) -> dict:
    levels_ = [
        {"level": 0, "student_accuracy": 0.5, "pgr": 0.0, "val_accuracy": 0.5, "val_pgr": 0.0},
        {
            "level": 1,
            "student_accuracy": 0.5 + test_pgr / 4,
            "pgr": test_pgr,
            "val_accuracy": 0.5 + val_pgr / 4,
            "val_pgr": val_pgr,
        },
    ]
    return {
        "levels": levels_,
        "subdomains": ["classes_0-1", "classes_2-3"],
        "accuracy_matrix": [[0.5, 0.5], [0.6, 0.6]],
        "seed": seed,
        "config": {
            "seed": seed,
            "benchmark": {"val_fraction": 0.2},
            "strategy": {"name": strategy, "loss": "logconf", "logconf_alpha": alpha},
        },
    }


def write_sweep(root, runs: list[dict]) -> None:
    for job, run in enumerate(runs):
        (root / str(job)).mkdir(parents=True)
        (root / str(job) / "results.json").write_text(json.dumps(run))


# alpha -> (validation PGR, test PGR) of seeds 0 and 1: alpha=0.5 is best on validation,
# alpha=0.9 on test.
SWEEP = {
    0.1: ((0.2, 0.3), (0.5, 0.5)),
    0.5: ((0.6, 0.8), (0.4, 0.6)),
    0.9: ((0.4, 0.4), (0.9, 0.9)),
}


def test_select_val_picks_by_validation_pgr_and_reports_the_test_numbers(tmp_path, capsys):
    runs = [
        tuning_run(seed, alpha, "csl", val[seed], test[seed])
        for alpha, (val, test) in SWEEP.items()
        for seed in (0, 1)
    ]
    write_sweep(tmp_path, runs)
    report_main([str(tmp_path), "--select", "val"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| all")]
    # alpha=0.5: validation PGR 0.7 ± 0.141, test accuracy 0.5 + PGR/4, test PGR 0.5 ± 0.141.
    assert rows == [
        "| all runs | strategy.logconf_alpha=0.5 | 3 | 0,1 | 0.700 ± 0.141 | 0.625 ± 0.035 "
        "| 0.500 ± 0.141 |"
    ]
    assert rows[0] in (tmp_path / "selection.md").read_text()


def test_select_val_tunes_the_named_keys_within_each_configuration(tmp_path):
    runs = [tuning_run(0, alpha, "csl", val[0], test[0]) for alpha, (val, test) in SWEEP.items()]
    runs += [tuning_run(0, 0.1, "w2s", 0.9, 0.1), tuning_run(0, 0.9, "w2s", 0.3, 0.8)]
    write_sweep(tmp_path, runs)
    table = select_by_validation(tmp_path, ["strategy.logconf_alpha"])
    rows = [line.split(" | ")[:2] for line in table.splitlines()[2:]]
    assert rows == [
        ["| strategy.name=csl", "strategy.logconf_alpha=0.5"],
        ["| strategy.name=w2s", "strategy.logconf_alpha=0.1"],
    ]
    with pytest.raises(ConfigError, match="--tune strategy.lr: not a setting of these runs"):
        select_by_validation(tmp_path, ["strategy.lr"])


def test_select_val_refuses_runs_without_validation_numbers(tmp_path, capsys):
    run = tuning_run(0, 0.5, "csl", 0.5, 0.5)
    for level in run["levels"]:
        del level["val_accuracy"], level["val_pgr"]
    write_sweep(tmp_path, [run])
    with pytest.raises(SystemExit) as exit_:
        report_main([str(tmp_path), "--select", "val"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "has none (a run without a validation split)" in err and "Traceback" not in err
