"""Resuming a killed run: the rerun continues after the last completed unit and ends with the
same results.json as an uninterrupted run (timings aside)."""

from __future__ import annotations

import gc
import json
import signal
import subprocess
import time

import pytest
import torch
from avalanche.logging import TensorboardLogger
from conftest import CLI_ENV, assert_clean_error, cli, cli_command, crash_on_call, run_cli

import csl_avalanche.experiments.levels as levels
from csl_avalanche.core.inert_settings import without_inert_settings
from csl_avalanche.experiments.resume import CHECKPOINT, config_differences

FAST = ("strategy.epochs=3",)
VARIANTS = {
    "hard": (),
    "soft": ("strategy.labels=soft",),
    "continual-replay": ("strategy.reinit_student=false", "plugins=[replay]"),
    "continual-ewc": ("strategy.reinit_student=false", "plugins=[ewc]"),
    "continual-lwf": ("strategy.reinit_student=false", "plugins=[lwf]"),
}


def without_timings(results: dict) -> dict:
    return {key: value for key, value in results.items() if key != "timings"}


def read_results(run_dir) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def tensorboard_steps(run_dir, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb" / "csl"))
    events.Reload()
    return [event.step for event in events.Scalars(tag)]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_run_that_crashed_in_level_2_resumes_with_the_same_results(
    tmp_path, monkeypatch, variant
):
    overrides = (*FAST, *VARIANTS[variant])
    cache = tmp_path / "cache"
    assert cli(tmp_path / "whole", *overrides, cache_dir=cache).code == 0
    expected = read_results(tmp_path / "whole")

    # Crash once level 2 is trained and evaluated (its metrics are in TensorBoard), before its
    # checkpoint: the checkpoint holds the ceiling and levels 0-1.
    crash_on_call(monkeypatch, levels, "subdomain_accuracy", 3)  # at level 2
    run_dir = tmp_path / "run"
    crashed = cli(run_dir, *overrides, cache_dir=cache)
    assert crashed.code != 0 and "simulated crash" in crashed.err
    assert not (run_dir / "results.json").exists()
    saved = torch.load(run_dir / CHECKPOINT, weights_only=True)
    assert [level["level"] for level in saved["levels"]] == [0, 1]
    # The crashed run's TensorBoard writers flush all they hold now (more than a kill would
    # leave), not whenever the garbage collector finalises them, maybe during the rerun.
    for logger in [obj for obj in gc.get_objects() if isinstance(obj, TensorboardLogger)]:
        logger.writer.close()
    monkeypatch.undo()

    resumed = cli(run_dir, *overrides, cache_dir=cache)
    assert resumed.code == 0, resumed.err
    assert without_timings(read_results(run_dir)) == without_timings(expected)
    assert len(read_results(run_dir)["timings"]["train_seconds"]) == 3
    # The killed attempt's level-2 points were cut from the logs: one point per level. (Sorted:
    # TensorBoard orders event files by name, and two files written in the same second by one
    # process may sort either way.)
    assert sorted(tensorboard_steps(run_dir, "PGR/eval_phase/test_stream")) == [1, 2, 3]
    assert sorted(tensorboard_steps(run_dir, "CSL/keep_rate/train_stream")) == [0, 1, 2]


def test_sigkill_after_level_1_then_rerun_continues_without_retraining(tmp_path):
    overrides = ("strategy.epochs=40",)  # each level takes half a second or more: time to kill
    cache = tmp_path / "cache"
    expected = run_cli(tmp_path / "whole", *overrides, cache_dir=cache)

    run_dir = tmp_path / "run"
    command, env = cli_command(run_dir, *overrides, cache_dir=cache), CLI_ENV
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    checkpoint, done = run_dir / CHECKPOINT, []
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        if checkpoint.exists():
            done = [lvl["level"] for lvl in torch.load(checkpoint, weights_only=True)["levels"]]
            if done == [0, 1]:
                process.send_signal(signal.SIGKILL)
                break
        time.sleep(0.01)
    process.wait()
    assert done == [0, 1], f"the run was not caught after level 1 (levels done: {done})"
    assert process.returncode == -signal.SIGKILL
    assert not (run_dir / "results.json").exists()

    rerun = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    log = rerun.stdout + rerun.stderr
    assert "resuming after level 1 (ceiling and levels 0-1 done)" in log
    assert "level 2: training" in log
    for retrained in ("ceiling: training", "level 0: training", "level 1: training"):
        assert retrained not in log, log
    assert without_timings(read_results(run_dir)) == without_timings(expected)

    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "is finished: nothing to do" in again.stdout + again.stderr
    assert "level 2: training" not in again.stdout + again.stderr
    assert "0.8" in again.stdout  # the table is printed again


def test_another_config_is_refused_and_resume_false_starts_over(tmp_path):
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    assert cli(run_dir, "strategy.epochs=1", cache_dir=cache).code == 0
    refused = cli(run_dir, "strategy.epochs=1", "strategy.lr=0.02", cache_dir=cache)
    assert_clean_error(refused, "holds a run of another configuration", "strategy.lr: 0.01 -> 0.02")
    assert_clean_error(refused, "resume=false")

    over = cli(run_dir, "strategy.epochs=1", "strategy.lr=0.02", "resume=false", cache_dir=cache)
    assert over.code == 0, over.err
    assert read_results(run_dir)["config"]["strategy"]["lr"] == 0.02
    (aside,) = run_dir.glob("replaced-*")
    assert json.loads((aside / "results.json").read_text())["config"]["strategy"]["lr"] == 0.01
    assert (aside / CHECKPOINT).exists() and (aside / "tb").is_dir()


def test_settings_that_do_not_change_results_are_not_compared():
    config = {"seed": 0, "progress": True, "strategy": {"lr": 0.01, "chunk_size": 4096}}
    assert without_inert_settings(config) == {"seed": 0, "strategy": {"lr": 0.01}}
    assert config["strategy"]["chunk_size"] == 4096  # a copy: the config is left as it was


def test_config_differences_name_every_changed_key():
    saved = {"seed": 0, "strategy": {"lr": 0.01, "epochs": 5}, "plugins": {}}
    current = {"seed": 0, "strategy": {"lr": 0.02, "epochs": 5}, "plugins": {"ewc": {"x": 1}}}
    assert config_differences(saved, current) == [
        "plugins.ewc: (absent) -> {'x': 1}",
        "strategy.lr: 0.01 -> 0.02",
    ]
    assert config_differences(saved, saved) == []
