"""Co-Supervised Learning as an Avalanche strategy: one experience per hierarchy level (or per
phase of a class-incremental arrival)."""

from __future__ import annotations

from dataclasses import replace

from avalanche.benchmarks.scenarios.generic_scenario import CLExperience

from csl_avalanche.benchmarks.features import FeatureSet
from csl_avalanche.core.level_statistics import LevelStatistics
from csl_avalanche.strategies.student import StudentTemplate
from csl_avalanche.training.plugins.cosupervision import CoSupervisionPlugin
from csl_avalanche.training.plugins.learned_weights import LearnedWeightsPlugin


class CSLStrategy(StudentTemplate):
    """The student trained coarse to fine; a CoSupervisionPlugin relabels and filters each level.

    Train it on `benchmark.train_stream` one experience at a time (`levels(stream)`: those it
    takes; with `routes=False`, only the experiences the student does not route, the
    generalist's). `assignment`, `denoise`, `scale_epochs`, `chunk_size` and `reassign_every`
    go to the plugin; with `assignment="learned"` a LearnedWeightsPlugin (`learned_weights`:
    global or per_subdomain, `weights_lr`) trains the teacher weights; the rest goes to
    StudentTemplate.
    """

    routes: bool = True

    def __init__(
        self,
        *,
        features: FeatureSet,
        assignment: str = "class_partition",
        denoise: str = "top3",
        scale_epochs: bool = True,
        chunk_size: int | None = None,
        reassign_every: int | None = None,
        learned_weights: str = "per_subdomain",
        weights_lr: float = 1.0,
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
            chunk_size=chunk_size,
            reassign_every=reassign_every,
        )
        own = [self.cosupervision]
        if assignment == "learned":
            own.append(LearnedWeightsPlugin(features, mode=learned_weights, lr=weights_lr))
        # The E-step must see the previous student before any other plugin acts on the level.
        super().__init__(labels=labels, plugins=[*own, *(plugins or [])], **kwargs)

    @property
    def level_statistics(self) -> list[LevelStatistics]:
        return self.cosupervision.stats

    def record_teacher_weights(self, history: list) -> None:
        """The learned teacher weights after each epoch of the experience just trained, kept
        with its statistics (so results.json and the checkpoint hold them)."""
        self.cosupervision.stats[-1] = replace(
            self.cosupervision.stats[-1], teacher_weights=tuple(history)
        )

    @classmethod
    def levels(cls, stream) -> list:
        """The experiences of `stream` (a stream of TeacherExperiences) this strategy trains on."""
        return [experience for experience in stream if cls.routes or not experience.routed]

    def train(self, experiences, eval_streams=None, **kwargs):
        """Trains on copies of the experiences (Avalanche's `experience.logging()`, which keeps
        every attribute readable for loggers): the plugin replaces the copy's dataset with the
        kept, relabelled pool, so the benchmark's stream keeps its original datasets and can
        train other strategies, and each level's filtered dataset is freed with the copy."""
        batch = [experiences] if isinstance(experiences, CLExperience) else list(experiences)
        for experience in batch:
            if experience.routed and not self.routes:
                raise ValueError(
                    f"{type(self).__name__} trains on the generalist's labels only, got "
                    f"{experience.label}, which the student routes among "
                    f"{experience.num_teachers} teachers"
                )
        copies = [experience.logging() for experience in batch]
        return super().train(copies, eval_streams, **kwargs)
