"""No ground-truth label of the pool reaches a replay buffer (Avalanche's, or co-supervised
replay's), EWC's Fisher pass, LwF's class bookkeeping or a training loss, in the levels
scenario and in the class-incremental one (whose stream is cut by the pool's classes, but
labelled by teachers only); nor, for every shipped plugin file, a training loss, the level's
dataset, or any dataset the plugin keeps.

The pool's ground truth is rewritten so that, for every sample, it differs from the label of
every teacher; each label the student's machinery sees is traced back to its sample by the
input row and checked against that sample's ground truth and teacher labels. A control run
trains the ceiling on ground truth with the same probes and must be caught.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import EvaluationPlugin, EWCPlugin, LwFPlugin
from conftest import make_feature_set
from continual_helpers import SHIPPED_CASES, SMALL_PLUGINS, arrival_csl, run_csl
from torch.utils.data import DataLoader, Dataset

from csl_avalanche.benchmarks.arrivals import by_arrival, make_arrival_benchmark
from csl_avalanche.benchmarks.features import FeatureSet
from csl_avalanche.benchmarks.streams import make_csl_benchmark
from csl_avalanche.models.factories import linear_probe
from csl_avalanche.strategies import GroundTruthCeiling
from csl_avalanche.training.plugins.continual import CSL_REPLAY, build_continual_plugins
from csl_avalanche.training.plugins.cosupervision import CoSupervisionPlugin


def ground_truth_apart_from_teachers() -> FeatureSet:
    """The tiny feature set with each pool label replaced by a class no teacher predicts there."""
    features = make_feature_set()
    teacher_labels = features.teacher_train_probs.argmax(dim=2)  # [T, N]
    predicted = torch.zeros(features.train_y.shape[0], features.num_classes, dtype=torch.bool)
    predicted.scatter_(1, teacher_labels.T, True)
    assert not predicted.all(dim=1).any(), "some sample has no class free of teacher labels"
    train_y = (~predicted).float().argmax(dim=1)  # the lowest class no teacher predicts
    return dataclasses.replace(features, train_y=train_y).validate()


class LabelAudit:
    """Traces (x, y, target) rows back to pool samples and counts ground-truth labels."""

    def __init__(self, features: FeatureSet):
        self.truth = features.train_y
        self.teacher_labels = features.teacher_train_probs.argmax(dim=2).T  # [N, T]
        self.index = {row.numpy().tobytes(): i for i, row in enumerate(features.train_x)}

    def ground_truth_hits(self, x: torch.Tensor, y: torch.Tensor, *extra: torch.Tensor) -> int:
        """How many rows carry their sample's ground truth as label or soft-target argmax
        (`extra`: the columns between y and the task: the soft targets, the learned weights'
        sample keys)."""
        target = next((column for column in extra if column.is_floating_point()), None)
        samples = torch.tensor([self.index[row.numpy().tobytes()] for row in x.detach().cpu()])
        y = y.cpu()
        hits = y == self.truth[samples]
        if target is not None:
            hits |= target.detach().cpu().argmax(dim=1) == self.truth[samples]
        if not hits.any():  # then every label is one of that sample's teachers' labels
            assert (self.teacher_labels[samples] == y.unsqueeze(1)).any(dim=1).all()
        return int(hits.sum())

    def dataset_hits(self, dataset) -> int:
        hits = 0
        for batch in DataLoader(dataset, batch_size=256):  # [x, y, (soft target, keys,) task]
            hits += self.ground_truth_hits(*batch[:-1])
        return hits


class LossProbe(SupervisedPlugin):
    """Wraps the strategy's criterion to audit every batch it is given while training (replayed
    samples included): `[x, y, (soft target,) task]`."""

    def __init__(self, audit: LabelAudit):
        super().__init__()
        self.audit = audit
        self.hits = 0
        self.batches = 0

    def before_training(self, strategy, **kwargs):
        criterion = strategy.criterion

        def audited():
            if strategy.is_training:
                self.hits += self.audit.ground_truth_hits(*strategy.mbatch[:-1])
                self.batches += 1
            return criterion()

        strategy.criterion = audited

    def after_training(self, strategy, **kwargs):
        del strategy.criterion  # back to the class's method


class ExperienceProbe(SupervisedPlugin):
    """Audits the level's dataset once it is final (what the plugins read after training)."""

    def __init__(self, audit: LabelAudit):
        super().__init__()
        self.audit = audit
        self.hits = 0

    def after_training_exp(self, strategy, **kwargs):
        self.hits += self.audit.dataset_hits(strategy.experience.dataset)
        self.hits += self.audit.dataset_hits(strategy.adapted_dataset)


