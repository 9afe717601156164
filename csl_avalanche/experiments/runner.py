"""One weak-to-strong experiment: weak accuracy, ground-truth ceiling, then the configured
strategy (with the configured anti-forgetting plugins) level by level, evaluated on the test
stream after every level.

A level's `pgr` is null where it would not mean what it says (`cosupervision.pgr_note`: the
ceiling is not above the weak accuracy, a class has no pool samples, or no training step ran);
that level then also holds `pgr_note`, the reason.

Under torchrun (`csl_avalanche.distributed`) every rank runs this same sequence: the cache, the
training steps and the checkpoints are shared out as that module says; only rank 0 writes
TensorBoard logs and results.json, and every rank returns rank 0's results.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

import csl_avalanche.benchmarks.sources  # noqa: F401 - registers the benchmark sources
from csl_avalanche import distributed
from csl_avalanche.benchmarks.features import FeatureSet
from csl_avalanche.benchmarks.registry import build_features
from csl_avalanche.benchmarks.streams import CSLBenchmark, make_csl_benchmark
from csl_avalanche.core.cosupervision import pgr, pgr_note
from csl_avalanche.core.errors import ConfigError, reason
from csl_avalanche.evaluation.metrics import PGRMetric, SubdomainForgettingMetric
from csl_avalanche.experiments.resume import RunProgress
from csl_avalanche.experiments.settings import (
    RESULTS,
    check_against_data,
    check_output_dir,
    check_settings,
)
from csl_avalanche.experiments.strategy_setup import (
    STREAM_ACCURACY,
    make_evaluator,
    make_strategy,
    run_plugins,
    seed_everything,
    student_model,
    subdomain_accuracy,
    training_kwargs,
)
from csl_avalanche.storage.atomic import write_atomically
from csl_avalanche.storage.shared_cache import SharedTensorCache
from csl_avalanche.strategies import GroundTruthCeiling

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """`auto`, `cpu` or `cuda` (check_settings has checked the name) as a torch device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device=cuda was asked for, but torch sees no CUDA device; use device=auto"
        )
    return torch.device(name)


