"""The embedded default benchmark: scikit-learn's 8x8 digits, always available offline.

Split (stratified, seeded, disjoint) into a backbone-pretraining part, a teacher part, the
transfer pool and a test part. The strong student is an MLP pretrained on the pretraining
part, a stand-in for a foundation model trained on other data; the weak teachers are linear
models on 4x4 average-pooled images.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf

from csl_avalanche.benchmarks.features import FeatureSet
from csl_avalanche.benchmarks.pipeline import Budget, build_feature_set, split_tensors
from csl_avalanche.benchmarks.registry import register_source
from csl_avalanche.core.clustering import configured_hierarchy
from csl_avalanche.core.hierarchy import Hierarchy
from csl_avalanche.models.factories import mlp_backbone, pooled_linear_teacher
from csl_avalanche.storage.cache import TensorCache

SIDE = 8


def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """Images as [1797, 64] floats in [0, 1] and labels as [1797] longs."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return torch.tensor(digits.data, dtype=torch.float32) / 16.0, torch.tensor(digits.target)


@register_source("digits")
def digits_features(cfg: DictConfig, cache: TensorCache, seed: int) -> FeatureSet:
    x, y = load_digits_tensors()
    data = split_tensors(x, y, dict(cfg.benchmark.splits), seed)
    hierarchy = configured_hierarchy(
        cfg.benchmark, 10, lambda: Hierarchy(OmegaConf.to_object(cfg.benchmark.hierarchy), 10)
    )
    student, teacher = cfg.student, cfg.teacher
    return build_feature_set(
        data,
        hierarchy,
        make_backbone=lambda: mlp_backbone(SIDE * SIDE, student.hidden, student.embed_dim),
        backbone_budget=Budget(
            student.pretrain.steps, student.pretrain.batch_size, student.pretrain.lr
        ),
        make_teacher=lambda: pooled_linear_teacher(SIDE, teacher.pool, 10),
        teacher_budget=Budget(teacher.steps, teacher.batch_size, teacher.lr),
        backbone_config=OmegaConf.to_container(student),
        teacher_config=OmegaConf.to_container(teacher),
        cache=cache,
        seed=seed,
    )
