"""The bad-input catalogue, config side: wrong settings, unwritable run folders, a pool smaller
than a batch, a diverging student, report inputs, and runs whose PGR means nothing.

Each error case checks exit code 2, no traceback, one `error:` line and its words (the key or
path, the bad value, a word of the fix). Settings are checked before any data is read, so each
of those cases costs a fraction of a second in-process.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import errno
import io
import json
import math
import os
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, assert_clean_error, cli, make_feature_set
from hydra import compose, initialize_config_module
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from csl_avalanche.benchmarks.features import FeatureSet, save_features
from csl_avalanche.core.errors import ConfigError
from csl_avalanche.evaluation.report import main as report_main
from csl_avalanche.experiments.schema import STRATEGY_NAMES, read_settings

AUTO_2 = ["benchmark.hierarchy=auto", "benchmark.auto_levels=[2]"]
# (overrides, phrases the one error line must contain)
BAD_SETTINGS = [
    (["strategy.epochs=abc"], ["strategy.epochs must be a whole number >= 1", "got 'abc'"]),
    (["strategy.epochs=0"], ["strategy.epochs", ">= 1", "got 0"]),
    (["strategy.epochs=1.5"], ["strategy.epochs", "whole number", "got 1.5"]),
    (["strategy.batch_size=0"], ["strategy.batch_size", ">= 1", "got 0"]),
    (["strategy.batch_size=-1"], ["strategy.batch_size", ">= 1", "got -1"]),
    (["strategy.lr=-1"], ["strategy.lr must be a finite number in (0, 1]", "got -1"]),
    (["strategy.lr=0"], ["strategy.lr", "(0, 1]", "got 0"]),
    (["strategy.lr=1e4"], ["strategy.lr", "(0, 1]", "got 10000.0"]),
    (["strategy.lr=nan"], ["strategy.lr", "finite", "got nan"]),
    (["strategy.lr=inf"], ["strategy.lr", "finite", "got inf"]),
    (["strategy.lr=abc"], ["strategy.lr", "number", "got 'abc'"]),
    ([f"strategy.lr={10**400}"], ["strategy.lr", "(0, 1]", "got 1000"]),  # no OverflowError
    (["seed=-1"], ["seed must be a whole number in 0..4294967295", "got -1"]),
    ([f"seed={2**32}"], ["seed", "0..4294967295", f"got {2**32}"]),
    (["seed=abc"], ["seed", "whole number", "got 'abc'"]),
    (["device=gpu"], ["device must be one of auto, cpu, cuda", "got 'gpu'"]),
    (["progress=yes"], ["progress must be true or false", "got 'yes'"]),
    (["cache_dir=null"], ["cache_dir must be a folder path", "got None"]),
    (["strategy.name=fancy"], ["strategy.name must be one of csl, w2s, ground_truth", "'fancy'"]),
    (["strategy.assignment=random"], ["strategy.assignment", "likelihood", "got 'random'"]),
    (["strategy.labels=fuzzy"], ["strategy.labels must be one of hard, soft", "got 'fuzzy'"]),
    (["strategy.denoise=top0"], ["strategy.denoise", "topK with K >= 1", "got 'top0'"]),
    (["strategy.reinit_student=maybe"], ["strategy.reinit_student", "true or false"]),
    (["strategy.loss=focal"], ["strategy.loss must be one of ce, logconf", "got 'focal'"]),
    (["strategy.logconf_alpha=1.5"], ["strategy.logconf_alpha", "in [0, 1]", "got 1.5"]),
    (["strategy.logconf_alpha=-0.1"], ["strategy.logconf_alpha", "in [0, 1]", "got -0.1"]),
    (["strategy.logconf_alpha=abc"], ["strategy.logconf_alpha", "number", "got 'abc'"]),
    (["strategy.logconf_warmup=2"], ["strategy.logconf_warmup", "in [0, 1]", "got 2"]),
    (["strategy.logconf_warmup=nan"], ["strategy.logconf_warmup", "finite", "got nan"]),
    (["strategy.logconf_alpha=0.3"], ["strategy.logconf_alpha", "add strategy.loss=logconf"]),
    (["benchmark=cifar100", "benchmark.hierarchy=[[[0,1]]]"], ["benchmark.superclass_groups"]),
    (["benchmark=domainnet", "benchmark.hierarchy=[[[0,1]]]"], ["benchmark.domain_groups"]),
    (["benchmark=features", "benchmark.hierarchy=[[[0,1]]]"], ["the features file"]),
    (["strategy.logconf_warmup=0.1"], ["strategy.logconf_warmup", "strategy.loss=ce"]),
    (["teacher.steps=0"], ["teacher.steps must be a whole number >= 1", "got 0"]),
    (["teacher.batch_size=abc"], ["teacher.batch_size", "whole number", "got 'abc'"]),
    (["teacher.lr=nan"], ["teacher.lr", "finite number in (0, 1]", "got nan"]),
    (["student.pretrain.steps=-1"], ["student.pretrain.steps", ">= 1", "got -1"]),
    (["student.pretrain.lr=0"], ["student.pretrain.lr", "(0, 1]", "got 0"]),
    (["benchmark.splits.pool=0"], ["benchmark.splits", "each > 0", "'pool': 0"]),
    (["benchmark.splits.pool=0.9"], ["benchmark.splits", "summing to at most 1", "0.9"]),
    (["plugins=[ewc]", "plugins.ewc.ewc_lambda=-1e6"], ["plugins.ewc.ewc_lambda", ">= 0", "-1"]),
    (["plugins=[ewc]", "plugins.ewc.mode=sometimes"], ["plugins.ewc.mode", "online"]),
    (["plugins=[ewc]", "plugins.ewc.mode=online"], ["plugins.ewc.decay_factor", "mode=online"]),
    (["plugins=[lwf]", "plugins.lwf.temperature=0"], ["plugins.lwf.temperature", "> 0", "got 0"]),
    (["plugins=[lwf]", "plugins.lwf.alpha=-1"], ["plugins.lwf.alpha", ">= 0", "got -1"]),
    (["plugins=[lwf]", "plugins.lwf.alpha=[1.0,-0.5]"], ["plugins.lwf.alpha", "list", "-0.5"]),
    (["plugins=[replay]", "plugins.replay.mem_size=-5"], ["plugins.replay.mem_size", "got -5"]),
    (["plugins=[replay]", "plugins.replay.batch_size_mem=0"], ["batch_size_mem", "null or"]),
    (["plugins=[si]", "plugins.si.si_lambda=-1"], ["plugins.si.si_lambda", ">= 0", "-1"]),
    (["plugins=[agem]", "plugins.agem.sample_size=0"], ["plugins.agem.sample_size", ">= 1"]),
    (["plugins=[rwalk]", "plugins.rwalk.ewc_alpha=2"], ["plugins.rwalk.ewc_alpha", "in [0, 1]"]),
    (
        ["plugins=[mas]", "strategy.labels=soft"],
        ["plugins.mas (avalanche.training.plugins.MASPlugin)", "labels=soft", "[x, y, task]"],
    ),
    (
        ["plugins=[gdumb]", "strategy.reassign_every=1"],
        ["strategy.reassign_every", "plugins.gdumb builds its own training data"],
    ),
    (
        ["plugins=[replay]", "+plugins.replay.memsize=10"],
        ["plugins.replay.memsize", "not an argument of ReplayPlugin", "mem_size"],
    ),
    (["benchmark=imagefolder", "data.num_workers=-1"], ["data.num_workers", ">= 0", "got -1"]),
    (["benchmark=imagefolder", "data.image_size=0"], ["data.image_size", ">= 1", "got 0"]),
    (["benchmark=imagefolder", "data.batch_size=abc"], ["data.batch_size", "got 'abc'"]),
    (["benchmark=imagefolder", "data.crop_pct=1.5"], ["data.crop_pct", "(0, 1]", "got 1.5"]),
    (["benchmark=imagenet_w2s", "benchmark.teacher_fraction=0"], ["teacher_fraction", "got 0"]),
    (["benchmark=fashion_mnist", "student.channels=[32,0]"], ["student.channels", "[32, 0]"]),
    (["strategy.reassign_every=0"], ["strategy.reassign_every", ">= 1", "got 0"]),
    (["strategy=w2s", "strategy.reassign_every=2"], ["reassign_every", "strategy=w2s", "drop"]),
    (["plugins=[replay]", "strategy.reassign_every=2"], ["reassign_every", "replay", "[ewc]"]),
    (["benchmark.hierarchy=clusters"], ["benchmark.hierarchy must be null, auto, or a list"]),
    (["benchmark.hierarchy=auto"], ["needs benchmark.auto_levels", "auto_levels=[2,5]"]),
    (["benchmark.auto_levels=[2,5]"], ["benchmark.auto_levels", "not auto", "drop"]),
    (AUTO_2 + ["benchmark.auto_levels=[5,2]"], ["auto_levels=[5, 2]", "strictly increasing"]),
    (AUTO_2 + ["benchmark.auto_levels=[1]"], ["benchmark.auto_levels", ">= 2", "got [1]"]),
    (AUTO_2 + ["benchmark.auto_holdout=1"], ["benchmark.auto_holdout", "in (0, 1)", "got 1"]),
    (["benchmark=features", *AUTO_2], ["hierarchy=auto", "benchmark=features", "features file"]),
    (["benchmark=domainnet", *AUTO_2], ["hierarchy=auto", "benchmark=domainnet", "domains"]),
    (["benchmark=imagefolder", *AUTO_2, "teacher.heads=h.pt"], ["hierarchy=auto", "teacher.heads"]),
    (["benchmark=wordnet", "student.arch=MiniLM"], ["student.arch", "sentence-transformers:<"]),
    (["benchmark=wordnet", "teacher.ngrams=0"], ["teacher.ngrams", ">= 1", "got 0"]),
    (["benchmark=wordnet", "benchmark.max_per_class=0"], ["benchmark.max_per_class", "got 0"]),
    (["benchmark=text_file", "data.text_column="], ["data.text_column must be a name"]),
]


@pytest.mark.parametrize(
    ("overrides", "phrases"), BAD_SETTINGS, ids=[" ".join(o) for o, _ in BAD_SETTINGS]
)
def test_bad_setting_is_refused_up_front(tmp_path, overrides, phrases):
    outcome = cli(tmp_path / "run", *overrides)
    assert_clean_error(outcome, *phrases)
    assert not (tmp_path / "cache").exists()  # refused before any data was read


def test_every_shipped_config_passes_the_checks():
    """The rules refuse no combination of the shipped benchmark, strategy, plugins and scenario
    groups (ground truth is the class-incremental scenario's diagnostic only)."""
    with initialize_config_module("csl_avalanche.configs", version_base="1.3"):
        for benchmark in ("digits", "fashion_mnist", "features", "imagefolder", "imagenet_w2s",
                          "cifar100", "domainnet", "wordnet", "text_file"):  # fmt: skip
            for scenario, strategies in SHIPPED_STRATEGIES.items():
                for strategy in strategies:
                    overrides = [f"benchmark={benchmark}", f"strategy={strategy}"]
                    overrides += [f"scenario={scenario}", "plugins=[replay,ewc,lwf]"]
                    read_settings(compose("config", overrides))


SHIPPED_STRATEGIES = {
    "levels": ("csl", "w2s", "oracle", "ensemble"),
    "class_incremental": ("csl", "w2s", "oracle", "ensemble", "ground_truth"),
}


def test_the_tables_name_what_the_code_builds():
    from csl_avalanche.experiments.schema import GROUND_TRUTH
    from csl_avalanche.experiments.strategy_setup import STRATEGIES

    assert set(STRATEGY_NAMES) == {*STRATEGIES, GROUND_TRUTH}


# --- the run folder -------------------------------------------------------------------------


def test_results_json_that_is_a_folder_is_refused_before_the_run(tmp_path):
    (tmp_path / "run" / "results.json").mkdir(parents=True)
    outcome = cli(tmp_path / "run")
    assert_clean_error(outcome, f"{tmp_path / 'run' / 'results.json'}", "a folder", "remove it")
    assert not (tmp_path / "cache").exists()


def test_run_folder_under_a_regular_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    outcome = cli(tmp_path / "file" / "run")
    assert_clean_error(outcome, str(tmp_path / "file" / "run"), "under the file", "hydra.run.dir")


def test_run_folder_that_is_a_regular_file_is_refused(tmp_path):
    (tmp_path / "run").write_text("not a folder")
    outcome = cli(tmp_path / "run")
    assert_clean_error(outcome, str(tmp_path / "run"), "is a file", "choose another hydra.run.dir")


def test_tensorboard_folder_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "tb").write_text("")
    outcome = cli(tmp_path / "run")
    assert_clean_error(outcome, str(tmp_path / "run" / "tb"), "TensorBoard", "remove it")


