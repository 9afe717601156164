"""Co-supervised replay (`plugins=[csl_replay]`): the buffer's budget per arrival, an old sample
relabelled by its own specialist on a hand-made case, the DER-like term, and its state."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from avalanche.core import SupervisedPlugin
from conftest import make_feature_set
from continual_helpers import arrival_csl

from csl_avalanche.benchmarks.arrivals import by_arrival, make_arrival_benchmark
from csl_avalanche.benchmarks.features import FeatureSet
from csl_avalanche.benchmarks.streams import make_csl_benchmark
from csl_avalanche.core.errors import ConfigError
from csl_avalanche.training.plugins.continual import CSL_REPLAY, build_continual_plugins
from csl_avalanche.training.plugins.cosupervised_replay import (
    CoSupervisedReplayPlugin,
    group_sizes,
)
from csl_avalanche.training.plugins.cosupervision import CoSupervisionPlugin

pytestmark = pytest.mark.usefixtures("single_threaded")

LEVELS = [[[0, 1, 2, 3, 4, 5]], [[0, 1, 2, 3], [4, 5]], [[0, 1], [2, 3], [4, 5]]]


def csl_replay(**knobs) -> CoSupervisedReplayPlugin:
    """The plugin as `plugins=[csl_replay]` builds it, with `knobs` set."""
    return build_continual_plugins({"csl_replay": {"_target_": CSL_REPLAY, **knobs}})[0]


def run_stream(features: FeatureSet, plugin, *probes, order=(0, 1, 2)) -> list[dict]:
    """CSL on the class-incremental stream of `features`; the plugin's rows after each
    arrival."""
    strategy = arrival_csl(features, plugin, *probes)
    benchmark = make_arrival_benchmark(features, list(order))
    snapshots = []
    for group in by_arrival(benchmark.train_stream):
        for experience in group:
            strategy.train(experience, eval_streams=[])
        snapshots.append({a: rows.clone() for a, rows in plugin.rows.items()})
    return snapshots


def test_group_sizes_share_the_budget_as_avalanche_does():
    assert group_sizes(10, 3) == [4, 3, 3]
    assert group_sizes(200, 1) == [200]
    assert group_sizes(5, 5) == [1, 1, 1, 1, 1]


def test_the_buffer_holds_rows_of_each_earlier_arrival_within_its_share_of_the_budget():
    features = make_feature_set(180, 60, c=6, hierarchy=LEVELS)
    plugin = csl_replay(mem_size=10, batch_size_mem=4)
    snapshots = run_stream(features, plugin)
    benchmark = make_arrival_benchmark(features, [0, 1, 2])
    shares = [[10], [5, 5], [4, 3, 3]]  # 10 rows over the arrivals seen, the first first
    for seen, (rows, sizes) in enumerate(zip(snapshots, shares, strict=True), start=1):
        assert sorted(rows) == list(range(seen))
        for arrival, size in zip(sorted(rows), sizes, strict=True):
            assert len(rows[arrival]) == size  # each arrival has 60 samples: its whole share
            samples = benchmark.arrivals[arrival].samples
            assert (
                torch.isin(rows[arrival], samples).all() and rows[arrival].unique().numel() == size
            )
    # a share shrinks by dropping its last rows: the rows kept earlier stay
    assert torch.equal(snapshots[2][0], snapshots[0][0][: len(snapshots[2][0])])
    # the state is pool rows only (no labels); a new plugin restores it exactly
    state = plugin.state_dict()
    assert state["logits"] == {} and all(r.dtype == torch.long for r in state["rows"].values())
    restored = csl_replay(mem_size=10)
    restored.load_state_dict(state)
    assert restored.rows.keys() == plugin.rows.keys()
    assert all(torch.equal(restored.rows[a], plugin.rows[a]) for a in plugin.rows)


def hand_made_features() -> FeatureSet:
    """Six classes on one-hot inputs; each teacher always says one class: the generalist 3, the
    middle level (unused) 0 and 2, specialist {0,1} 1, specialist {2,3} 2, specialist {4,5} 5."""
    y = torch.tensor([0, 1, 2, 3, 4, 5, 1, 1])
    said = {0: 3, 1: 0, 2: 2, 3: 1, 4: 2, 5: 5}
    probs = torch.zeros(6, len(y), 6)
    for teacher, label in said.items():
        probs[teacher, :, label] = 1.0
    x = torch.eye(6)[y]
    return FeatureSet(
        train_x=x,
        train_y=y,
        test_x=x,
        test_y=y,
        teacher_train_probs=probs,
        teacher_test_probs=probs,
        levels=[[0], [1, 2], [3, 4, 5]],
        subdomains=[sub for level in LEVELS for sub in level],
    ).validate()


@pytest.mark.parametrize(("routes", "label"), [(True, 1), (False, 3)])
def test_an_old_sample_is_relabelled_by_its_own_specialist(routes, label):
    """Arrival 1's generalist phase: the buffered rows of arrival 0 (class 1; the student is
    the identity, so it predicts 1) are routed to specialist {0,1}, which says 1, and kept by
    top1; the generalist alone (w2s, which does not route) would say 3."""
    features = hand_made_features()
    benchmark = make_arrival_benchmark(features, [0, 1, 2])
    phase = next(e for e in benchmark.train_stream if e.arrival == 1).logging()
    assert phase.phase == "generalist"
    student = torch.nn.Linear(6, 6, bias=False)
    torch.nn.init.eye_(student.weight)
    strategy = SimpleNamespace(
        experience=phase,
        routes=routes,
        cosupervision=CoSupervisionPlugin(features, denoise="top1"),
        model=student,
        device=torch.device("cpu"),
        eval_mb_size=64,
        train_mb_size=2,
        dataloader=[],
        clock=SimpleNamespace(train_exp_counter=2),
        seed=0,
    )
    plugin = csl_replay(mem_size=10)
    plugin.rows = {0: torch.tensor([1, 6, 7])}  # arrival 0's class-1 samples
    plugin.before_training_exp(strategy)
    memory = plugin.loader.memory
    assert len(memory) == 3
    x, labels = memory.batch(torch.arange(3))[:2]
    assert torch.equal(x, features.train_x[[1, 6, 7]])
    assert labels.tolist() == [label] * 3


class LossTerm(SupervisedPlugin):
    """Records, at each step, what the plugins added to the strategy's loss beyond its
    criterion, and the replay plugin's own reckoning of the DER-like term."""

    def __init__(self, replay: CoSupervisedReplayPlugin):
        super().__init__()
        self.replay = replay
        self.added, self.expected = [], []

    def before_backward(self, strategy, **kwargs):
        self.added.append((strategy.loss - strategy.criterion()).item())
        replay = self.replay
        if replay.memory_logits is not None:
            index = replay.loader.memory_index
            output = strategy.mb_output[-len(index) :]
            mse = ((output - replay.memory_logits[index]) ** 2).mean()
            self.expected.append(replay.distill * mse.item())


