"""`python -m csl_avalanche.evaluation.report`: grouping, statistics, plots, on a hand-written
sweep and on a real (small) Hydra multirun over continual mode and plugins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from csl_avalanche.core.errors import ConfigError
from csl_avalanche.evaluation.report import load_variants, main, mean_matrix, write_report

PNG = b"\x89PNG"


def fake_run(seed: int, plugins: dict, pgr: list[float], forgetting: float) -> dict:
    levels = [{"level": i, "student_accuracy": 0.5 + p / 4, "pgr": p} for i, p in enumerate(pgr)]
    levels[-1]["mean_forgetting"] = forgetting
    return {
        "levels": levels,
        "subdomains": ["classes_0-1", "classes_2-3"],
        "accuracy_matrix": [[0.5 + seed / 10, 0.6], [0.7, 0.8]],
        "seed": seed,
        "config": {
            "seed": seed,
            "cache_dir": f"/tmp/cache{seed}",  # not a setting: runs still group together
            "progress": seed == 0,
            "plugins": plugins,
            "strategy": {"name": "csl", "reinit_student": False, "epochs": 20},
        },
    }


@pytest.fixture
def fake_sweep(tmp_path: Path) -> Path:
    runs = [
        fake_run(0, {}, [0.2, 0.4], 0.10),
        fake_run(1, {}, [0.4, 0.6], 0.30),
        fake_run(0, {"replay": {"mem_size": 200}}, [0.3, 0.5], 0.05),
        fake_run(1, {"replay": {"mem_size": 200}}, [0.3, 0.7], 0.05),
        fake_run(2, {"replay": {"mem_size": 200}}, [0.3, 0.9], 0.05),
    ]
    for job, run in enumerate(runs):
        (tmp_path / str(job)).mkdir()
        (tmp_path / str(job) / "results.json").write_text(json.dumps(run))
    return tmp_path


def test_runs_group_by_everything_but_seed_and_paths(fake_sweep):
    variants = load_variants(fake_sweep)
    assert [v.label for v in variants] == ["plugins=[]", "plugins=[replay]"]
    assert [v.seeds for v in variants] == [[0, 1], [0, 1, 2]]


def test_report_table_holds_mean_and_spread_over_seeds(fake_sweep, capsys):
    main([str(fake_sweep)])
    printed = capsys.readouterr().out
    report = (fake_sweep / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| plugins")]
    # PGR L1 of plugins=[]: 0.4 and 0.6 -> 0.5 ± 0.141; final accuracy 0.5 + PGR/4.
    assert rows[0] == (
        "| plugins=[] | 0,1 | 0.625 ± 0.035 | 0.300 ± 0.141 | 0.500 ± 0.141 | 0.200 ± 0.141 |"
    )
    assert rows[1] == (
        "| plugins=[replay] | 0,1,2 | 0.675 ± 0.050 | 0.300 ± 0.000 | 0.700 ± 0.200 "
        "| 0.050 ± 0.000 |"
    )
    assert all(row in printed for row in rows)
    for plot in ("pgr_per_level.png", "accuracy_matrix.png"):
        assert plot in report
        assert (fake_sweep / plot).read_bytes()[:4] == PNG


def test_report_without_runs_says_so(tmp_path):
    with pytest.raises(ConfigError, match="no readable results.json below"):
        write_report(tmp_path)
    assert not (tmp_path / "report.md").exists()


def fake_arrival_run(
    seed: int, plugins: dict, average: list[float], forgetting: float, pgr: float | None
) -> dict:
    return {
        "scenario": "class_incremental",
        "arrivals": [{"arrival": t, "average_accuracy": a} for t, a in enumerate(average)],
        "subdomains": ["classes_0-1", "classes_2-3"],
        "accuracy_matrix": [[0.9, 0.1], [0.9 - forgetting, 0.8]],
        "final_average_accuracy": average[-1],
        "final_mean_forgetting": forgetting,
        "final_backward_transfer": -forgetting,
        "pgr": pgr,
        "joint_accuracy": 0.9,
        "seed": seed,
        "config": {
            "seed": seed,
            "plugins": plugins,
            "scenario": {"name": "class_incremental"},
            "strategy": {"name": "csl", "reinit_student": False},
        },
    }


def write_runs(root: Path, runs: list[dict]) -> Path:
    for job, run in enumerate(runs):
        (root / str(job)).mkdir(parents=True)
        (root / str(job) / "results.json").write_text(json.dumps(run))
    return root


def test_class_incremental_runs_get_their_table_and_plots(tmp_path, capsys):
    root = write_runs(
        tmp_path,
        [
            fake_arrival_run(0, {}, [0.9, 0.5], 0.4, -1.0),
            fake_arrival_run(1, {}, [0.9, 0.7], 0.2, None),
            fake_arrival_run(0, {"replay": {"mem_size": 200}}, [0.9, 0.8], 0.1, 0.5),
        ],
    )
    main([str(root)])
    report = (root / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| plugins")]
    assert rows == [
        "| plugins=[] | 0,1 | 0.600 ± 0.141 | 0.300 ± 0.141 | -0.300 ± 0.141 "
        "| -1.000 ± 0.000 (1 n/a) | 0.900 ± 0.000 |",
        "| plugins=[replay] | 0 | 0.800 ± 0.000 | 0.100 ± 0.000 | -0.100 ± 0.000 "
        "| 0.500 ± 0.000 | 0.900 ± 0.000 |",
    ]
    printed = capsys.readouterr().out
    assert all(row in printed for row in rows)
    for plot in ("average_accuracy.png", "arrival_accuracy_matrix.png"):
        assert plot in report
        assert (root / plot).read_bytes()[:4] == PNG
    assert not (root / "pgr_per_level.png").exists()  # no levels run


def test_a_sweep_of_both_scenarios_reports_each(tmp_path):
    root = write_runs(
        tmp_path,
        [fake_run(0, {}, [0.2, 0.4], 0.1), fake_arrival_run(0, {}, [0.9, 0.6], 0.3, 0.1)],
    )
    tables = write_report(root)
    assert "PGR L1" in tables and "final average accuracy" in tables
    report = (root / "report.md").read_text()
    assert report.index("PGR L1") < report.index("## Class-incremental runs")
    for plot in ("pgr_per_level.png", "accuracy_matrix.png", "average_accuracy.png"):
        assert (root / plot).read_bytes()[:4] == PNG


def test_a_class_incremental_run_without_its_summaries_is_skipped(tmp_path):
    broken = fake_arrival_run(0, {}, [0.9, 0.6], 0.3, 0.1)
    del broken["final_mean_forgetting"]
    root = write_runs(tmp_path, [broken, fake_arrival_run(1, {}, [0.9, 0.6], 0.3, 0.1)])
    warnings = []
    variants = load_variants(root, warn=warnings.append)
    assert [v.seeds for v in variants] == [[1]]
    assert "no final_mean_forgetting (a number or null)" in warnings[0]


def test_multirun_over_continual_mode_and_plugins_then_report(tmp_path):
    """The sweep command of the README, shrunk: Hydra selects several plugins from one group."""
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable, "-m", "csl_avalanche.run", "-m",
        f"hydra.sweep.dir={sweep}", f"cache_dir={tmp_path / 'cache'}", "progress=false",
        "strategy.epochs=2", "strategy.reinit_student=false", "strategy.labels=soft",
        "student.pretrain.steps=100", "teacher.steps=50",  # a cheaper digits benchmark
        "plugins=[],[replay,ewc,lwf]",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    runs = [json.loads((sweep / job / "results.json").read_text()) for job in ("0", "1")]
    assert runs[0]["config"]["plugins"] == {}
    assert list(runs[1]["config"]["plugins"]) == ["replay", "ewc", "lwf"]
    for run in runs:
        names, matrix = run["subdomains"], run["accuracy_matrix"]
        assert len(matrix) == len(run["levels"]) == 3 and all(len(r) == len(names) for r in matrix)
        assert "mean_forgetting" not in run["levels"][0]
        for level, row in zip(run["levels"][1:], matrix[1:], strict=True):
            assert set(level["subdomain_forgetting"]) == set(names)
            assert level["subdomain_accuracy"] == dict(zip(names, row, strict=True))
        assert run["levels"][2]["mean_forgetting"] == pytest.approx(
            sum(run["levels"][2]["subdomain_forgetting"].values()) / len(names)
        )
    events = EventAccumulator(str(sweep / "1" / "tb" / "csl")).Reload()
    assert "MeanForgetting/eval_phase/test_stream" in events.Tags()["scalars"]

    table = write_report(sweep)
    assert "plugins=[]" in table and "plugins=[replay,ewc,lwf]" in table


def test_runs_that_resume_false_moved_aside_are_left_out(tmp_path):
    """`resume=false` moves the old run's files into `<run>/replaced-<time>[-n]/`
    (experiments.resume); the report counts the run in the folder once, not seeds 0,0,0."""
    root = write_runs(tmp_path, [fake_run(0, {}, [0.2, 0.4], 0.1)])
    for aside in ("replaced-20240102-030405", "replaced-20240102-030405-1"):
        (root / "0" / aside).mkdir()
        (root / "0" / aside / "results.json").write_text(json.dumps(fake_run(0, {}, [0.9, 1], 0)))
    warnings = []
    variants = load_variants(root, warn=warnings.append)
    assert [v.seeds for v in variants] == [[0]]
    assert variants[0].pgr(1) == [0.4]
    assert warnings == [
        "left out 2 results.json in replaced-<time> folders: earlier runs that resume=false "
        "moved aside (give such a folder as DIR to report it)"
    ]
    (variant,) = load_variants(root / "0" / "replaced-20240102-030405")  # asked for by name
    assert variant.pgr(0) == [0.9]


def test_a_configuration_and_seed_is_counted_once(tmp_path):
    run = fake_run(0, {}, [0.2, 0.4], 0.1)
    root = write_runs(tmp_path, [run, fake_run(1, {}, [0.4, 0.6], 0.3), run])  # 2 is a copy of 0
    warnings = []
    (variant,) = load_variants(root, warn=warnings.append)
    assert variant.seeds == [0, 1]
    assert warnings == [
        f"skipping {root / '2' / 'results.json'}: it repeats {root / '0' / 'results.json'} "
        "(the same configuration and seed 0); a run counts once"
    ]


def test_settings_that_cannot_change_results_do_not_split_variants(fake_sweep):
    """The E-step's chunk size gives the same results bit for bit (docs/design.md), as do the
    cache folder, progress bars and resume: runs differing only in them are one variant."""
    for job, chunk in enumerate((512, 1024, None, 64, 128)):
        path = fake_sweep / str(job) / "results.json"
        run = json.loads(path.read_text())
        run["config"]["strategy"]["chunk_size"] = chunk
        run["config"]["resume"] = job % 2 == 0
        path.write_text(json.dumps(run))
    variants = load_variants(fake_sweep)
    assert [v.label for v in variants] == ["plugins=[]", "plugins=[replay]"]
    assert [v.seeds for v in variants] == [[0, 1], [0, 1, 2]]


def with_hierarchy(run: dict, groups: list[list[int]]) -> dict:
    """`run` with a hierarchy of one generalist over 4 classes and `groups` below it."""
    names = ["classes_" + ",".join(map(str, group)) for group in groups]
    return {**run, "hierarchy": [[[0, 1, 2, 3]], groups], "subdomains": names}


def test_runs_of_different_hierarchies_average_their_matrices_apart(tmp_path):
    """With benchmark.hierarchy=auto each seed may choose other subdomains: the table averages
    over all seeds (its numbers are of the whole test split or per level), the accuracy matrix
    (one column per subdomain) only over the runs of one hierarchy."""
    split, paired = [[0, 1], [2, 3]], [[0, 2], [1, 3]]
    root = write_runs(
        tmp_path,
        [
            with_hierarchy(fake_run(0, {}, [0.2, 0.4], 0.1), split),
            with_hierarchy(fake_run(1, {}, [0.2, 0.6], 0.1), paired),
            with_hierarchy(fake_run(3, {}, [0.2, 0.8], 0.1), split),
        ],
    )
    warnings = []
    (variant,) = load_variants(root, warn=warnings.append)
    assert warnings == [
        "the runs of 'all runs' differ in subdomains, hierarchy or arrival order (seeds 0,3 | 1): "
        "accuracy_matrix.png averages each group apart"
    ]
    assert variant.pgr(1) == [0.4, 0.6, 0.8]
    groups = variant.matrix_groups()
    assert [[run["seed"] for run in runs] for runs in groups] == [[0, 3], [1]]
    assert mean_matrix(groups[0]) == [pytest.approx([0.65, 0.6]), [0.7, 0.8]]  # seeds 0 and 3
    assert mean_matrix(groups[1]) == [pytest.approx([0.6, 0.6]), [0.7, 0.8]]
    write_report(root)
    assert (root / "accuracy_matrix.png").read_bytes()[:4] == PNG


def test_class_incremental_runs_of_different_arrival_orders_average_their_matrices_apart(tmp_path):
    """An arrival matrix's rows are arrivals: with scenario.order=random they mean other
    subdomains in each seed."""
    runs = [fake_arrival_run(seed, {}, [0.9, 0.6], 0.3, 0.1) for seed in range(3)]
    for run, order in zip(runs, (["a", "b"], ["b", "a"], ["a", "b"]), strict=True):
        run["order"] = order
    warnings = []
    (variant,) = load_variants(write_runs(tmp_path, runs), warn=warnings.append)
    assert len(warnings) == 1
    assert "(seeds 0,2 | 1)" in warnings[0] and "arrival_accuracy_matrix.png" in warnings[0]
    assert [[run["seed"] for run in runs] for runs in variant.matrix_groups()] == [[0, 2], [1]]


def test_a_config_of_any_json_groups_its_runs(tmp_path):
    """The report reads `config` as opaque settings: `plugins` need not be a mapping."""
    root = write_runs(tmp_path, [fake_run(0, {}, [0.2, 0.4], 0.1), fake_run(0, 5, [0.2, 0.4], 0.1)])
    assert [v.label for v in load_variants(root)] == ["plugins=[]", "plugins=5"]


def test_dollar_signs_in_names_and_settings_are_drawn_as_they_are(tmp_path):
    """Matplotlib would parse `$...$` in a label or tick as math, and fail on a bad formula."""
    run = fake_run(0, {}, [0.2, 0.4], 0.1)
    run["subdomains"] = ["price_$\\frac$", "b"]
    other = {**fake_run(0, {}, [0.2, 0.4], 0.1), "config": {**run["config"], "tag": "$^$"}}
    write_report(write_runs(tmp_path, [run, other]))
    for plot in ("pgr_per_level.png", "accuracy_matrix.png"):
        assert (tmp_path / plot).read_bytes()[:4] == PNG


def test_the_mean_of_huge_pgrs_does_not_overflow(tmp_path):
    """PGR divides by the gap between ceiling and weak accuracy, which may be tiny."""
    runs = [fake_run(seed, {}, [0.2, 0.4], 0.1) for seed in range(3)]
    for run, pgr in zip(runs, (1.7e308, 1.7e308, -1.7e308), strict=True):
        run["levels"][0]["pgr"] = pgr
    table = write_report(write_runs(tmp_path, runs))
    assert "| all runs | 0,1,2 | 0.600 ± 0.000 | 56666" in table
    assert "| 0.400 ± 0.000 | 0.100 ± 0.000 |" in table
