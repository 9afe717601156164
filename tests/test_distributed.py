"""Data-parallel runs under torchrun: the sharding arithmetic, and 2-process gloo runs on CPU
that must match one process and write one set of outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import rank_checks
import torch
from avalanche.core import SupervisedPlugin
from conftest import REPO, cli, features_from_config, make_feature_set
from hydra import compose, initialize_config_module
from results_checks import check_against_cached_features, compose_config
from test_image_benchmarks import TINY, write_class_tree

from csl_avalanche.benchmarks.features import save_features
from csl_avalanche.core.errors import ConfigError
from csl_avalanche.distributed import shard_rows
from csl_avalanche.experiments.launch import quiet
from csl_avalanche.storage.cache import TensorCache
from csl_avalanche.storage.shared_cache import Sharded, SharedTensorCache
from csl_avalanche.training.loader import InMemoryBatchLoader, rank_share


def test_shard_rows_cover_every_row_once_in_rank_order():
    for n, size in [(10, 3), (7, 2), (2, 4), (0, 2)]:
        blocks = [list(range(n))[shard_rows(n, r, size)] for r in range(size)]
        assert sum(blocks, []) == list(range(n))
        assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


def test_rank_share_weights_make_the_ranks_step_one_process_step():
    batch = torch.tensor([5, 1, 9, 3, 7, 0, 2])
    shares = [rank_share(batch, r, 3) for r in range(3)]
    assert [s.tolist() for s, _ in shares] == [[5, 3, 2], [1, 7], [9, 0]]
    assert [w for _, w in shares] == pytest.approx([9 / 7, 6 / 7, 6 / 7])
    # DDP averages the ranks' gradients: the mean of weight * (share's mean loss) must be the
    # batch's mean loss.
    loss = torch.rand(10)
    ranks_mean = sum(w * loss[s].mean() for s, w in shares) / 3
    assert ranks_mean.item() == pytest.approx(loss[batch].mean().item())
    # A last batch smaller than P: the rank left without a sample steps at weight 0.
    assert [(s.tolist(), w) for s, w in (rank_share(batch[:2], r, 3) for r in range(3))] == [
        ([5], 1.5),
        ([1], 1.5),
        ([5], 0.0),
    ]


def test_in_memory_loader_shares_are_one_process_batches(tiny_features):
    from csl_avalanche.benchmarks.streams import labelled_dataset

    n = 45  # not a multiple of the batch nor of the ranks
    dataset = labelled_dataset(tiny_features.train_x[:n], torch.arange(n))

    def batches(rank: int, world_size: int) -> list[list[int]]:
        loader = InMemoryBatchLoader(
            dataset,
            batch_size=8,
            shuffle=True,
            generator=torch.Generator().manual_seed(3),
            rank=rank,
            world_size=world_size,
        )
        assert len(loader) == 6
        return [batch[1].tolist() for batch in loader]

    one = batches(0, 1)
    ranks = [batches(r, 2) for r in range(2)]
    assert all(len(r) == len(one) for r in ranks)  # the same number of steps on every rank
    for step, whole in enumerate(one):
        assert sorted(ranks[0][step] + ranks[1][step]) == sorted(whole)
        assert not set(ranks[0][step]) & set(ranks[1][step])
    assert sorted(sum(one, [])) == list(range(n))


def test_quiet_logging_keeps_the_console_handler_of_hydras_job_logging():
    with initialize_config_module(config_module="csl_avalanche.configs", version_base="1.3"):
        logging = compose(config_name="config", return_hydra_config=True).hydra.job_logging
    assert "file" in logging.handlers
    kept = quiet(logging)
    assert list(kept.handlers) == ["console"] and list(kept.root.handlers) == ["console"]
    assert kept.root.level == "WARNING"


def test_sharded_computation_in_one_process_is_the_whole(tmp_path):
    x = torch.arange(12.0).view(6, 2)
    sharded = Sharded(lambda rows: {"a": x[rows(len(x))] * 2}, dim=0, size=len(x))
    cache = SharedTensorCache(tmp_path)
    value = cache.get_or_compute("doubled", "key", sharded)
    assert torch.equal(value["a"], x * 2) and cache.misses == 1
    again = TensorCache(tmp_path).get_or_compute("doubled", "key", sharded)
    assert torch.equal(again["a"], x * 2)


# -- 2-process runs (torchrun, gloo on CPU) --------------------------------------------------


def torchrun(run_dir: Path, *overrides: str, cache_dir: Path) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node=2 -m csl_avalanche.run ...` on CPU."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "csl_avalanche.run",
        f"hydra.run.dir={run_dir}",
        f"cache_dir={cache_dir}",
        "progress=false",
        "device=cpu",
        *overrides,
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300, check=False
    )


def distributed_results(run_dir: Path, proc: subprocess.CompletedProcess) -> dict:
    """The 2-process run succeeded and wrote one run's outputs, once."""
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((run_dir / "results.json").read_text())
    assert results["world_size"] == 2
    assert len(list(run_dir.parent.rglob("results.json"))) == 1
    for strategy in ("ceiling", results["config"]["strategy"]["name"]):
        assert len(list((run_dir / "tb" / strategy).glob("events.out.tfevents.*"))) == 1
    assert [p.name for p in run_dir.glob("*.log")] == ["run.log"]
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    # Rank 0 printed the table, with the numbers it wrote.
    last = (results.get("levels") or results["arrivals"])[-1]
    final = last.get("student_accuracy", last.get("accuracy"))
    assert proc.stdout.count("ceiling (ground truth) accuracy") == 1
    assert f"{final:.4f}" in proc.stdout
    return results


