"""What a scenario is: how the student is trained and evaluated once the weak accuracy and the
ceiling are known. The runner (`experiments.runner`) owns everything the scenarios share (the
settings, the features, weak accuracy, ceiling, resume, results.json); a scenario owns its
stream, its units of work (what `RunProgress` counts) and its part of results.json. Neither
scenario imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from csl_avalanche.benchmarks.features import FeatureSet
from csl_avalanche.benchmarks.streams import CSLBenchmark
from csl_avalanche.core.cosupervision import pgr, pgr_note
from csl_avalanche.evaluation.metrics import PGRMetric
from csl_avalanche.experiments.resume import RunProgress
from csl_avalanche.experiments.schema import RunSettings
from csl_avalanche.experiments.strategy_setup import validation_accuracy


@dataclass(frozen=True)
class Reference:
    """What PGR is measured against: the weak (level-0 generalist) and ceiling accuracies, the
    ceiling's training steps, and the classes without a pool sample; `val_weak` and
    `val_ceiling`: the same two accuracies on the validation split (None: no such split)."""

    weak: float
    ceiling: float
    ceiling_steps: int
    missing_classes: list[int]
    val_weak: float | None = None
    val_ceiling: float | None = None

    def pgr_entry(self, accuracy: float, student_steps: int, split: str = "test") -> dict:
        """`pgr` of `accuracy` on `split` (test, or val: the keys are then `val_pgr` and
        `val_pgr_note`), or null with `pgr_note` (the reason) where PGR would not mean what it
        says."""
        weak, ceiling = (self.weak, self.ceiling) if split == "test" else self.val_reference()
        prefix = "" if split == "test" else f"{split}_"
        note = pgr_note(
            weak,
            ceiling,
            missing_classes=self.missing_classes,
            ceiling_steps=self.ceiling_steps,
            student_steps=student_steps,
        )
        if note:
            return {f"{prefix}pgr": None, f"{prefix}pgr_note": note}
        return {f"{prefix}pgr": pgr(accuracy, weak, ceiling)}

    def val_reference(self) -> tuple[float, float] | None:
        """(weak, ceiling) on the validation split, or None without one."""
        return None if self.val_weak is None else (self.val_weak, self.val_ceiling)

    def metric(self) -> PGRMetric:
        """The Avalanche metric that logs PGR against this reference at every evaluation (of
        the test stream, and of the validation stream against the validation accuracies)."""
        return PGRMetric(
            self.weak,
            self.ceiling,
            missing_classes=self.missing_classes,
            ceiling_steps=self.ceiling_steps,
            val_reference=self.val_reference(),
        )

    def validation_entry(self, strategy: Any, stream: Any) -> dict:
        """After a unit's test evaluation: `strategy` evaluated on the validation `stream`,
        as `val_accuracy` and `val_pgr` (or `val_pgr_note`); {} without a validation split."""
        accuracy = validation_accuracy(strategy, stream)
        if accuracy is None:
            return {}
        steps = strategy.clock.train_exp_iterations
        return {"val_accuracy": accuracy, **self.pgr_entry(accuracy, steps, split="val")}

    def validation_summary(self, last: dict, accuracy_key: str) -> dict:
        """results.json's top-level validation and test numbers after the `last` level (or
        arrival), whose test accuracy is under `accuracy_key`; {} without a validation split."""
        if self.val_weak is None:
            return {}
        keys = ("val_accuracy", "val_pgr", "val_pgr_note")
        return {
            "weak_val_accuracy": self.val_weak,
            "ceiling_val_accuracy": self.val_ceiling,
            **{key: last[key] for key in keys if key in last},
            "test_accuracy": last[accuracy_key],
            "test_pgr": last["pgr"],
        }


@dataclass(frozen=True)
class RunContext:
    """Where a scenario trains and writes."""

    settings: RunSettings
    benchmark: CSLBenchmark
    device: torch.device
    run_dir: Path
    progress: RunProgress
    reference: Reference


class Scenario(Protocol):
    """Built from the settings and the features (its stream checked against the data before
    any training); `run` trains the units `context.progress` has not completed, saving each
    as it completes, and returns the scenario's part of results.json."""

    def __init__(self, settings: RunSettings, features: FeatureSet) -> None: ...

    def run(self, context: RunContext) -> dict: ...


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
