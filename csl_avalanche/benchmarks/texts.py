"""Labelled texts, the inputs of the text benchmarks: capped per class and split like images."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from csl_avalanche.benchmarks.splits import checked_split

# The draw that caps each class (`benchmark.max_per_class`) is fixed, not the run's seed: every
# seed then splits the same texts, and one cached embedding of them serves every seed.
CAP_SEED = 0


@dataclass(frozen=True)
class LabelledTexts:
    """Texts with their class labels [N] (indices into `class_names`)."""

    texts: tuple[str, ...]
    labels: torch.Tensor
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, index: torch.Tensor) -> LabelledTexts:
        return LabelledTexts(
            tuple(self.texts[i] for i in index.tolist()), self.labels[index], self.class_names
        )

    def identity(self) -> str:
        """SHA-256 of the texts and labels, in order: what a cached embedding was made of."""
        digest = hashlib.sha256(f"{len(self)}".encode())
        for text, label in zip(self.texts, self.labels.tolist(), strict=True):
            digest.update(f"\0{label}\0{len(text)}\0{text}".encode())
        return digest.hexdigest()


def labelled_texts(texts: Sequence[str], labels: Sequence[str]) -> LabelledTexts:
    """Texts with label names; classes numbered in sorted order of their names."""
    names = tuple(sorted(set(labels)))
    index = {name: i for i, name in enumerate(names)}
    return LabelledTexts(tuple(texts), torch.tensor([index[label] for label in labels]), names)


def capped(texts: LabelledTexts, max_per_class: int | None) -> LabelledTexts:
    """At most `max_per_class` texts of each class (a draw fixed by CAP_SEED), in their order."""
    if max_per_class is None:
        return texts
    generator = torch.Generator().manual_seed(CAP_SEED)
    keep = []
    for label in range(len(texts.class_names)):
        members = (texts.labels == label).nonzero().flatten()
        if len(members) > max_per_class:
            members = members[torch.randperm(len(members), generator=generator)[:max_per_class]]
        keep.append(members)
    return texts.subset(torch.cat(keep).sort().values)


def split_texts(
    texts: LabelledTexts, fractions: dict[str, float], seed: int, parts: Sequence[str]
) -> dict[str, torch.Tensor]:
    """The rows of each part (`benchmark.splits`), stratified by class and seeded; a class too
    small for every part to get one of its texts is a ConfigError naming it."""
    return checked_split(
        texts.labels,
        fractions,
        seed,
        what="benchmark.splits",
        parts=parts,
        describe=lambda label, count: (
            f"label {texts.class_names[label]!r} has {count} text{'s' * (count != 1)}"
        ),
    )