def test_run_folder_that_cannot_be_written_is_refused(tmp_path, monkeypatch):
    """Tests run as root, for whom chmod blocks nothing: the permission check is simulated."""
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    outcome = cli(tmp_path / "run")
    assert_clean_error(outcome, str(tmp_path / "run"), "not writable", "hydra.run.dir")


# --- features files: the pool, divergence, PGR that means nothing ---------------------------


# A short, unfiltered run on a tiny features file: two epochs, every pool sample kept.
QUICK = (
    "benchmark=features",
    "strategy.epochs=2",
    "strategy.denoise=all",
    "strategy.batch_size=32",
)


@pytest.fixture
def features_file(tmp_path):
    """Saves a FeatureSet; returns the overrides that run it (QUICK)."""

    def save(features: FeatureSet) -> list[str]:
        path = tmp_path / "features.pt"
        save_features(features, path)
        return [*QUICK, f"data.path={path}"]

    return save


def test_pool_smaller_than_one_batch_is_refused_before_training(tmp_path, features_file):
    run = features_file(make_feature_set(n=40))
    outcome = cli(tmp_path / "run", *run, "strategy.batch_size=100")
    assert_clean_error(outcome, "strategy.batch_size=100", "(40 samples)", "strategy.batch_size=40")
    assert not (tmp_path / "run" / "tb").exists()  # no model was trained


