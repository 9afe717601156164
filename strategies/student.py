"""The strong student's training loop, as the paper runs it, on Avalanche's SupervisedTemplate.

Per experience (hierarchy level): a fresh Adam optimiser with a cosine schedule over the
level's steps, optionally a freshly initialised model, hard or soft targets, optionally Burns
et al.'s auxiliary confidence loss, and batches gathered from in-memory tensors when the inputs
are cached features.
"""

from __future__ import annotations

import torch
from avalanche.training.templates import SupervisedTemplate
from torch import nn

from csl_avalanche import distributed
from csl_avalanche.core.confidence_loss import (
    LOSSES,
    WeightRamp,
    batch_hardened_labels,
    logconf_loss,
    teacher_classes,
)
from csl_avalanche.core.cosupervision import LABEL_KINDS
from csl_avalanche.training.loader import InMemoryBatchLoader


class StudentTemplate(SupervisedTemplate):
    """SupervisedTemplate with the paper's optimisation recipe.

    `labels="soft"` trains on the probability vectors carried as the dataset's third column;
    `labels="hard"` on `y`. `reinit_student=True` restores the model's initial state (a copy
    of its state_dict taken here) before each experience after the first: a linear probe
    starts again from its initial random weights, a fine-tuned network from its pretrained
    backbone and initial head. `in_memory=True` uses InMemoryBatchLoader (the inputs are
    gathered from tensors on the training device; an ImageStudent augments each batch itself).

    `loss="logconf"` trains on (1 - w) * CE(teacher target) + w * CE(the student's own
    class-balanced hardened prediction) (csl_avalanche.core.confidence_loss), w ramped from 0 to
    `logconf_alpha` over the first `logconf_warmup` fraction of each experience's steps
    (`WeightRamp`; a re-assignment replans it without a jump); the ramp is read off the clock,
    so a resumed run takes the same weights. `loss="ce"` (and evaluation) is plain
    cross-entropy.

    Under torchrun (csl_avalanche.distributed) `batch_size` stays the global batch: each rank
    trains on its weighted share of every batch (`loader.rank_share`) through
    DistributedDataParallel (Avalanche 0.6's templates do not wrap the model themselves),
    which averages the gradients, so the ranks take the steps one process would. `self.model`
    stays the plain module: evaluation, the E-step and checkpoints use it. The confidence loss
    hardens the whole global batch, as one process does: at each step the ranks exchange their
    shares' detached logits and teacher classes ([batch_size, C] in all), each hardens the
    whole batch and trains on its share of the labels.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        lr: float,
        epochs: int,
        batch_size: int,
        labels: str = "hard",
        reinit_student: bool = True,
        loss: str = "ce",
        logconf_alpha: float = 0.5,
        logconf_warmup: float = 0.2,
        in_memory: bool = True,
        seed: int = 0,
        eval_batch_size: int = 1024,
        **kwargs,
    ):
        if labels not in LABEL_KINDS:
            raise ValueError(f"labels must be one of {LABEL_KINDS}, got {labels!r}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        super().__init__(
            model=model,
            optimizer=torch.optim.Adam(model.parameters(), lr=lr),
            criterion=nn.CrossEntropyLoss(),
            train_mb_size=batch_size,
            eval_mb_size=eval_batch_size,
            train_epochs=epochs,
            **kwargs,
        )
        self.lr = lr
        self.base_epochs = epochs
        self.labels = labels
        self.reinit_student = reinit_student
        self.loss_kind = loss
        self.logconf_alpha = logconf_alpha
        self.logconf_warmup = logconf_warmup
        self.level_steps = 0  # the current experience's training steps
        self.weight_ramp: WeightRamp | None = None  # the confidence weight over those steps
        self.in_memory = in_memory
        self.seed = seed
        self.lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.parallel_model: nn.Module | None = None  # the DDP wrapper, under torchrun
        self.initial_state = {
            name: value.detach().to("cpu", copy=True) for name, value in model.state_dict().items()
        }

    def criterion(self) -> torch.Tensor:
        if not self.is_training:
            return self._criterion(self.mb_output, self.mb_y)
        target = self._soft_targets() if self.labels == "soft" else self.mb_y
        weight = self.confidence_weight()
        if self.parallel_model is None:
            return logconf_loss(self.mb_output, target, weight)
        hardened = self._share_of_hardened_batch(target) if weight > 0 else None
        loss = logconf_loss(self.mb_output, target, weight, hardened)
        return loss * self.dataloader.share_weight  # this rank's part of the global batch

    def _share_of_hardened_batch(self, target: torch.Tensor) -> torch.Tensor:
        """This rank's share of the confidence labels of the whole global batch, hardened as
        one process hardens it (`batch_hardened_labels`): the ranks' shares, every P-th sample
        of the batch (`loader.rank_share`), are exchanged and put back in batch order."""
        length, size = self.dataloader.batch_length, distributed.world_size()
        shares = [torch.arange(r, length, size) for r in range(size)]
        mine = shares[distributed.rank()]
        logits = self.mb_output.new_empty((length, self.mb_output.shape[1]))
        classes = torch.empty(length, dtype=torch.long, device=logits.device)
        if len(mine):
            logits[mine] = self.mb_output.detach()
            classes[mine] = teacher_classes(target)
        distributed.share_rows(logits, shares)
        distributed.share_rows(classes, shares)
        hardened = batch_hardened_labels(logits, classes)
        return hardened[mine] if len(mine) else hardened[:1]  # an empty share's stand-in

    def confidence_weight(self) -> float:
        """The confidence term's weight at the current step: 0 for `loss="ce"`."""
        if self.loss_kind == "ce":
            return 0.0
        return self.weight_ramp.weight(self.clock.train_exp_iterations)

    def _soft_targets(self) -> torch.Tensor:
        """Minibatch column 2 in float32 (the co-supervision plugin keeps it in float16),
        checked to be a floating [B, C] matrix like the output (on a dataset of [x, y, task] it
        is the task label, which cross_entropy would take for class indices) and, on each
        level's first batch, to hold probabilities (checking values waits for the device, so
        not at every step)."""
        batch, classes = self.mb_output.shape
        column = self.mbatch[2] if len(self.mbatch) > 2 else None
        if column is None or not column.is_floating_point() or column.shape != (batch, classes):
            got = "missing" if column is None else f"{column.dtype} of shape {list(column.shape)}"
            raise ValueError(
                "labels='soft' needs datasets of [x, y, soft_target, task], soft_target a "
                f"probability vector over the {classes} classes (column 2 a floating "
                f"[{batch}, {classes}] batch); got a {len(self.mbatch)}-column batch whose "
                f"column 2 is {got}: build the datasets with soft targets "
                "(csl_avalanche.benchmarks.streams.labelled_dataset) or train with labels='hard'"
            )
        column = column.float()
        if self.clock.train_exp_iterations == 0:
            sums = column.sum(dim=1)
            if (column < 0).any() or not torch.allclose(sums, torch.ones_like(sums), atol=1e-3):
                raise ValueError(
                    "labels='soft': column 2 of the batch is not a probability vector per sample "
                    f"(smallest entry {column.min().item():.4g}, row sums "
                    f"{sums.min().item():.4g}..{sums.max().item():.4g}); soft targets must be "
                    "non-negative and sum to 1"
                )
        return column

    def check_model_and_optimizer(self, **kwargs) -> None:
        if self.reinit_student and self.clock.train_exp_counter > 0:
            self.model.load_state_dict(self.initial_state)
        super().check_model_and_optimizer(**kwargs)
        if distributed.world_size() > 1:
            distributed.broadcast_state(self.model)  # every rank starts from rank 0's weights
            if self.parallel_model is None or self.parallel_model.module is not self.model:
                self.parallel_model = distributed.data_parallel(self.model)
            distributed.seed_rank_stream(self.seed + 1000 * self.clock.train_exp_counter)

    def share_model(self) -> None:
        """Under torchrun, rank 0's weights and buffers on every rank, for what runs the model
        whole on every rank (the E-step, the evaluation): each rank's training steps update
        BatchNorm's running statistics from its own share of the batch."""
        if self.parallel_model is not None:
            distributed.broadcast_state(self.model)

    def _after_training_exp(self, **kwargs) -> None:
        self.share_model()
        super()._after_training_exp(**kwargs)

    def forward(self) -> torch.Tensor:
        if self.is_training and self.parallel_model is not None:
            return self.parallel_model(self.mb_x)
        return super().forward()

    def make_optimizer(self, **kwargs) -> None:
        """A fresh Adam at every experience, as the paper trains each level from scratch."""
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.lr)
        self.optimized_param_id = {id(p): p for p in self.model.parameters()}

    def _before_training_exp(self, **kwargs) -> None:
        super()._before_training_exp(**kwargs)
        # After the plugins: they may have changed the epochs (CSL) or the loader (replay).
        self.level_steps = max(1, self.train_epochs * len(self.dataloader))
        self.lr_scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, self.level_steps
        )
        self.weight_ramp = WeightRamp.for_level(
            self.level_steps, self.logconf_alpha, self.logconf_warmup
        )

    def replace_training_data(self, dataset) -> None:
        """Train the rest of the experience on `dataset` (CSL's re-assignment inside a level):
        a new loader whose shuffling generator is the old one's, continued, so that each epoch
        draws the permutation it would have drawn without the pass (a level without passes
        draws its epochs' permutations from one generator); and the experience's step count
        set so that the cosine schedule still reaches zero at its last step (its recursive form
        keeps the rate continuous) and the confidence weight's ramp replanned from where it is
        (`WeightRamp.replanned`: no jump)."""
        generator = getattr(self.dataloader, "generator", None)
        self.adapted_dataset = dataset.train()
        self.make_train_dataloader(generator=generator)
        step = self.clock.train_exp_iterations
        remaining = (self.train_epochs - self.clock.train_exp_epochs) * len(self.dataloader)
        self.level_steps = max(1, step + remaining)
        self.lr_scheduler.T_max = self.level_steps
        self.weight_ramp = self.weight_ramp.replanned(step, self.level_steps)

    def optimizer_step(self) -> None:
        super().optimizer_step()
        self.lr_scheduler.step()

    def make_train_dataloader(
        self, shuffle: bool = True, generator: torch.Generator | None = None, **kwargs
    ) -> None:
        """The in-memory loader shuffles with `generator`, by default one seeded by the seed and
        the experience (the same on every rank)."""
        if not self.in_memory:
            return super().make_train_dataloader(shuffle=shuffle, **kwargs)
        if generator is None:
            generator = torch.Generator().manual_seed(
                self.seed + 1000 * self.clock.train_exp_counter
            )
        self.dataloader = InMemoryBatchLoader(
            self.adapted_dataset,
            batch_size=self.train_mb_size,
            shuffle=shuffle,
            generator=generator,
            device=self.device,
            rank=distributed.rank(),
            world_size=distributed.world_size(),
        )

    def make_eval_dataloader(self, **kwargs) -> None:
        if not self.in_memory:
            return super().make_eval_dataloader(**kwargs)
        self.dataloader = InMemoryBatchLoader(
            self.adapted_dataset, batch_size=self.eval_mb_size, shuffle=False, device=self.device
        )
