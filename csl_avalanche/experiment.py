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
import random
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.logging import TensorboardLogger, TextLogger
from avalanche.training.plugins import EvaluationPlugin
from omegaconf import DictConfig, OmegaConf

import csl_avalanche.data  # noqa: F401 - registers the benchmark sources
from csl_avalanche import distributed
from csl_avalanche.atomic import write_atomically
from csl_avalanche.benchmark import CSLBenchmark, make_csl_benchmark
from csl_avalanche.cosupervision import pgr, pgr_note
from csl_avalanche.data.features import FeatureSet
from csl_avalanche.data.registry import build_features
from csl_avalanche.errors import ConfigError, reason
from csl_avalanche.metrics import LevelStatisticsMetric, PGRMetric, SubdomainForgettingMetric
from csl_avalanche.model_registry import image_student
from csl_avalanche.models import linear_probe
from csl_avalanche.plugins.continual import build_continual_plugins
from csl_avalanche.plugins.divergence import DivergencePlugin
from csl_avalanche.plugins.progress import EpochProgressPlugin
from csl_avalanche.resume import RunProgress
from csl_avalanche.settings import (
    RESULTS,
    check_against_data,
    check_output_dir,
    check_settings,
)
from csl_avalanche.shared_cache import SharedTensorCache
from csl_avalanche.strategies import CSLStrategy, GroundTruthCeiling, WeakToStrong

log = logging.getLogger(__name__)
STRATEGIES = {"csl": CSLStrategy, "w2s": WeakToStrong}
STREAM_ACCURACY = "Top1_Acc_Stream/eval_phase/test_stream"


def resolve_device(name: str) -> torch.device:
    """`auto`, `cpu` or `cuda` (check_settings has checked the name) as a torch device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device=cuda was asked for, but torch sees no CUDA device; use device=auto"
        )
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_experiment(cfg: DictConfig, run_dir: Path) -> dict:
    """Run the experiment `cfg` describes; write TensorBoard logs and results.json to run_dir.

    Every setting and the run folder are checked first (`csl_avalanche.settings`), those that
    depend on the data as soon as the features are built: a user error stops it before training.
    After the ceiling and after each level the run folder holds a checkpoint; a rerun in the
    same folder continues after the last completed unit (`csl_avalanche.resume`).
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
    strategy = _make_strategy(cfg, benchmark, device, run_dir, pgr_metric, forgetting)
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
            "subdomain_accuracy": _subdomain_accuracy(metrics, benchmark),
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
    from csl_avalanche.incremental_experiment import ClassIncrementalRun  # it imports this module

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


def _student(cfg: DictConfig, benchmark: CSLBenchmark) -> torch.nn.Module:
    """A linear probe on cached embeddings; with images (`student.finetune=true`), the whole
    `student.arch` network, augmenting and normalising its inputs itself."""
    features = benchmark.features
    if not features.holds_images:
        return linear_probe(features.train_x.shape[1], features.num_classes)
    return image_student(
        cfg.student.arch,
        num_classes=features.num_classes,
        image_size=features.train_x.shape[-1],
        pretrained=bool(cfg.student.get("pretrained")),
        checkpoint=cfg.student.get("checkpoint"),
    )


def _evaluator(cfg: DictConfig, log_dir: Path, *extra_metrics) -> EvaluationPlugin:
    """Metrics on every rank, loggers on rank 0 only (Avalanche refuses them elsewhere)."""
    return EvaluationPlugin(
        accuracy_metrics(experience=True, stream=True),
        *extra_metrics,
        loggers=_loggers(log_dir) if distributed.is_main() else [],
    )


def _loggers(log_dir: Path) -> list:
    log_dir.mkdir(parents=True, exist_ok=True)
    text_log = open(log_dir / "avalanche.log", "a")  # noqa: SIM115 - owned by the logger
    return [TensorboardLogger(tb_log_dir=str(log_dir)), TextLogger(text_log)]


def _common_kwargs(cfg: DictConfig, device: torch.device) -> dict:
    s = cfg.strategy
    return {
        "lr": s.lr,
        "epochs": s.epochs,
        "batch_size": s.batch_size,
        "seed": int(cfg.seed),
        "device": device,
    }


def _loss_kwargs(cfg: DictConfig) -> dict:
    """The student's training loss: for the configured strategy, never the ceiling (PGR's
    reference stays the student on ground truth with plain cross-entropy)."""
    s = cfg.strategy
    return {"loss": s.loss, "logconf_alpha": s.logconf_alpha, "logconf_warmup": s.logconf_warmup}


def _plugins(cfg: DictConfig, name: str) -> list:
    """The divergence check, and a progress bar if asked for."""
    advice = f"use a lower strategy.lr (now {cfg.strategy.lr:g})"
    if cfg.plugins and name != "ceiling":
        advice += f", or check the settings of plugins {', '.join(cfg.plugins)}"
    plugins = [DivergencePlugin(name, advice)]
    if cfg.progress and distributed.is_main():
        plugins.append(EpochProgressPlugin(name))
    return plugins


def _run_ceiling(
    cfg: DictConfig, benchmark: CSLBenchmark, device, run_dir: Path, progress: RunProgress
) -> None:
    """Train the ceiling and record its accuracy and training steps in `progress`."""
    log.info("ceiling: training the student on the pool's ground truth")
    seed_everything(int(cfg.seed))
    strategy = GroundTruthCeiling(
        model=_student(cfg, benchmark),
        evaluator=_evaluator(cfg, run_dir / "tb" / "ceiling"),
        plugins=_plugins(cfg, "ceiling"),
        **_common_kwargs(cfg, device),
    )
    strategy.train(benchmark.ceiling_stream[0], eval_streams=[])
    steps = strategy.clock.train_exp_iterations
    accuracy = strategy.eval(benchmark.test_stream)[STREAM_ACCURACY]
    progress.save_ceiling(accuracy, steps, strategy.evaluator)


def _make_strategy(
    cfg, benchmark, device, run_dir, pgr_metric, forgetting, log_name: str | None = None
) -> CSLStrategy:
    """The configured strategy; it logs to tb/<log_name>, by default tb/<strategy name>."""
    s = cfg.strategy
    plugins = _plugins(cfg, s.name) + build_continual_plugins(OmegaConf.to_container(cfg.plugins))
    return STRATEGIES[s.name](
        model=_student(cfg, benchmark),
        features=benchmark.features,
        assignment=s.assignment,
        labels=s.labels,
        denoise=s.denoise,
        scale_epochs=s.scale_epochs,
        chunk_size=s.get("chunk_size"),
        reassign_every=s.get("reassign_every"),
        reinit_student=s.reinit_student,
        evaluator=_evaluator(
            cfg,
            run_dir / "tb" / (log_name or s.name),
            pgr_metric,
            forgetting,
            LevelStatisticsMetric(),
        ),
        plugins=plugins,
        **_loss_kwargs(cfg),
        **_common_kwargs(cfg, device),
    )


def _subdomain_accuracy(metrics: dict, benchmark: CSLBenchmark) -> dict[str, float]:
    prefix = "Top1_Acc_Exp/eval_phase/test_stream/Exp"
    return {
        name: metrics[f"{prefix}{index:03d}"]
        for index, name in enumerate(benchmark.subdomain_names())
    }