def test_lwf_weights_for_fewer_levels_than_the_hierarchy_are_refused(tmp_path, features_file):
    run = features_file(make_feature_set())  # 2 levels
    outcome = cli(tmp_path / "run", *run, "plugins=[lwf]", "plugins.lwf.alpha=[1.0]")
    assert_clean_error(outcome, "plugins.lwf.alpha lists 1 weights", "2 levels", "one per level")
    assert not (tmp_path / "run" / "tb").exists()


def test_a_diverging_student_stops_the_run_naming_the_level(tmp_path, features_file):
    """LwF divides the logits by its temperature: near 0 they overflow, the loss is NaN from
    the first level LwF acts on (level 1), and the run stops instead of reporting accuracies."""
    run = features_file(make_feature_set())
    outcome = cli(tmp_path / "run", *run, "plugins=[lwf]", "plugins.lwf.temperature=1e-45")
    assert_clean_error(
        outcome, "csl level 1: the training loss became NaN or Inf in epoch 1", "lower strategy.lr"
    )
    assert "plugins lwf" in outcome.err
    assert not (tmp_path / "run" / "results.json").exists()


def _pgr_levels(tmp_path, outcome) -> list[dict]:
    assert outcome.code == 0, outcome.err
    assert "Traceback" not in outcome.err
    return json.loads((tmp_path / "run" / "results.json").read_text())["levels"]


