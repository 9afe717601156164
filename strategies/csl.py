"""Co-Supervised Learning as an Avalanche strategy: one experience per hierarchy level."""

from __future__ import annotations

from csl_avalanche.data.features import FeatureSet
from csl_avalanche.plugins.cosupervision import CoSupervisionPlugin, LevelStatistics
from csl_avalanche.strategies.student import StudentTemplate


class CSLStrategy(StudentTemplate):
    """The student trained coarse to fine; a CoSupervisionPlugin relabels and filters each level.

    Train it on `benchmark.train_stream` one level at a time (the first `max_levels` levels;
    None: all). `assignment`, `denoise` and `scale_epochs` go to the plugin; the rest to
    StudentTemplate.
    """

    max_levels: int | None = None

    def __init__(
        self,
        *,
        features: FeatureSet,
        assignment: str = "class_partition",
        denoise: str = "top3",
        scale_epochs: bool = True,
        labels: str = "hard",
        plugins: list | None = None,
        **kwargs,
    ):
        self.cosupervision = CoSupervisionPlugin(
            features,
            assignment=assignment,
            labels=labels,
            denoise=denoise,
            scale_epochs=scale_epochs,
        )
        # The E-step must see the previous student before any other plugin acts on the level.
        super().__init__(labels=labels, plugins=[self.cosupervision, *(plugins or [])], **kwargs)

    @property
    def level_statistics(self) -> list[LevelStatistics]:
        return self.cosupervision.stats

    def levels(self, stream) -> list:
        """The experiences of `stream` (a CSL train stream) that this strategy trains on."""
        return list(stream)[: self.max_levels]

    def train(self, experiences, eval_streams=None, **kwargs):
        batch = experiences if isinstance(experiences, list | tuple) else [experiences]
        for experience in batch:
            if self.max_levels is not None and experience.level >= self.max_levels:
                raise ValueError(
                    f"{type(self).__name__} trains on the first {self.max_levels} level(s) only, "
                    f"got level {experience.level}"
                )
        return super().train(experiences, eval_streams, **kwargs)
