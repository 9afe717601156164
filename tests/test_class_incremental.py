"""Class-incremental co-supervision: the arrival stream (samples, teachers, order), routing
with partly arrived specialists on a hand-made case, w2s and ground truth on the stream, and
`python -m csl_avalanche.run scenario=class_incremental` end to end on a features file."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest
import torch
from conftest import assert_clean_error, cli, crash_on_call, make_feature_set
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import csl_avalanche.experiments.class_incremental as incremental
from csl_avalanche.benchmarks.arrivals import (
    Arrival,
    arrival_order,
    by_arrival,
    make_arrival_benchmark,
    plan_arrivals,
)
from csl_avalanche.benchmarks.features import FeatureSet, save_features
from csl_avalanche.core import cosupervision as cs
from csl_avalanche.core.errors import ConfigError
from csl_avalanche.core.forgetting import (
    average_accuracy,
    backward_transfer,
    forgetting_since_arrival,
)
from csl_avalanche.experiments.resume import CHECKPOINT
from csl_avalanche.strategies import CSLStrategy, WeakToStrong
from csl_avalanche.training.loader import materialize
from csl_avalanche.training.plugins.cosupervision import CoSupervisionPlugin

pytestmark = pytest.mark.usefixtures("single_threaded")

# 1 -> 2 -> 3 teachers over 6 classes: teacher 0 the generalist, 1-2 the middle level (unused
# by the class-incremental stream), 3-5 the finest specialists.
LEVELS = [[[0, 1, 2, 3, 4, 5]], [[0, 1, 2, 3], [4, 5]], [[0, 1], [2, 3], [4, 5]]]
FINEST = [3, 4, 5]


def six_class_features(n: int = 360, m: int = 180, seed: int = 0) -> FeatureSet:
    """Separable clusters; the generalist is right on 60% of samples, each other teacher on 90%
    of its own classes (and says one of its own classes otherwise)."""
    return make_feature_set(n, m, c=6, seed=seed, hierarchy=LEVELS)


@pytest.fixture(scope="module")
def features() -> FeatureSet:
    return six_class_features()


# --- the stream -----------------------------------------------------------------------------


def test_arrival_t_holds_exactly_the_pool_samples_of_its_subdomain(features):
    benchmark = make_arrival_benchmark(features, [2, 0, 1])
    assert benchmark.order() == ["classes_4-5", "classes_0-1", "classes_2-3"]
    assert benchmark.arrived_at() == [1, 2, 0]  # test-stream order: when each arrives
    generalist = features.teacher_train_probs[0].argmax(dim=1)
    groups = by_arrival(benchmark.train_stream)
    assert [len(group) for group in groups] == [2, 2, 2]
    for arrival, group, truth in zip(
        benchmark.arrivals, groups, benchmark.ground_truth_stream, strict=True
    ):
        classes = LEVELS[-1][arrival.subdomain]
        expected = torch.isin(features.train_y, torch.tensor(classes)).nonzero().flatten()
        assert torch.equal(arrival.samples, expected)
        for experience in [*group, truth]:
            x, y, _task = materialize(experience.dataset)
            assert torch.equal(x, features.train_x[expected])  # these samples, in pool order
            if experience in group:  # teacher labels; the first phase: the generalist's
                assert not torch.equal(y, features.train_y[expected])
            else:
                assert torch.equal(y, features.train_y[expected])
        assert torch.equal(materialize(group[0].dataset)[1], generalist[expected])
        assert [e.phase for e in group] == ["generalist", "routed"]
        assert {e.arrival for e in [*group, truth]} == {arrival.index}
    assert sum(len(a.samples) for a in benchmark.arrivals) == len(features.train_y)
    assert len(benchmark.test_stream) == 3  # every finest subdomain, from the start


def test_the_teachers_at_arrival_t_are_the_generalist_and_specialists_1_to_t(features):
    arrivals = plan_arrivals(features, [2, 0, 1])
    specialists = [FINEST[2], FINEST[0], FINEST[1]]  # in arrival order; never teachers 1-2
    for t, arrival in enumerate(arrivals):
        assert arrival.teachers == [0, *specialists[: t + 1]]
    # owner: class -> position among the arrival's teachers; 0 (the generalist) until its
    # specialist has arrived.
    assert arrivals[0].owner.tolist() == [0, 0, 0, 0, 1, 1]
    assert arrivals[1].owner.tolist() == [2, 2, 0, 0, 1, 1]
    assert arrivals[2].owner.tolist() == [2, 2, 3, 3, 1, 1]
    benchmark = make_arrival_benchmark(features, [2, 0, 1])
    for experience in benchmark.train_stream:
        arrival = arrivals[experience.arrival]
        if experience.phase == "generalist":
            assert experience.teachers == [0] and not experience.routed
            assert experience.owner.tolist() == [0] * 6
        else:
            assert experience.teachers == arrival.teachers and experience.routed
            assert torch.equal(experience.owner, arrival.owner)


def test_arrival_order_by_hierarchy_seeded_random_or_a_list():
    names = ["a", "b", "c", "d", "e"]
    assert arrival_order("hierarchy", names, seed=0) == [0, 1, 2, 3, 4]
    drawn = [arrival_order("random", names, seed=s) for s in range(4)]
    assert all(sorted(order) == [0, 1, 2, 3, 4] for order in drawn)
    assert drawn[0] == arrival_order("random", names, seed=0)
    assert len({tuple(order) for order in drawn}) > 1
    assert arrival_order([4, 3, 2, 1, 0], names, seed=0) == [4, 3, 2, 1, 0]
    for bad in ([0, 1, 2], [0, 0, 1, 2, 3], [0, 1, 2, 3, 5]):
        with pytest.raises(ConfigError, match=r"scenario.order must list each of the 5 .* 4: e"):
            arrival_order(bad, names, seed=0)


def test_a_hierarchy_without_specialists_has_nothing_to_bring(features):
    only_generalist = dataclasses.replace(features, levels=[[0]], subdomains=[LEVELS[0][0]])
    with pytest.raises(ConfigError, match="only the level-0 generalist"):
        plan_arrivals(only_generalist, [0])


def test_an_avalanche_class_incremental_benchmark_arrives_experience_by_experience(tmp_path):
    """Through the adapter, each train experience of the Avalanche benchmark is one arrival,
    in the benchmark's order (`scenario.order=hierarchy`)."""
    from test_avalanche_adapter import linear_teacher, mlp, split_benchmark

    from csl_avalanche.benchmarks.avalanche_adapter import features_from_avalanche
    from csl_avalanche.benchmarks.settings import Budget
    from csl_avalanche.storage.cache import TensorCache

    bench = split_benchmark()
    adapted = features_from_avalanche(
        bench,
        make_backbone=mlp,
        backbone_budget=Budget(20, 32, 0.01),
        make_teacher=linear_teacher,
        teacher_budget=Budget(10, 16, 0.01),
        cache=TensorCache(tmp_path),
        seed=0,
    )
    names = [f"classes_{a}-{b}" for a, b in ((0, 3), (1, 5), (2, 4))]
    order = arrival_order("hierarchy", names, seed=0)
    arrivals = make_arrival_benchmark(adapted, order)
    assert arrivals.order() == names
    for arrival, experience in zip(arrivals.arrivals, bench.train_stream, strict=True):
        pool_classes = set(adapted.train_y[arrival.samples].tolist())
        assert pool_classes == set(experience.classes_in_this_experience)


