"""Avalanche metrics for weak-to-strong learning.

Per-subdomain accuracy is Avalanche's own experience accuracy on the test stream (one
experience per finest subdomain). These add PGR, per-subdomain forgetting, the
class-incremental summaries and the co-supervision statistics; values are Python floats
(TensorboardLogger drops numpy scalars and logs 0-d tensors as histograms), and per-level values
are plotted against the number of experiences trained so far (in the levels scenario, levels).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import fields

from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue
from avalanche.evaluation.metrics import Accuracy

from csl_avalanche.core.cosupervision import pgr, pgr_note
from csl_avalanche.core.forgetting import (
    average_accuracy,
    backward_transfer,
    forgetting,
    forgetting_since_arrival,
)
from csl_avalanche.core.level_statistics import LevelStatistics


class PGRMetric(PluginMetric[float]):
    """Performance gap recovered by the student's accuracy over a whole evaluated stream.

    `weak_accuracy` (the level-0 generalist on the test split) and `ceiling_accuracy` (the
    student trained on ground truth, same budget) are measured in the same run; `val_reference`
    (weak, ceiling) holds the same two on the validation split, where there is one. A stream
    is measured against its own split's pair: the test stream against the test accuracies, the
    `val` stream against `val_reference`; another stream logs nothing. Where PGR would not mean
    what it says (`cosupervision.pgr_note`: no gap, a class without pool samples, no training
    step) it logs nothing; results.json says why.
    """

    def __init__(
        self,
        weak_accuracy: float,
        ceiling_accuracy: float,
        *,
        missing_classes: Sequence[int] = (),
        ceiling_steps: int = 1,
        val_reference: tuple[float, float] | None = None,
    ):
        super().__init__()
        self.weak_accuracy = weak_accuracy
        self.ceiling_accuracy = ceiling_accuracy
        self.references = {"test": (weak_accuracy, ceiling_accuracy)}
        if val_reference is not None:
            self.references["val"] = val_reference
        self.missing_classes = tuple(missing_classes)
        self.ceiling_steps = ceiling_steps
        self._accuracy = Accuracy()
        self._stream = "test"
        self._value: float | None = None

    def reset(self) -> None:
        self._accuracy.reset()

    def result(self) -> float | None:
        """The last evaluation's PGR; None where it would not mean what it says."""
        return self._value

    def before_eval(self, strategy) -> None:
        self.reset()

    def after_eval_iteration(self, strategy) -> None:
        self._accuracy.update(strategy.mb_output, strategy.mb_y)

    def after_eval_exp(self, strategy) -> None:
        self._stream = strategy.experience.origin_stream.name

    def after_eval(self, strategy) -> list[MetricValue]:
        if self._stream not in self.references:
            self._value = None
            return []
        weak, ceiling = self.references[self._stream]
        note = pgr_note(
            weak,
            ceiling,
            missing_classes=self.missing_classes,
            ceiling_steps=self.ceiling_steps,
            student_steps=strategy.clock.train_exp_iterations,
        )
        accuracy = self._accuracy.result()
        self._value = None if note else pgr(accuracy, weak, ceiling)
        if self._value is None:
            return []
        name = f"PGR/eval_phase/{self._stream}_stream"
        return [MetricValue(self, name, self._value, strategy.clock.train_exp_counter)]

    def __str__(self) -> str:
        return "PGR"


class SubdomainForgettingMetric(PluginMetric[dict]):
    """Per-subdomain forgetting of the student across levels.

    `accuracy_matrix` holds one row of per-subdomain accuracies (the test stream: one experience
    per finest subdomain, named by `subdomain_names`) per trained level, keyed by that level:
    the experience's `stage` (its level, or its arrival), or for other experiences the number
    trained before it. A full evaluation of the test stream while a level trains, or after it,
    sets that level's row, so the last one before the next level counts: Avalanche's periodic
    evaluation ends each level with one, as does `strategy.eval` after `train`. An evaluation
    in the middle of a level thus never touches an earlier level's row, and one before any
    training adds no row. From the second level on it emits, per subdomain, the best accuracy
    after any earlier level minus the accuracy now, and their mean; `result()` holds the
    latest per-subdomain values.
    """

    def __init__(self, subdomain_names: list[str], stream: str = "test"):
        super().__init__()
        self.subdomain_names = list(subdomain_names)
        self.stream = stream
        self._rows: dict[int, list[float]] = {}  # trained level -> accuracies after it
        self._level: int | None = None  # the level in training, or the last one trained
        self._accuracy: dict[int, Accuracy] = {}

    @property
    def accuracy_matrix(self) -> list[list[float]]:
        """[level][subdomain]: the accuracies after each trained level, in level order."""
        return [self._rows[level] for level in sorted(self._rows)]

    def reset(self) -> None:
        self._accuracy = {}

    def state_dict(self) -> dict:
        """The rows so far and the level in training: what a resumed run must carry on."""
        return {"rows": dict(self._rows), "level": self._level}

    def load_state_dict(self, state: dict) -> None:
        self._rows = dict(state["rows"])
        self._level = state["level"]

    def result(self) -> dict[str, float]:
        if len(self._rows) < 2:
            return {}
        return dict(zip(self.subdomain_names, forgetting(self.accuracy_matrix), strict=True))

    def before_training_exp(self, strategy) -> None:
        experience = strategy.experience
        self._level = getattr(experience, "stage", strategy.clock.train_exp_counter)

    def before_eval(self, strategy) -> None:
        self.reset()

    def after_eval_iteration(self, strategy) -> None:
        if strategy.experience.origin_stream.name == self.stream:
            index = strategy.experience.current_experience
            self._accuracy.setdefault(index, Accuracy()).update(strategy.mb_output, strategy.mb_y)

    def after_eval(self, strategy) -> list[MetricValue]:
        if self._level is None or sorted(self._accuracy) != list(range(len(self.subdomain_names))):
            return []  # before any training, or not a full pass over the test stream
        self._rows[self._level] = [
            float(self._accuracy[i].result()) for i in range(len(self.subdomain_names))
        ]
        return self._emit(strategy.clock.train_exp_counter)

    def _emit(self, step: int) -> list[MetricValue]:
        """The values after a row was recorded: per-subdomain forgetting and its mean."""
        values = self.result()
        if not values:
            return []
        prefix = f"Forgetting_Subdomain/eval_phase/{self.stream}_stream"
        metrics = [
            MetricValue(self, f"{prefix}/{name}", value, step) for name, value in values.items()
        ]
        mean = float(statistics.fmean(values.values()))
        metrics.append(
            MetricValue(self, f"MeanForgetting/eval_phase/{self.stream}_stream", mean, step)
        )
        return metrics

    def __str__(self) -> str:
        return "SubdomainForgetting"


