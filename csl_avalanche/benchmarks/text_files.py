"""A user's labelled texts on disk: a CSV (or TSV) file, a JSON lines file, or a folder tree.

- CSV/TSV (`.csv`, `.tsv`): a header row naming the columns; `data.text_column` and
  `data.label_column` say which hold the text and the label.
- JSON lines (`.jsonl`, `.ndjson`, `.json`): one JSON object per line, with those two keys.
- A folder: `<label>/<file>`, every (non-hidden) file under a label's folder one text, read as
  UTF-8 (20 Newsgroups' layout; `<label>/<name>.txt` is the usual one).

A row that cannot be used stops the reading with a TextFileError naming the file and the line.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path

from csl_avalanche.benchmarks.texts import LabelledTexts, labelled_texts
from csl_avalanche.core.errors import ConfigError

CSV_SUFFIXES = {".csv": ",", ".tsv": "\t"}
JSON_LINES_SUFFIXES = (".jsonl", ".ndjson", ".json")
LAYOUTS = (
    "a CSV/TSV file with a header, a JSON lines file (one object per line), or a folder of "
    "<label>/<file> texts"
)


class TextFileError(ConfigError):
    """Labelled texts that are missing, in an unknown format, or with an unusable row."""


def read_labelled_texts(path: str | None, text_column: str, label_column: str) -> LabelledTexts:
    """Every (text, label) of `path` (module doc); labels are numbered in sorted order."""
    if not path:
        raise TextFileError(f"benchmark=text_file needs data.path=PATH: {LAYOUTS}")
    source = Path(path).expanduser()
    if source.is_dir():
        rows = list(_folder_rows(source))
    elif not source.is_file():
        raise TextFileError(f"data.path={source}: no such file or folder; give {LAYOUTS}")
    elif source.suffix.lower() in CSV_SUFFIXES:
        rows = list(_csv_rows(source, text_column, label_column))
    elif source.suffix.lower() in JSON_LINES_SUFFIXES:
        rows = list(_json_lines_rows(source, text_column, label_column))
    else:
        known = ", ".join([*CSV_SUFFIXES, *JSON_LINES_SUFFIXES])
        raise TextFileError(
            f"data.path={source}: cannot tell the format from {source.suffix or 'no suffix'!r}; "
            f"name the file with one of {known}, or give a folder of <label>/<file> texts"
        )
    if not rows:
        raise TextFileError(f"data.path={source} holds no texts; give {LAYOUTS}")
    texts, labels = zip(*rows, strict=True)
    return labelled_texts(texts, labels)


def _checked(
    where: str, text: object, label: object, columns: tuple[str, str] | None = None
) -> tuple[str, str]:
    """(text, label) as strings, or a TextFileError naming the row `where` (and the `columns`
    of text and label, in a table) and what is wrong."""
    for index, (value, what) in enumerate(((text, "text"), (label, "label"))):
        if value is None or not str(value).strip():
            column = f" (column {columns[index]!r})" if columns else ""
            raise TextFileError(f"{where}: the {what} is empty{column}; fill it in or remove it")
    return str(text), str(label).strip()


def _csv_rows(path: Path, text_column: str, label_column: str) -> Iterator[tuple[str, str]]:
    columns = (text_column, label_column)
    with _opened(path) as file:
        reader = csv.DictReader(file, delimiter=CSV_SUFFIXES[path.suffix.lower()])
        header = reader.fieldnames or []
        missing = [column for column in columns if column not in header]
        if missing:
            raise TextFileError(
                f"{path}: the header {header} lacks the column(s) {missing}; set "
                "data.text_column and data.label_column to the columns holding the text and label"
            )
        for row in reader:
            yield _checked(
                f"{path} line {reader.line_num}", row[text_column], row[label_column], columns
            )


def _json_lines_rows(path: Path, text_column: str, label_column: str) -> Iterator[tuple[str, str]]:
    columns = (text_column, label_column)
    with _opened(path) as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            where = f"{path} line {number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise TextFileError(
                    f"{where} is not JSON ({err.msg}); a JSON lines file holds one object per line"
                ) from None
            if not isinstance(row, dict):
                raise TextFileError(f"{where} holds a {type(row).__name__}, not a JSON object")
            yield _checked(where, row.get(text_column), row.get(label_column), columns)


def _folder_rows(root: Path) -> Iterator[tuple[str, str]]:
    labels = sorted(entry.name for entry in os.scandir(root) if _visible_folder(entry))
    if not labels:
        raise TextFileError(f"data.path={root} holds no label folders; give {LAYOUTS}")
    for label in labels:
        files = sorted(
            path for path in (root / label).rglob("*") if path.is_file() and _visible(path, root)
        )
        if not files:
            raise TextFileError(f"label folder {root / label} holds no text files")
        for path in files:
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError as err:
                raise TextFileError(f"cannot read {path} ({err.strerror})") from None
            yield _checked(str(path), text, label)


def _visible_folder(entry: os.DirEntry) -> bool:
    return entry.is_dir() and not entry.name.startswith(".")


def _visible(path: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def _opened(path: Path):
    try:
        return open(path, encoding="utf-8", errors="replace", newline="")
    except OSError as err:
        raise TextFileError(f"cannot read data.path={path} ({err.strerror})") from None
