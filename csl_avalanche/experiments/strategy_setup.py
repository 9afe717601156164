"""How a run's settings become its Avalanche strategies: the student model, the evaluator and
its loggers, the training settings, and the configured CSL (or weak-to-strong) strategy. Shared
by the scenarios (`experiments.levels`, `experiments.class_incremental`) and the runner."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics
from avalanche.training.plugins import EvaluationPlugin

from csl_avalanche import distributed
from csl_avalanche.benchmarks.streams import CSLBenchmark
from csl_avalanche.evaluation.metrics import LevelStatisticsMetric, TeacherWeightsMetric
from csl_avalanche.experiments.loggers import CSV, make_loggers
from csl_avalanche.experiments.schema import RunSettings
from csl_avalanche.models.factories import linear_probe
from csl_avalanche.models.registry import image_student
from csl_avalanche.strategies import CSLStrategy, WeakToStrong
from csl_avalanche.training.plugins.continual import build_continual_plugins
from csl_avalanche.training.plugins.divergence import DivergencePlugin
from csl_avalanche.training.plugins.progress import EpochProgressPlugin

STRATEGIES = {"csl": CSLStrategy, "w2s": WeakToStrong}
STREAM_ACCURACY = "Top1_Acc_Stream/eval_phase/test_stream"
VAL_ACCURACY = "Top1_Acc_Stream/eval_phase/val_stream"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch: same config and seed, same numbers."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def student_model(settings: RunSettings, benchmark: CSLBenchmark) -> torch.nn.Module:
    """A linear probe on cached embeddings; with images (`student.finetune=true`), the whole
    `student.arch` network, augmenting and normalising its inputs itself."""
    features = benchmark.features
    if not features.holds_images:
        return linear_probe(features.train_x.shape[1], features.num_classes)
    student = settings.source.student
    return image_student(
        student.arch,
        num_classes=features.num_classes,
        image_size=features.train_x.shape[-1],
        pretrained=student.pretrained,
        checkpoint=student.checkpoint,
    )


def make_evaluator(
    settings: RunSettings, run_dir: Path, name: str, *extra_metrics: PluginMetric
) -> EvaluationPlugin:
    """Metrics on every rank, the configured loggers (`experiments.loggers`) of the strategy
    `name` on rank 0 only (Avalanche refuses them elsewhere). The CSV logger's columns also
    need each epoch's accuracy and loss, measured only when it is asked for."""
    csv_columns = [accuracy_metrics(epoch=True), loss_metrics(epoch=True, experience=True)]
    return EvaluationPlugin(
        accuracy_metrics(experience=True, stream=True),
        *(csv_columns if CSV in settings.loggers else []),
        *extra_metrics,
        loggers=make_loggers(settings.loggers, run_dir, name) if distributed.is_main() else [],
    )


def training_kwargs(settings: RunSettings, device: torch.device) -> dict:
    """What every student trains with, the ceiling included: Adam's rate, epochs, batch size,
    the seed of its batch order, and the device."""
    s = settings.strategy
    return {
        "lr": s.lr,
        "epochs": s.epochs,
        "batch_size": s.batch_size,
        "seed": settings.seed,
        "device": device,
    }


def loss_kwargs(settings: RunSettings) -> dict:
    """The student's training loss: for the configured strategy, never the ceiling (PGR's
    reference stays the student on ground truth with plain cross-entropy)."""
    s = settings.strategy
    knobs = {"logconf_alpha": s.logconf_alpha, "logconf_warmup": s.logconf_warmup}
    return {"loss": s.loss, **{k: v for k, v in knobs.items() if v is not None}}


def learned_kwargs(settings: RunSettings) -> dict:
    """The learned teacher weights' knobs that are set (the others keep CSLStrategy's
    defaults)."""
    s = settings.strategy
    knobs = {"learned_weights": s.learned_weights, "weights_lr": s.weights_lr}
    return {k: v for k, v in knobs.items() if v is not None}


def run_plugins(settings: RunSettings, name: str) -> list:
    """The divergence check, and a progress bar if asked for."""
    advice = f"use a lower strategy.lr (now {settings.strategy.lr:g})"
    if settings.plugins and name != "ceiling":
        advice += f", or check the settings of plugins {', '.join(settings.plugins)}"
    plugins = [DivergencePlugin(name, advice)]
    if settings.progress and distributed.is_main():
        plugins.append(EpochProgressPlugin(name))
    return plugins


def make_strategy(
    settings: RunSettings,
    benchmark: CSLBenchmark,
    device: torch.device,
    run_dir: Path,
    *metrics: PluginMetric,
    log_name: str | None = None,
) -> CSLStrategy:
    """The configured strategy, evaluated with `metrics` (and the co-supervision statistics);
    it logs as <log_name> (tb/<log_name>, ...), by default its strategy's name."""
    s = settings.strategy
    plugins = run_plugins(settings, s.name) + build_continual_plugins(settings.plugins)
    return STRATEGIES[s.name](
        model=student_model(settings, benchmark),
        features=benchmark.features,
        assignment=s.assignment,
        labels=s.labels,
        denoise=s.denoise,
        scale_epochs=s.scale_epochs,
        chunk_size=s.chunk_size,
        reassign_every=s.reassign_every,
        **learned_kwargs(settings),
        reinit_student=s.reinit_student,
        evaluator=make_evaluator(
            settings,
            run_dir,
            log_name or s.name,
            *metrics,
            LevelStatisticsMetric(),
            TeacherWeightsMetric(),
        ),
        plugins=plugins,
        **loss_kwargs(settings),
        **training_kwargs(settings, device),
    )


def validation_accuracy(strategy: Any, stream: Any) -> float | None:
    """`strategy`'s accuracy on the validation `stream`; None where there is none."""
    return None if stream is None else strategy.eval(stream)[VAL_ACCURACY]


def subdomain_accuracy(metrics: dict, benchmark: CSLBenchmark) -> dict[str, float]:
    """Each finest subdomain's test accuracy, by name, from an evaluation's metrics."""
    prefix = "Top1_Acc_Exp/eval_phase/test_stream/Exp"
    return {
        name: metrics[f"{prefix}{index:03d}"]
        for index, name in enumerate(benchmark.subdomain_names())
    }