def test_a_perfect_generalist_leaves_no_gap_and_no_pgr(tmp_path, features_file, single_threaded):
    base = make_feature_set()
    perfect = torch.nn.functional.one_hot(base.test_y, 4).float()
    probs = base.teacher_test_probs.clone()
    probs[0] = perfect
    run = features_file(dataclasses.replace(base, teacher_test_probs=probs))
    outcome = cli(tmp_path / "run", *run)
    levels = _pgr_levels(tmp_path, outcome)
    assert [lvl["pgr"] for lvl in levels] == [None, None]
    assert all("not above the weak accuracy (1.0000)" in lvl["pgr_note"] for lvl in levels)
    assert "n/a" in outcome.out
    assert "warning: PGR is n/a at level 0, 1: the ceiling accuracy" in outcome.err
    events = EventAccumulator(str(tmp_path / "run" / "tb" / "csl")).Reload()
    assert "Top1_Acc_Stream/eval_phase/test_stream" in events.Tags()["scalars"]
    assert "PGR/eval_phase/test_stream" not in events.Tags()["scalars"]  # nothing logged


def test_a_class_missing_from_the_pool_gives_no_pgr(tmp_path, features_file, single_threaded):
    base = make_feature_set()
    keep = base.train_y != 3
    run = features_file(
        dataclasses.replace(
            base,
            train_x=base.train_x[keep],
            train_y=base.train_y[keep],
            teacher_train_probs=base.teacher_train_probs[:, keep],
        )
    )
    outcome = cli(tmp_path / "run", *run)
    levels = _pgr_levels(tmp_path, outcome)
    assert [lvl["pgr"] for lvl in levels] == [None, None]
    assert all("no samples of class(es) [3]" in lvl["pgr_note"] for lvl in levels)
    assert "warning: PGR is n/a at level 0, 1: the transfer pool has no samples" in outcome.err


