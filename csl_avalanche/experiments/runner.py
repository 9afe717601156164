"""One weak-to-strong experiment, whatever its scenario: the settings checked, the features
built, the weak accuracy and the ground-truth ceiling measured, then the scenario
(`experiments.levels` or `experiments.class_incremental`) trained, and results.json written.

Under torchrun (`csl_avalanche.distributed`) every rank runs this same sequence: the cache, the
training steps and the checkpoints are shared out as that module says; only rank 0 writes
TensorBoard logs and results.json, and every rank returns rank 0's results.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

import csl_avalanche.benchmarks.sources  # noqa: F401 - registers the benchmark sources
from csl_avalanche import distributed
from csl_avalanche.benchmarks.features import FeatureSet
from csl_avalanche.benchmarks.registry import SourceContext, build_features
from csl_avalanche.benchmarks.streams import CSLBenchmark, make_csl_benchmark
from csl_avalanche.benchmarks.validation import with_validation
from csl_avalanche.core.errors import ConfigError
from csl_avalanche.experiments.checks import (
    RESULTS,
    check_against_data,
    check_output_dir,
    layout_dependence,
)
from csl_avalanche.experiments.class_incremental import ClassIncrementalScenario
from csl_avalanche.experiments.levels import LevelsScenario
from csl_avalanche.experiments.resume import RunProgress, inputs_identity
from csl_avalanche.experiments.scenario import Reference, RunContext, Scenario
from csl_avalanche.experiments.schema import RunSettings, plain_config, read_settings
from csl_avalanche.experiments.strategy_setup import (
    STREAM_ACCURACY,
    make_evaluator,
    run_plugins,
    seed_everything,
    student_model,
    training_kwargs,
    validation_accuracy,
)
from csl_avalanche.storage.atomic import unwritable_because, write_atomically
from csl_avalanche.storage.shared_cache import SharedTensorCache
from csl_avalanche.strategies import GroundTruthCeiling
from csl_avalanche.training.checkpoint import check_resumable
from csl_avalanche.training.plugins.continual import distributed_refusal

log = logging.getLogger(__name__)
SCENARIOS: dict[str, type[Scenario]] = {
    "levels": LevelsScenario,
    "class_incremental": ClassIncrementalScenario,
}


def resolve_device(name: str) -> torch.device:
    """`auto`, `cpu` or `cuda` (the schema has checked the name) as a torch device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device=cuda was asked for, but torch sees no CUDA device; use device=auto"
        )
    return torch.device(name)


def run_experiment(cfg: DictConfig | Mapping[str, Any], run_dir: Path) -> dict:
    """Run the experiment the composed config `cfg` describes; write TensorBoard logs and
    results.json to run_dir.

    Every setting and the run folder are checked first (`experiments.schema`), those that depend
    on the data as soon as the features are built (`experiments.checks`): a user error stops it
    before training. The run folder belongs to this run until it ends. After the ceiling and
    after each unit of the scenario it holds a checkpoint; a rerun in the same folder continues
    after the last completed unit (`experiments.resume`), or, when the run is finished, only
    writes results.json again if it is missing or damaged.
    """
    config = plain_config(cfg)
    settings = read_settings(config)
    distributed.check_world(torchrun_refusals(settings))
    check_output_dir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunProgress.open(config, run_dir, resume=settings.resume) as progress:
        if progress.finished:
            results = progress.state["results"]
            distributed.main_only(lambda: restore_results(run_dir / RESULTS, results))
            log.info("the run in %s is finished: nothing to do", run_dir)
            return results
        return _continue(settings, config, run_dir, progress)


def torchrun_refusals(settings: RunSettings) -> dict[str, str]:
    """The settings a data-parallel run cannot take, each with why."""
    refusals = {
        f"plugins.{name} ({spec.target})": why
        for name, spec in settings.plugins.items()
        if (why := distributed_refusal(spec))
    }
    if settings.strategy.assignment == "learned":
        refusals["strategy.assignment=learned"] = (
            "each rank would step its teacher weights on its own share of the batch"
        )
    return refusals