def single_process_results(run_dir: Path, *overrides: str, cache_dir: Path) -> dict:
    outcome = cli(run_dir, *overrides, cache_dir=cache_dir)
    assert outcome.code == 0, outcome.err
    return json.loads((run_dir / "results.json").read_text())


# What one process and two must agree on: every number of the run but its timings.
SAME_NUMBERS = (
    "weak_accuracy",
    "ceiling_accuracy",
    "levels",  # each level's accuracies, PGR, keep rate, label statistics and passes
    "arrivals",  # class_incremental: the same for each arrival
    "accuracy_matrix",
    "joint_accuracy",
)


def assert_same_numbers(parallel: dict, single: dict) -> None:
    """Equal, not close: the ranks take one process's steps on one process's batches, and the
    E-step sees one process's evaluation batches, so the kept samples, their labels and every
    accuracy are the same."""
    assert parallel.keys() == single.keys()
    for key in SAME_NUMBERS:
        assert _numbers(parallel.get(key)) == _numbers(single.get(key)), key


def _numbers(value):
    """A results.json entry without the process count each unit records (the one field that
    must differ)."""
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if k != "world_size"}
    return value


def test_ranks_exchange_the_estep_results_in_place_and_equal_one_process(tmp_path, single_threaded):
    """tests/rank_checks.py under torchrun: each rank's E-step results, kept soft targets and
    kept dataset are one process's, bit for bit, and no object the ranks pickle carries them
    (only errors, or none, travel as objects; the soft targets of 512 samples take 64 KB)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*cmd, str(REPO / "tests" / "rank_checks.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"},
        cwd=REPO,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    one = rank_checks.relabelled_level()
    assert 0.2 < one["keep"].float().mean() < 0.8  # the selection chose
    for got in ranks:
        assert got["level"].keys() == one.keys()
        for name, value in one.items():
            if name == "dataset":
                assert all(map(torch.equal, got["level"][name], value))
            else:
                assert torch.equal(got["level"][name], value), name
        assert max(got["objects"]) < 1024
        # share_rows: rank 0's rows 0, 2, 3, 7, 8 and rank 1's 1, 4, 5, 6, 9, on both.
        expected = torch.zeros(10, 3, dtype=torch.float16)
        expected[[0, 2, 3, 7, 8]] = torch.arange(15, dtype=torch.float16).view(5, 3)
        expected[[1, 4, 5, 6, 9]] = torch.arange(15, dtype=torch.float16).view(5, 3) + 100
        assert torch.equal(got["rows"]["values"], expected)
        flags = [True, False, False, True, True, False, False, True, False, True]
        assert got["rows"]["flags"].tolist() == flags
        # share_model: rank 0's BatchNorm statistics everywhere.
        assert got["batchnorm"]["1.running_mean"].tolist() == [1.0] * 4
        assert got["batchnorm"]["1.running_var"].tolist() == [2.0] * 4
    assert all(torch.equal(ranks[0]["batchnorm"][k], v) for k, v in ranks[1]["batchnorm"].items())


def test_two_processes_match_one_on_the_digits_default(tmp_path, single_threaded):
    parallel = distributed_results(
        tmp_path / "p2" / "run", torchrun(tmp_path / "p2" / "run", cache_dir=tmp_path / "cache")
    )
    single = single_process_results(tmp_path / "p1", "device=cpu", cache_dir=tmp_path / "cache")
    assert single["world_size"] == 1
    assert_same_numbers(parallel, single)


def test_two_processes_match_one_with_passes_and_mixtures_on_class_incremental_arrivals(
    tmp_path, single_threaded
):
    """Re-assignment inside every routed phase (and every level of the joint reference), the
    posterior's mixture targets, class-incremental arrivals: each arrival's keep rates, label
    statistics and passes are one process's."""
    path = tmp_path / "features.pt"
    save_features(make_feature_set(noise=1.5), path)
    overrides = [
        "benchmark=features",
        f"data.path={path}",
        "strategy.epochs=3",
        "strategy.lr=0.05",
        "strategy.batch_size=16",
        "scenario=class_incremental",
        "strategy.assignment=posterior",
        "strategy.reassign_every=1",
        "strategy.denoise=top1",
    ]
    run_dir = tmp_path / "p2" / "run"
    parallel = distributed_results(run_dir, torchrun(run_dir, *overrides, cache_dir=tmp_path / "c"))
    single = single_process_results(
        tmp_path / "p1", *overrides, "device=cpu", cache_dir=tmp_path / "c"
    )
    assert all(arrival["reassignments"] for arrival in parallel["arrivals"])  # passes ran
    assert all(0 < arrival["keep_rate"] < 1 for arrival in parallel["arrivals"])
    assert_same_numbers(parallel, single)


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tree") / "data"
    write_class_tree(root, ["apple", "bird", "car", "dog"], per_class=16)
    return root