def test_distill_zero_adds_no_term_and_a_weight_adds_weight_times_the_mse():
    features = make_feature_set(180, 60, c=6, hierarchy=LEVELS)
    for distill in (0.0, 0.5):
        plugin = csl_replay(mem_size=12, batch_size_mem=4, distill=distill)
        probe = LossTerm(plugin)
        run_stream(features, plugin, probe)
        if distill == 0:
            assert probe.added and all(added == 0 for added in probe.added)
            assert probe.expected == [] and plugin.state_dict()["logits"] == {}
        else:
            rehearsed = probe.added[-len(probe.expected) :]
            assert len(probe.expected) > 0 and max(probe.expected) > 0
            assert rehearsed == pytest.approx(probe.expected, abs=1e-6)
            logits = plugin.state_dict()["logits"]
            assert {a: len(v) for a, v in logits.items()} == {
                a: len(r) for a, r in plugin.rows.items()
            }


def test_a_level_of_the_levels_protocol_is_refused_with_a_clean_error():
    """Through the Python API (the command line refuses it up front, with the settings)."""
    level = make_csl_benchmark(hand_made_features()).train_stream[1]
    with pytest.raises(ConfigError, match="level 1 is no arrival of the class-incremental"):
        csl_replay().before_training_exp(SimpleNamespace(experience=level))
