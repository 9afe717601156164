"""From labelled images to a FeatureSet: frozen backbones, weak linear teachers, all cached.

The student is a frozen backbone (`student.arch`) whose pooled embeddings of the pool and test
images are extracted once; with `student.finetune=true` the whole student trains instead, and
the pool and test images are stored as the student preprocesses them (resized and centre
cropped, uint8, not normalised: `ImageStudent` augments and normalises each batch). Each
teacher is a linear head on a frozen feature stack (`teacher.arch`), trained with the same
budget on the teacher split's features (never on images), or loaded from `teacher.heads=FILE`.
Every expensive tensor is cached by a content hash of the model weights, the preprocessing and
the image files, so a second run of the same config extracts nothing.

Subdomains are class sets, or input domains when the images carry `domains` (DomainNet): then a
domain specialist trains on all classes of its own domain's images.

Image decoding and feature extraction are `Sharded`: under torchrun each rank computes a block
of the images and rank 0 writes the one cache entry (`shared_cache`). Teacher outputs (linear
heads on those features, a small part of the work) are written by rank 0, teacher by teacher,
into a memory-mapped cache file.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from csl_avalanche.benchmarks import confusion_probe
from csl_avalanche.benchmarks.checks import finite_fault, nested_finite_fault, teacher_probs_fault
from csl_avalanche.benchmarks.features import FeatureSet
from csl_avalanche.benchmarks.images import DatasetError, Images, TransformedImages
from csl_avalanche.benchmarks.registry import SourceContext
from csl_avalanche.benchmarks.settings import (
    ImageDataSettings,
    ImageSourceSettings,
    ImageStudent,
    ImageTeacher,
)
from csl_avalanche.benchmarks.teachers import cached_teacher_probabilities, train_teachers
from csl_avalanche.core.clustering import AutoHierarchy
from csl_avalanche.core.errors import ConfigError
from csl_avalanche.core.hierarchy import Hierarchy
from csl_avalanche.models.registry import Preprocessing, feature_extractor, preprocessing
from csl_avalanche.storage.cache import fingerprint
from csl_avalanche.storage.shared_cache import Sharded

log = logging.getLogger(__name__)
AXES = ("image", "feature")
TEACHERS_DIVERGED = "Weak-teacher training diverged: lower teacher.lr."


class TeacherHeadsError(ConfigError):
    """A `teacher.heads` file that does not hold one linear head per teacher."""


@dataclass(frozen=True)
class ImageSplits:
    """Disjoint labelled image sets: weak-teacher training (None: heads come from a file),
    transfer pool, test."""

    teachers: Images | None
    pool: Images
    test: Images


@dataclass(frozen=True)
class Backbone:
    """A frozen feature extractor with what identifies its outputs: weights and preprocessing."""

    model: nn.Module
    preprocessing: Preprocessing
    weights_hash: str
    role: str  # "student" or "teacher": its config key


def build_image_feature_set(
    splits: ImageSplits,
    hierarchy: Hierarchy | AutoHierarchy,
    num_classes: int,
    settings: ImageSourceSettings,
    context: SourceContext,
    class_names: Sequence[str] | None = None,
) -> FeatureSet:
    """Extract (or load from cache) embeddings and teacher probabilities; see the module doc.

    `hierarchy` partitions classes, or domains when the images carry `domains`; an
    AutoHierarchy is chosen from the teacher split's features (`confusion_probe`), with a
    linear head as the probe, before the teacher heads train.
    """
    by_domain = splits.pool.domains is not None
    cache, seed = context.cache, context.seed
    start, hits, misses = time.perf_counter(), cache.hits, cache.misses
    extract = _Extractor(settings.data, context)

    student = extract.backbone(settings.student, "student", seed)
    if settings.student.finetune:
        pool_x = extract.pixels(student.preprocessing, splits.pool)
        test_x = extract.pixels(student.preprocessing, splits.test)
    else:
        pool_x, _ = extract.features("student-features", student, splits.pool, "pool")
        test_x, _ = extract.features("student-features", student, splits.test, "test")

    teacher = extract.backbone(settings.teacher, "teacher", seed)
    pool_t, pool_key = extract.features("teacher-features", teacher, splits.pool, "pool")
    test_t, test_key = extract.features("teacher-features", teacher, splits.test, "test")
    if settings.teacher.heads:
        states = load_heads(
            settings.teacher.heads, hierarchy.num_teachers, num_classes, pool_t.shape[1]
        )
    else:
        if splits.teachers is None:
            raise ConfigError("this benchmark has no teacher training images: set teacher.heads")
        train_t, train_key = extract.features(
            "teacher-features", teacher, splits.teachers, "teachers"
        )
        units = splits.teachers.domains if by_domain else splits.teachers.labels
        budget = {k: getattr(settings.teacher, k) for k in ("steps", "batch_size", "lr")}
        hierarchy = confusion_probe.resolve(
            hierarchy,
            train_t,
            splits.teachers.labels,
            head_factory(train_t.shape[1], num_classes, extract.device),
            identity=(train_key, splits.teachers.labels, "linear-head"),
            budget=budget,
            seed=seed,
            cache=cache,
            class_names=class_names,
        )
        inputs = (train_key, splits.teachers.labels, units, hierarchy.as_lists(), budget, seed)
        heads_key = fingerprint("teacher-heads", *inputs)
        states = cache.get_or_compute(
            "teacher-heads",
            heads_key,
            lambda: _train_heads(
                hierarchy,
                train_t,
                splits.teachers.labels,
                units,
                num_classes,
                budget,
                extract.device,
                seed,
                extract.progress,
            ),
            check=lambda heads: nested_finite_fault("teacher heads", heads),
            cause=TEACHERS_DIVERGED,
        )
    heads = [_linear_head(state).to(extract.device) for state in states]
    probs = cached_teacher_probabilities(
        cache,
        fingerprint(states, pool_key, test_key),
        heads,
        {"pool": pool_t, "test": test_t},
        num_classes,
        check=teacher_probs_fault,
        cause="The teacher heads overflow on these features; check teacher.heads or lower "
        "teacher.lr.",
    )
    log.info(
        "image features ready in %.1f s: %d cached tensors reused, %d computed",
        time.perf_counter() - start,
        cache.hits - hits,
        cache.misses - misses,
    )
    levels, subdomains = hierarchy.teacher_lists()
    return FeatureSet(
        train_x=pool_x,
        train_y=splits.pool.labels,
        test_x=test_x,
        test_y=splits.test.labels,
        teacher_train_probs=probs["pool"],
        teacher_test_probs=probs["test"],
        levels=levels,
        subdomains=subdomains,
        train_domains=splits.pool.domains,
        test_domains=splits.test.domains,
        class_names=class_names,
    ).validate(values=False)  # the cache checked every value


class _Extractor:
    """Builds frozen backbones and extracts their features, batched and cached."""

    def __init__(self, data: ImageDataSettings, context: SourceContext):
        self.cache = context.cache
        self.data = data
        self.progress = context.progress
        wanted = context.device
        use_cuda = wanted in ("auto", "cuda") and torch.cuda.is_available()
        self.device = torch.device("cuda" if use_cuda else "cpu")

    def backbone(self, model_cfg: ImageTeacher | ImageStudent, key: str, seed: int) -> Backbone:
        """`student`/`teacher` backbone; seeded, so random weights are the same every run."""
        image_size = model_cfg.image_size or self.data.image_size
        torch.manual_seed(seed)
        model = feature_extractor(
            model_cfg.arch,
            pretrained=model_cfg.pretrained,
            checkpoint=model_cfg.checkpoint,
            image_size=image_size,
            key=key,
        )
        prep = preprocessing(model_cfg.arch, model, image_size, self.data.crop_pct)
        return Backbone(model, prep, fingerprint(model), key)

    def features(
        self, name: str, backbone: Backbone, images: Images, part: str
    ) -> tuple[torch.Tensor, str]:
        """Pooled features [N, D] of `images` (the `part` split) and their cache key."""
        key = fingerprint(
            name, backbone.weights_hash, backbone.preprocessing.as_dict(), images.identity()
        )
        desc = f"{name} ({len(images)} images)"
        value = self.cache.get_or_compute(
            name,
            key,
            Sharded(
                lambda rows: self._extract(backbone, images, desc, rows(len(images))),
                dim=0,
                size=len(images),
            ),
            check=lambda features: finite_fault(f"{name} of the {part} images", features, AXES),
            cause=f"The {backbone.role} backbone outputs non-finite features: check its "
            f"weights ({backbone.role}.checkpoint, {backbone.role}.pretrained).",
        )
        return value, key

    def pixels(self, prep: Preprocessing, images: Images) -> torch.Tensor:
        """`images` resized and centre cropped as `prep` says, uint8 [N, 3, S, S]."""
        key = fingerprint("student-pixels", prep.geometry(), images.identity())
        desc = f"student-pixels ({len(images)} images)"
        return self.cache.get_or_compute(
            "student-pixels",
            key,
            Sharded(
                lambda rows: torch.cat(
                    list(self._batches(images, prep.pixels(), desc, rows(len(images))))
                ),
                dim=0,
                size=len(images),
            ),
        )

    @torch.no_grad()  # not inference_mode: the features later feed autograd as inputs
    def _extract(self, backbone: Backbone, images: Images, desc: str, rows: slice) -> torch.Tensor:
        model = backbone.model.to(self.device).eval()
        chunks = [
            model(batch.to(self.device, non_blocking=True)).float().cpu()
            for batch in self._batches(images, backbone.preprocessing.transform(), desc, rows)
        ]
        model.cpu()
        return torch.cat(chunks)

    def _batches(self, images: Images, transform, desc: str, rows: slice):
        """The images `rows`, decoded and transformed, in batches (`data.batch_size`,
        `data.num_workers`)."""
        if not len(images):
            raise ValueError(f"{desc}: no images")
        loader = DataLoader(
            Subset(TransformedImages(images, transform), range(len(images))[rows]),
            batch_size=self.data.batch_size or 256,
            num_workers=self.data.num_workers or 0,
            pin_memory=self.device.type == "cuda",
        )
        try:
            yield from tqdm(loader, desc=desc, disable=not self.progress, leave=False)
        except DatasetError as err:
            # A worker's error holds the loader in a reference cycle through its traceback:
            # clearing the frames stops the workers now, not at some later garbage collection.
            traceback.clear_frames(err.__traceback__)
            raise DatasetError(_worker_message(str(err))) from None


def _worker_message(message: str) -> str:
    """The one-line message of an error raised in a DataLoader worker process: PyTorch re-raises
    it here with the worker's traceback in its message, the original message on its last line
    (`module.DatasetError: message`)."""
    lines = message.strip().splitlines()
    return lines[-1].split(": ", 1)[-1] if len(lines) > 1 else message


def _train_heads(
    hierarchy: Hierarchy,
    x: torch.Tensor,
    y: torch.Tensor,
    units: torch.Tensor,
    num_classes: int,
    budget: dict,
    device: torch.device,
    seed: int,
    progress: bool,
) -> list[dict[str, torch.Tensor]]:
    """One linear head per subdomain, each `budget['steps']` batches of its own examples."""
    heads = train_teachers(
        hierarchy,
        x,
        y,
        head_factory(x.shape[1], num_classes, device),
        units=units,
        steps=int(budget["steps"]),
        batch_size=int(budget["batch_size"]),
        lr=float(budget["lr"]),
        seed=seed,
        progress=progress,
    )
    return [{k: v.cpu() for k, v in head.state_dict().items()} for head in heads]


def head_factory(dim: int, num_classes: int, device: torch.device) -> Callable[[], nn.Linear]:
    """New teacher heads: linear maps from `dim` teacher features to the classes."""
    return lambda: nn.Linear(dim, num_classes).to(device)


def _linear_head(state: dict[str, torch.Tensor]) -> nn.Linear:
    out_dim, in_dim = state["weight"].shape
    head = nn.Linear(in_dim, out_dim)
    head.load_state_dict(state)
    return head.eval()


def load_heads(path: str, num_teachers: int, num_classes: int, dim: int) -> list[dict]:
    """Teacher heads trained elsewhere: a torch.save'd list (or {'heads': list}) of
    nn.Linear state_dicts {'weight': [C, D], 'bias': [C]}, one per teacher in level order."""
    where = f"teacher.heads={path}"
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TeacherHeadsError(f"{where}: no such file") from None
    except Exception as err:
        raise TeacherHeadsError(
            f"{where} is not a torch.save file ({type(err).__name__})"
        ) from None
    heads = raw.get("heads") if isinstance(raw, dict) else raw
    if not isinstance(heads, list | tuple) or len(heads) != num_teachers:
        count = len(heads) if isinstance(heads, list | tuple) else type(heads).__name__
        raise TeacherHeadsError(
            f"{where} must hold a list of {num_teachers} linear heads (one per teacher, level "
            f"order), got {count}"
        )
    for index, state in enumerate(heads):
        shapes = (
            {k: list(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
            if isinstance(state, dict)
            else None
        )
        if shapes != {"weight": [num_classes, dim], "bias": [num_classes]}:
            raise TeacherHeadsError(
                f"{where}: head {index} must be {{'weight': [{num_classes}, {dim}], "
                f"'bias': [{num_classes}]}} (classes x teacher features), got {shapes}"
            )
    if fault := nested_finite_fault("heads", heads):
        raise TeacherHeadsError(f"{where}: {fault}; the heads must hold finite weights")
    return [dict(state) for state in heads]
