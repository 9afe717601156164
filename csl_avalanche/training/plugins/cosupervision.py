"""CoSupervisionPlugin: CSL's E-step and noise reduction at the start of every level.

Glue only: the math is in `csl_avalanche.core.cosupervision`, the chunked pass over the pool in
`csl_avalanche.core.estep`. Each experience is a `benchmark.TeacherExperience`: a level (the whole
pool, the level's teachers), or a phase of a class-incremental arrival (the arrival's samples,
the teachers that have arrived). Before its dataset is adapted, the plugin runs the previous
student and the experience's teachers over its samples, a chunk of rows at a time on the
strategy's device, assigns teachers, builds hard or soft targets, selects the kept samples, and
replaces the experience's dataset with the kept, relabelled samples (for a level, rows of the
pool's tensors, not a copy; an arrival's inputs are gathered once per pass), so everything
downstream (the loader, replay buffers, EWC's Fisher pass) sees teacher labels only. The
experience is the strategy's copy (CSLStrategy trains on `experience.logging()` copies), never
the benchmark's stream. Under torchrun each process runs the E-step on its own block of the
samples (whole evaluation batches of the student, so its logits are one process's bit for bit)
and receives the other blocks' results in place (`distributed.share_rows`), so every process
selects the same kept set; the soft targets, [N, C], are shared after the selection and for
the kept samples only, the only ones the training reads (each rank trains on a share of every
batch, drawn from all the kept samples).

Ground truth: only the `oracle` rule is given the pool's true classes (or domains); the level's
diagnostics (LevelStatistics) read them separately, after the labels are fixed.
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch
from avalanche.core import SupervisedPlugin

from csl_avalanche import distributed
from csl_avalanche.benchmarks.features import FeatureSet
from csl_avalanche.benchmarks.streams import labelled_dataset, pool_inputs
from csl_avalanche.core import cosupervision as cs
from csl_avalanche.core.errors import ConfigError
from csl_avalanche.core.estep import Student, chunk_rows, level_results
from csl_avalanche.core.level_statistics import PASS_FIELDS, LevelStatistics
from csl_avalanche.models.fit import predict
from csl_avalanche.training.plugins.learned_weights import UNROUTED, sample_keys


class CoSupervisionPlugin(SupervisedPlugin, supports_distributed=True):
    """Relabels and filters each level's pool; `stats` holds one LevelStatistics per level.

    assignment: a rule of `cosupervision.assign_teachers`, or `ensemble` (the mean of the
    level's teachers). labels: `hard` or `soft`. denoise: `all` or `topK`; an experience the
    student does not route (level 0) is never filtered. scale_epochs: train int(E / keep_rate)
    epochs so the steps per level stay equal. chunk_size: pool rows whose teacher outputs an
    E-step chunk reads at once (None: as many as fit `estep.CHUNK_MEMORY`); the student runs
    on the same evaluation batches (the strategy's) whatever the chunk size. reassign_every:
    E > 0 repeats the E-step and the selection with the current student every E epochs inside
    a level (online EM; E scales with the level's epochs under scale_epochs, so E =
    strategy.epochs never repeats it); None: once per level, the paper.
    """

    def __init__(
        self,
        features: FeatureSet,
        *,
        assignment: str = "class_partition",
        labels: str = "hard",
        denoise: str = "top3",
        scale_epochs: bool = True,
        chunk_size: int | None = None,
        reassign_every: int | None = None,
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
        self.chunk_size = chunk_size
        self.reassign_every = reassign_every
        self.stats: list[LevelStatistics] = []

    def state_dict(self) -> dict:
        """The statistics of the levels done so far: what a resumed run must carry on."""
        return {"stats": [stats.as_dict() for stats in self.stats]}

    def load_state_dict(self, state: dict) -> None:
        self.stats = [LevelStatistics(**stats) for stats in state["stats"]]

    def before_train_dataset_adaptation(self, strategy, **kwargs) -> None:
        experience = strategy.experience  # a TeacherExperience: its teachers, owners, samples
        start = time.perf_counter()
        results, keep = self._relabel(strategy, experience, experience.label)
        strategy.train_epochs = self._scaled(strategy.base_epochs, keep.float().mean().item())
        stats = self._statistics(experience, results, keep, strategy.train_epochs, start)
        self.stats.append(stats)
        experience.level_statistics = stats

    def before_training_epoch(self, strategy, **kwargs) -> None:
        """`reassign_every`: the E-step and the selection again, with the student as it is
        now, every `reassign_every` epochs (scaled like the level's epochs by its first keep
        rate); the rest of the level trains on the new kept samples."""
        experience, epoch = strategy.experience, strategy.clock.train_exp_epochs
        if self.reassign_every is None or not experience.routed or epoch == 0:
            return
        first = self.stats[-1]  # the level's first pass
        if epoch % self._scaled(self.reassign_every, first.keep_rate):
            return
        start = time.perf_counter()
        strategy.share_model()  # every rank labels its block with rank 0's student
        results, keep = self._relabel(strategy, experience, f"{experience.label}, epoch {epoch}")
        strategy.replace_training_data(experience.dataset)
        again = self._statistics(experience, results, keep, strategy.train_epochs, start)
        record = {"epoch": epoch, **{k: v for k, v in again.as_dict().items() if k in PASS_FIELDS}}
        self.stats[-1] = replace(
            first,
            reassignments=(*first.reassignments, record),
            estep_seconds=first.estep_seconds + again.estep_seconds,
        )
        experience.level_statistics = self.stats[-1]

    def _scaled(self, epochs: int, keep_rate: float) -> int:
        """int(epochs / keep_rate) under `scale_epochs`, else `epochs`."""
        return cs.scaled_epochs(epochs, keep_rate) if self.scale_epochs else epochs

    def _relabel(self, strategy, experience, label: str) -> tuple[cs.SampleResults, torch.Tensor]:
        """`relabel`, with at least a batch kept (or an error naming `label`)."""
        results, keep = self.relabel(strategy, experience)
        self._check_enough(keep, strategy.train_mb_size, label)
        return results, keep

    def relabel(self, strategy, experience) -> tuple[cs.SampleResults, torch.Tensor]:
        """One pass over a TeacherExperience's samples: the E-step, the selection, and the
        experience's dataset replaced by the kept, relabelled samples (see the module doc).
        Returns the results and the kept mask. Public for the plugins that relabel rows of
        their own the same way (co-supervised replay's buffer); no statistics are recorded."""
        blocks = self._blocks(strategy, experience)
        results = self._results(strategy, experience, blocks)
        keep = cs.select_kept(results)
        if results.soft is not None:  # the kept samples' soft targets, from their blocks' ranks
            distributed.share_rows(
                results.soft, [keep[b].nonzero().flatten() + b.start for b in blocks]
            )
        experience.dataset = labelled_dataset(
            pool_inputs(self.features, experience.samples),
            results.labels,
            results.soft,
            self._keys(strategy, experience, results),
            rows=keep.nonzero().flatten(),
        )
        return results, keep

    def _keys(self, strategy, experience, results: cs.SampleResults) -> torch.Tensor | None:
        """`learned`: the samples' keys for the weights' plugin (every experience's dataset has
        them, so that replay can mix them); None for every other rule."""
        if self.assignment != "learned":
            return None
        samples = experience.samples
        rows = torch.arange(len(self.features.train_y)) if samples is None else samples
        stamp = strategy.clock.train_exp_counter if experience.routed else UNROUTED
        return sample_keys(stamp, rows, results.assignment if experience.routed else None)

    def _blocks(self, strategy, experience) -> list[slice]:
        """Every process's block of the experience's samples: whole evaluation batches."""
        samples = experience.samples
        total = len(self.features.train_y) if samples is None else len(samples)
        size, batch = distributed.world_size(), strategy.eval_mb_size
        return [distributed.shard_rows(total, r, size, unit=batch) for r in range(size)]

    def _results(self, strategy, experience, blocks: list[slice]) -> cs.SampleResults:
        """The E-step's per-sample results over the experience's samples. This process computes
        those of its block of `blocks` and receives the other processes' in place, except their
        soft targets (left unwritten: `_relabel` shares the kept samples' after the selection).
        """
        block = blocks[distributed.rank()]
        chunk_size = self.chunk_size or chunk_rows(
            experience.num_teachers, self.features.num_classes, batch_size=strategy.eval_mb_size
        )
        results = distributed.on_every_rank(
            lambda: level_results(
                self.features,
                experience.teachers,
                self._student(strategy) if experience.routed else None,
                rule=self.assignment,
                labels=self.labels,
                criterion=self.denoise,
                class_to_teacher=experience.owner,
                targets=self._oracle_units(),
                samples=experience.samples,
                positions=range(block.start, block.stop),
                chunk_size=chunk_size,
                batch_size=strategy.eval_mb_size,
                whole=True,
                device=strategy.device,
            )
        )
        for column in (results.assignment, results.labels, results.losses, results.in_topk):
            if column is not None:
                distributed.share_rows(column, [torch.arange(b.start, b.stop) for b in blocks])
        return results

    def _student(self, strategy) -> Student:
        """The previous student's logits on some rows of the pool, in evaluation batches."""
        return lambda rows: predict(
            strategy.model, self.features.train_x[rows], batch_size=strategy.eval_mb_size
        )

    def _oracle_units(self) -> torch.Tensor | None:
        """The pool's true units (classes, or domains) for the `oracle` rule; None for every
        other rule, so that no student-facing label can depend on ground truth."""
        if self.assignment != "oracle":
            return None
        return self.features.units("train")

    def _statistics(
        self, experience, results: cs.SampleResults, keep: torch.Tensor, epochs: int, start: float
    ) -> LevelStatistics:
        """The experience's diagnostics: besides the oracle rule, the only reader of the pool's
        ground truth; they describe the labels once fixed and never change them."""
        samples = experience.samples
        truth = _of_rows(self.features.train_y, samples)
        units = _of_rows(self.features.units("train"), samples)
        correct = results.labels == truth
        assignment = results.assignment
        return LevelStatistics(
            level=experience.stage,
            num_teachers=experience.num_teachers,
            keep_rate=keep.float().mean().item(),
            label_precision=correct[keep].float().mean().item(),
            label_recall=(correct & keep).sum().item() / max(1, correct.sum().item()),
            assignment_accuracy=(
                None
                if assignment is None
                else (assignment == experience.owner[units]).float().mean().item()
            ),
            teacher_accuracy=correct.float().mean().item(),
            epochs=epochs,
            estep_seconds=time.perf_counter() - start,
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
