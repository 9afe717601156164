"""The text teachers' features and model: TF-IDF vectors and a linear layer that reads them.

A TF-IDF vector has one entry per word n-gram of the vocabulary, tens of thousands, nearly all
zero: dense, a pool of texts would not fit in memory. `SparseRows` keeps them as a scipy CSR
matrix that indexes like a tensor of samples, and turns a batch into tensors only when it moves
to the model's device; `SparseLinear` reads them. So the teachers' plain training and
prediction loops (`models.fit`), written for dense tensors, run unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from csl_avalanche.core.errors import ConfigError


@dataclass(frozen=True)
class SparseBatch:
    """Sparse rows as an EmbeddingBag reads them: every row's column indices and values, one
    row after another, and the position where each row starts."""

    columns: torch.Tensor
    values: torch.Tensor
    offsets: torch.Tensor


class SparseRows:
    """Rows of a sparse matrix [N, V]: `rows[i]`, `rows[a:b]` and `rows[index_tensor]` select
    rows (still sparse); `.to(device)` makes them a SparseBatch of tensors there."""

    def __init__(self, matrix):
        self.matrix = matrix.tocsr()

    def __len__(self) -> int:
        return self.matrix.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        return self.matrix.shape

    def __getitem__(self, rows: int | slice | torch.Tensor) -> SparseRows:
        if isinstance(rows, torch.Tensor):
            rows = rows.cpu().numpy()
        elif isinstance(rows, int):
            rows = [rows]
        return SparseRows(self.matrix[rows])

    def to(self, device: torch.device | str) -> SparseBatch:
        m = self.matrix
        return SparseBatch(
            columns=torch.from_numpy(m.indices.astype(np.int64)).to(device),
            values=torch.from_numpy(m.data.astype(np.float32)).to(device),
            offsets=torch.from_numpy(m.indptr[:-1].astype(np.int64)).to(device),
        )


class SparseLinear(nn.Module):
    """A linear layer on sparse rows, logits = x @ weight + bias, with `weight` [V, C]
    initialised as nn.Linear's. It sums each row's weighted rows of `weight` (one EmbeddingBag):
    on a busy CPU, torch's sparse matrix product is tens of times slower to differentiate."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        bound = in_features**-0.5
        self.weight = nn.Parameter(torch.empty(in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))

    def forward(self, rows: SparseBatch) -> torch.Tensor:
        summed = F.embedding_bag(
            rows.columns, self.weight, rows.offsets, mode="sum", per_sample_weights=rows.values
        )
        return summed + self.bias


def tfidf_features(
    fit_on: Sequence[str], parts: Mapping[str, Sequence[str]], *, ngrams: int, min_df: int
) -> dict[str, SparseRows]:
    """TF-IDF vectors (word 1..`ngrams`-grams, sublinear term frequency, rows of unit length)
    of each part's texts, with the vocabulary and inverse document frequencies of `fit_on`
    (terms in fewer than `min_df` of those texts are dropped)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(
        ngram_range=(1, ngrams), min_df=min_df, sublinear_tf=True, dtype=np.float32
    )
    try:
        vectorizer.fit(list(fit_on))
    except ValueError as err:  # an empty vocabulary
        raise ConfigError(
            f"teacher.min_df={min_df}: the teachers' {len(fit_on)} texts leave no term ({err}); "
            "lower teacher.min_df or give the teachers more texts"
        ) from None
    return {name: SparseRows(vectorizer.transform(list(texts))) for name, texts in parts.items()}
