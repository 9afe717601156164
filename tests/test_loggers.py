"""The `loggers` config group: today's files by default, CSV and offline wandb under the run
folder (no network), CSV series without duplicates after a kill and a resume, rank 0 only."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import assert_clean_error, cli, make_feature_set
from hydra import compose, initialize_config_module
from test_resume import crash_at_level_1

import csl_avalanche.experiments.strategy_setup as strategy_setup
from csl_avalanche.benchmarks.features import save_features
from csl_avalanche.experiments.schema import read_settings

QUICK = ("benchmark=features", "strategy.epochs=2", "strategy.batch_size=32", "strategy.lr=0.05")


@pytest.fixture
def quick_run(tmp_path) -> tuple[str, ...]:
    """The overrides of a quick run (two levels) on a tiny features file."""
    path = tmp_path / "features.pt"
    save_features(make_feature_set(), path)
    return (*QUICK, f"data.path={path}")


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """wandb without an account or a network: offline, quiet, its settings in a fake HOME."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-home"))
    yield
    import wandb

    wandb.finish()


def rows(path) -> list[list[str]]:
    with open(path, newline="") as file:
        return list(csv.reader(file))


def test_the_default_loggers_write_todays_files(tmp_path, quick_run):
    run_dir = tmp_path / "run"
    outcome = cli(run_dir, *quick_run)
    assert outcome.code == 0, outcome.err
    for name in ("ceiling", "csl"):
        assert list((run_dir / "tb" / name).glob("events.out.tfevents.*"))
        assert (run_dir / "tb" / name / "avalanche.log").stat().st_size > 0
    assert not (run_dir / "csv").exists() and not (run_dir / "wandb").exists()
    assert "tensorboard --logdir" in outcome.out


def test_csv_and_offline_wandb_write_under_the_run_folder(tmp_path, quick_run, offline_wandb):
    run_dir = tmp_path / "run"
    outcome = cli(run_dir, *quick_run, "loggers=[csv,wandb]")
    assert outcome.code == 0, outcome.err
    import wandb

    wandb.finish()  # what the end of the process does
    evaluations = rows(run_dir / "csv" / "csl" / "eval_results.csv")
    header = ["eval_exp", "training_exp", "eval_accuracy", "eval_loss", "forgetting"]
    assert evaluations[0] == header
    results = json.loads((run_dir / "results.json").read_text())
    subdomains, levels = len(results["subdomains"]), len(results["levels"])
    assert {(row[0], row[1]) for row in evaluations[1:]} == {
        (str(e), str(t)) for e in range(subdomains) for t in range(levels)
    }  # every finest subdomain after every level
    training = rows(run_dir / "csv" / "csl" / "training_results.csv")[1:]
    assert len(training) >= 4 and all(float(row[2]) > 0 for row in training)  # epoch accuracy
    assert (run_dir / "csv" / "ceiling" / "eval_results.csv").is_file()
    for name in ("ceiling", "csl"):
        run_id = (run_dir / "wandb" / name / "run_id").read_text()
        (offline,) = (run_dir / "wandb" / name / "wandb").glob(f"offline-run-*-{run_id}")
        assert (offline / f"run-{run_id}.wandb").stat().st_size > 0
    assert not (run_dir / "tb").exists()
    assert "tensorboard" not in outcome.out


def test_after_a_kill_and_a_resume_the_csv_files_are_those_of_an_uninterrupted_run(
    tmp_path, monkeypatch, quick_run
):
    overrides = (*quick_run, "loggers=[csv]")
    assert cli(tmp_path / "whole", *overrides).code == 0
    run_dir = tmp_path / "run"
    crash_at_level_1(monkeypatch, run_dir, overrides)  # level 1 trained, not saved
    resumed = cli(run_dir, *overrides)
    assert resumed.code == 0, resumed.err
    for name in ("ceiling", "csl"):
        for file_name in ("training_results.csv", "eval_results.csv"):
            whole = (tmp_path / "whole" / "csv" / name / file_name).read_text()
            assert (run_dir / "csv" / name / file_name).read_text() == whole


def test_only_rank_0_builds_loggers(tmp_path, monkeypatch):
    with initialize_config_module("csl_avalanche.configs", version_base="1.3"):
        cfg = compose("config", ["loggers=[tensorboard,text,csv]"])
    settings = read_settings(cfg)
    monkeypatch.setattr(strategy_setup.distributed, "is_main", lambda: False)
    assert strategy_setup.make_evaluator(settings, tmp_path, "csl").loggers == []
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(strategy_setup.distributed, "is_main", lambda: True)
    assert len(strategy_setup.make_evaluator(settings, tmp_path, "csl").loggers) == 3


def test_a_wrong_logger_setting_is_named(tmp_path):
    outcome = cli(tmp_path / "run", "loggers=[wandb]", "loggers.wandb.mode=cloud")
    assert_clean_error(outcome, "loggers.wandb.mode must be one of offline, online, got 'cloud'")
