"""The weak-to-strong baselines that CSL is measured against."""

from __future__ import annotations

from csl_avalanche.strategies.csl import CSLStrategy
from csl_avalanche.strategies.student import StudentTemplate


class WeakToStrong(CSLStrategy):
    """Burns et al.'s weak-to-strong: the student on the level-0 generalist's labels only (level
    0 of the levels stream; the first phase of each class-incremental arrival)."""

    routes = False


class GroundTruthCeiling(StudentTemplate):
    """The same student with the same budget on the pool's ground truth: PGR's ceiling.

    Train it on `benchmark.ceiling_stream`, or, as the class-incremental diagnostic, on an
    arrival benchmark's `ground_truth_stream`: the only streams whose labels are ground truth.
    The ceiling trains with plain cross-entropy; the diagnostic with the configured loss.
    """

    def __init__(self, **kwargs):
        super().__init__(labels="hard", reinit_student=False, **kwargs)
