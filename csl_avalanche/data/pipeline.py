"""From raw labelled inputs to a FeatureSet: pretrain the student backbone, train the weak
teachers, extract embeddings and teacher probabilities, all cached by content hash.

Benchmarks whose data fit in memory as tensors (digits, Fashion-MNIST) only need to say how to
split the data and which models to build; this module does the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from csl_avalanche.cache import TensorCache, fingerprint
from csl_avalanche.data.features import FeatureSet
from csl_avalanche.fit import fit_classifier, predict
from csl_avalanche.hierarchy import Hierarchy
from csl_avalanche.teachers import teacher_probabilities, train_teachers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Budget:
    """A fixed training budget: `steps` Adam steps of `batch_size` examples at `lr`."""

    steps: int
    batch_size: int
    lr: float


@dataclass(frozen=True)
class SplitData:
    """The four disjoint parts of a labelled dataset, as tensors."""

    pretrain: tuple[torch.Tensor, torch.Tensor]  # student backbone pretraining (ground truth)
    teachers: tuple[torch.Tensor, torch.Tensor]  # weak-teacher training (ground truth)
    pool: tuple[torch.Tensor, torch.Tensor]  # transfer pool (labels: diagnostics only)
    test: tuple[torch.Tensor, torch.Tensor]


def build_feature_set(
    data: SplitData,
    hierarchy: Hierarchy,
    *,
    make_backbone: Callable[[], nn.Module],
    embed_dim: int,
    backbone_budget: Budget,
    make_teacher: Callable[[], nn.Module],
    teacher_budget: Budget,
    backbone_config: dict,
    teacher_config: dict,
    cache: TensorCache,
    seed: int,
) -> FeatureSet:
    """Pretrain (or load from cache) the backbone and the teachers, then extract everything.

    `backbone_config` and `teacher_config` describe the two factories (architecture names and
    sizes); each is part of its own models' cache keys, as are the data, budgets and seed.
    """
    backbone = make_backbone()
    backbone_key = fingerprint("backbone", data.pretrain, backbone_config, backbone_budget, seed)
    backbone.load_state_dict(
        cache.get_or_compute(
            "backbone",
            backbone_key,
            lambda: _pretrain_backbone(
                make_backbone,
                embed_dim,
                hierarchy.num_classes,
                data.pretrain,
                backbone_budget,
                seed,
            ),
        )
    )
    embed_key = fingerprint("embeddings", backbone, data.pool[0], data.test[0])
    embeddings = cache.get_or_compute(
        "embeddings",
        embed_key,
        lambda: {"pool": predict(backbone, data.pool[0]), "test": predict(backbone, data.test[0])},
    )

    teacher_key = fingerprint(
        "teachers", data.teachers, hierarchy.as_lists(), teacher_config, teacher_budget, seed
    )
    states = cache.get_or_compute(
        "teachers",
        teacher_key,
        lambda: [
            t.state_dict()
            for t in train_teachers(
                hierarchy,
                *data.teachers,
                make_teacher,
                steps=teacher_budget.steps,
                batch_size=teacher_budget.batch_size,
                lr=teacher_budget.lr,
                seed=seed,
            )
        ],
    )
    teachers = []
    for state in states:
        teacher = make_teacher()
        teacher.load_state_dict(state)
        teachers.append(teacher.eval())
    probs_key = fingerprint("teacher-probs", states, data.pool[0], data.test[0])
    probs = cache.get_or_compute(
        "teacher-probs",
        probs_key,
        lambda: {
            "pool": teacher_probabilities(teachers, data.pool[0]),
            "test": teacher_probabilities(teachers, data.test[0]),
        },
    )
    offsets = [hierarchy.teacher_slice(level) for level in range(hierarchy.num_levels)]
    return FeatureSet(
        train_x=embeddings["pool"],
        train_y=data.pool[1],
        test_x=embeddings["test"],
        test_y=data.test[1],
        teacher_train_probs=probs["pool"],
        teacher_test_probs=probs["test"],
        levels=[list(range(s.start, s.stop)) for s in offsets],
        subdomains=[list(sub) for level in hierarchy.levels for sub in level],
    ).validate()


def _pretrain_backbone(
    make_backbone: Callable[[], nn.Module],
    embed_dim: int,
    num_classes: int,
    data: tuple[torch.Tensor, torch.Tensor],
    budget: Budget,
    seed: int,
) -> dict:
    """Supervised pretraining on the disjoint pretraining split: the offline foundation model."""
    log.info("pretraining the student backbone on %d examples", len(data[0]))
    torch.manual_seed(seed)
    backbone = make_backbone()
    classifier = nn.Sequential(backbone, nn.Linear(embed_dim, num_classes))
    fit_classifier(
        classifier, *data, steps=budget.steps, batch_size=budget.batch_size, lr=budget.lr, seed=seed
    )
    return backbone.state_dict()
