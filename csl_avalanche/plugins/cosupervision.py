"""CoSupervisionPlugin: CSL's E-step and noise reduction at the start of every level.

Glue only: the math is in `csl_avalanche.cosupervision`. Each experience is a
`benchmark.TeacherExperience`: a level (the whole pool, the level's teachers), or a phase of a
class-incremental arrival (the arrival's samples, the teachers that have arrived). Before its
dataset is adapted, the plugin runs the previous student over the experience's samples
(batched, on the strategy's device), assigns teachers, builds hard or soft targets, selects the
kept samples, and replaces the experience's dataset with the kept, relabelled samples, so
everything downstream (the loader, replay buffers, EWC's Fisher pass) sees teacher labels only.
The experience is the strategy's copy (CSLStrategy trains on `experience.logging()` copies),
never the benchmark's stream.

Ground truth: only the `oracle` rule is given the pool's true classes (or domains); the level's
diagnostics (LevelStatistics) read them separately, after the labels are fixed.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
from avalanche.core import SupervisedPlugin

from csl_avalanche import cosupervision as cs
from csl_avalanche.benchmark import labelled_dataset, teacher_outputs
from csl_avalanche.data.features import FeatureSet
from csl_avalanche.errors import ConfigError
from csl_avalanche.fit import predict


@dataclass(frozen=True)
class LevelStatistics:
    """What the E-step and the selection did at one level (ground truth used only here)."""

    level: int  # the experience's stage: its level, or its arrival
    num_teachers: int
    keep_rate: float
    label_precision: float  # of the kept set: fraction whose assigned label is correct
    label_recall: float  # of the correctly labelled samples: fraction kept
    assignment_accuracy: float | None  # agreement with the oracle assignment (None: ensemble)
    teacher_accuracy: float  # accuracy of the assigned labels over the experience's samples
    epochs: int
    estep_seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


class CoSupervisionPlugin(SupervisedPlugin, supports_distributed=True):
    """Relabels and filters each level's pool; `stats` holds one LevelStatistics per level.

    assignment: a rule of `cosupervision.assign_teachers`, or `ensemble` (the mean of the
    level's teachers). labels: `hard` or `soft`. denoise: `all` or `topK`; an experience the
    student does not route (level 0) is never filtered. scale_epochs: train int(E / keep_rate)
    epochs so the steps per level stay equal.
    """

    def __init__(
        self,
        features: FeatureSet,
        *,
        assignment: str = "class_partition",
        labels: str = "hard",
        denoise: str = "top3",
        scale_epochs: bool = True,
    ):
        super().__init__()
        if assignment not in cs.TARGET_RULES:
            raise ConfigError(
                f"unknown strategy.assignment {assignment!r}; choose one of {cs.TARGET_RULES}"
            )
        if labels not in cs.LABEL_KINDS:
            raise ConfigError(f"unknown strategy.labels {labels!r}; choose one of {cs.LABEL_KINDS}")
        try:
            cs.topk_of(denoise)  # validates the criterion now rather than at level 1
        except ValueError as err:
            raise ConfigError(f"strategy.denoise: {err}") from None
        if fault := cs.assignment_fault(assignment, by_domain=features.by_domain):
            raise ConfigError(fault)
        self.features = features
        self.assignment = assignment
        self.labels = labels
        self.denoise = denoise
        self.scale_epochs = scale_epochs
        self.stats: list[LevelStatistics] = []

    def state_dict(self) -> dict:
        """The statistics of the levels done so far: what a resumed run must carry on."""
        return {"stats": [stats.as_dict() for stats in self.stats]}

    def load_state_dict(self, state: dict) -> None:
        self.stats = [LevelStatistics(**stats) for stats in state["stats"]]

    def before_train_dataset_adaptation(self, strategy, **kwargs) -> None:
        experience = strategy.experience  # a TeacherExperience: its teachers, owners, samples
        start = time.perf_counter()
        device = strategy.device
        rows = experience.samples
        x = self.features.train_x if rows is None else self.features.train_x[rows]
        probs = teacher_outputs(self.features.teacher_train_probs, experience.teachers, rows)
        probs = probs.to(device).permute(1, 0, 2)  # [N, K, C]
        owner = experience.owner.to(device)  # unit -> teacher

        if not experience.routed:
            assignment = torch.zeros(probs.shape[0], dtype=torch.long, device=device)
            logits = None
        else:
            logits = predict(strategy.model, x, batch_size=strategy.eval_mb_size)
            assignment = self._assign(logits, probs, owner, self._oracle_units(rows, device))
        target_probs = (
            probs.mean(dim=1) if assignment is None else cs.gather_targets(probs, assignment)
        )
        hard, targets = cs.make_targets(target_probs, self.labels)
        if logits is None:
            keep = torch.ones_like(hard, dtype=torch.bool)
        else:
            keep = cs.select_confident(logits, hard, self.denoise)
        keep_rate = keep.float().mean().item()
        self._check_enough(keep, strategy.train_mb_size, experience.label)

        epochs = strategy.base_epochs
        if self.scale_epochs:
            epochs = cs.scaled_epochs(epochs, keep_rate)
        strategy.train_epochs = epochs
        kept = keep.nonzero().flatten()
        experience.dataset = labelled_dataset(
            x[kept.cpu()],
            hard[kept].cpu(),
            None if targets is None else targets[kept].cpu(),
        )
        stats = self._statistics(
            experience.stage, probs.shape[1], hard, keep, assignment, owner, epochs, start, rows
        )
        self.stats.append(stats)
        experience.level_statistics = stats

    def _oracle_units(self, rows: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
        """The true units (classes, or domains) of the pool rows `rows` (None: all) for the
        `oracle` rule; None for every other rule, so that no student-facing label can depend on
        ground truth."""
        if self.assignment != "oracle":
            return None
        return _of_rows(self.features.units("train"), rows).to(device)

    def _statistics(
        self,
        level: int,
        num_teachers: int,
        hard: torch.Tensor,
        keep: torch.Tensor,
        assignment: torch.Tensor | None,
        owner: torch.Tensor,
        epochs: int,
        start: float,
        rows: torch.Tensor | None,
    ) -> LevelStatistics:
        """The level's diagnostics: besides the oracle rule, the only reader of the pool's
        ground truth; they describe the labels once fixed and never change them."""
        truth = _of_rows(self.features.train_y, rows).to(hard.device)
        units = _of_rows(self.features.units("train"), rows).to(hard.device)
        correct = hard == truth
        return LevelStatistics(
            level=level,
            num_teachers=num_teachers,
            keep_rate=keep.float().mean().item(),
            label_precision=correct[keep].float().mean().item(),
            label_recall=(correct & keep).sum().item() / max(1, correct.sum().item()),
            assignment_accuracy=(
                None if assignment is None else (assignment == owner[units]).float().mean().item()
            ),
            teacher_accuracy=correct.float().mean().item(),
            epochs=epochs,
            estep_seconds=time.perf_counter() - start,
        )

    def _assign(self, logits, probs, owner, oracle_units) -> torch.Tensor | None:
        """`owner` maps each unit (class, or domain) to its teacher; `oracle_units` [N] is each
        sample's true unit, given for the `oracle` rule only (None otherwise)."""
        if self.assignment == "ensemble":
            return None
        return cs.assign_teachers(
            logits, probs, self.assignment, class_to_teacher=owner, targets=oracle_units
        )

    def _check_enough(self, keep: torch.Tensor, batch_size: int, label: str) -> None:
        kept = int(keep.sum())
        if kept < batch_size:
            raise ConfigError(
                f"{label}: denoising criterion {self.denoise!r} kept {kept} of "
                f"{len(keep)} samples (keep rate {kept / len(keep):.3f}), fewer than one batch "
                f"of {batch_size}; use a looser criterion (a larger topK, or all) or a smaller "
                "strategy.batch_size"
            )


def _of_rows(values: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    return values if rows is None else values[rows]