def spy_on_fisher(ewc: EWCPlugin, datasets: list, labels: list) -> None:
    """Record the dataset of each importance pass and the labels its loss is given."""
    compute = ewc.compute_importances

    def spied(model, criterion, optimizer, dataset, *args, **kwargs):
        datasets.append(dataset)

        def recording_criterion(out, y):
            labels.append(y.cpu())
            return criterion(out, y)

        return compute(model, recording_criterion, optimizer, dataset, *args, **kwargs)

    ewc.compute_importances = spied


def spy_on_lwf(lwf: LwFPlugin, experiences: list) -> None:
    """Record the experience LwF reads its classes from after each level."""
    post_adapt = lwf.lwf.post_adapt

    def spied(agent, experience):
        experiences.append(experience)
        return post_adapt(agent, experience)

    lwf.lwf.post_adapt = spied


def run_arrivals(features: FeatureSet, *, labels: str, probes: tuple, **options) -> int:
    """CSL on the class-incremental stream (every phase of every arrival), evaluated after
    each arrival; returns the number of train experiences."""
    benchmark = make_arrival_benchmark(features, [1, 0])  # 29 and 211 samples
    strategy = arrival_csl(features, *probes, labels=labels, **options)
    for group in by_arrival(benchmark.train_stream):
        for experience in group:
            strategy.train(experience, eval_streams=[])
        strategy.eval(benchmark.test_stream)
    return len(benchmark.train_stream)


@pytest.mark.parametrize("assignment", ["class_partition", "learned"])
@pytest.mark.parametrize("scenario", ["levels", "class_incremental"])
@pytest.mark.parametrize("labels", ["hard", "soft"])
def test_no_ground_truth_reaches_buffer_fisher_lwf_or_loss(labels, scenario, assignment):
    """`learned` too: its labels are recomputed from the teachers at every step, and its
    weights learn from the teachers and the student only."""
    features = ground_truth_apart_from_teachers()
    audit = LabelAudit(features)
    loss, experiences = LossProbe(audit), ExperienceProbe(audit)
    replay, ewc, lwf = build_continual_plugins(SMALL_PLUGINS)
    fisher_datasets, fisher_labels, lwf_experiences = [], [], []
    spy_on_fisher(ewc, fisher_datasets, fisher_labels)
    spy_on_lwf(lwf, lwf_experiences)

    probes = (replay, ewc, lwf, loss, experiences)
    if scenario == "levels":
        run_csl(features, labels=labels, probes=probes, assignment=assignment)
        trained = 2
    else:
        trained = run_arrivals(features, labels=labels, probes=probes, assignment=assignment)
        assert trained == 4  # two arrivals, two phases each

    # Training losses, replayed samples included.
    assert loss.batches > 0 and loss.hits == 0
    # The level's dataset and the adapted dataset the loader read.
    assert experiences.hits == 0
    # The replay buffer, and its `targets` attribute (what class-balanced policies group by).
    buffer = replay.storage_policy.buffer
    assert len(buffer) > 0
    assert audit.dataset_hits(buffer) == 0
    buffered = torch.tensor([int(buffer[i][1]) for i in range(len(buffer))])
    assert torch.equal(torch.tensor(list(buffer.targets)), buffered)
    # EWC's importance pass: the datasets it read and the labels its loss was given.
    assert len(fisher_datasets) == trained
    assert sum(audit.dataset_hits(d) for d in fisher_datasets) == 0
    read = torch.cat([torch.cat([b[1] for b in DataLoader(d, 16)]) for d in fisher_datasets])
    assert torch.equal(torch.cat(fisher_labels), read)
    # LwF's class bookkeeping: the experiences it read, and the classes it keeps.
    assert len(lwf_experiences) == trained
    classes = set()
    for experience in lwf_experiences:
        assert audit.dataset_hits(experience.dataset) == 0
        classes |= set(experience.dataset.targets)
    assert lwf.lwf.prev_classes_by_task[0] == classes


