"""benchmark=text_file's reader: CSV, TSV, JSON lines and folder trees give the same texts, and a
row that cannot be used is named in a one-line error (the encoder is never reached here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import assert_clean_error, cli

from csl_avalanche.benchmarks.text_files import TextFileError, read_labelled_texts

ROWS = [
    ("the cat sat on the mat", "animal"),
    ('a "quoted" text, with a comma\nand a second line', "quote"),
    ("dogs bark", "animal"),
    ("naïve café", "quote"),
]


def write_csv(path: Path, rows=ROWS, columns=("text", "label"), delimiter=",") -> Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file, delimiter=delimiter)
        writer.writerow([*columns, "id"])
        writer.writerows([(text, label, i) for i, (text, label) in enumerate(rows)])
    return path


def write_json_lines(path: Path, rows=ROWS, columns=("text", "label")) -> Path:
    lines = [json.dumps({columns[0]: text, columns[1]: label}) for text, label in rows]
    path.write_text("\n".join(lines) + "\n\n", encoding="utf-8")  # a blank last line is skipped
    return path


def write_folder(root: Path, rows=ROWS) -> Path:
    for index, (text, label) in enumerate(rows):
        (root / label).mkdir(parents=True, exist_ok=True)
        (root / label / f"{index:03d}.txt").write_text(text, encoding="utf-8")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.txt").write_text("not a label")
    (root / "animal" / ".DS_Store").write_text("not a text")
    return root


@pytest.mark.parametrize("layout", ["csv", "tsv", "jsonl", "folder"])
def test_every_layout_reads_the_same_labelled_texts(tmp_path, layout):
    path = {
        "csv": lambda: write_csv(tmp_path / "t.csv"),
        "tsv": lambda: write_csv(tmp_path / "t.tsv", delimiter="\t"),
        "jsonl": lambda: write_json_lines(tmp_path / "t.jsonl"),
        "folder": lambda: write_folder(tmp_path / "tree"),
    }[layout]()
    texts = read_labelled_texts(str(path), "text", "label")
    assert texts.class_names == ("animal", "quote")
    got = sorted(zip(texts.texts, texts.labels.tolist(), strict=True))
    assert got == sorted((text, ["animal", "quote"].index(label)) for text, label in ROWS)


def test_other_columns_are_read_where_the_settings_say(tmp_path):
    path = write_csv(tmp_path / "t.csv", columns=("body", "topic"))
    assert len(read_labelled_texts(str(path), "body", "topic")) == len(ROWS)
    with pytest.raises(TextFileError, match=r"lacks the column\(s\) \['text', 'label'\]"):
        read_labelled_texts(str(path), "text", "label")
    jsonl = write_json_lines(tmp_path / "t.jsonl", columns=("body", "topic"))
    assert read_labelled_texts(str(jsonl), "body", "topic").class_names == ("animal", "quote")


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda p: write_csv(p / "t.csv", [*ROWS, ("  ", "animal")]), r"t\.csv line 7: the text"),
        (lambda p: write_csv(p / "t.csv", [*ROWS, ("text", "")]), r"t\.csv line 7: the label"),
        (lambda p: write_json_lines(p / "t.jsonl", [*ROWS, ("", "x")]), r"t\.jsonl line 5: the t"),
    ],
)
def test_an_empty_text_or_label_is_named_with_its_file_and_line(tmp_path, write, message):
    with pytest.raises(TextFileError, match=message + ".* is empty"):
        read_labelled_texts(str(write(tmp_path)), "text", "label")


def test_broken_json_lines_and_unknown_formats_are_named(tmp_path):
    broken = tmp_path / "t.jsonl"
    broken.write_text('{"text": "a", "label": "b"}\n{"text": "a",\n')
    with pytest.raises(TextFileError, match=r"t\.jsonl line 2 is not JSON"):
        read_labelled_texts(str(broken), "text", "label")
    listed = tmp_path / "l.jsonl"
    listed.write_text('["a", "b"]\n')
    with pytest.raises(TextFileError, match=r"l\.jsonl line 1 holds a list, not a JSON object"):
        read_labelled_texts(str(listed), "text", "label")
    other = tmp_path / "t.xlsx"
    other.write_text("x")
    with pytest.raises(TextFileError, match=r"cannot tell the format from '\.xlsx'"):
        read_labelled_texts(str(other), "text", "label")
    with pytest.raises(TextFileError, match="no such file or folder"):
        read_labelled_texts(str(tmp_path / "missing.csv"), "text", "label")
    with pytest.raises(TextFileError, match="needs data.path=PATH"):
        read_labelled_texts(None, "text", "label")


def test_an_empty_file_in_a_folder_tree_is_named(tmp_path):
    root = write_folder(tmp_path / "tree")
    (root / "quote" / "empty.txt").write_text("\n")
    with pytest.raises(TextFileError, match=r"quote/empty\.txt: the text is empty"):
        read_labelled_texts(str(root), "text", "label")


# -- through the command line: one `error:` line, before any model loads -------------------------


def many_rows(per_label: dict[str, int]) -> list[tuple[str, str]]:
    return [(f"text {i} about {label}", label) for label, n in per_label.items() for i in range(n)]


def test_a_label_the_hierarchy_names_but_the_data_lacks_is_named(tmp_path):
    path = write_csv(tmp_path / "t.csv", many_rows({"a": 8, "b": 8, "c": 8}))
    outcome = cli(
        tmp_path / "run",
        "benchmark=text_file",
        f"data.path={path}",
        "benchmark.hierarchy=[[[a,b,c]],[[a,b],[z]]]",
    )
    assert_clean_error(outcome, "benchmark.hierarchy: level 1 names 'z'", "'a', 'b', 'c'")


def test_a_label_with_too_few_texts_is_named(tmp_path):
    path = write_csv(tmp_path / "t.csv", many_rows({"a": 8, "b": 8, "rare": 2}))
    outcome = cli(
        tmp_path / "run",
        "benchmark=text_file",
        f"data.path={path}",
        "benchmark.hierarchy=auto",
        "benchmark.auto_levels=[2]",
    )
    assert_clean_error(outcome, "label 'rare' has 2 texts, too few for benchmark.splits")


def test_text_file_without_a_hierarchy_says_how_to_give_one(tmp_path):
    path = write_csv(tmp_path / "t.csv", many_rows({"a": 8, "b": 8}))
    outcome = cli(tmp_path / "run", "benchmark=text_file", f"data.path={path}")
    assert_clean_error(outcome, "benchmark.hierarchy", "benchmark.auto_levels")


def test_numbers_in_the_hierarchy_are_label_names(tmp_path):
    path = write_csv(tmp_path / "t.csv", many_rows({"2": 8, "10": 8, "7": 8}))
    outcome = cli(
        tmp_path / "run",
        "benchmark=text_file",
        f"data.path={path}",
        "benchmark.hierarchy=[[[2,10,7]],[[2,10],[3]]]",
    )
    assert_clean_error(outcome, "names '3', which is not a class")
