"""Checkpoint state: a strategy restored from a file continues exactly as the original would."""

from __future__ import annotations

import errno
import os

import pytest
import torch
import yaml
from avalanche.training.plugins import EvaluationPlugin
from continual_helpers import SHIPPED_CASES, SMALL_PLUGINS, make_csl

from csl_avalanche.benchmarks.arrivals import make_arrival_benchmark
from csl_avalanche.benchmarks.streams import make_csl_benchmark
from csl_avalanche.core.errors import ConfigError
from csl_avalanche.models.factories import linear_probe
from csl_avalanche.strategies import CSLStrategy
from csl_avalanche.training.checkpoint import (
    load_strategy_state,
    log_sizes,
    read_checkpoint,
    rewind_logs,
    rng_state,
    set_rng_state,
    strategy_state,
    write_checkpoint,
)
from csl_avalanche.training.plugins.continual import build_continual_plugins


def make_strategy(features, labels, loss):
    return make_csl(features, tuple(SMALL_PLUGINS), labels=labels, loss=loss)[0]


@pytest.mark.parametrize(("labels", "loss"), [("hard", "ce"), ("soft", "ce"), ("soft", "logconf")])
def test_a_restored_strategy_trains_the_next_level_identically(
    tiny_features, tmp_path, labels, loss
):
    benchmark = make_csl_benchmark(tiny_features)
    original = make_strategy(tiny_features, labels, loss)
    original.train(benchmark.train_stream[0], eval_streams=[])
    original.eval(benchmark.test_stream)
    path = tmp_path / "checkpoint.pt"
    write_checkpoint({"strategy": strategy_state(original), "rng": rng_state()}, path)
    original.train(benchmark.train_stream[1], eval_streams=[])
    original.eval(benchmark.test_stream)

    saved = read_checkpoint(path)
    torch.manual_seed(123)  # whatever happened in between, the checkpoint's RNG state wins
    resumed = make_strategy(tiny_features, labels, loss)
    load_strategy_state(resumed, saved["strategy"])
    set_rng_state(saved["rng"])
    resumed.train(benchmark.train_stream[1], eval_streams=[])
    resumed.eval(benchmark.test_stream)

    for name, value in original.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name

    def without_timing(stats):
        return [{k: v for k, v in s.as_dict().items() if k != "estep_seconds"} for s in stats]

    assert without_timing(resumed.level_statistics) == without_timing(original.level_statistics)
    assert len(resumed.level_statistics) == 2
    matrices = [s.evaluator.metrics[-1].accuracy_matrix for s in (original, resumed)]
    assert matrices[0] == matrices[1] and len(matrices[0]) == 2
    replay = [p for p in resumed.plugins if type(p).__name__ == "ReplayPlugin"][0]
    assert len(replay.storage_policy.buffer) == 40  # both levels' samples are in the buffer
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind


def test_logs_are_rewound_to_the_checkpoint(tmp_path):
    folder = tmp_path / "tb"
    folder.mkdir()
    (folder / "events.1").write_bytes(b"level0")
    sizes = log_sizes(tmp_path, [folder])
    with open(folder / "events.1", "ab") as file:
        file.write(b"+partial level1")
    (folder / "events.2").write_bytes(b"written after the checkpoint")
    rewind_logs(sizes, tmp_path, [folder])
    assert sorted(p.name for p in folder.iterdir()) == ["events.1"]
    assert (folder / "events.1").read_bytes() == b"level0"


def test_log_sizes_are_relative_to_the_run_folder_so_a_moved_folder_keeps_its_logs(tmp_path):
    old, new = tmp_path / "old" / "run", tmp_path / "new" / "run"
    (old / "tb" / "csl").mkdir(parents=True)
    (old / "tb" / "csl" / "events.1").write_bytes(b"level0")
    sizes = log_sizes(old, [old / "tb" / "csl"])
    assert sizes == {"tb/csl/events.1": 6}
    new.parent.mkdir()
    old.rename(new)
    rewind_logs(sizes, new, [new / "tb" / "csl"])
    assert (new / "tb" / "csl" / "events.1").read_bytes() == b"level0"


@pytest.mark.parametrize(
    ("code", "phrases"),
    [
        (errno.ENOSPC, ["No space left on device", "free space on the disk of"]),
        (errno.EACCES, ["no permission to write in", "Permission denied", "make it writable"]),
        (errno.EROFS, ["no permission to write in", "Read-only file system"]),
    ],
)
def test_a_checkpoint_that_cannot_be_written_says_why(tmp_path, monkeypatch, code, phrases):
    import csl_avalanche.training.checkpoint as checkpoint

    def failing(path, write):
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(checkpoint, "write_atomically", failing)
    path = tmp_path / "run" / "checkpoint.pt"
    with pytest.raises(ConfigError) as refused:
        write_checkpoint({"levels": []}, path)
    message = str(refused.value)
    assert message.startswith(f"cannot write the checkpoint {path}: ")
    assert str(path.parent) in message and "run the same command again" in message
    for phrase in phrases:
        assert phrase in message
    if code != errno.ENOSPC:
        assert "space" not in message  # a permission problem is not blamed on the disk


def plugin_strategy(features, entry: dict):
    """A small continual CSL student with one shipped plugin (its file's arguments)."""
    torch.manual_seed(0)
    return CSLStrategy(
        model=linear_probe(features.train_x.shape[1], features.num_classes),
        features=features,
        reinit_student=False,
        lr=0.05,
        epochs=2,
        batch_size=16,
        device="cpu",
        evaluator=EvaluationPlugin(loggers=[]),
        plugins=build_continual_plugins(entry),
    )


@pytest.mark.parametrize(("path", "scenario"), SHIPPED_CASES)
def test_each_shipped_plugin_is_restored_exactly(tiny_features, tmp_path, path, scenario):
    """Saved after the first unit (a level, or an arrival's two phases), restored into a new
    strategy: the rest trains to the very weights of the uninterrupted strategy."""
    entry = yaml.safe_load(path.read_text())
    if scenario == "levels":
        stream, cut = make_csl_benchmark(tiny_features).train_stream, 1
    else:
        stream, cut = make_arrival_benchmark(tiny_features, [1, 0]).train_stream, 2
    original = plugin_strategy(tiny_features, entry)
    for experience in stream[:cut]:
        original.train(experience, eval_streams=[])
    write_checkpoint({"strategy": strategy_state(original), "rng": rng_state()}, tmp_path / "c")
    for experience in stream[cut:]:
        original.train(experience, eval_streams=[])

    saved = read_checkpoint(tmp_path / "c")
    torch.manual_seed(123)  # whatever happened in between, the checkpoint's RNG state wins
    resumed = plugin_strategy(tiny_features, entry)
    load_strategy_state(resumed, saved["strategy"])
    set_rng_state(saved["rng"])
    for experience in stream[cut:]:
        resumed.train(experience, eval_streams=[])
    for name, value in original.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
