"""Checkpoint state: a strategy restored from a file continues exactly as the original would."""

from __future__ import annotations

import pytest
import torch
from avalanche.training.plugins import EvaluationPlugin

from csl_avalanche.benchmark import make_csl_benchmark
from csl_avalanche.checkpoint import (
    load_strategy_state,
    log_sizes,
    read_checkpoint,
    rewind_logs,
    rng_state,
    set_rng_state,
    strategy_state,
    write_atomically,
)
from csl_avalanche.models import linear_probe
from csl_avalanche.plugins.continual import build_continual_plugins
from csl_avalanche.strategies import CSLStrategy

PLUGINS = {
    "replay": {"mem_size": 40, "batch_size_mem": 8},
    "ewc": {"ewc_lambda": 10.0},
    "lwf": {"alpha": 1.0, "temperature": 2.0},
}


def make_strategy(features, labels):
    torch.manual_seed(0)
    return CSLStrategy(
        model=linear_probe(features.train_x.shape[1], features.num_classes),
        features=features,
        labels=labels,
        reinit_student=False,
        lr=0.01,
        epochs=2,
        batch_size=16,
        device="cpu",
        evaluator=EvaluationPlugin(loggers=[]),
        plugins=build_continual_plugins(PLUGINS),
    )


@pytest.mark.parametrize("labels", ["hard", "soft"])
def test_a_restored_strategy_trains_the_next_level_identically(tiny_features, tmp_path, labels):
    benchmark = make_csl_benchmark(tiny_features)
    original = make_strategy(tiny_features, labels)
    original.train(benchmark.train_stream[0], eval_streams=[])
    path = tmp_path / "checkpoint.pt"
    write_atomically({"strategy": strategy_state(original), "rng": rng_state()}, path)
    original.train(benchmark.train_stream[1], eval_streams=[])

    saved = read_checkpoint(path)
    torch.manual_seed(123)  # whatever happened in between, the checkpoint's RNG state wins
    resumed = make_strategy(tiny_features, labels)
    load_strategy_state(resumed, saved["strategy"])
    set_rng_state(saved["rng"])
    resumed.train(benchmark.train_stream[1], eval_streams=[])

    for name, value in original.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    assert resumed.level_statistics[-1].keep_rate == original.level_statistics[-1].keep_rate
    replay = [p for p in resumed.plugins if type(p).__name__ == "ReplayPlugin"][0]
    assert len(replay.storage_policy.buffer) == 40  # both levels' samples are in the buffer
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind


def test_logs_are_rewound_to_the_checkpoint(tmp_path):
    folder = tmp_path / "tb"
    folder.mkdir()
    (folder / "events.1").write_bytes(b"level0")
    sizes = log_sizes([folder])
    with open(folder / "events.1", "ab") as file:
        file.write(b"+partial level1")
    (folder / "events.2").write_bytes(b"written after the checkpoint")
    rewind_logs(sizes, [folder])
    assert sorted(p.name for p in folder.iterdir()) == ["events.1"]
    assert (folder / "events.1").read_bytes() == b"level0"
