"""What one E-step and selection did at one level: the co-supervision statistics that the
plugin records, the metrics log and results.json holds."""

from __future__ import annotations

from dataclasses import asdict, dataclass


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
    estep_seconds: float  # every pass of the E-step in the level, together
    # `reassign_every`: each later pass's statistics (its epoch, keep rate, label precision and
    # recall, assignment and teacher accuracy), in order; the fields above are the first pass's.
    reassignments: tuple[dict, ...] = ()
    # `assignment=learned`: the teacher weights [S][K] after each epoch, in order (absent from
    # as_dict for every other rule).
    teacher_weights: tuple[list, ...] = ()

    def as_dict(self) -> dict:
        values = asdict(self)
        if not self.teacher_weights:
            del values["teacher_weights"]
        return values


# What each reassignment records of its pass (besides its epoch).
PASS_FIELDS = (
    "keep_rate",
    "label_precision",
    "label_recall",
    "assignment_accuracy",
    "teacher_accuracy",
)
