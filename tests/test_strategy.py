"""The CSL strategy and its plugin on a tiny feature set, through Avalanche."""

import pytest
import torch
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import EvaluationPlugin

from csl_avalanche.benchmarks.streams import labelled_dataset, make_csl_benchmark
from csl_avalanche.core import cosupervision as cs
from csl_avalanche.core.errors import ConfigError
from csl_avalanche.strategies import CSLStrategy, GroundTruthCeiling, WeakToStrong
from csl_avalanche.training.loader import InMemoryBatchLoader, materialize


class RecordLevel(SupervisedPlugin):
    """Runs after the co-supervision plugin: recomputes its work with the pure functions."""

    def __init__(self, features, rule="class_partition", labels="hard", denoise="top3"):
        super().__init__()
        self.features, self.rule, self.labels, self.denoise = features, rule, labels, denoise
        self.seen = []

    def before_train_dataset_adaptation(self, strategy, **kwargs):
        exp = strategy.experience
        data = exp.dataset
        record = {
            "level": exp.level,
            "x": torch.stack([data[i][0] for i in range(len(data))]),
            "y": torch.tensor([data[i][1] for i in range(len(data))]),
            "columns": len(data[0]),
            "target": [data[i][2] for i in range(len(data))],  # soft target, or the task
            "epochs": strategy.train_epochs,
        }
        if exp.level > 0:
            h = self.features.hierarchy
            with torch.no_grad():
                logits = strategy.model(self.features.train_x)
            teacher_probs = self.features.teacher_train_probs[h.teacher_slice(exp.level)]
            teacher_probs = teacher_probs.permute(1, 0, 2)
            z = cs.assign_teachers(
                logits, teacher_probs, self.rule, class_to_teacher=h.class_to_teacher(exp.level)
            )
            hard, target = cs.make_targets(cs.gather_targets(teacher_probs, z), self.labels)
            keep = cs.select_confident(logits, hard, self.denoise)
            record["expected"] = (hard[keep], None if target is None else target[keep], keep)
        self.seen.append(record)


def make_csl(features, strategy_cls=CSLStrategy, plugins=(), **kwargs):
    torch.manual_seed(0)
    options = {"lr": 0.05, "epochs": 3, "batch_size": 16, "seed": 0}
    options.update(kwargs)
    return strategy_cls(
        model=torch.nn.Linear(features.train_x.shape[1], features.num_classes),
        features=features,
        plugins=list(plugins),
        evaluator=EvaluationPlugin(),
        **options,
    )


@pytest.mark.parametrize("labels", ["hard", "soft"])
def test_each_level_trains_on_the_kept_relabelled_pool(tiny_features, labels):
    recorder = RecordLevel(tiny_features, labels=labels, denoise="top1")
    strategy = make_csl(tiny_features, plugins=[recorder], labels=labels, denoise="top1")
    benchmark = make_csl_benchmark(tiny_features)
    stream_labels = [list(e.dataset.targets) for e in benchmark.train_stream]
    for experience in benchmark.train_stream:
        strategy.train(experience, eval_streams=[])

    level0, level1 = recorder.seen
    generalist = tiny_features.teacher_train_probs[0]
    assert torch.equal(level0["y"], generalist.argmax(1))  # all kept, teacher labels
    hard, target, keep = level1["expected"]
    assert torch.equal(level1["y"], hard)
    if labels == "soft":  # [x, y, soft_target, task]
        assert level0["columns"] == level1["columns"] == 4
        assert torch.equal(torch.stack(level0["target"]), generalist.half())  # kept in float16
        assert torch.equal(torch.stack(level1["target"]), target.half())
    else:  # [x, y, task]: hard labels carry no target vector
        assert level0["columns"] == level1["columns"] == 3 and target is None
    assert torch.equal(level1["x"], tiny_features.train_x[keep])
    stats = strategy.level_statistics
    assert [s.level for s in stats] == [0, 1]
    assert stats[0].keep_rate == 1.0 and stats[0].epochs == 3
    assert stats[1].keep_rate < 1.0  # the level was filtered, so the stream check below can fail
    assert stats[1].keep_rate == pytest.approx(keep.float().mean().item())
    assert stats[1].epochs == level1["epochs"] == cs.scaled_epochs(3, stats[1].keep_rate)
    truth = tiny_features.train_y
    correct = hard == truth[keep]
    assert stats[1].label_precision == pytest.approx(correct.float().mean().item())
    # the stream keeps its original datasets: the plugin changed the strategy's copies
    assert [list(e.dataset.targets) for e in benchmark.train_stream] == stream_labels
    assert [len(labels) for labels in stream_labels] == [len(truth)] * 2


def test_statistics_by_hand_for_oracle_and_ensemble(tiny_features):
    benchmark = make_csl_benchmark(tiny_features)
    oracle = make_csl(tiny_features, assignment="oracle", denoise="all")
    ensemble = make_csl(tiny_features, assignment="ensemble", denoise="all")
    for strategy in (oracle, ensemble):
        for experience in benchmark.train_stream:
            strategy.train(experience, eval_streams=[])
    assert oracle.level_statistics[1].assignment_accuracy == 1.0
    assert oracle.level_statistics[1].keep_rate == 1.0
    specialists = tiny_features.teacher_train_probs[1:3]
    owner = tiny_features.train_y // 2  # teacher 1 owns {0, 1}, teacher 2 owns {2, 3}
    oracle_labels = specialists[owner, torch.arange(len(owner))].argmax(1)
    accuracy = (oracle_labels == tiny_features.train_y).float().mean().item()
    assert oracle.level_statistics[1].teacher_accuracy == pytest.approx(accuracy)
    assert ensemble.level_statistics[1].assignment_accuracy is None
    mean_labels = specialists.mean(0).argmax(1)
    accuracy = (mean_labels == tiny_features.train_y).float().mean().item()
    assert ensemble.level_statistics[1].teacher_accuracy == pytest.approx(accuracy)