def test_input_domains_arrive_one_at_a_time_and_are_routed_by_likelihood():
    from avalanche.training.plugins import EvaluationPlugin
    from test_domain_subdomains import domain_feature_set

    features = domain_feature_set(n=60, m=30)
    benchmark = make_arrival_benchmark(features, [1, 0])
    assert benchmark.order() == ["domains_1", "domains_0"]
    for arrival in benchmark.arrivals:
        expected = (features.train_domains == arrival.subdomain).nonzero().flatten()
        assert torch.equal(arrival.samples, expected)
    assert [a.teachers for a in benchmark.arrivals] == [[0, 2], [0, 2, 1]]
    strategy = CSLStrategy(
        model=torch.nn.Linear(4, 3),
        features=features,
        assignment="likelihood",
        denoise="all",
        reinit_student=False,
        lr=0.01,
        epochs=1,
        batch_size=8,
        evaluator=EvaluationPlugin(loggers=[]),
    )
    for experience in strategy.levels(benchmark.train_stream):
        strategy.train(experience, eval_streams=[])
    assert [s.num_teachers for s in strategy.level_statistics] == [1, 2, 1, 3]
    assert all(s.keep_rate == 1.0 for s in strategy.level_statistics)


# --- routing with partly arrived specialists -----------------------------------------------