class ArrivalAccuracyMetric(SubdomainForgettingMetric):
    """The class-incremental summaries after every arrival, from the same accuracy matrix.

    `arrived_at[j]` is the arrival (row) that brought subdomain j. Rows are keyed by the
    experiences' `stage`, the arrival; the test stream must be evaluated after every arrival
    (the summaries compare rows by arrival). Emits the average accuracy over the subdomains
    arrived so far, and, for those that arrived earlier, their forgetting since arrival, its
    mean, and the backward transfer (`csl_avalanche.core.forgetting`).
    """

    def __init__(self, subdomain_names: list[str], arrived_at: list[int], stream: str = "test"):
        super().__init__(subdomain_names, stream)
        if sorted(arrived_at) != list(range(len(subdomain_names))):
            raise ValueError(
                f"arrived_at must give each of the {len(subdomain_names)} subdomains its own "
                f"arrival, got {arrived_at}"
            )
        self.arrived_at = list(arrived_at)

    def result(self) -> dict[str, float]:
        """Forgetting since arrival of each subdomain that arrived before the last row."""
        if not self._complete():
            return {}
        values = forgetting_since_arrival(self.accuracy_matrix, self.arrived_at)
        return {
            name: value
            for name, value in zip(self.subdomain_names, values, strict=True)
            if value is not None
        }

    def summary(self) -> dict[str, float | None]:
        """`average_accuracy` over the arrived subdomains, `mean_forgetting` and
        `backward_transfer` over those that arrived earlier (None: none did)."""
        if not self._complete():
            return {}
        forgotten = self.result()
        return {
            "average_accuracy": average_accuracy(self.accuracy_matrix, self.arrived_at),
            "mean_forgetting": statistics.fmean(forgotten.values()) if forgotten else None,
            "backward_transfer": backward_transfer(self.accuracy_matrix, self.arrived_at),
        }

    def _complete(self) -> bool:
        """Rows for arrivals 0 .. t, none missing."""
        return bool(self._rows) and sorted(self._rows) == list(range(len(self._rows)))

    def _emit(self, step: int) -> list[MetricValue]:
        metrics = super()._emit(step)
        summary = self.summary()
        suffix = f"eval_phase/{self.stream}_stream"
        for key, name in (("average_accuracy", "AverageAccuracy"), ("backward_transfer", "BWT")):
            if summary.get(key) is not None:
                metrics.append(MetricValue(self, f"{name}/{suffix}", summary[key], step))
        return metrics


class LevelStatisticsMetric(PluginMetric[dict]):
    """Emits the CoSupervisionPlugin's per-level statistics once the level's data is built."""

    def __init__(self):
        super().__init__()
        self._last: LevelStatistics | None = None

    def reset(self) -> None:
        self._last = None

    def result(self) -> dict:
        return {} if self._last is None else self._last.as_dict()

    def after_train_dataset_adaptation(self, strategy) -> list[MetricValue]:
        self._last = getattr(strategy.experience, "level_statistics", None)
        if self._last is None:
            return []
        values = []
        for field in fields(LevelStatistics):
            value = getattr(self._last, field.name)
            if field.name != "level" and isinstance(value, int | float):
                name = f"CSL/{field.name}/train_stream"
                step = strategy.clock.train_exp_counter  # the experiences trained before it
                values.append(MetricValue(self, name, float(value), step))
        return values

    def __str__(self) -> str:
        return "CSL"


class TeacherWeightsMetric(PluginMetric[dict]):
    """Logs the learned teacher weights (`strategy.assignment=learned`) after each epoch, one
    scalar per subdomain and teacher, `CSL/teacher_weight/exp<stage>/subdomain<s>/teacher<k>`,
    at the training iteration; nothing for any other rule."""

    def __init__(self):
        super().__init__()
        self._last: list | None = None

    def reset(self) -> None:
        self._last = None

    def result(self) -> list | None:
        return self._last

    def after_training_epoch(self, strategy) -> list[MetricValue]:
        self._last = getattr(strategy.experience, "teacher_weights", None)
        if self._last is None:
            return []
        stage, step = strategy.experience.stage, strategy.clock.train_iterations
        return [
            MetricValue(self, f"CSL/teacher_weight/exp{stage}/subdomain{s}/teacher{k}", w, step)
            for s, row in enumerate(self._last)
            for k, w in enumerate(row)
        ]

    def __str__(self) -> str:
        return "CSL_teacher_weights"