def test_too_few_kept_samples_stop_with_the_keep_rate(tiny_features):
    strategy = make_csl(tiny_features, denoise="top1", batch_size=239)
    benchmark = make_csl_benchmark(tiny_features)
    strategy.train(benchmark.train_stream[0], eval_streams=[])
    with pytest.raises(ConfigError, match=r"criterion 'top1' kept \d+ of 240 .*keep rate"):
        strategy.train(benchmark.train_stream[1], eval_streams=[])


def test_weak_to_strong_only_takes_level_zero(tiny_features):
    strategy = make_csl(tiny_features, strategy_cls=WeakToStrong)
    benchmark = make_csl_benchmark(tiny_features)
    assert [e.level for e in strategy.levels(benchmark.train_stream)] == [0]
    with pytest.raises(ValueError, match="generalist's labels only, got level 1, which"):
        strategy.train(benchmark.train_stream[1])


def test_reinit_student_gives_a_fresh_model_each_level(tiny_features):
    strategy = make_csl(tiny_features, reinit_student=True)
    initial = {k: v.clone() for k, v in strategy.model.state_dict().items()}
    benchmark = make_csl_benchmark(tiny_features)
    strategy.train(benchmark.train_stream[0], eval_streams=[])
    trained = strategy.model.state_dict()
    assert not any(torch.equal(trained[k], initial[k]) for k in initial)  # level 0 trained
    seen = []

    class Peek(SupervisedPlugin):
        def before_training_epoch(self, strategy, **kwargs):
            seen.append({k: v.clone() for k, v in strategy.model.state_dict().items()})

    strategy.plugins.append(Peek())
    strategy.train(benchmark.train_stream[1], eval_streams=[])
    # level 1 starts from exactly the weights the student had before level 0 trained
    assert seen[0].keys() == initial.keys()
    assert all(torch.equal(seen[0][k], initial[k]) for k in initial)


def test_ceiling_learns_ground_truth_and_runs_are_repeatable(tiny_features):
    benchmark = make_csl_benchmark(tiny_features)

    def ceiling_accuracy():
        torch.manual_seed(0)
        strategy = GroundTruthCeiling(
            model=torch.nn.Linear(8, 4),
            lr=0.05,
            epochs=3,
            batch_size=16,
            evaluator=EvaluationPlugin(),
        )
        strategy.train(benchmark.ceiling_stream[0], eval_streams=[])
        with torch.no_grad():
            return (strategy.model(tiny_features.test_x).argmax(1) == tiny_features.test_y).float()

    first, second = ceiling_accuracy(), ceiling_accuracy()
    assert torch.equal(first, second)
    assert first.mean() > 0.9  # the clusters are separable


def test_in_memory_loader_yields_every_sample_once_per_epoch(tiny_features):
    benchmark = make_csl_benchmark(tiny_features)
    loader = InMemoryBatchLoader(
        benchmark.ceiling_stream[0].dataset,
        batch_size=50,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )
    assert len(loader) == 5
    batches = list(loader)
    x = torch.cat([b[0] for b in batches])
    assert [len(b) for b in batches[0]] == [50, 50, 50]  # x, y, task
    order = torch.cat([b[1] for b in batches])
    assert sorted(order.tolist()) == sorted(tiny_features.train_y.tolist())
    assert torch.allclose(x.sort(0).values, tiny_features.train_x.sort(0).values)


def test_the_loader_gathers_from_the_pool_without_copying_it(tiny_features):
    rows = torch.tensor([5, 2, 9, 4, 0])
    soft = tiny_features.teacher_train_probs[1]
    dataset = labelled_dataset(tiny_features.train_x, tiny_features.train_y, soft, rows=rows)
    loader = InMemoryBatchLoader(dataset.train(), batch_size=2, shuffle=False)
    assert loader.columns.tensors[0] is tiny_features.train_x  # Avalanche's views keep it
    streamed = [torch.cat(column) for column in zip(*loader, strict=True)]
    through_avalanche = materialize(dataset)
    assert len(streamed) == len(through_avalanche) == 4  # x, y, soft target, task
    assert all(map(torch.equal, streamed, through_avalanche))
    # A dataset Avalanche derives (a subset, a concatenation) is read through Avalanche.
    subset = InMemoryBatchLoader(dataset.subset([0, 2]), batch_size=2, shuffle=False)
    assert subset.columns.tensors[0] is not tiny_features.train_x
    assert torch.equal(next(iter(subset))[0], tiny_features.train_x[[5, 9]])
    # The ceiling and the evaluation stream their inputs from the features too.
    benchmark = make_csl_benchmark(tiny_features)
    for experience, x in [
        (benchmark.ceiling_stream[0], tiny_features.train_x),
        *((experience, tiny_features.test_x) for experience in benchmark.test_stream),
    ]:
        dataset = experience.dataset.eval()
        assert InMemoryBatchLoader(dataset, batch_size=7, shuffle=False).columns.tensors[0] is x