def test_two_processes_match_one_on_a_tiny_image_benchmark(tmp_path, image_root, single_threaded):
    overrides = ["benchmark=imagefolder", f"data.root={image_root}", *TINY]
    run_dir = tmp_path / "p2" / "run"
    parallel = distributed_results(
        run_dir, torchrun(run_dir, *overrides, cache_dir=tmp_path / "cache2")
    )
    check_against_cached_features(parallel, tmp_path / "cache2", *overrides)
    assert not list((tmp_path / "cache2").glob("*.tmp*"))  # the ranks' blocks are gone
    single = single_process_results(
        tmp_path / "p1", *overrides, "device=cpu", cache_dir=tmp_path / "cache1"
    )
    assert_same_numbers(parallel, single)
    # Each rank extracted a block of the images: joined, they are one process's features.
    cfg = compose_config(*overrides)
    sharded = features_from_config(cfg, store := TensorCache(tmp_path / "cache2"), seed=0)
    whole = features_from_config(cfg, TensorCache(tmp_path / "cache1"), seed=0)
    assert store.misses == 0
    for name in ("train_x", "test_x", "teacher_train_probs", "teacher_test_probs"):
        torch.testing.assert_close(getattr(sharded, name), getattr(whole, name))


def test_two_processes_fine_tune_an_image_student(tmp_path, image_root, single_threaded):
    """DistributedDataParallel through a network with BatchNorm (random augmentation: the
    numbers are not one process's)."""
    overrides = [
        "benchmark=imagefolder",
        f"data.root={image_root}",
        *TINY,
        "student.arch=test_resnet",
        "student.finetune=true",
        "data.image_size=24",
        "strategy.epochs=1",
    ]
    run_dir = tmp_path / "run"
    results = distributed_results(run_dir, torchrun(run_dir, *overrides, cache_dir=tmp_path / "c"))
    assert [lvl["num_teachers"] for lvl in results["levels"]] == [1, 2, 4]
    pixels = torch.load(next((tmp_path / "c").glob("student-pixels-*.pt")), weights_only=True)
    assert pixels["value"].dtype == torch.uint8