def _continue(settings: RunSettings, config: dict, run_dir: Path, progress: RunProgress) -> dict:
    """Train what `progress` has not completed, then write results.json."""
    seed_everything(settings.seed)
    device = resolve_device(settings.device)
    progress.check_layout(distributed.world_size(), str(device), layout_dependence(settings))
    if progress.state["strategy"] is not None:  # a unit trained with the plugins
        check_resumable(settings.plugins)

    context = SourceContext(
        cache=SharedTensorCache(settings.cache_dir),
        seed=settings.seed,
        device=settings.device,
        progress=settings.progress,
        cache_dir=Path(settings.cache_dir),
    )
    features = with_validation(
        build_features(settings.source, context),
        settings.source.benchmark.val_fraction,
        settings.seed,
    )
    check_against_data(
        settings,
        pool_size=len(features.train_y),
        num_levels=features.hierarchy.num_levels,
        by_domain=features.by_domain,
    )
    distributed.main_only(lambda: progress.check_inputs(inputs_identity(features)))
    benchmark = make_csl_benchmark(features)
    scenario = SCENARIOS[settings.scenario.name](settings, features)  # checked against the data
    weak = teacher_accuracy(features, "test", teacher=0)
    if progress.ceiling is None:
        _run_ceiling(settings, benchmark, device, run_dir, progress)
    reference = Reference(
        weak=weak,
        ceiling=progress.ceiling["accuracy"],
        ceiling_steps=progress.ceiling["steps"],
        missing_classes=missing_classes(features),
        val_weak=teacher_accuracy(features, "val", 0) if features.has_validation else None,
        val_ceiling=progress.ceiling.get("val_accuracy"),
    )
    scenario_results = scenario.run(
        RunContext(settings, benchmark, device, run_dir, progress, reference)
    )
    results = {
        "scenario": settings.scenario.name,
        "weak_accuracy": weak,
        "ceiling_accuracy": reference.ceiling,
        **scenario_results,
        **reference.validation_summary(*_last_stage(scenario_results)),
        "seed": settings.seed,
        # The ceiling's; each level (arrival) records its own, which differ only in a run
        # resumed with another process count or device.
        "device": progress.ceiling["device"],
        "world_size": progress.ceiling["world_size"],
        "config": config,
    }
    distributed.main_only(lambda: write_results(run_dir / RESULTS, results))
    progress.finish(results)
    return distributed.broadcast_object(results)


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
            f"cannot write {path}: {unwritable_because(err, path)}, then run the same command "
            "again to write the file (the results are kept in the run's checkpoint)"
        ) from None


def restore_results(path: Path, results: dict) -> None:
    """Write results.json again from a finished run's checkpoint where it is missing, does not
    parse, or holds other results; leave an intact one untouched."""
    try:
        intact = json.loads(path.read_text()) == json.loads(json.dumps(results))
    except (OSError, ValueError):  # missing, unreadable, cut off
        intact = False
    if not intact:
        log.info("%s was missing or damaged: written again from the checkpoint", path)
        write_results(path, results)


def _last_stage(scenario_results: dict) -> tuple[dict, str]:
    """The last level (or arrival) of a scenario's results, and the key of its test accuracy."""
    if "arrivals" in scenario_results:
        return scenario_results["arrivals"][-1], "accuracy"
    return scenario_results["levels"][-1], "student_accuracy"


def teacher_accuracy(
    features: FeatureSet, split: str, teacher: int, chunk_size: int = 65536
) -> float:
    """Accuracy of one teacher's argmax on a whole split (test, or val; teacher 0: the
    generalist), its outputs read `chunk_size` rows at a time."""
    labels = getattr(features, f"{split}_y")
    correct = torch.zeros(())  # float32, as the mean of a float tensor would count
    for start in range(0, len(labels), chunk_size):
        rows = slice(start, start + chunk_size)
        predictions = features.teacher_probs(split, [teacher], rows)[0].argmax(dim=1)
        correct += (predictions == labels[rows]).float().sum()
    return (correct / len(labels)).item()


def _run_ceiling(
    settings: RunSettings,
    benchmark: CSLBenchmark,
    device: torch.device,
    run_dir: Path,
    progress: RunProgress,
) -> None:
    """Train the ceiling and record its accuracy and training steps in `progress`."""
    log.info("ceiling: training the student on the pool's ground truth")
    seed_everything(settings.seed)
    strategy = GroundTruthCeiling(
        model=student_model(settings, benchmark),
        evaluator=make_evaluator(settings, run_dir, "ceiling"),
        plugins=run_plugins(settings, "ceiling"),
        **training_kwargs(settings, device),
    )
    strategy.train(benchmark.ceiling_stream[0], eval_streams=[])
    steps = strategy.clock.train_exp_iterations
    accuracy = strategy.eval(benchmark.test_stream)[STREAM_ACCURACY]
    val_accuracy = validation_accuracy(strategy, benchmark.val_stream)
    progress.save_ceiling(accuracy, steps, strategy.evaluator, val_accuracy)
