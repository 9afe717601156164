"""From labelled texts to a FeatureSet: a frozen sentence-transformers student, weak TF-IDF
teachers, all cached.

The texts are split by seed (`benchmark.splits`: teachers, pool, test). The student is a
frozen sentence encoder (`student.arch`); its embeddings of every text of the benchmark are
computed once and cached, keyed by the model's files and the texts, so every seed and split
reads the same entry; the linear probe trains on the pool's rows.

Each teacher is a linear softmax layer over all classes on the TF-IDF vectors of the texts
(vocabulary and inverse document frequencies from the teacher split alone), trained like the
image teachers (`teachers.train_teachers`): the same budget for every teacher, `teacher.steps`
Adam steps of `teacher.batch_size` texts at `teacher.lr`, each batch drawn only from the
teacher's own subdomain. For a linear model on sparse features, "the same budget" is thus the
same number of texts seen, not training to convergence: a specialist spends its budget on fewer
classes, sees more texts of each, and is more accurate on them (docs/design.md, "Why
specialists"). `benchmark.hierarchy=auto` picks the subdomains with the same model as the
probe (`confusion_probe`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict

import torch

from csl_avalanche.benchmarks import confusion_probe
from csl_avalanche.benchmarks.checks import finite_fault, nested_finite_fault, teacher_probs_fault
from csl_avalanche.benchmarks.features import FeatureSet
from csl_avalanche.benchmarks.registry import SourceContext
from csl_avalanche.benchmarks.settings import SentenceStudent, TextSourceSettings
from csl_avalanche.benchmarks.teachers import cached_teacher_probabilities, train_teachers
from csl_avalanche.benchmarks.texts import LabelledTexts, split_texts
from csl_avalanche.core.clustering import AutoHierarchy
from csl_avalanche.core.hierarchy import Hierarchy
from csl_avalanche.models.sentence_encoder import (
    encode,
    encoder_folder,
    folder_identity,
    load_encoder,
)
from csl_avalanche.models.tfidf import SparseLinear, tfidf_features
from csl_avalanche.storage.cache import fingerprint
from csl_avalanche.storage.shared_cache import Sharded

log = logging.getLogger(__name__)
PARTS = ("teachers", "pool", "test")
# What the teachers are, part of their cache keys (with their settings, data and seed).
TEACHER_MODEL = {"features": "tfidf, sublinear tf, unit rows", "model": "SparseLinear [V, C]"}


def build_text_feature_set(
    corpus: LabelledTexts,
    hierarchy: Hierarchy | AutoHierarchy,
    settings: TextSourceSettings,
    context: SourceContext,
) -> FeatureSet:
    """Split `corpus`, then embed, train the teachers and read their outputs (module doc)."""
    rows = split_texts(corpus, settings.benchmark.splits, context.seed, PARTS)
    parts = {name: corpus.subset(index) for name, index in rows.items()}
    embeddings = student_embeddings(corpus, settings.student, context)
    teacher = settings.teacher
    features = tfidf_features(
        parts["teachers"].texts,
        {name: part.texts for name, part in parts.items()},
        ngrams=teacher.ngrams,
        min_df=teacher.min_df,
    )
    num_classes = len(corpus.class_names)
    vocabulary = features["teachers"].shape[1]
    log.info("TF-IDF teachers: %d terms from %d texts", vocabulary, len(parts["teachers"]))

    def make_teacher() -> SparseLinear:
        return SparseLinear(vocabulary, num_classes)

    labels = parts["teachers"].labels
    identity = (parts["teachers"].identity(), TEACHER_MODEL, asdict(teacher))
    budget = {"steps": teacher.steps, "batch_size": teacher.batch_size, "lr": teacher.lr}
    hierarchy = confusion_probe.resolve(
        hierarchy,
        features["teachers"],
        labels,
        make_teacher,
        identity=identity,
        budget=budget,
        seed=context.seed,
        cache=context.cache,
        class_names=corpus.class_names,
    )
    heads_key = fingerprint("tfidf-teachers", identity, hierarchy.as_lists(), context.seed)
    states = context.cache.get_or_compute(
        "tfidf-teachers",
        heads_key,
        lambda: [
            t.state_dict()
            for t in train_teachers(
                hierarchy,
                features["teachers"],
                labels,
                make_teacher,
                seed=context.seed,
                progress=context.progress,
                **budget,
            )
        ],
        check=lambda weights: nested_finite_fault("teacher weights", weights),
        cause="Weak-teacher training diverged: lower teacher.lr.",
    )
    teachers = [_loaded(make_teacher, state) for state in states]
    probs = cached_teacher_probabilities(
        context.cache,
        fingerprint(heads_key, parts["pool"].identity(), parts["test"].identity()),
        teachers,
        {"pool": features["pool"], "test": features["test"]},
        num_classes,
        check=teacher_probs_fault,
        cause="The TF-IDF teachers overflow: lower teacher.lr.",
    )
    levels, subdomains = hierarchy.teacher_lists()
    return FeatureSet(
        train_x=embeddings[rows["pool"]],
        train_y=parts["pool"].labels,
        test_x=embeddings[rows["test"]],
        test_y=parts["test"].labels,
        teacher_train_probs=probs["pool"],
        teacher_test_probs=probs["test"],
        levels=levels,
        subdomains=subdomains,
        class_names=corpus.class_names,
    ).validate(values=False)  # the cache checked every value


def student_embeddings(
    corpus: LabelledTexts, student: SentenceStudent, context: SourceContext
) -> torch.Tensor:
    """The encoder's embeddings [N, D] of every text of `corpus`, cached by the model's files and
    the texts; under torchrun each process encodes a block of the texts."""
    folder = encoder_folder(student.arch)
    key = fingerprint("text-embeddings", folder_identity(folder), corpus.identity())
    device = "cuda" if context.device != "cpu" and torch.cuda.is_available() else "cpu"

    def part(rows: Callable[[int], slice]) -> torch.Tensor:
        texts = corpus.texts[rows(len(corpus))]
        model = load_encoder(folder, device)
        log.info("encoding %d texts with %s on %s", len(texts), folder.name, device)
        return encode(model, texts, batch_size=student.batch_size, progress=context.progress)

    return context.cache.get_or_compute(
        "text-embeddings",
        key,
        Sharded(part, dim=0, size=len(corpus)),
        check=lambda value: finite_fault("text embeddings", value, ("text", "feature")),
        cause="The sentence encoder outputs non-finite embeddings: check student.arch's model.",
    )


def _loaded(make_teacher: Callable[[], SparseLinear], state: dict) -> SparseLinear:
    teacher = make_teacher()
    teacher.load_state_dict(state)
    return teacher.eval()