def test_two_processes_train_with_the_confidence_loss(tmp_path, single_threaded):
    """The ranks harden the whole global batch, as one process does (each its share of the
    labels), so the confidence loss gives one process's numbers too."""
    path = tmp_path / "features.pt"
    save_features(make_feature_set(noise=1.5), path)
    overrides = [
        "benchmark=features",
        f"data.path={path}",
        "strategy.epochs=3",
        "strategy.lr=0.05",
        "strategy.batch_size=15",  # 240 samples: 16 batches, each shared 8 | 7
        "strategy.loss=logconf",
    ]
    run_dir = tmp_path / "run"
    results = distributed_results(run_dir, torchrun(run_dir, *overrides, cache_dir=tmp_path / "c"))
    assert results["config"]["strategy"]["loss"] == "logconf"
    single = single_process_results(
        tmp_path / "p1", *overrides, "device=cpu", cache_dir=tmp_path / "c"
    )
    assert_same_numbers(results, single)


def test_an_unreadable_image_in_one_ranks_block_stops_both_ranks(tmp_path):
    root = tmp_path / "data"
    write_class_tree(root, ["apple", "dog"], per_class=12)
    for image in (root / "dog").iterdir():  # the pool's second half: rank 1's block
        image.write_bytes(b"not an image")
    run_dir = tmp_path / "run"
    proc = torchrun(
        run_dir,
        "benchmark=imagefolder",
        f"data.root={root}",
        "benchmark.teachers_per_level=[1,2]",
        *TINY,
        cache_dir=tmp_path / "cache",
    )
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr  # rank 1 found it, rank 0 was told and reports it
    assert all("cannot read image" in line and "/dog/" in line for line in errors)
    assert not (run_dir / "results.json").exists()


class DataParallelPlugin(SupervisedPlugin, supports_distributed=True):
    """A user's plugin that declares, as Avalanche's do, that it runs data-parallel."""


def test_plugins_that_cannot_run_data_parallel_are_refused_by_class_with_several_processes(
    monkeypatch,
):
    from csl_avalanche import distributed
    from csl_avalanche.training.plugins.continual import distributed_refusal, plugin_spec

    def refusals(**targets):
        specs = {name: plugin_spec(name, {"_target_": target}) for name, target in targets.items()}
        return {name: why for name, spec in specs.items() if (why := distributed_refusal(spec))}

    plugins = "avalanche.training.plugins."
    found = refusals(
        replay=plugins + "ReplayPlugin",  # declares it, but its loader's batches are per process
        mas=plugins + "MASPlugin",  # does not declare it
        mine=f"{__name__}.DataParallelPlugin",
    )
    assert set(found) == {"replay", "mas"}
    assert "per process" in found["replay"] and "supports_distributed" in found["mas"]
    distributed.check_world(found)  # one process: fine
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    distributed.check_world({})
    with pytest.raises(ConfigError, match=r"not supported under torchrun: replay: its loader"):
        distributed.check_world({"replay": found["replay"]})


def test_gpu_check_says_it_needs_cuda():
    script = REPO / "benchmarks" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    if torch.cuda.is_available():
        pytest.skip("CUDA is present: run the script itself")
    proc = subprocess.run(
        ["bash", str(script)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: gpu_check.sh needs a CUDA device")
