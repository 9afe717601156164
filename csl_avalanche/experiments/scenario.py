"""What a scenario is: how the student is trained and evaluated once the weak accuracy and the
ceiling are known. The runner (`experiments.runner`) owns everything the scenarios share (the
settings, the features, weak accuracy, ceiling, resume, results.json); a scenario owns its
stream, its units of work (what `RunProgress` counts) and its part of results.json. Neither
scenario imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from csl_avalanche.benchmarks.features import FeatureSet
from csl_avalanche.benchmarks.streams import CSLBenchmark
from csl_avalanche.core.cosupervision import pgr, pgr_note
from csl_avalanche.evaluation.metrics import PGRMetric
from csl_avalanche.experiments.resume import RunProgress
from csl_avalanche.experiments.schema import RunSettings


@dataclass(frozen=True)
class Reference:
    """What PGR is measured against: the weak (level-0 generalist) and ceiling accuracies, the
    ceiling's training steps, and the classes without a pool sample."""

    weak: float
    ceiling: float
    ceiling_steps: int
    missing_classes: list[int]

    def pgr_entry(self, accuracy: float, student_steps: int) -> dict:
        """`pgr` of `accuracy`, or null with `pgr_note` (the reason) where PGR would not mean
        what it says."""
        note = pgr_note(
            self.weak,
            self.ceiling,
            missing_classes=self.missing_classes,
            ceiling_steps=self.ceiling_steps,
            student_steps=student_steps,
        )
        if note:
            return {"pgr": None, "pgr_note": note}
        return {"pgr": pgr(accuracy, self.weak, self.ceiling)}

    def metric(self) -> PGRMetric:
        """The Avalanche metric that logs PGR against this reference at every evaluation."""
        return PGRMetric(
            self.weak,
            self.ceiling,
            missing_classes=self.missing_classes,
            ceiling_steps=self.ceiling_steps,
        )


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
