"""Resuming a killed run: the rerun continues after the last completed unit and ends with the
same results.json as an uninterrupted run (timings aside)."""

from __future__ import annotations

import errno
import fcntl
import gc
import json
import os
import signal
import socket
import subprocess
import time

import pytest
import torch
from avalanche.core import SupervisedPlugin
from avalanche.logging import TensorboardLogger
from conftest import (
    CLI_ENV,
    assert_clean_error,
    cli,
    cli_command,
    crash_on_call,
    make_feature_set,
    run_cli,
)
from continual_helpers import REFUSED_IN, SHIPPED_FILES

import csl_avalanche.experiments.levels as levels
import csl_avalanche.experiments.runner as runner
from csl_avalanche.benchmarks.features import save_features
from csl_avalanche.core.errors import ConfigError
from csl_avalanche.core.inert_settings import without_inert_settings
from csl_avalanche.experiments.resume import CHECKPOINT, config_differences

FAST = ("strategy.epochs=3",)
VARIANTS = {
    "hard": (),
    "soft": ("strategy.labels=soft",),
    "continual-replay": ("strategy.reinit_student=false", "plugins=[replay]"),
    "continual-ewc": ("strategy.reinit_student=false", "plugins=[ewc]"),
    "continual-lwf": ("strategy.reinit_student=false", "plugins=[lwf]"),
    "continual-shrink_perturb": ("strategy.reinit_student=false", "plugins=[shrink_perturb]"),
    "learned-weights": ("strategy.assignment=learned",),
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


# -- one run per folder, the same inputs, a folder that never loses results ------------------

QUICK = ("benchmark=features", "strategy.epochs=2", "strategy.batch_size=32", "strategy.lr=0.05")


@pytest.fixture
def features_run(tmp_path) -> tuple[str, ...]:
    """The overrides of a quick run (two levels) on a tiny features file."""
    path = tmp_path / "features.pt"
    save_features(make_feature_set(), path)
    return (*QUICK, f"data.path={path}")


def crash_at_level_1(monkeypatch, run_dir, overrides) -> None:
    """A run killed once level 1 is trained, before its checkpoint (ceiling and level 0 saved);
    the crashed run's TensorBoard writers are closed, as a killed process's files are."""
    crash_on_call(monkeypatch, levels, "subdomain_accuracy", 2)
    crashed = cli(run_dir, *overrides)
    assert crashed.code != 0 and "simulated crash" in crashed.err
    assert [lvl["level"] for lvl in torch.load(run_dir / CHECKPOINT)["levels"]] == [0]
    for logger in [obj for obj in gc.get_objects() if isinstance(obj, TensorboardLogger)]:
        logger.writer.close()
    monkeypatch.undo()


def edit_checkpoint(run_dir, edit) -> None:
    state = torch.load(run_dir / CHECKPOINT, weights_only=True)
    edit(state)
    torch.save(state, run_dir / CHECKPOINT)


def test_a_second_run_in_the_same_folder_is_refused_while_the_first_holds_it(
    tmp_path, features_run
):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with open(run_dir / ".lock", "a+") as held:  # what a running run holds: an OS lock
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write(f"{os.getpid()}@{socket.gethostname()}\n")
        held.flush()
        refused = cli(run_dir, *features_run)
        assert_clean_error(
            refused,
            f"{run_dir} is in use by another run",
            f"process {os.getpid()} on {socket.gethostname()}",
            "hydra.run.dir",
        )
        assert not (run_dir / "tb").exists() and not (run_dir / CHECKPOINT).exists()
        assert not (run_dir / ".hydra").exists()  # refused before Hydra writes its own files
    # Released (as when its process ends, killed or not): the folder is free again.
    done = cli(run_dir, *features_run)
    assert done.code == 0, done.err
    again = cli(run_dir, *features_run)  # a finished run releases the folder too
    assert again.code == 0, again.err


def test_a_changed_features_file_is_refused_on_resume(tmp_path, monkeypatch, features_run):
    run_dir = tmp_path / "run"
    crash_at_level_1(monkeypatch, run_dir, features_run)
    save_features(make_feature_set(seed=1), tmp_path / "features.pt")  # other inputs
    refused = cli(run_dir, *features_run)
    assert_clean_error(refused, str(run_dir), "other inputs", "features file", "resume=false")
    assert "level 1: training" not in refused.out + refused.err
    over = cli(run_dir, *features_run, "resume=false")
    assert over.code == 0, over.err


def test_a_finished_run_writes_its_results_json_again_where_it_is_missing_or_damaged(
    tmp_path, features_run
):
    run_dir = tmp_path / "run"
    assert cli(run_dir, *features_run).code == 0
    results = run_dir / "results.json"
    expected = read_results(run_dir)
    text = results.read_text()
    for damage in (results.unlink, lambda: results.write_text(text[: len(text) // 2])):
        damage()
        rerun = cli(run_dir, *features_run)
        assert rerun.code == 0, rerun.err
        assert "is finished: nothing to do" in rerun.out + rerun.err
        assert "level 0: training" not in rerun.out + rerun.err
        assert f"{expected['ceiling_accuracy']:.4f}" in rerun.out  # the table, printed again
        assert read_results(run_dir) == expected
    results.write_text(json.dumps({**expected, "weak_accuracy": 0.0}))  # other numbers
    assert cli(run_dir, *features_run).code == 0
    assert read_results(run_dir) == expected
    before = results.stat()
    assert cli(run_dir, *features_run).code == 0
    after = results.stat()  # an intact file is never written again
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_killed_run_whose_folder_was_moved_resumes_there_with_all_its_logs(
    tmp_path, monkeypatch, features_run
):
    assert cli(tmp_path / "whole", *features_run).code == 0
    crash_at_level_1(monkeypatch, tmp_path / "run", features_run)
    moved = tmp_path / "elsewhere" / "run"
    moved.parent.mkdir()
    (tmp_path / "run").rename(moved)
    resumed = cli(moved, *features_run, cache_dir=tmp_path / "cache")  # the same settings
    assert resumed.code == 0, resumed.err
    assert without_timings(read_results(moved)) == without_timings(read_results(tmp_path / "whole"))
    # The finished units' logs were kept, the killed unit's points cut: one point per level.
    for tag in ("Top1_Acc_Stream/eval_phase/test_stream", "CSL/keep_rate/train_stream"):
        steps = sorted(tensorboard_steps(moved, tag))
        assert steps == sorted(tensorboard_steps(tmp_path / "whole", tag)) and len(steps) == 2
    assert list((moved / "tb" / "ceiling").glob("events.out.tfevents.*"))


def _run_with_two_processes(state: dict) -> None:
    """What a checkpoint of the same run started under torchrun with 2 processes holds."""
    for unit in [state["ceiling"], *state["levels"]]:
        unit["world_size"] = 2


def test_another_process_count_is_refused_where_the_results_depend_on_it(
    tmp_path, monkeypatch, features_run
):
    run_dir = tmp_path / "run"
    crash_at_level_1(monkeypatch, run_dir, features_run)
    edit_checkpoint(run_dir, _run_with_two_processes)
    monkeypatch.setattr(  # as a fine-tuned student would make it (an image benchmark: slow)
        runner, "layout_dependence", lambda settings: {"world_size": "student.finetune"}
    )
    refused = cli(run_dir, *features_run)
    assert_clean_error(
        refused,
        "the ceiling ran with 2 process(es), this run has 1",
        "student.finetune",
        "torchrun --nproc_per_node=2",
        "resume=false",
    )


def test_another_process_count_is_accepted_and_recorded_per_level_elsewhere(
    tmp_path, monkeypatch, features_run
):
    run_dir = tmp_path / "run"
    crash_at_level_1(monkeypatch, run_dir, features_run)
    edit_checkpoint(run_dir, _run_with_two_processes)
    resumed = cli(run_dir, *features_run)
    assert resumed.code == 0, resumed.err
    results = read_results(run_dir)
    assert [lvl["world_size"] for lvl in results["levels"]] == [2, 1]
    assert [lvl["device"] for lvl in results["levels"]] == ["cpu", "cpu"]
    assert (results["world_size"], results["device"]) == (2, "cpu")  # the ceiling's


def test_a_class_incremental_run_records_the_process_count_per_arrival(tmp_path, features_run):
    run_dir = tmp_path / "run"
    outcome = cli(run_dir, *features_run, "scenario=class_incremental", "strategy.denoise=all")
    assert outcome.code == 0, outcome.err
    results = read_results(run_dir)
    assert (results["world_size"], results["device"]) == (1, "cpu")
    assert [(a["world_size"], a["device"]) for a in results["arrivals"]] == [(1, "cpu")] * 2


def test_the_results_depend_on_the_layout_with_a_fine_tuned_student_only():
    from results_checks import compose_config

    from csl_avalanche.experiments.checks import layout_dependence
    from csl_avalanche.experiments.schema import read_settings

    def dependence(*overrides):
        return layout_dependence(read_settings(compose_config(*overrides)))

    assert dependence() == {}
    assert dependence("strategy.loss=logconf") == {}  # every rank hardens the whole batch
    finetune = "student.finetune=true"
    image = ("benchmark=imagefolder", "data.root=/x", finetune)
    assert dependence(*image) == {"world_size": finetune, "device": finetune}


def test_a_device_change_is_refused_where_the_results_depend_on_it(tmp_path):
    from csl_avalanche.experiments.resume import RunProgress

    progress = RunProgress(tmp_path, {})
    progress.state["ceiling"] = {"accuracy": 0.5, "steps": 3, "world_size": 1, "device": "cuda"}
    progress.check_layout(1, "cpu", {})  # a linear probe: accepted
    with pytest.raises(ConfigError) as refused:
        progress.check_layout(1, "cpu", {"device": "student.finetune=true"})
    assert str(refused.value) == (
        f"{tmp_path}: the ceiling ran on cuda, this run on cpu; with student.finetune=true the "
        "results depend on the device: resume with device=cuda, or add resume=false to start "
        "over"
    )


def _empty(state: dict) -> None:
    state.clear()


def _older(state: dict) -> None:
    """What an older version wrote: no format nor inputs."""
    state.pop("format", None)
    state.pop("inputs", None)


@pytest.mark.parametrize(
    ("edit", "missing"),
    [(_empty, "format, config, inputs, ceiling, levels"), (_older, "format, inputs")],
)
def test_a_checkpoint_missing_a_key_is_refused_naming_the_file_and_the_keys(
    tmp_path, monkeypatch, features_run, edit, missing
):
    run_dir = tmp_path / "run"
    crash_at_level_1(monkeypatch, run_dir, features_run)
    edit_checkpoint(run_dir, edit)
    refused = cli(run_dir, *features_run)
    lacks = f"checkpoint {run_dir / CHECKPOINT} lacks {missing}"
    assert_clean_error(refused, lacks, "resume=false")


def test_a_disk_that_fills_up_while_the_checkpoint_is_written_loses_nothing(
    tmp_path, monkeypatch, features_run
):
    import csl_avalanche.training.checkpoint as checkpoint

    assert cli(tmp_path / "whole", *features_run).code == 0
    original, calls = checkpoint.write_atomically, []

    def filling_up(path, write):
        calls.append(path)
        if len(calls) < 3:  # the ceiling's and level 0's checkpoints
            return original(path, write)

        def part_then_full(file):
            file.write(b"PK\x03\x04 the first bytes of level 1's checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        return original(path, part_then_full)

    monkeypatch.setattr(checkpoint, "write_atomically", filling_up)
    run_dir = tmp_path / "run"
    full = cli(run_dir, *features_run)
    assert_clean_error(
        full,
        f"cannot write the checkpoint {run_dir / CHECKPOINT}",
        "No space left on device",
        "free space",
        "run the same command again",
    )
    monkeypatch.undo()
    # The previous checkpoint is intact, and no temporary file is left behind.
    assert [lvl["level"] for lvl in torch.load(run_dir / CHECKPOINT)["levels"]] == [0]
    assert sorted(p.name for p in run_dir.iterdir() if "tmp" in p.name) == []
    resumed = cli(run_dir, *features_run)
    assert resumed.code == 0, resumed.err
    assert "level 0: training" not in resumed.out + resumed.err
    assert without_timings(read_results(run_dir)) == without_timings(
        read_results(tmp_path / "whole")
    )


def test_a_disk_that_fills_up_while_the_logs_are_flushed_gives_a_clean_error(
    tmp_path, monkeypatch, features_run
):
    import csl_avalanche.experiments.resume as resume

    # Each checkpoint flushes the two loggers (TensorBoard, text) first; the fifth is level 1's.
    original, calls = resume._flush, []

    def filling_up(logger):
        calls.append(logger)
        if len(calls) == 5:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        original(logger)

    monkeypatch.setattr(resume, "_flush", filling_up)
    run_dir = tmp_path / "run"
    full = cli(run_dir, *features_run)
    assert_clean_error(full, f"cannot write the logs in {run_dir / 'tb'}", "free space")
    assert [lvl["level"] for lvl in torch.load(run_dir / CHECKPOINT)["levels"]] == [0]


SHIPPED_PLUGINS = [path.stem for path in SHIPPED_FILES if (path.stem, "levels") not in REFUSED_IN]


@pytest.mark.parametrize("plugin", SHIPPED_PLUGINS)
def test_a_run_with_each_shipped_plugin_killed_after_level_0_resumes_exactly(
    tmp_path, monkeypatch, features_run, plugin
):
    """The plugin's state after level 0 (buffers, importances, memories, the previous model)
    comes back from the checkpoint: level 1 trains as it does in an uninterrupted run."""
    overrides = (*features_run, "strategy.reinit_student=false", f"plugins=[{plugin}]")
    assert cli(tmp_path / "whole", *overrides).code == 0
    run_dir = tmp_path / "run"
    crash_at_level_1(monkeypatch, run_dir, overrides)
    resumed = cli(run_dir, *overrides)
    assert resumed.code == 0, resumed.err
    assert without_timings(read_results(run_dir)) == without_timings(
        read_results(tmp_path / "whole")
    )


class CountingPlugin(SupervisedPlugin):
    """A user's plugin that carries state from one level to the next and cannot save it."""

    def __init__(self):
        super().__init__()
        self.levels_seen = 0

    def after_training_exp(self, strategy, **kwargs):
        self.levels_seen += 1


class StatelessPlugin(SupervisedPlugin):
    """A user's plugin that carries nothing across levels, and says so."""

    keeps_state = False

    def before_backward(self, strategy, **kwargs):
        strategy.loss = strategy.loss * 1.0


def test_a_user_plugin_with_state_it_cannot_save_is_refused_on_resume(
    tmp_path, monkeypatch, features_run
):
    overrides = (*features_run, f"+plugins.mine._target_={__name__}.CountingPlugin")
    run_dir = tmp_path / "run"
    crash_at_level_1(monkeypatch, run_dir, overrides)
    assert_clean_error(
        cli(run_dir, *overrides),
        f"plugins.mine ({__name__}.CountingPlugin) keeps state the checkpoint cannot restore",
        "resume=false",
        "state_dict()/load_state_dict()",
    )


def test_a_user_plugin_that_declares_no_state_resumes(tmp_path, monkeypatch, features_run):
    overrides = (*features_run, f"+plugins.mine._target_={__name__}.StatelessPlugin")
    assert cli(tmp_path / "whole", *overrides).code == 0
    run_dir = tmp_path / "run"
    crash_at_level_1(monkeypatch, run_dir, overrides)
    resumed = cli(run_dir, *overrides)
    assert resumed.code == 0, resumed.err
    assert without_timings(read_results(run_dir)) == without_timings(
        read_results(tmp_path / "whole")
    )
