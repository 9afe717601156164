"""The embedded default benchmark: scikit-learn's 8x8 digits, always available offline.

Split (stratified, seeded, disjoint) into a backbone-pretraining part, a teacher part, the
transfer pool and a test part. The strong student is an MLP pretrained on the pretraining
part, a stand-in for a foundation model trained on other data; the weak teachers are linear
models on 4x4 average-pooled images.
"""

from __future__ import annotations

from dataclasses import asdict

import torch

from csl_avalanche.benchmarks.features import FeatureSet
from csl_avalanche.benchmarks.pipeline import build_feature_set, split_tensors
from csl_avalanche.benchmarks.registry import SourceContext, register_source
from csl_avalanche.benchmarks.settings import Budget, DigitsSettings
from csl_avalanche.models.factories import mlp_backbone, pooled_linear_teacher

SIDE = 8


def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """Images as [1797, 64] floats in [0, 1] and labels as [1797] longs."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return torch.tensor(digits.data, dtype=torch.float32) / 16.0, torch.tensor(digits.target)


@register_source("digits")
def digits_features(settings: DigitsSettings, context: SourceContext) -> FeatureSet:
    x, y = load_digits_tensors()
    data = split_tensors(x, y, settings.benchmark.splits, context.seed)
    hierarchy = settings.benchmark.chosen_hierarchy(
        10, lambda: settings.benchmark.given_hierarchy(10)
    )
    student, teacher = settings.student, settings.teacher
    return build_feature_set(
        data,
        hierarchy,
        make_backbone=lambda: mlp_backbone(SIDE * SIDE, student.hidden, student.embed_dim),
        backbone_budget=student.pretrain,
        make_teacher=lambda: pooled_linear_teacher(SIDE, teacher.pool, 10),
        teacher_budget=Budget(teacher.steps, teacher.batch_size, teacher.lr),
        backbone_config=asdict(student),
        teacher_config=asdict(teacher),
        cache=context.cache,
        seed=context.seed,
        progress=context.progress,
    )