@pytest.mark.parametrize("stream", ["ceiling", "ground_truth arrivals"])
def test_the_audit_catches_ground_truth(stream):
    """Control: the same probes on the ceiling, or on the class-incremental ground-truth
    diagnostic (both trained on ground truth), must report it."""
    features = ground_truth_apart_from_teachers()
    audit = LabelAudit(features)
    loss, experiences = LossProbe(audit), ExperienceProbe(audit)
    strategy = GroundTruthCeiling(
        model=linear_probe(features.train_x.shape[1], features.num_classes),
        lr=0.01,
        epochs=1,
        batch_size=16,
        device="cpu",
        evaluator=EvaluationPlugin(loggers=[]),
        plugins=[loss, experiences],
    )
    if stream == "ceiling":
        strategy.train(make_csl_benchmark(features).ceiling_stream[0], eval_streams=[])
    else:
        for experience in make_arrival_benchmark(features, [0, 1]).ground_truth_stream:
            strategy.train(experience, eval_streams=[])
    n = len(features.train_y)
    assert loss.hits == n and experiences.hits == 2 * n


@pytest.mark.parametrize("labels", ["hard", "soft"])
def test_no_ground_truth_reaches_the_cosupervised_replay_buffer_or_its_batches(labels, monkeypatch):
    """Co-supervised replay keeps pool rows only (and, with distill, logits), and its memory
    samples, relabelled by the teachers at every phase, carry no ground truth."""
    features = ground_truth_apart_from_teachers()
    audit = LabelAudit(features)
    loss, experiences = LossProbe(audit), ExperienceProbe(audit)
    (replay,) = build_continual_plugins(
        {"csl_replay": {"_target_": CSL_REPLAY, "mem_size": 20, "batch_size_mem": 4, "distill": 1}}
    )
    rehearsed = []
    relabel = CoSupervisionPlugin.relabel

    def audited_relabel(self, strategy, experience):  # the buffer's relabelled samples
        results, keep = relabel(self, strategy, experience)
        if experience.label.endswith("rehearsed rows"):
            rehearsed.append(audit.dataset_hits(experience.dataset))
        return results, keep

    monkeypatch.setattr(CoSupervisionPlugin, "relabel", audited_relabel)
    run_arrivals(features, labels=labels, probes=(replay, loss, experiences))
    assert loss.batches > 0 and loss.hits == 0 and experiences.hits == 0
    assert len(rehearsed) == 2 and rehearsed == [0, 0]  # both phases of arrival 1
    state = replay.state_dict()
    assert set(state) == {"rows", "logits"} and sorted(state["rows"]) == [0, 1]
    assert all(rows.dtype == torch.long for rows in state["rows"].values())
    assert all(logits.is_floating_point() for logits in state["logits"].values())


def held_datasets(plugin) -> list:
    """The datasets a plugin keeps in its attributes: a dataset, a list of them (AGEM's
    memories), or a storage policy's buffer (replay, GDumb)."""
    held = []
    for value in vars(plugin).values():
        items = value if isinstance(value, list) else [value]
        held += [item for item in items if isinstance(item, Dataset)]
        if isinstance(getattr(value, "buffer", None), Dataset):
            held.append(value.buffer)
    return held


@pytest.mark.parametrize(("path", "scenario"), SHIPPED_CASES)
def test_no_ground_truth_reaches_any_shipped_plugin(path, scenario):
    """Each file of the plugins config group, as shipped: every batch the strategy trains on,
    the level's dataset, and every dataset the plugin holds afterwards carry teacher labels."""
    features = ground_truth_apart_from_teachers()
    audit = LabelAudit(features)
    loss, experiences = LossProbe(audit), ExperienceProbe(audit)
    if (path.stem, scenario) == ("csl_replay", "levels"):
        pytest.skip(
            "co-supervised replay is refused in the levels protocol (every row is in every level)"
        )
    (plugin,) = build_continual_plugins(yaml.safe_load(path.read_text()))
    probes = (plugin, loss, experiences)
    if scenario == "levels":
        run_csl(features, probes=probes)
    else:
        run_arrivals(features, labels="hard", probes=probes)
    assert loss.batches > 0 and loss.hits == 0
    assert experiences.hits == 0
    assert sum(audit.dataset_hits(dataset) for dataset in held_datasets(plugin)) == 0
