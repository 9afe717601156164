"""How a run's config becomes its Avalanche strategies: the student model, the evaluator and
its loggers, the training settings, and the configured CSL (or weak-to-strong) strategy. Shared
by the levels experiment (`csl_avalanche.experiments.runner`) and the class-incremental one
(`csl_avalanche.experiments.class_incremental`)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.logging import TensorboardLogger, TextLogger
from avalanche.training.plugins import EvaluationPlugin
from omegaconf import DictConfig, OmegaConf

from csl_avalanche import distributed
from csl_avalanche.benchmarks.streams import CSLBenchmark
from csl_avalanche.evaluation.metrics import LevelStatisticsMetric
from csl_avalanche.models.factories import linear_probe
from csl_avalanche.models.registry import image_student
from csl_avalanche.strategies import CSLStrategy, WeakToStrong
from csl_avalanche.training.plugins.continual import build_continual_plugins
from csl_avalanche.training.plugins.divergence import DivergencePlugin
from csl_avalanche.training.plugins.progress import EpochProgressPlugin

STRATEGIES = {"csl": CSLStrategy, "w2s": WeakToStrong}
STREAM_ACCURACY = "Top1_Acc_Stream/eval_phase/test_stream"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch: same config and seed, same numbers."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def student_model(cfg: DictConfig, benchmark: CSLBenchmark) -> torch.nn.Module:
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


def make_evaluator(cfg: DictConfig, log_dir: Path, *extra_metrics) -> EvaluationPlugin:
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


def training_kwargs(cfg: DictConfig, device: torch.device) -> dict:
    """What every student trains with, the ceiling included: Adam's rate, epochs, batch size,
    the seed of its batch order, and the device."""
    s = cfg.strategy
    return {
        "lr": s.lr,
        "epochs": s.epochs,
        "batch_size": s.batch_size,
        "seed": int(cfg.seed),
        "device": device,
    }


def loss_kwargs(cfg: DictConfig) -> dict:
    """The student's training loss: for the configured strategy, never the ceiling (PGR's
    reference stays the student on ground truth with plain cross-entropy)."""
    s = cfg.strategy
    return {"loss": s.loss, "logconf_alpha": s.logconf_alpha, "logconf_warmup": s.logconf_warmup}


def run_plugins(cfg: DictConfig, name: str) -> list:
    """The divergence check, and a progress bar if asked for."""
    advice = f"use a lower strategy.lr (now {cfg.strategy.lr:g})"
    if cfg.plugins and name != "ceiling":
        advice += f", or check the settings of plugins {', '.join(cfg.plugins)}"
    plugins = [DivergencePlugin(name, advice)]
    if cfg.progress and distributed.is_main():
        plugins.append(EpochProgressPlugin(name))
    return plugins


def make_strategy(
    cfg: DictConfig,
    benchmark: CSLBenchmark,
    device: torch.device,
    run_dir: Path,
    *metrics: PluginMetric,
    log_name: str | None = None,
) -> CSLStrategy:
    """The configured strategy, evaluated with `metrics` (and the co-supervision statistics);
    it logs to tb/<log_name>, by default tb/<strategy name>."""
    s = cfg.strategy
    plugins = run_plugins(cfg, s.name) + build_continual_plugins(
        OmegaConf.to_container(cfg.plugins)
    )
    return STRATEGIES[s.name](
        model=student_model(cfg, benchmark),
        features=benchmark.features,
        assignment=s.assignment,
        labels=s.labels,
        denoise=s.denoise,
        scale_epochs=s.scale_epochs,
        chunk_size=s.get("chunk_size"),
        reassign_every=s.get("reassign_every"),
        reinit_student=s.reinit_student,
        evaluator=make_evaluator(
            cfg,
            run_dir / "tb" / (log_name or s.name),
            *metrics,
            LevelStatisticsMetric(),
        ),
        plugins=plugins,
        **loss_kwargs(cfg),
        **training_kwargs(cfg, device),
    )


def subdomain_accuracy(metrics: dict, benchmark: CSLBenchmark) -> dict[str, float]:
    """Each finest subdomain's test accuracy, by name, from an evaluation's metrics."""
    prefix = "Top1_Acc_Exp/eval_phase/test_stream/Exp"
    return {
        name: metrics[f"{prefix}{index:03d}"]
        for index, name in enumerate(benchmark.subdomain_names())
    }
