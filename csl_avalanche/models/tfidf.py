"""The text teachers' features and model: TF-IDF vectors and a linear layer that reads them.

A TF-IDF vector has one entry per word n-gram of the vocabulary, tens of thousands, nearly all
zero: dense, a pool of texts would not fit in memory. `SparseRows` keeps them as a scipy CSR
matrix that indexes like a tensor of samples, and turns a batch into a torch sparse tensor only
when it moves to the model's device; `SparseLinear` multiplies it. So the teachers' plain
training and prediction loops (`models.fit`), written for dense tensors, run unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from csl_avalanche.core.errors import ConfigError


class SparseRows:
    """Rows of a sparse matrix [N, V]: `rows[i]`, `rows[a:b]` and `rows[index_tensor]` select
    rows (still sparse); `.to(device)` makes them a torch sparse COO tensor."""

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

    def to(self, device: torch.device | str) -> torch.Tensor:
        m = self.matrix.tocoo()
        return torch.sparse_coo_tensor(
            torch.from_numpy(np.vstack([m.row, m.col]).astype(np.int64)),
            torch.from_numpy(m.data.astype(np.float32)),
            m.shape,
            device=device,
            check_invariants=False,  # scipy built them valid
        )


class SparseLinear(nn.Linear):
    """nn.Linear that also reads sparse inputs [B, V] (one sparse-dense product)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.layout == torch.strided:
            return super().forward(x)
        return torch.sparse.mm(x, self.weight.t()) + self.bias


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