# --- the report command ---------------------------------------------------------------------


def report(*argv: str):
    """`python -m csl_avalanche.evaluation.report ARGV` in this process: (exit code, stdout,
    stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            report_main(list(argv))
        except SystemExit as exit_:
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


def assert_report_error(outcome, *phrases):
    code, _, err = outcome
    assert code == 2 and "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert all(phrase in errors[0] for phrase in phrases), errors[0]
    return err


def good_run(pgr: list[float | None]) -> dict:
    levels = [{"level": i, "student_accuracy": 0.8, "pgr": p} for i, p in enumerate(pgr)]
    return {
        "levels": levels,
        "subdomains": ["classes_0-1", "classes_2-3"],
        "accuracy_matrix": [[0.8, 0.8]] * len(pgr),
        "seed": 0,
        "config": {"seed": 0, "strategy": {"name": "csl"}},
    }


def write_run(folder, content: str) -> None:
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(content)


def test_report_on_a_missing_folder(tmp_path):
    assert_report_error(report(str(tmp_path / "nowhere")), "nowhere does not exist", "folder")


def test_report_on_an_empty_folder(tmp_path):
    assert_report_error(report(str(tmp_path)), "no readable results.json", str(tmp_path))


def test_report_on_a_file(tmp_path):
    (tmp_path / "results.json").write_text("{}")
    target = tmp_path / "results.json"
    assert_report_error(report(str(target)), "is not a folder", "of a run or of a sweep")


def test_report_when_every_results_json_is_corrupt(tmp_path):
    write_run(tmp_path / "0", '{"levels": [')  # cut short
    write_run(tmp_path / "1", json.dumps({"seed": 1}))  # not a run's results
    err = assert_report_error(report(str(tmp_path)), "no readable results.json", "2 skipped")
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2
    assert str(tmp_path / "0" / "results.json") in warnings[0] and "JSON" in warnings[0]
    assert str(tmp_path / "1" / "results.json") in warnings[1] and "no config" in warnings[1]


def test_report_skips_a_corrupt_run_and_reports_the_rest(tmp_path):
    write_run(tmp_path / "0", json.dumps(good_run([0.25, 0.5])))
    write_run(tmp_path / "1", json.dumps({**good_run([0.25]), "levels": [{"pgr": 0.1}]}))
    code, out, err = report(str(tmp_path))
    assert code == 0, err
    assert err.splitlines() == [
        f"warning: skipping {tmp_path / '1' / 'results.json'}: not a run's results.json "
        "(no levels[0].student_accuracy (a number from 0 to 1))"
    ]
    assert "| all runs | 0 | 0.800 ± 0.000 | 0.250 ± 0.000 | 0.500 ± 0.000 | – |" in out


def test_report_shows_null_pgr_as_na_and_leaves_it_out_of_the_mean(tmp_path):
    write_run(tmp_path / "0", json.dumps(good_run([None, 0.5])))
    write_run(tmp_path / "1", json.dumps({**good_run([None, None]), "seed": 1}))
    code, out, err = report(str(tmp_path))
    assert code == 0 and err == "", err
    assert "| all runs | 0,1 | 0.800 ± 0.000 | n/a | 0.500 ± 0.000 (1 n/a) | – |" in out


def bad_results_files() -> dict[str, tuple[str, str]]:
    """results.json texts the report must skip, each with the phrase its warning gives; seeds
    2 and up, so that none repeats a good run's seed."""

    def run(seed: int, **changes) -> str:
        return json.dumps({**good_run([0.25, 0.5]), "seed": seed, **changes})

    def nested(depth: int) -> dict:
        return {"a": nested(depth - 1)} if depth else {}

    def levels(**changes) -> list[dict]:
        return [{**level, **changes} for level in good_run([0.25, 0.5])["levels"]]

    return {
        "a-list": ("[1, 2]", "holds a JSON list, not an object"),
        "nested-too-deep": ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        "config-nested-too-deep": (run(16, config=nested(900)), "nested too deeply"),
        "fewer-levels": (
            run(2, levels=levels()[:1], accuracy_matrix=[[0.8, 0.8]]),
            "1 x 2 levels x subdomains, but",
        ),
        "more-subdomains": (
            run(3, subdomains=["a", "b", "c"], accuracy_matrix=[[0.8] * 3] * 2),
            "2 x 3 levels x subdomains, but",
        ),
        "accuracy-in-words": (
            run(4, levels=levels(student_accuracy="high")),
            "`levels[0].student_accuracy` is not a number from 0 to 1 (got 'high')",
        ),
        "accuracy-in-percent": (run(5, levels=levels(student_accuracy=80.0)), "(got 80.0)"),
        "accuracy-nan": (run(6, levels=levels(student_accuracy=math.nan)), "(got nan)"),
        "accuracy-huge": (run(17, levels=levels(student_accuracy=10**400)), "(got 1000000"),
        "number-of-5000-digits": ("[1" + "0" * 5000 + "]", "not a readable JSON file"),
        "pgr-in-words": (
            run(7, levels=levels(pgr="0.5")),
            "`levels[0].pgr` is not a number or null (got '0.5')",
        ),
        "forgetting-in-words": (
            run(8, levels=levels(mean_forgetting="low")),
            "`levels[0].mean_forgetting` is not a number or null (got 'low')",
        ),
        "ragged-matrix": (
            run(9, accuracy_matrix=[[0.8, 0.8], [0.8]]),
            "`accuracy_matrix` is not 2 rows (levels) of 2 numbers from 0 to 1",
        ),
        "matrix-in-words": (
            run(10, accuracy_matrix=[["a", "b"]] * 2),
            "`accuracy_matrix` is not 2 rows (levels) of 2 numbers from 0 to 1",
        ),
        "matrix-too-short": (
            run(11, accuracy_matrix=[[0.8, 0.8]]),
            "`accuracy_matrix` is not 2 rows (levels) of 2 numbers from 0 to 1",
        ),
        "seed-in-words": (run("zero"), "`seed` is not a whole number >= 0"),
        "seed-in-a-list": (run([12]), "`seed` is not a whole number >= 0"),
        "seed-true": (run(True), "`seed` is not a whole number >= 0"),
        "subdomains-a-string": (
            run(13, subdomains="ab"),
            "`subdomains` is not a non-empty list of names (got 'ab')",
        ),
        "hierarchy-in-words": (
            run(14, hierarchy="auto"),
            "`hierarchy` is not a list of levels, each a list of groups of class",
        ),
        "config-a-list": (run(15, config=[1]), "`config` is not an object (got [1])"),
    }


