"""Any Avalanche class-incremental benchmark as a CSL stream.

The class sets of the benchmark's train experiences (SplitMNIST's five pairs, SplitCIFAR100's
ten blocks of ten, ...) become the finest subdomains; coarser levels merge them (pairwise by
default, as the user groups them, or, with `groups="auto"`, the experiences whose classes the
weak generalist confuses: `csl_avalanche.core.clustering`) up to the level-0 generalist. The
images of all train experiences are split, stratified and seeded, into backbone pretraining,
teacher training and the transfer pool; the benchmark's test stream is the test set.

The strong student's backbone and the weak teachers are either supplied (a frozen backbone; one
trained teacher per subdomain) or built and trained here from factories with a fixed budget, as
the built-in benchmarks do. Trained models, embeddings and teacher outputs are cached by content
hash, the factories known by their code and what they build (`model_code`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict

import torch
from torch import nn
from torch.utils.data import DataLoader

from csl_avalanche.benchmarks.checks import nested_finite_fault
from csl_avalanche.benchmarks.confusion_probe import cached_confusion
from csl_avalanche.benchmarks.features import FeatureSet
from csl_avalanche.benchmarks.model_code import factory_identity, model_code
from csl_avalanche.benchmarks.pipeline import (
    SplitData,
    pretrained_backbone,
    trained_teachers,
)
from csl_avalanche.benchmarks.settings import Budget
from csl_avalanche.benchmarks.splits import stratified_split
from csl_avalanche.benchmarks.streams import CSLBenchmark, make_csl_benchmark
from csl_avalanche.core.clustering import (
    AUTO,
    DEFAULT_HOLDOUT,
    AutoHierarchy,
    check_sizes,
    class_affinity,
    merged_confusion,
    nested_groups,
)
from csl_avalanche.core.errors import ConfigError
from csl_avalanche.core.hierarchy import Hierarchy, HierarchyError
from csl_avalanche.models.fit import predict
from csl_avalanche.storage.cache import TensorCache, fingerprint

DEFAULT_CACHE = "~/.cache/csl-avalanche"


class AvalancheAdapterError(ConfigError):
    """A benchmark that cannot become a CSL stream, or arguments that do not fit it."""


def experience_classes(stream) -> list[list[int]]:
    """The sorted class set of every experience of `stream`; they must not overlap."""
    classes: list[list[int]] = []
    owner: dict[int, int] = {}
    for index, experience in enumerate(stream):
        found = getattr(experience, "classes_in_this_experience", None)
        if found is None:
            found = torch.as_tensor(list(experience.dataset.targets)).unique().tolist()
        found = sorted(int(c) for c in found)
        for c in found:
            if c in owner:
                raise AvalancheAdapterError(
                    f"class {c} appears in experiences {owner[c]} and {index}; CSL needs a "
                    "class-incremental benchmark whose experiences have disjoint class sets"
                )
            owner[c] = index
        classes.append(found)
    if not classes:
        raise AvalancheAdapterError("the benchmark's train stream has no experiences")
    return classes


def pairwise_groups(num_subdomains: int) -> list[list[list[int]]]:
    """Coarser levels by merging neighbouring experiences pairwise, coarse to fine, without
    level 0 and the finest level: 5 experiences -> [[[0, 1, 2, 3], [4]], [[0, 1], [2, 3], [4]]]
    (a 1 -> 2 -> 3 -> 5 hierarchy)."""
    levels: list[list[list[int]]] = []
    current = [[i] for i in range(num_subdomains)]
    while len(current) > 2:
        current = [sum(current[i : i + 2], []) for i in range(0, len(current), 2)]
        levels.insert(0, current)
    return levels


def avalanche_hierarchy(
    benchmark, groups: Sequence[Sequence[Sequence[int]]] | None = None
) -> Hierarchy:
    """The CSL hierarchy of `benchmark`: level 0 all classes, then `groups`, then one subdomain
    per train experience.

    `groups` lists the levels between the generalist and the finest one, coarse to fine, each as
    groups of train-experience indices, e.g. `[[[0, 1, 2], [3, 4]]]` for SplitMNIST's five
    experiences gives 1 -> 2 -> 5 teachers. None: `pairwise_groups`; `[]`: 1 -> K.
    """
    finest = experience_classes(benchmark.train_stream)
    if groups is None:
        groups = pairwise_groups(len(finest))
    num_classes = max(max(c) for c in finest) + 1
    levels = [[list(range(num_classes))]]
    for depth, level in enumerate(groups):
        merged = []
        for group in level:
            bad = [e for e in group if not 0 <= int(e) < len(finest)]
            if bad:
                raise AvalancheAdapterError(
                    f"groups[{depth}] names experiences {bad}; the train stream has "
                    f"{len(finest)} (0..{len(finest) - 1})"
                )
            merged.append(sorted(c for e in group for c in finest[int(e)]))
        levels.append(merged)
    levels.append(finest)
    if len(levels) > 2 and len(levels[1]) == 1:
        raise AvalancheAdapterError("groups[0] has a single group: that is level 0 again")
    try:
        return Hierarchy(levels, num_classes)
    except HierarchyError as err:
        raise AvalancheAdapterError(
            f"the experiences' class sets {finest} with groups {list(groups)} do not form a "
            f"hierarchy: {err}"
        ) from None


def auto_experience_hierarchy(
    benchmark,
    teacher_data: tuple[torch.Tensor, torch.Tensor],
    make_teacher: Callable[[], nn.Module],
    budget: Budget,
    *,
    levels: Sequence[int],
    holdout: float,
    cache: TensorCache,
    seed: int,
) -> Hierarchy:
    """`groups="auto"`: the experiences are the finest subdomains, so the levels between them
    and the generalist group whole experiences, those whose classes the confusion probe mixes
    up (its confusion summed over each experience's classes), `levels` groups per level."""
    finest = experience_classes(benchmark.train_stream)
    spec = AutoHierarchy(tuple(levels), holdout, max(max(c) for c in finest) + 1)
    confusion = cached_confusion(
        spec,
        *teacher_data,
        make_teacher,
        identity=(teacher_data, factory_identity(make_teacher)),
        budget=asdict(budget),
        seed=seed,
        cache=cache,
        what="auto_holdout",
    )
    affinity = class_affinity(merged_confusion(confusion, finest))
    return avalanche_hierarchy(benchmark, nested_groups(affinity, levels, what="auto_levels"))


def stream_tensors(stream, batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """All inputs and labels of a stream's experiences, with eval transforms (no augmentation)."""
    xs, ys = [], []
    for experience in stream:
        dataset = experience.dataset
        dataset = dataset.eval() if hasattr(dataset, "eval") else dataset
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            xs.append(torch.as_tensor(batch[0]))
            ys.append(torch.as_tensor(batch[1]).long())
    if not xs:
        raise AvalancheAdapterError("the stream holds no samples")
    return torch.cat(xs), torch.cat(ys)


def features_from_avalanche(
    benchmark,
    *,
    groups: Sequence[Sequence[Sequence[int]]] | str | None = None,
    auto_levels: Sequence[int] | None = None,
    auto_holdout: float | None = None,
    backbone: nn.Module | None = None,
    make_backbone: Callable[[], nn.Module] | None = None,
    backbone_budget: Budget | None = None,
    teachers: Sequence[nn.Module] | None = None,
    make_teacher: Callable[[], nn.Module] | None = None,
    teacher_budget: Budget | None = None,
    splits: Mapping[str, float] | None = None,
    cache: TensorCache | str | os.PathLike[str] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> FeatureSet:
    """The FeatureSet of `benchmark` (see the module docstring).

    Student: a frozen, pretrained `backbone` (its outputs, flattened, are the embeddings), or
    `make_backbone` + `backbone_budget` to pretrain one with labels on the `pretrain` split.
    Teachers: `teachers` (one trained model per subdomain, in hierarchy order: level 0's
    generalist, then level 1's, ...; outputs are logits), or `make_teacher` + `teacher_budget`
    to train each on its own classes of the `teachers` split for the same number of steps.
    `splits`: fractions of the train stream's samples per part; the default gives
    pretrain/teachers/pool 0.2/0.3/0.5, leaving out the parts that supplied models do not need.
    `groups="auto"`: `auto_experience_hierarchy`, with `auto_levels` groups of experiences per
    level and the `auto_holdout` fraction of the teacher split (None: 0.2) held out for the
    confusion probe.
    `progress`: draw the teachers' progress bar.
    """
    auto = groups == AUTO
    if auto and (make_teacher is None or not auto_levels):
        raise AvalancheAdapterError(
            f'groups="{AUTO}" trains a confusion probe like the teachers and needs '
            "make_teacher=, teacher_budget= and auto_levels=[...] (groups of experiences per "
            "level between the generalist and the experiences)"
        )
    if not auto and (auto_levels is not None or auto_holdout is not None):
        raise AvalancheAdapterError(
            f'auto_levels= and auto_holdout= are used with groups="{AUTO}" only'
        )
    if auto:  # fewer groups than experiences, checked before any data is read
        check_sizes(
            auto_levels,
            len(experience_classes(benchmark.train_stream)) - 1,
            "auto_levels",
            drop=f'groups="{AUTO}" (groups=[] gives one specialist per experience)',
        )
    hierarchy = None if auto else avalanche_hierarchy(benchmark, groups)
    if (backbone is None) == (make_backbone is None):
        raise AvalancheAdapterError("give exactly one of backbone= and make_backbone=")
    if (teachers is None) == (make_teacher is None):
        raise AvalancheAdapterError("give exactly one of teachers= and make_teacher=")
    if make_backbone is not None and backbone_budget is None:
        raise AvalancheAdapterError("make_backbone= needs backbone_budget=Budget(...)")
    if make_teacher is not None and teacher_budget is None:
        raise AvalancheAdapterError("make_teacher= needs teacher_budget=Budget(...)")
    if teachers is not None and hierarchy is not None and len(teachers) != hierarchy.num_teachers:
        raise AvalancheAdapterError(
            f"teachers= holds {len(teachers)} models, the hierarchy "
            f"{hierarchy.teachers_per_level()} needs {hierarchy.num_teachers} (one per "
            "subdomain, level 0 first)"
        )
    needed = ["pool"]
    if make_backbone is not None:
        needed.insert(0, "pretrain")
    if make_teacher is not None:
        needed.insert(-1, "teachers")
    defaults = {"pretrain": 0.2, "teachers": 0.3, "pool": 0.5}
    fractions = dict(splits) if splits is not None else {k: defaults[k] for k in needed}
    if splits is None:
        scale = sum(fractions.values())
        fractions = {k: v / scale for k, v in fractions.items()}
    if sorted(fractions) != sorted(needed):
        raise AvalancheAdapterError(f"splits must name exactly {needed}, got {sorted(fractions)}")
    cache = cache if isinstance(cache, TensorCache) else TensorCache(cache or DEFAULT_CACHE)

    x, y = stream_tensors(benchmark.train_stream)
    test = stream_tensors(benchmark.test_stream)
    try:
        parts = stratified_split(y, fractions, seed)
    except ValueError as err:
        raise AvalancheAdapterError(f"splits: {err}") from None
    data = {name: (x[idx], y[idx]) for name, idx in parts.items()}
    empty = (x[:0], y[:0])
    split = SplitData(
        pretrain=data.get("pretrain", empty),
        teachers=data.get("teachers", empty),
        pool=data["pool"],
        test=test,
    )
    if hierarchy is None:
        hierarchy = auto_experience_hierarchy(
            benchmark,
            split.teachers,
            make_teacher,
            teacher_budget,
            levels=list(auto_levels),
            holdout=DEFAULT_HOLDOUT if auto_holdout is None else auto_holdout,
            cache=cache,
            seed=seed,
        )

    if backbone is None:
        backbone = pretrained_backbone(
            make_backbone,
            backbone_budget,
            split.pretrain,
            hierarchy.num_classes,
            factory_identity(make_backbone),
            cache,
            seed,
        )
    if teachers is None:
        teachers = trained_teachers(
            make_teacher,
            teacher_budget,
            split.teachers,
            hierarchy,
            factory_identity(make_teacher),
            cache,
            seed,
            progress=progress,
        )
    embeddings = _cached_outputs(cache, "embeddings", [backbone], split)
    embeddings = {part: out[0].flatten(1) for part, out in embeddings.items()}
    logits = _cached_outputs(cache, "teacher-logits", list(teachers), split)
    probs = {part: out.flatten(2).softmax(dim=2) for part, out in logits.items()}
    levels, subdomains = hierarchy.teacher_lists()
    return FeatureSet(
        train_x=embeddings["pool"].float(),
        train_y=split.pool[1],
        test_x=embeddings["test"].float(),
        test_y=split.test[1],
        teacher_train_probs=probs["pool"].float(),
        teacher_test_probs=probs["test"].float(),
        levels=levels,
        subdomains=subdomains,
    ).validate()


def csl_benchmark_from_avalanche(benchmark, **kwargs) -> CSLBenchmark:
    """The CSL stream of an Avalanche class-incremental benchmark: train experiences are
    hierarchy levels (teacher labels), test experiences the finest subdomains (the benchmark's
    own experiences' class sets). Keyword arguments: see `features_from_avalanche`."""
    return make_csl_benchmark(features_from_avalanche(benchmark, **kwargs))


def _cached_outputs(
    cache: TensorCache, name: str, models: list[nn.Module], split: SplitData
) -> dict[str, torch.Tensor]:
    """[len(models), N, ...] outputs on pool and test, keyed by architecture, code, weights and
    data."""
    code = [model_code(m) for m in models]
    key = fingerprint(name, [repr(m) for m in models], code, models, split.pool[0], split.test[0])

    def compute() -> dict[str, torch.Tensor]:
        return {
            part: torch.stack([predict(m, getattr(split, part)[0]).cpu() for m in models])
            for part in ("pool", "test")
        }

    return cache.get_or_compute(
        name,
        key,
        compute,
        check=lambda outputs: nested_finite_fault(name, outputs),
        cause="The models output non-finite values: check their weights and the inputs.",
    )
