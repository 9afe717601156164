"""The continual student: the head survives across levels, and replay, EWC and LwF train in a
CSL stream from the `plugins` config, with hard and soft teacher labels."""

from __future__ import annotations

import pytest
import torch
import yaml
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import (
    EWCPlugin,
    LwFPlugin,
    ReplayPlugin,
    SynapticIntelligencePlugin,
)
from conftest import REPO
from continual_helpers import PLUGINS, SMALL_PLUGINS, run_csl

from csl_avalanche.core.errors import ConfigError
from csl_avalanche.training.plugins.continual import build_continual_plugins


class WeightProbe(SupervisedPlugin):
    """Copies the weights when a level's training starts and when it ends."""

    def __init__(self):
        super().__init__()
        self.at_start: list[dict] = []
        self.at_end: list[dict] = []

    def before_training_exp(self, strategy, **kwargs):
        self.at_start.append({k: v.clone() for k, v in strategy.model.state_dict().items()})

    def after_training_exp(self, strategy, **kwargs):
        self.at_end.append({k: v.clone() for k, v in strategy.model.state_dict().items()})


def _equal(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("reinit_student", [False, True])
def test_continual_mode_keeps_the_head_across_levels(tiny_features, reinit_student):
    probe = WeightProbe()
    run_csl(tiny_features, reinit_student=reinit_student, probes=(probe,))
    assert len(probe.at_start) == len(probe.at_end) == 2
    assert not _equal(probe.at_start[1], probe.at_end[1])  # level 1 trained
    # Continual: level 1 starts from level 0's final head; the paper's mode starts afresh.
    assert _equal(probe.at_start[1], probe.at_end[0]) is not reinit_student


@pytest.mark.parametrize("labels", ["hard", "soft"])
@pytest.mark.parametrize(
    "plugin_names", [("replay",), ("ewc",), ("lwf",), ("replay", "ewc", "lwf")], ids="+".join
)
def test_each_plugin_trains_in_a_csl_stream(tiny_features, plugin_names, labels):
    strategy, forgetting = run_csl(tiny_features, plugin_names, labels=labels)
    plugins = {type(p): p for p in strategy.plugins}
    if "replay" in plugin_names:
        buffer = plugins[ReplayPlugin].storage_policy.buffer
        assert 0 < len(buffer) <= 40
        # [x, y, soft target, task] with soft labels, [x, y, task] with hard: targets survive
        assert len(buffer[0]) == (4 if labels == "soft" else 3)
    if "ewc" in plugin_names:
        assert sorted(plugins[EWCPlugin].importances) == [0, 1]
        assert any(imp.data.abs().sum() > 0 for imp in plugins[EWCPlugin].importances[1].values())
    if "lwf" in plugin_names:
        assert plugins[LwFPlugin].lwf.prev_model is not None
    assert len(forgetting.accuracy_matrix) == 2
    last = forgetting.accuracy_matrix[-1]
    assert sum(last) / len(last) > 0.6  # it learned (chance: 0.25)


def test_replay_batches_and_the_cosine_schedule_cover_the_level(tiny_features):
    """ReplayPlugin swaps in its own loader; the schedule must span that loader's steps."""
    levels = []

    class StepCounter(SupervisedPlugin):
        def before_training_exp(self, strategy, **kwargs):
            levels.append({"steps": 0, "batch_sizes": set()})

        def after_training_iteration(self, strategy, **kwargs):
            levels[-1]["steps"] += 1
            levels[-1]["batch_sizes"].add(len(strategy.mb_y))

        def after_training_exp(self, strategy, **kwargs):
            levels[-1]["schedule"] = strategy.lr_scheduler.T_max
            levels[-1]["scheduled"] = strategy.lr_scheduler.last_epoch

    run_csl(tiny_features, ("replay",), labels="soft", probes=(StepCounter(),))
    for level in levels:
        assert level["schedule"] == level["scheduled"] == level["steps"]
    assert max(levels[0]["batch_sizes"]) == 16  # nothing to replay at level 0
    assert max(levels[1]["batch_sizes"]) == 16 + 8  # [current | memory]


def test_factory_builds_avalanche_plugins_in_order():
    plugins = build_continual_plugins(
        {
            "lwf": {"_target_": PLUGINS + "LwFPlugin", "alpha": 0.5, "temperature": 1.0},
            "replay": {"_target_": PLUGINS + "ReplayPlugin", "mem_size": 10},
        }
    )
    assert [type(p) for p in plugins] == [LwFPlugin, ReplayPlugin]
    assert plugins[1].mem_size == 10
    assert build_continual_plugins({}) == []


def test_factory_builds_any_class_with_its_nested_targets():
    """A plugin Avalanche ships but we have no file for, with a storage policy built from its
    own `_target_`: the arguments are checked against the class's signature."""
    (replay,) = build_continual_plugins(
        {
            "mine": {
                "_target_": PLUGINS + "ReplayPlugin",
                "mem_size": 30,
                "storage_policy": {
                    "_target_": "avalanche.training.storage_policy.ClassBalancedBuffer",
                    "max_size": 30,
                },
            }
        }
    )
    assert type(replay.storage_policy).__name__ == "ClassBalancedBuffer"


def test_factory_rejects_unknown_targets_and_knobs():
    with pytest.raises(ConfigError, match="plugins.gem must be a mapping with _target_"):
        build_continual_plugins({"gem": {}})
    with pytest.raises(ConfigError, match="cannot import module no_such_module"):
        build_continual_plugins({"x": {"_target_": "no_such_module.Plugin"}})
    with pytest.raises(ConfigError, match="has no GEMPlugins"):
        build_continual_plugins({"x": {"_target_": PLUGINS + "GEMPlugins"}})
    with pytest.raises(
        ConfigError,
        match="plugins.replay.memsize is not an argument of ReplayPlugin; it takes mem_size",
    ):
        build_continual_plugins({"replay": {"_target_": PLUGINS + "ReplayPlugin", "memsize": 1}})
    with pytest.raises(ConfigError, match="plugins.ewc.decay_factor must be"):
        build_continual_plugins(
            {"ewc": {"_target_": PLUGINS + "EWCPlugin", "ewc_lambda": 1.0, "mode": "online"}}
        )
    with pytest.raises(ConfigError, match="plugins.gem.patterns is not an argument of GEMPlugin"):
        build_continual_plugins({"gem": {"_target_": PLUGINS + "GEMPlugin", "patterns": 1}})
    with pytest.raises(ConfigError, match=r"needs patterns_per_experience, memory_strength"):
        build_continual_plugins({"gem": {"_target_": PLUGINS + "GEMPlugin"}})


def test_synaptic_intelligence_weighs_the_weights_a_level_moved(tiny_features):
    """Avalanche 0.6's SI snapshots the weights as views on CPU, so every importance stays 0;
    the shipped file's class copies them: after a level, the weights that moved weigh."""
    entry = yaml.safe_load((REPO / "configs" / "plugins" / "si.yaml").read_text())
    SMALL_PLUGINS["si"] = entry["si"]
    try:
        strategy, _ = run_csl(tiny_features, ("si",))
    finally:
        del SMALL_PLUGINS["si"]
    (si,) = [p for p in strategy.plugins if isinstance(p, SynapticIntelligencePlugin)]
    importance = torch.cat([param.data for param in si.ewc_data[1].values()])
    assert (importance > 0).any()