def test_routing_among_the_arrived_specialists_by_hand():
    """Arrival 1 of the order [2, 0, 1]: teachers [generalist, specialist {4,5}, specialist
    {0,1}]; classes 2 and 3 have no specialist yet and stay with the generalist. Each teacher
    says one fixed class, so the label shows who was chosen; the student is the identity on
    one-hot inputs, so its prediction is the input's class."""
    c = 6
    predicted = torch.tensor([5, 0, 2, 3, 1, 4])  # the student's argmax for each sample
    said = {0: 3, 1: 0, 2: 4, 3: 1, 4: 2, 5: 5}  # teacher -> the class it always says
    probs = torch.zeros(6, len(predicted), c)
    for teacher, label in said.items():
        probs[teacher, :, label] = 1.0
    x = torch.eye(c)[predicted]
    features = FeatureSet(
        train_x=x,
        train_y=predicted,  # the cut: each sample "is" the class the student predicts
        test_x=x,
        test_y=predicted,
        teacher_train_probs=probs,
        teacher_test_probs=probs,
        levels=[[0], [1, 2], [3, 4, 5]],
        subdomains=[sub for level in LEVELS for sub in level],
    ).validate()
    rows = torch.arange(len(predicted))
    arrival = Arrival(1, 0, rows, [0, 5, 3], torch.tensor([2, 2, 0, 0, 1, 1]))
    # by the pure function: class 5, 4 -> position 1; 0, 1 -> 2; 2, 3 -> the generalist
    z = cs.assign_teachers(
        x,
        probs[arrival.teachers].permute(1, 0, 2),
        "class_partition",
        class_to_teacher=arrival.owner,
    )
    assert z.tolist() == [1, 2, 0, 0, 2, 1]

    # through the plugin, on the routed phase of that arrival
    benchmark = make_arrival_benchmark(features, [2, 0, 1])
    routed = next(
        e for e in benchmark.train_stream if e.arrival == 1 and e.phase == "routed"
    ).logging()
    routed.samples = rows  # every sample, so that each case above is present
    student = torch.nn.Linear(c, c, bias=False)
    torch.nn.init.eye_(student.weight)
    strategy = SimpleNamespace(
        experience=routed,
        device=torch.device("cpu"),
        model=student,
        eval_mb_size=64,
        train_mb_size=1,
        base_epochs=1,
    )
    plugin = CoSupervisionPlugin(features, denoise="all")
    plugin.before_train_dataset_adaptation(strategy)
    labels = materialize(routed.dataset)[1]
    # generalist says 3, specialist {4,5} (teacher 5) says 5, specialist {0,1} (teacher 3) 1
    assert labels.tolist() == [5, 1, 3, 3, 1, 5]
    assert plugin.stats[-1].num_teachers == 3 and plugin.stats[-1].level == 1


# --- strategies on the stream ----------------------------------------------------------------


def test_w2s_takes_one_generalist_phase_per_arrival_and_csl_both(features):
    benchmark = make_arrival_benchmark(features, [0, 1, 2])
    w2s = WeakToStrong.levels(benchmark.train_stream)
    assert [(e.arrival, e.phase) for e in w2s] == [(t, "generalist") for t in range(3)]
    assert len(CSLStrategy.levels(benchmark.train_stream)) == 6


# --- the command line -------------------------------------------------------------------------

QUICK = ("strategy.epochs=3", "strategy.lr=0.05", "strategy.batch_size=16")


@pytest.fixture(scope="module")
def features_file(tmp_path_factory, features) -> list[str]:
    path = tmp_path_factory.mktemp("features") / "six.pt"
    save_features(features, path)
    return ["benchmark=features", f"data.path={path}", *QUICK]


def run(tmp_path, name: str, *overrides: str) -> dict:
    outcome = cli(tmp_path / name, *overrides, cache_dir=tmp_path / "cache")
    assert outcome.code == 0, outcome.err
    return json.loads((tmp_path / name / "results.json").read_text())


def without_timings(results: dict) -> dict:
    return {key: value for key, value in results.items() if key != "timings"}


@pytest.fixture(scope="module")
def csl_run(tmp_path_factory, features_file) -> tuple:
    tmp_path = tmp_path_factory.mktemp("cli")
    overrides = (*features_file, "scenario=class_incremental", "scenario.order=[2,0,1]")
    return tmp_path, overrides, run(tmp_path, "csl", *overrides)


