"""From raw labelled inputs to a FeatureSet: pretrain the student backbone, train the weak
teachers, extract embeddings and teacher probabilities, all cached by content hash.

Benchmarks whose data fit in memory as tensors (digits, Fashion-MNIST) only need to say how to
split the data and which models to build; this module does the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from csl_avalanche.benchmarks import confusion_probe
from csl_avalanche.benchmarks.checks import (
    embeddings_fault,
    nested_finite_fault,
    teacher_probs_fault,
)
from csl_avalanche.benchmarks.features import FeatureSet
from csl_avalanche.benchmarks.settings import Budget
from csl_avalanche.benchmarks.splits import checked_split
from csl_avalanche.benchmarks.teachers import cached_teacher_probabilities, train_teachers
from csl_avalanche.core.clustering import AutoHierarchy
from csl_avalanche.core.hierarchy import Hierarchy
from csl_avalanche.models.fit import fit_classifier, predict
from csl_avalanche.storage.cache import TensorCache, fingerprint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitData:
    """The four disjoint parts of a labelled dataset, as tensors."""

    pretrain: tuple[torch.Tensor, torch.Tensor]  # student backbone pretraining (ground truth)
    teachers: tuple[torch.Tensor, torch.Tensor]  # weak-teacher training (ground truth)
    pool: tuple[torch.Tensor, torch.Tensor]  # transfer pool (labels: diagnostics only)
    test: tuple[torch.Tensor, torch.Tensor]


def split_tensors(
    x: torch.Tensor, y: torch.Tensor, fractions: dict[str, float], seed: int
) -> SplitData:
    """Stratified, seeded split into the four parts named by SplitData, each holding every
    class (`fractions` is `benchmark.splits`)."""
    parts = checked_split(
        y,
        fractions,
        seed,
        what="benchmark.splits",
        parts=("pretrain", "teachers", "pool", "test"),
        describe=lambda label, count: f"class {label} has {count} samples",
    )
    return SplitData(**{name: (x[idx], y[idx]) for name, idx in parts.items()})


def build_feature_set(
    data: SplitData,
    hierarchy: Hierarchy | AutoHierarchy,
    *,
    make_backbone: Callable[[], nn.Module],
    backbone_budget: Budget,
    make_teacher: Callable[[], nn.Module],
    teacher_budget: Budget,
    backbone_config: dict,
    teacher_config: dict,
    cache: TensorCache,
    seed: int,
    progress: bool,
    class_names: Sequence[str] | None = None,
) -> FeatureSet:
    """Pretrain (or load from cache) the backbone and the teachers, then extract everything
    (`progress`: draw the teachers' progress bar).

    `backbone_config` and `teacher_config` describe the two factories (architecture names and
    sizes); each is part of its own models' cache keys, as are the data, budgets and seed. An
    AutoHierarchy is chosen first, from the teacher split only (`confusion_probe`).
    """
    hierarchy = confusion_probe.resolve(
        hierarchy,
        *data.teachers,
        make_teacher,
        identity=(data.teachers, teacher_config),
        budget=asdict(teacher_budget),
        seed=seed,
        cache=cache,
        class_names=class_names,
    )
    backbone = pretrained_backbone(
        make_backbone,
        backbone_budget,
        data.pretrain,
        hierarchy.num_classes,
        backbone_config,
        cache,
        seed,
    )
    embed_key = fingerprint("embeddings", backbone, data.pool[0], data.test[0])
    embeddings = cache.get_or_compute(
        "embeddings",
        embed_key,
        lambda: {"pool": predict(backbone, data.pool[0]), "test": predict(backbone, data.test[0])},
        check=embeddings_fault,
        cause="The pretrained student backbone overflows on these inputs.",
    )
    teachers = trained_teachers(
        make_teacher,
        teacher_budget,
        data.teachers,
        hierarchy,
        teacher_config,
        cache,
        seed,
        progress=progress,
    )
    probs = cached_teacher_probabilities(
        cache,
        fingerprint(teachers, data.pool[0], data.test[0]),
        teachers,
        {"pool": data.pool[0], "test": data.test[0]},
        hierarchy.num_classes,
        check=teacher_probs_fault,
        cause="The weak teachers overflow on these inputs.",
    )
    levels, subdomains = hierarchy.teacher_lists()
    return FeatureSet(
        train_x=embeddings["pool"],
        train_y=data.pool[1],
        test_x=embeddings["test"],
        test_y=data.test[1],
        teacher_train_probs=probs["pool"],
        teacher_test_probs=probs["test"],
        levels=levels,
        subdomains=subdomains,
        class_names=class_names,
    ).validate(values=False)  # the cache checked every value


def pretrained_backbone(
    make_backbone: Callable[[], nn.Module],
    budget: Budget,
    data: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    config: object,
    cache: TensorCache,
    seed: int,
) -> nn.Module:
    """The student backbone, pretrained with labels on the disjoint pretraining split (the
    offline foundation model): a backbone plus a linear head trained for `budget` steps.

    Cached by `config` (what describes `make_backbone`), data, budget and seed.
    """

    def pretrain() -> dict:
        log.info("pretraining the student backbone on %d examples", len(data[0]))
        torch.manual_seed(seed)
        backbone = make_backbone()
        with torch.no_grad():
            embed_dim = backbone.eval()(data[0][:2]).flatten(1).shape[1]
        classifier = nn.Sequential(backbone, nn.Flatten(), nn.Linear(embed_dim, num_classes))
        fit_classifier(
            classifier,
            *data,
            steps=budget.steps,
            batch_size=budget.batch_size,
            lr=budget.lr,
            seed=seed,
        )
        return backbone.state_dict()

    key = fingerprint("backbone", data, config, budget, seed)
    backbone = make_backbone()
    state = cache.get_or_compute(
        "backbone",
        key,
        pretrain,
        check=lambda weights: nested_finite_fault("backbone weights", weights),
        cause="Pretraining the student backbone diverged: lower its learning rate "
        "(student.pretrain.lr).",
    )
    backbone.load_state_dict(state)
    return backbone.eval()


def trained_teachers(
    make_teacher: Callable[[], nn.Module],
    budget: Budget,
    data: tuple[torch.Tensor, torch.Tensor],
    hierarchy: Hierarchy,
    config: object,
    cache: TensorCache,
    seed: int,
    *,
    progress: bool,
) -> list[nn.Module]:
    """One frozen teacher per subdomain, each `budget` steps on its own classes (teachers.py;
    `progress`: draw its progress bar).

    Cached by `config` (what describes `make_teacher`), data, hierarchy, budget and seed.
    """

    def train() -> list[dict]:
        teachers = train_teachers(
            hierarchy,
            *data,
            make_teacher,
            steps=budget.steps,
            batch_size=budget.batch_size,
            lr=budget.lr,
            seed=seed,
            progress=progress,
        )
        return [teacher.state_dict() for teacher in teachers]

    key = fingerprint("teachers", data, hierarchy.as_lists(), config, budget, seed)
    teachers = []
    states = cache.get_or_compute(
        "teachers",
        key,
        train,
        check=lambda weights: nested_finite_fault("teacher weights", weights),
        cause="Weak-teacher training diverged: lower the teachers' learning rate (teacher.lr).",
    )
    for state in states:
        teacher = make_teacher()
        teacher.load_state_dict(state)
        teachers.append(teacher.eval())
    return teachers