def test_report_skips_each_malformed_results_json_and_reports_the_rest(tmp_path):
    """A sweep with good runs (seeds 0, 1) and one bad results.json of each kind: exit 0, the
    good runs in the table, and one warning per bad file naming it and what is wrong."""
    write_run(tmp_path / "0", json.dumps(good_run([0.25, 0.5])))
    write_run(tmp_path / "1", json.dumps({**good_run([0.25, 0.75]), "seed": 1}))
    bad = bad_results_files()
    for name, (text, _) in bad.items():
        write_run(tmp_path / f"bad-{name}", text)
    code, out, err = report(str(tmp_path))
    assert code == 0 and "Traceback" not in err, err
    assert "| all runs | 0,1 | 0.800 ± 0.000 | 0.250 ± 0.000 | 0.625 ± 0.177 | – |" in out
    warnings = err.splitlines()
    assert all(line.startswith("warning: skipping ") for line in warnings), err
    for name, (_, phrase) in bad.items():
        path = str(tmp_path / f"bad-{name}" / "results.json")
        (line,) = [line for line in warnings if f"{path}:" in line]
        assert phrase in line, line
    assert len(warnings) == len(bad), err


def refuse_writes(folder, monkeypatch) -> None:
    """Make `folder` read-only. Root writes there all the same, so for root every open of a
    file in it for writing then fails as the system would fail it for another user."""
    folder.chmod(0o555)
    if not os.access(folder, os.W_OK):
        return
    real_open = io.open

    def open_(file, mode="r", *args, **kwargs):
        writes = isinstance(file, str | os.PathLike) and set(mode) & set("wax+")
        if writes and os.path.dirname(os.path.abspath(file)) == str(folder):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(io, "open", open_)