def test_results_hold_every_arrival_and_the_summaries(csl_run):
    tmp_path, _, results = csl_run
    names = ["classes_0-1", "classes_2-3", "classes_4-5"]
    assert results["scenario"] == "class_incremental"
    assert results["subdomains"] == names
    assert results["order"] == ["classes_4-5", "classes_0-1", "classes_2-3"]
    arrivals, matrix = results["arrivals"], results["accuracy_matrix"]
    assert [a["subdomain"] for a in arrivals] == results["order"]
    assert len(matrix) == 3 and all(len(row) == 3 for row in matrix)
    arrived_at = [1, 2, 0]
    for t, (arrival, row) in enumerate(zip(arrivals, matrix, strict=True)):
        assert arrival["arrival"] == t
        assert arrival["subdomain_accuracy"] == dict(zip(names, row, strict=True))
        assert arrival["average_accuracy"] == pytest.approx(
            average_accuracy(matrix[: t + 1], arrived_at)
        )
        forgotten = forgetting_since_arrival(matrix[: t + 1], arrived_at)
        assert arrival["subdomain_forgetting"] == pytest.approx(
            {n: f for n, f in zip(names, forgotten, strict=True) if f is not None}
        )
        assert arrival["backward_transfer"] == pytest.approx(
            backward_transfer(matrix[: t + 1], arrived_at)
        )
        assert arrival["num_teachers"] == t + 2  # the routed phase's: generalist + t + 1
        assert 0 < arrival["keep_rate"] <= 1 and "level" not in arrival
    assert arrivals[0]["mean_forgetting"] is None
    assert arrivals[2]["mean_forgetting"] == pytest.approx(
        sum(arrivals[2]["subdomain_forgetting"].values()) / 2
    )
    last = arrivals[-1]
    assert results["final_average_accuracy"] == last["average_accuracy"]
    assert results["final_mean_forgetting"] == last["mean_forgetting"]
    assert results["final_accuracy"] == last["accuracy"] and results["pgr"] == last["pgr"]
    assert results["final_average_accuracy"] > 0.6  # it learned (chance 1/6)
    assert len(results["timings"]["train_seconds"]) == 3

    events = EventAccumulator(str(tmp_path / "csl" / "tb" / "csl")).Reload()
    scalars = events.Tags()["scalars"]
    for tag in ("AverageAccuracy", "BWT", "MeanForgetting", "PGR"):
        assert f"{tag}/eval_phase/test_stream" in scalars
    assert "Forgetting_Subdomain/eval_phase/test_stream/classes_4-5" in scalars
    assert (tmp_path / "csl" / "tb" / "joint").is_dir()


def test_same_seed_same_numbers_and_the_joint_reference_is_the_levels_run(csl_run, features_file):
    tmp_path, overrides, results = csl_run
    again = run(tmp_path, "again", *overrides)
    assert without_timings(again) == without_timings(results)
    levels = run(tmp_path, "levels", *features_file)
    assert levels["scenario"] == "levels"
    assert results["joint_accuracy"] == levels["levels"][-1]["student_accuracy"]
    assert results["ceiling_accuracy"] == levels["ceiling_accuracy"]
    skipped = run(tmp_path, "skipped", *overrides, "scenario.joint_reference=false")
    assert skipped["joint_accuracy"] is None
    assert not (tmp_path / "skipped" / "tb" / "joint").exists()
    assert skipped["arrivals"] == results["arrivals"]  # the reference changes nothing else


@pytest.mark.parametrize("plugins", ["replay", "replay,ewc,lwf"])
def test_w2s_and_ground_truth_arrival_by_arrival(csl_run, plugins):
    tmp_path, overrides, _ = csl_run
    name = plugins.replace(",", "-")
    w2s = run(tmp_path, f"w2s-{name}", *overrides, "strategy=w2s", f"plugins=[{plugins}]")
    assert [a["num_teachers"] for a in w2s["arrivals"]] == [1, 1, 1]
    assert all(a["keep_rate"] == 1.0 for a in w2s["arrivals"])
    assert list(w2s["config"]["plugins"]) == plugins.split(",")
    truth = run(tmp_path, f"gt-{name}", *overrides, "strategy=ground_truth", f"plugins=[{plugins}]")
    assert truth["joint_accuracy"] == truth["ceiling_accuracy"]  # its levels-protocol reference
    assert "keep_rate" not in truth["arrivals"][0]
    assert (tmp_path / f"gt-{name}" / "tb" / "ground_truth").is_dir()
    assert truth["final_average_accuracy"] > 0.6  # it learned (chance 1/6)


