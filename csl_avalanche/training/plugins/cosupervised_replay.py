"""Co-supervised replay (`plugins=[csl_replay]`): a rehearsal buffer of *inputs* whose labels
come again from the teachers at every phase of the class-incremental stream.

Avalanche's replay stores each sample with the label it had when stored (in CSL half of them
the generalist's labels of an arrival's first phase), so every later arrival rehearses those
old, noisy labels. Here the buffer holds pool row indices only, never a label and never ground
truth: a bounded number per earlier arrival, `mem_size` shared equally over the arrivals seen
so far (`group_sizes`, Avalanche's ExperienceBalancedBuffer's split), each arrival's rows a
seeded choice among its samples. The arrival is the subdomain a row came with (the stream is
cut by the benchmark); the plugin reads no class.

At every phase of an arrival, before training, the buffered rows of the *earlier* arrivals go
through the co-supervision plugin's E-step and denoising (`CoSupervisionPlugin.relabel`), with
the current student routing them among the generalist and every arrived specialist
(`ArrivalExperience.rehearsal`), so an old sample is relabelled by its own specialist when the
student still recognises its class, and filtered by the same criterion as new samples (the
top-K count is the buffer's own). This holds in the `generalist` phase too: there the new
samples cannot be routed yet, but the buffered ones can, and relabelling them with the
generalist alone would bring back the noisy labels. A strategy that does not route
(`strategy=w2s`) sees the buffer through the generalist alone, unrouted and unfiltered: the
same labels as label replay, recomputed rather than stored.

The kept, relabelled buffer is rehearsed as Avalanche's ReplayPlugin does: every training
batch is [current batch | `batch_size_mem` memory samples] (the memory cycled, reshuffled on
each pass), so at equal `mem_size` both rehearse the same number of samples per step.

`distill` > 0 adds a DER-like term (Buzzega et al. 2020): distill * MSE(the student's logits on
the batch's memory samples, the logits the student gave them when they were stored, i.e. at
the end of their arrival).

The state (rows and recorded logits per arrival) is in `state_dict()`; the choice of rows and
the memory's batch order are seeded by the strategy's seed, so a resumed run rehearses the
same samples in the same order.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from avalanche.core import SupervisedPlugin

from csl_avalanche.core.errors import ConfigError
from csl_avalanche.models.fit import predict
from csl_avalanche.training.loader import dataset_columns

SEED_STRIDE = 1_000_003  # separates the seeds of the buffer's choices from the loaders'


def group_sizes(mem_size: int, groups: int) -> list[int]:
    """`mem_size` shared over `groups` equally, the remainder one each to the first groups (as
    Avalanche's ExperienceBalancedBuffer)."""
    base, extra = divmod(mem_size, groups)
    return [base + (index < extra) for index in range(groups)]


class RehearsalLoader:
    """[current | memory] batches: each batch of `current` (the strategy's loader) followed by
    up to `batch_size` samples of `memory` (columns), taken in a shuffled order that is drawn
    again with `generator` whenever the memory is used up. `memory_index`: the positions in
    the memory of the last batch's memory part."""

    def __init__(self, current, memory, *, batch_size: int, generator: torch.Generator):
        self.current = current
        self.memory = memory
        self.batch_size = batch_size
        self.generator = generator
        self.memory_index = torch.empty(0, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.current)

    def _memory_batches(self) -> Iterator[torch.Tensor]:
        while True:
            order = torch.randperm(len(self.memory), generator=self.generator)
            yield from order.split(self.batch_size)

    def __iter__(self) -> Iterator[list[torch.Tensor]]:
        memory_batches = self._memory_batches()
        for batch in self.current:
            self.memory_index = next(memory_batches)
            rehearsed = self.memory.batch(self.memory_index.to(self.memory.tensors[0].device))
            device = batch[0].device
            yield [torch.cat([a, b.to(device)]) for a, b in zip(batch, rehearsed, strict=True)]


class CoSupervisedReplayPlugin(SupervisedPlugin):
    """Rehearses pool inputs of earlier arrivals, relabelled by the teachers at every phase
    (see the module doc). Trains with a CSLStrategy (or WeakToStrong) on the class-incremental
    stream: it relabels through `strategy.cosupervision`."""

    def __init__(
        self, mem_size: int = 200, batch_size_mem: int | None = None, distill: float = 0.0
    ):
        super().__init__()
        self.mem_size = mem_size
        self.batch_size_mem = batch_size_mem
        self.distill = distill
        self.rows: dict[int, torch.Tensor] = {}  # arrival -> its buffered pool rows
        self.logits: dict[int, torch.Tensor] = {}  # arrival -> their logits when stored
        self.loader: RehearsalLoader | None = None
        self.memory_logits: torch.Tensor | None = None  # of the kept memory, in its order

    def state_dict(self) -> dict:
        return {"rows": dict(self.rows), "logits": dict(self.logits)}

    def load_state_dict(self, state: dict) -> None:
        self.rows = dict(state["rows"])
        self.logits = dict(state["logits"])

    def buffered(self, arrival: int) -> torch.Tensor:
        """The buffered rows of the arrivals other than `arrival`, in arrival order."""
        parts = [rows for index, rows in sorted(self.rows.items()) if index != arrival]
        return torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)

    def before_training_exp(self, strategy, **kwargs) -> None:
        """Relabel the buffer with the current student and teachers, and rehearse its kept
        samples in every batch."""
        self.loader, self.memory_logits = None, None
        experience = strategy.experience
        if not hasattr(experience, "rehearsal"):
            raise ConfigError(
                f"co-supervised replay rehearses earlier arrivals with their teachers, but "
                f"{getattr(experience, 'label', 'this experience')} is no arrival of the "
                "class-incremental stream (benchmarks.arrivals); use it there, or replay"
            )
        rows = self.buffered(experience.arrival)
        if not len(rows):
            return
        view = experience.rehearsal(rows, routed=strategy.routes)
        _, keep = strategy.cosupervision.relabel(strategy, view)
        if not keep.any():
            return
        if self.distill:
            stored = [self.logits[i] for i in sorted(self.rows) if i != experience.arrival]
            self.memory_logits = torch.cat(stored)[keep].to(strategy.device)
        counter = strategy.clock.train_exp_counter
        self.loader = RehearsalLoader(
            strategy.dataloader,
            dataset_columns(view.dataset, strategy.device),
            batch_size=self.batch_size_mem or strategy.train_mb_size,
            generator=torch.Generator().manual_seed(SEED_STRIDE * (strategy.seed + 1) + counter),
        )
        strategy.dataloader = self.loader

    def before_backward(self, strategy, **kwargs) -> None:
        """The DER-like term on the batch's memory samples (the end of the batch)."""
        if self.memory_logits is None or self.loader is None:
            return
        index = self.loader.memory_index.to(self.memory_logits.device)
        output = strategy.mb_output[len(strategy.mb_output) - len(index) :]
        recorded = self.memory_logits[index]
        strategy.loss += self.distill * torch.nn.functional.mse_loss(output, recorded)

    def after_training_exp(self, strategy, **kwargs) -> None:
        """Store the arrival's rows (once, a seeded choice) and shrink every arrival's share to
        the budget; with `distill`, record (again) the student's logits on its rows."""
        experience = strategy.experience
        arrival = experience.arrival
        if arrival not in self.rows:
            sizes = group_sizes(self.mem_size, len(self.rows) + 1)
            seed = SEED_STRIDE * (strategy.seed + 1) - arrival - 1
            order = torch.randperm(
                len(experience.samples), generator=torch.Generator().manual_seed(seed)
            )
            self.rows[arrival] = experience.samples[order[: sizes[-1]]]
            for index, size in zip(sorted(self.rows), sizes, strict=True):
                self.rows[index] = self.rows[index][:size]
                if index in self.logits:
                    self.logits[index] = self.logits[index][:size]
        if self.distill:
            with torch.no_grad():
                inputs = experience.features.train_x[self.rows[arrival]]
                logits = predict(strategy.model, inputs, batch_size=strategy.eval_mb_size)
            self.logits[arrival] = logits.cpu()
        self.loader, self.memory_logits = None, None
