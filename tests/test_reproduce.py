"""`python -m csl_avalanche.reproduce`: the digits default reproduces by name, a wrong expected
number fails and is named, the docs show the manifest's numbers, and every table of the docs
is in the manifest."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from csl_avalanche import reproduce
from csl_avalanche.core.errors import ConfigError

ENTRIES = reproduce.load_manifest()
DEFAULT_NUMBERS = len(list(ENTRIES["default"].numbers()))  # the table, weak and ceiling, README


def _reproduce(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The command line in a subprocess, with HOME (and so the cache) under `cwd`: what a
    fresh clone does."""
    env = {**os.environ, "HOME": str(cwd), "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "csl_avalanche.reproduce", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


@pytest.fixture(scope="module")
def default_runs(tmp_path_factory) -> Path:
    """The folder where `reproduce default` ran, and passed."""
    cwd = tmp_path_factory.mktemp("reproduce")
    done = _reproduce("default", "--out", "runs", cwd=cwd)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"default: {DEFAULT_NUMBERS} of {DEFAULT_NUMBERS} numbers pass" in done.stdout
    assert "1 of 1 entries reproduced" in done.stdout
    return cwd


def test_the_digits_default_reproduces_by_name(default_runs):
    assert len(list((default_runs / "runs" / "default").rglob("results.json"))) == 1
    assert (default_runs / "runs" / "default" / "command-1.log").is_file()


def test_a_wrong_expected_number_fails_and_is_named(default_runs, tmp_path):
    manifest = yaml.safe_load(reproduce.MANIFEST.read_text())
    manifest["entries"]["default"]["rows"][1]["shown"][3] = "0.600"  # level 1's PGR is 0.507
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(yaml.safe_dump(manifest, allow_unicode=True, sort_keys=False))
    done = _reproduce(
        "default", "--manifest", str(wrong), "--out", "runs", "--check-only", cwd=default_runs
    )
    assert done.returncode == 1, done.stdout + done.stderr
    failed = [line.split() for line in done.stdout.splitlines() if line.endswith("FAIL")]
    assert failed == [["1", "|", "PGR", "0.600", "0.507", "FAIL"]]
    assert f"default: {DEFAULT_NUMBERS - 1} of {DEFAULT_NUMBERS} numbers pass" in done.stdout
    assert "failed: default" in done.stdout


def test_an_output_folder_in_use_is_refused(default_runs):
    done = _reproduce("default", "--out", "runs", cwd=default_runs)
    assert done.returncode == 2
    assert done.stderr.startswith("error: runs/default is not empty; remove it")
    assert "Traceback" not in done.stderr


def test_an_unknown_name_is_a_clean_error_listing_the_names(capsys):
    with pytest.raises(SystemExit) as exit_:
        reproduce.main(["defualt"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no entry named defualt; the entries are default, fashion-mnist")
    assert err.count("\n") == 1


def test_all_skips_the_entries_this_machine_cannot_run(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(reproduce, "FASHION_MNIST", tmp_path / "absent")
    chosen = reproduce._choose(ENTRIES, Namespace(all=True, cheap=False, names=[]))
    names = [entry.name for entry in chosen]
    assert "default" in names and "fashion-mnist-labels" not in names
    assert "skipping fashion-mnist-labels: needs Fashion-MNIST in" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="forgetting-fashion-mnist cannot run here: it needs"):
        reproduce._choose(ENTRIES, Namespace(all=False, names=["forgetting-fashion-mnist"]))
    cheap = reproduce._choose(ENTRIES, Namespace(all=True, cheap=True, names=[]))
    assert [entry.name for entry in cheap] == ["default"]


def _results(folder: Path, seed: int, labels: str, pgr: float) -> None:
    """A minimal results.json of one run, as the report reads it."""
    folder.mkdir(parents=True)
    run = {
        "config": {"seed": seed, "strategy": {"labels": labels}, "plugins": {}},
        "seed": seed,
        "weak_accuracy": 0.5,
        "levels": [{"level": 0, "student_accuracy": 0.6, "pgr": pgr}],
        "subdomains": ["a"],
        "accuracy_matrix": [[0.6]],
    }
    (folder / "results.json").write_text(json.dumps(run))


def test_a_row_averages_the_runs_it_selects(tmp_path):
    for job, (seed, labels, pgr) in enumerate(
        [(0, "hard", 0.30), (1, "hard", 0.40), (0, "soft", 0.90)]
    ):
        _results(tmp_path / "sweep" / str(job), seed, labels, pgr)
    entry = reproduce.Entry("t", {
        "tolerance": 0, "scale": 100, "runs": "sweep", "columns": {"PGR": "levels.0.pgr"},
        "rows": [{"label": "hard", "where": {"strategy.labels": "hard"}, "shown": ["35.0 ± 7.1"]},
                 {"label": "soft", "where": {"strategy.labels": "soft"}, "shown": ["90.1"]},
                 {"label": "spread", "where": {"strategy.labels": "hard"},
                  "shown": ["35.0 ± 7.3"]}],
        "inline": [{"text": "weak {}", "shown": "0.5", "key": "weak_accuracy"}],
    })  # fmt: skip
    hard, soft, spread, weak = (reproduce.measure(n, tmp_path, "") for n in entry.numbers())
    assert (hard.mean, round(hard.std, 4), hard.passed) == (pytest.approx(35.0), 7.0711, True)
    assert (soft.mean, soft.passed) == (pytest.approx(90.0), False)  # 90.0 is not 90.1 ± 0.05
    assert not spread.passed  # the spread, 7.07, is not 7.3 ± 0.05
    assert reproduce.format_measured(hard) == "35.0 ± 7.1"
    assert not weak.passed  # the entry's scale (100) applies to every number: 50, not 0.5


def test_a_printed_number_and_a_relative_tolerance():
    number = reproduce.Number(
        "ratio", reproduce.Shown("1.06"), {"output": r"ratio ([0-9.]+)x", "tolerance": "10%"},
        ".", {}, 1.0,
    )  # fmt: skip
    assert reproduce.measure(number, Path("."), "ratio 1.15x (target)").passed
    assert not reproduce.measure(number, Path("."), "ratio 1.22x (target)").passed
    assert reproduce.measure(number, Path("."), "nothing printed").mean is None


def test_each_number_of_an_inline_text_is_named_by_its_place():
    readme = [n.where_shown for n in ENTRIES["default"].numbers() if n.where_shown[:6] == "README"]
    assert readme[1] == (
        "README.md: PGR 0.388 / {} / 0.627 with 1 / 2 / 5 teachers (weak 0.7660, ceiling 0.9526)"
    )


@pytest.mark.parametrize("name", list(ENTRIES))
def test_every_entry_shows_the_numbers_of_its_doc_table(name):
    assert reproduce.doc_mismatches(ENTRIES[name], REPO) == []


def _docs_copy(root: Path) -> Path:
    shutil.copy(REPO / "README.md", root / "README.md")
    shutil.copytree(REPO / "docs", root / "docs")
    return root


def test_a_number_edited_in_a_doc_but_not_in_the_manifest_is_found(tmp_path):
    docs = _docs_copy(tmp_path)
    page = docs / "docs" / "forgetting.md"
    page.write_text(page.read_text().replace("0.466 ± 0.038", "0.476 ± 0.038"))
    faults = reproduce.doc_mismatches(ENTRIES["forgetting-fashion-mnist"], docs)
    assert faults == [
        "docs/forgetting.md: row 'plugins=[replay] strategy.reinit_student=True', column "
        "'PGR L2' shows '0.476 ± 0.038', the manifest '0.466 ± 0.038'"
    ]
    readme = docs / "README.md"
    readme.write_text(readme.read_text().replace("accuracy 0.7660", "accuracy 0.7670"))
    faults = reproduce.doc_mismatches(ENTRIES["default"], docs)
    assert faults == ["default: README.md does not say 'weak (level-0 generalist) accuracy 0.7660'"]


def test_every_table_of_the_docs_is_in_the_manifest():
    assert reproduce.uncovered_tables(ENTRIES, REPO) == []


def test_a_new_table_of_measurements_must_be_added_to_the_manifest(tmp_path):
    docs = _docs_copy(tmp_path)
    page = docs / "docs" / "forgetting.md"
    table = "| variant | PGR |\n|---|---|\n| a | 0.5 |\n"
    page.write_text(f"{page.read_text()}\n## New study\n\n{table}")
    assert reproduce.uncovered_tables(ENTRIES, docs) == [
        "docs/forgetting.md: 'New study', table 'variant'"
    ]


@pytest.mark.parametrize(
    ("change", "fault"),
    [
        (lambda e: e.pop("tolerance"), "entry default: no tolerance"),
        (lambda e: e["rows"][0]["shown"].pop(), "entry default: row '0' shows 3 numbers for 4"),
        (lambda e: e["inline"][0].update(shown="n/a"), "entry default: shows 'n/a', which is not"),
        (lambda e: e["inline"][0].update(shown=["0.7", "0.9"]), "entry default: inline 'weak"),
    ],
)
def test_a_malformed_manifest_is_a_clean_error(tmp_path, capsys, change, fault):
    manifest = yaml.safe_load(reproduce.MANIFEST.read_text())
    change(manifest["entries"]["default"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(manifest, allow_unicode=True, sort_keys=False))
    with pytest.raises(SystemExit) as exit_:
        reproduce.main(["--manifest", str(bad), "--list"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}: {fault}") and err.count("\n") == 1


def test_list_shows_each_entry_with_its_cost_and_what_it_lacks_here(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(reproduce, "WORDNET", tmp_path / "absent")
    reproduce.main(["--list"])
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert list(lines) == list(ENTRIES)
    assert "~   40 s cheap README.md: What a run does" in lines["default"]
    assert "~ 40 min long" in lines["class-incremental-fashion-mnist"]
    assert "[cannot run here: needs WordNet in" in lines["text-wordnet-levels"]


def test_check_docs_says_the_docs_agree(capsys):
    with pytest.raises(SystemExit) as exit_:
        reproduce.main(["--check-docs"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"the docs agree with the manifest ({len(ENTRIES)} entries)\n"


def test_a_second_table_with_the_same_first_header_cell_is_a_table_of_its_own(tmp_path):
    docs = _docs_copy(tmp_path)
    others = {name: entry for name, entry in ENTRIES.items() if name != "plasticity-digits"}
    assert reproduce.uncovered_tables(others, docs) == [
        "docs/forgetting.md: 'Plasticity: shrink and perturb', table 'variant' (number 2)"
    ]
    page = docs / "docs" / "forgetting.md"
    page.write_text(page.read_text().replace("0.302 ± 0.217", "0.303 ± 0.217"))
    assert reproduce.doc_mismatches(ENTRIES["plasticity-fashion-mnist"], docs) == []
    assert reproduce.doc_mismatches(ENTRIES["plasticity-digits"], docs) == [
        "docs/forgetting.md: row 'continual, plugins=[shrink_perturb]', column 'PGR L2' shows "
        "'0.303 ± 0.217', the manifest '0.302 ± 0.217'"
    ]


def test_rows_with_the_same_first_cell_are_told_apart_by_their_order(tmp_path):
    docs = _docs_copy(tmp_path)
    page = docs / "docs" / "class-incremental.md"
    page.write_text(page.read_text().replace("| 0.846 ± 0.063 |", "| 0.847 ± 0.063 |"))
    assert reproduce.doc_mismatches(ENTRIES["csl-replay-learned-digits"], docs) == [
        "docs/class-incremental.md: row 'replay', column 'digits' shows '0.847 ± 0.063', the "
        "manifest '0.846 ± 0.063'"
    ]


def test_an_entry_that_needs_the_optuna_sweeper_runs_only_where_it_is(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "hydra_plugins", None)  # not importable
    assert reproduce._lacks("optuna") == "Hydra's Optuna sweeper (pip install '.[tune]')"
    with pytest.raises(ConfigError, match="tuning-optuna cannot run here: it needs Hydra's Optuna"):
        reproduce._choose(ENTRIES, Namespace(all=False, names=["tuning-optuna"]))
    monkeypatch.delitem(sys.modules, "hydra_plugins")
    sweeper = tmp_path / "hydra_plugins" / "hydra_optuna_sweeper"
    sweeper.mkdir(parents=True)
    (sweeper / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert reproduce._lacks("optuna") is None