@pytest.mark.parametrize(
    "plugins",
    [
        ("plugins=[replay]",),
        (
            "plugins=[csl_replay]",
            "plugins.csl_replay.mem_size=30",
            "plugins.csl_replay.distill=0.5",
        ),
    ],
    ids=["replay", "csl_replay"],
)
def test_a_run_that_crashed_in_arrival_2_resumes_with_the_same_results(
    csl_run, monkeypatch, tmp_path, plugins
):
    _, overrides, expected = csl_run
    overrides = (*overrides, *plugins)
    cache = csl_run[0] / "cache"
    crash_on_call(monkeypatch, incremental, "subdomain_accuracy", 3)  # at arrival 2
    run_dir = tmp_path / "run"
    crashed = cli(run_dir, *overrides, cache_dir=cache)
    assert crashed.code != 0 and "simulated crash" in crashed.err
    saved = torch.load(run_dir / CHECKPOINT, weights_only=True)
    assert [a["arrival"] for a in saved["arrivals"]] == [0, 1]
    assert saved["joint"] is not None
    monkeypatch.undo()

    resumed = cli(run_dir, *overrides, cache_dir=cache)
    assert resumed.code == 0, resumed.err
    whole = cli(tmp_path / "whole", *overrides, cache_dir=cache)
    assert whole.code == 0, whole.err
    read = [json.loads((d / "results.json").read_text()) for d in (run_dir, tmp_path / "whole")]
    assert without_timings(read[0]) == without_timings(read[1])
    assert read[0]["joint_accuracy"] == expected["joint_accuracy"]


def test_a_finetuned_image_student_learns_arrival_by_arrival(tmp_path):
    """The image benchmarks too: the arrivals cut the cached images, and the whole network
    trains on them (student.finetune=true)."""
    from test_image_benchmarks import TINY, write_class_tree

    root = tmp_path / "data"
    write_class_tree(root, ["apple", "bird", "car", "dog"], per_class=20)
    overrides = [
        "benchmark=imagefolder",
        f"data.root={root}",
        *TINY,
        "student.arch=test_resnet",
        "student.finetune=true",
        "data.image_size=24",
        "strategy.epochs=1",
        "strategy.denoise=all",
        "scenario=class_incremental",
        "scenario.joint_reference=false",
    ]
    results = run(tmp_path, "run", *overrides)
    assert results["order"] == ["classes_0", "classes_1", "classes_2", "classes_3"]
    assert [a["num_teachers"] for a in results["arrivals"]] == [2, 3, 4, 5]
    assert len(results["accuracy_matrix"]) == 4


# --- refused settings -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "phrases"),
    [
        (
            ["scenario=class_incremental", "strategy.reinit_student=true"],
            ["strategy.reinit_student=true", "continual", "scenario=class_incremental"],
        ),
        (["strategy=ground_truth"], ["strategy=ground_truth", "scenario=class_incremental"]),
        (
            ["scenario=class_incremental", "strategy=ground_truth", "strategy.labels=soft"],
            ["strategy=ground_truth", "hard labels"],
        ),
        (["scenario=class_incremental", "scenario.order=first"], ["scenario.order", "'first'"]),
        (["scenario=class_incremental", "scenario.joint_reference=1"], ["joint_reference"]),
        (["scenario.name=sideways"], ["scenario.name must be one of levels, class_incremental"]),
        (["plugins=[csl_replay]"], ["plugins.csl_replay", "scenario=class_incremental"]),
        (
            ["scenario=class_incremental", "strategy=ground_truth", "plugins=[csl_replay]"],
            ["plugins.csl_replay", "no teachers", "plugins=[replay]"],
        ),
    ],
)
def test_settings_the_scenario_refuses_up_front(tmp_path, overrides, phrases):
    assert_clean_error(cli(tmp_path / "run", *overrides), *phrases)
    assert not (tmp_path / "cache").exists()  # refused before any data was read


@pytest.mark.parametrize(
    ("overrides", "phrases"),
    [
        (["scenario.order=[0,1]"], ["scenario.order must list each of the 3", "got [0, 1]"]),
        (["strategy.batch_size=200"], ["strategy.batch_size=200", "classes_0-1 (120)"]),
        (
            ["plugins=[lwf]", "plugins.lwf.alpha=[1.0,1.0,1.0]"],
            ["plugins.lwf.alpha lists 3 weights", "trains 6 experiences"],
        ),
    ],
)
def test_settings_that_do_not_fit_the_arrivals_are_refused_before_training(
    tmp_path, features_file, overrides, phrases
):
    outcome = cli(tmp_path / "run", *features_file, "scenario=class_incremental", *overrides)
    assert_clean_error(outcome, *phrases)
    assert not (tmp_path / "run" / "tb").exists()  # not even the ceiling trained