def run_experiment(cfg: DictConfig, run_dir: Path) -> dict:
    """Run the experiment `cfg` describes; write TensorBoard logs and results.json to run_dir.

    Every setting and the run folder are checked first (`csl_avalanche.experiments.settings`), those that
    depend on the data as soon as the features are built: a user error stops it before training.
    After the ceiling and after each level the run folder holds a checkpoint; a rerun in the
    same folder continues after the last completed unit (`csl_avalanche.experiments.resume`).
    """
    check_settings(cfg)
    distributed.check_world(cfg)
    check_output_dir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    progress = RunProgress.open(cfg, run_dir)
    if progress.finished:
        log.info("the run in %s is finished: nothing to do", run_dir)
        return progress.state["results"]
    seed = int(cfg.seed)
    seed_everything(seed)
    device = resolve_device(cfg.device)

    features = build_features(cfg, SharedTensorCache(cfg.cache_dir), seed)
    check_against_data(
        cfg,
        pool_size=len(features.train_y),
        num_levels=features.hierarchy.num_levels,
        by_domain=features.by_domain,
    )
    benchmark = make_csl_benchmark(features)
    incremental = _class_incremental(cfg, features)  # checked against the data before training
    weak = teacher_test_accuracy(benchmark, teacher=0)
    if progress.ceiling is None:
        _run_ceiling(cfg, benchmark, device, run_dir, progress)
    ceiling, ceiling_steps = progress.ceiling["accuracy"], progress.ceiling["steps"]
    missing = missing_classes(features)
    if incremental is not None:
        reference = {"weak": weak, "ceiling": ceiling, "ceiling_steps": ceiling_steps}
        results = incremental.run(
            benchmark, device, run_dir, progress, missing=missing, **reference
        )
        write_results(run_dir / RESULTS, results)
        progress.finish(results)
        return results

    seed_everything(seed)
    forgetting = SubdomainForgettingMetric(benchmark.subdomain_names())
    pgr_metric = PGRMetric(weak, ceiling, missing_classes=missing, ceiling_steps=ceiling_steps)
    strategy = make_strategy(cfg, benchmark, device, run_dir, pgr_metric, forgetting)
    progress.restore(strategy)
    for experience in strategy.levels(benchmark.train_stream)[len(progress.levels) :]:
        log.info("level %d: training (teachers: %d)", experience.level, experience.num_teachers)
        start = time.perf_counter()
        strategy.train(experience, eval_streams=[])
        stats = strategy.level_statistics[-1]
        train_seconds = time.perf_counter() - start - stats.estep_seconds
        steps = strategy.clock.train_exp_iterations
        metrics = strategy.eval(benchmark.test_stream)
        accuracy = metrics[STREAM_ACCURACY]
        note = pgr_note(
            weak, ceiling, missing_classes=missing, ceiling_steps=ceiling_steps, student_steps=steps
        )
        level = {
            "level": experience.level,
            "num_teachers": experience.num_teachers,
            "student_accuracy": accuracy,
            "pgr": None if note else pgr(accuracy, weak, ceiling),
            **({"pgr_note": note} if note else {}),
            "subdomain_accuracy": subdomain_accuracy(metrics, benchmark),
            **{
                k: v
                for k, v in stats.as_dict().items()
                if k not in ("level", "num_teachers", "estep_seconds")
            },
        }
        if subdomain_forgetting := forgetting.result():
            level["subdomain_forgetting"] = subdomain_forgetting
            level["mean_forgetting"] = statistics.fmean(subdomain_forgetting.values())
        progress.save_level(level, train_seconds, strategy)
    results = {
        "scenario": "levels",
        "weak_accuracy": weak,
        "ceiling_accuracy": ceiling,
        "levels": progress.levels,
        "subdomains": benchmark.subdomain_names(),
        **hierarchy_entry(features),
        "accuracy_matrix": forgetting.accuracy_matrix,  # [level][subdomain]
        "timings": {
            "train_seconds": progress.state["train_seconds"],
            "estep_seconds": [s.estep_seconds for s in strategy.level_statistics],
        },
        "seed": seed,
        "device": str(device),
        "world_size": distributed.world_size(),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    distributed.main_only(lambda: write_results(run_dir / RESULTS, results))
    progress.finish(results)
    return distributed.broadcast_object(results)


def _class_incremental(cfg: DictConfig, features: FeatureSet):
    """With scenario=class_incremental, its run (`incremental_experiment.ClassIncrementalRun`,
    whose stream is built and checked against the data now); None in the levels scenario."""
    if OmegaConf.select(cfg, "scenario.name", default="levels") != "class_incremental":
        return None
    from csl_avalanche.experiments.class_incremental import (
        ClassIncrementalRun,  # it imports this module
    )

    return ClassIncrementalRun(cfg, features)


def hierarchy_entry(features: FeatureSet) -> dict:
    """results.json's `hierarchy`, the levels as lists of class (or domain) indices, which
    `benchmark.hierarchy=auto` chose or the config gave; and `hierarchy_names`, the same with
    class names, where the benchmark names its classes."""
    levels = features.hierarchy.as_lists()
    entry: dict = {"hierarchy": levels}
    if features.class_names is not None and not features.by_domain:
        names = features.class_names
        entry["hierarchy_names"] = [[[names[c] for c in group] for group in lvl] for lvl in levels]
    return entry


def missing_classes(features: FeatureSet) -> list[int]:
    """The classes without a single pool sample (the ceiling cannot learn them)."""
    present = set(features.train_y.unique().tolist())
    return [c for c in range(features.num_classes) if c not in present]


def write_results(path: Path, results: dict) -> None:
    """results.json, written atomically. If that fails (a full disk), nothing is lost: every
    level is in the checkpoint, and rerunning the same command writes the file."""
    text = json.dumps(results, indent=2).encode()
    try:
        write_atomically(path, lambda file: file.write(text))
    except OSError as err:
        raise ConfigError(
            f"cannot write {path} ({reason(err)}); the results are kept in the run's "
            "checkpoint: free space and run the same command again to write the file"
        ) from None


def teacher_test_accuracy(benchmark: CSLBenchmark, teacher: int, chunk_size: int = 65536) -> float:
    """Accuracy of one teacher's argmax on the whole test split (teacher 0: the generalist),
    its outputs read `chunk_size` rows at a time."""
    features = benchmark.features
    correct = torch.zeros(())  # float32, as the mean of a float tensor would count
    for start in range(0, len(features.test_y), chunk_size):
        rows = slice(start, start + chunk_size)
        predictions = features.teacher_probs("test", [teacher], rows)[0].argmax(dim=1)
        correct += (predictions == features.test_y[rows]).float().sum()
    return (correct / len(features.test_y)).item()


def _run_ceiling(
    cfg: DictConfig, benchmark: CSLBenchmark, device, run_dir: Path, progress: RunProgress
) -> None:
    """Train the ceiling and record its accuracy and training steps in `progress`."""
    log.info("ceiling: training the student on the pool's ground truth")
    seed_everything(int(cfg.seed))
    strategy = GroundTruthCeiling(
        model=student_model(cfg, benchmark),
        evaluator=make_evaluator(cfg, run_dir / "tb" / "ceiling"),
        plugins=run_plugins(cfg, "ceiling"),
        **training_kwargs(cfg, device),
    )
    strategy.train(benchmark.ceiling_stream[0], eval_streams=[])
    steps = strategy.clock.train_exp_iterations
    accuracy = strategy.eval(benchmark.test_stream)[STREAM_ACCURACY]
    progress.save_ceiling(accuracy, steps, strategy.evaluator)