def test_report_into_a_read_only_folder(tmp_path, monkeypatch):
    write_run(tmp_path / "0", json.dumps(good_run([0.25, 0.5])))
    refuse_writes(tmp_path, monkeypatch)
    try:
        outcome = report(str(tmp_path))
    finally:
        tmp_path.chmod(0o755)
    assert_report_error(outcome, f"cannot write {tmp_path / 'pgr_per_level.png'}", "writable")


@pytest.mark.parametrize("output", ["report.md", "pgr_per_level.png", "accuracy_matrix.png"])
def test_report_where_an_output_is_a_folder(tmp_path, output):
    write_run(tmp_path / "0", json.dumps(good_run([0.25, 0.5])))
    (tmp_path / output).mkdir()
    assert_report_error(
        report(str(tmp_path)), f"{tmp_path / output} is a folder", "move it out of the way"
    )


# --- the real command -----------------------------------------------------------------------


def test_the_real_command_refuses_a_bad_setting_in_seconds(tmp_path):
    """A new interpreter, as a user runs it; the settings are checked before Avalanche loads."""
    cmd = [sys.executable, "-m", "csl_avalanche.run", f"hydra.run.dir={tmp_path / 'run'}"]
    start = time.perf_counter()
    proc = subprocess.run(
        [*cmd, "strategy.epochs=abc"], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    seconds = time.perf_counter() - start
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "error: strategy.epochs must be a whole number >= 1, got 'abc'"
    ]
    assert "avalanche" not in proc.stderr
    print(f"python -m csl_avalanche.run strategy.epochs=abc: exit 2 after {seconds:.1f} s")


def test_check_settings_is_also_the_library_entry_check(tmp_path):
    """run_experiment checks the settings itself: the Python API refuses what the CLI does."""
    from csl_avalanche.experiments.runner import run_experiment

    with initialize_config_module("csl_avalanche.configs", version_base="1.3"):
        cfg = compose("config", ["strategy.batch_size=0"])
    with pytest.raises(ConfigError, match="strategy.batch_size must be a whole number >= 1"):
        run_experiment(cfg, tmp_path / "run")


def test_assignment_by_class_on_domain_subdomains_is_refused_before_the_ceiling(tmp_path):
    from test_domain_subdomains import domain_feature_set

    path = tmp_path / "domains.pt"
    save_features(domain_feature_set(), path)
    outcome = cli(
        tmp_path / "run",
        "benchmark=features",
        f"data.path={path}",
        "strategy.assignment=class_partition",
        "strategy.batch_size=8",
    )
    assert_clean_error(outcome, "strategy.assignment=class_partition", "input domains", "kl")
    assert "ceiling: training" not in outcome.out + outcome.err


@pytest.mark.parametrize("home", ["read-only", "under-a-file"])
def test_a_home_where_avalanche_cannot_write_its_settings_is_refused(tmp_path, home):
    """Avalanche's import creates ~/.avalanche/config.json, whatever the run's settings."""
    if home == "read-only":
        if os.geteuid() == 0:
            pytest.skip("root writes in a read-only folder: the folder under a file stands in")
        (tmp_path / "home").mkdir(mode=0o555)
        home_dir = tmp_path / "home"
    else:
        (tmp_path / "file").write_text("not a folder")
        home_dir = tmp_path / "file" / "home"
    cmd = [sys.executable, "-m", "csl_avalanche.run", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(
        [*cmd, f"cache_dir={tmp_path / 'cache'}", "progress=false"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        env={**os.environ, "HOME": str(home_dir), "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert line.startswith(f"error: Avalanche keeps its settings in {home_dir}/.avalanche/")
    assert "set HOME to a writable folder" in line
