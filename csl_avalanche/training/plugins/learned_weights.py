"""LearnedWeightsPlugin: the teacher weights of `strategy.assignment=learned`, trained with the
student at every step (the math: `csl_avalanche.core.learned_weights`).

Under `learned` the co-supervision plugin gives every dataset it builds a column of sample keys
(`sample_keys`), just before the task label: the experience that built it (its training
counter, -1 where the student does not route), the sample's pool row, and its subdomain (the
`class_partition` routing of the E-step). At each training step, for the batch's samples of the
current experience (replayed samples of earlier ones keep the labels they were stored with),
the plugin reads their teachers' probabilities from the features (a [B, K, C] gather, never the
whole pool), replaces their labels by the weighted mixture (its argmax for hard labels, the
mixture for soft labels, computed with the weights before the step), and after the forward pass
takes one gradient step on the weights with the student's prediction held fixed. The weights
start uniform at every routed experience, so they hold no state across the units a checkpoint
separates; each epoch's weights are recorded with the experience's statistics (results.json) and
exposed as `experience.teacher_weights` for the TensorBoard metric.
"""

from __future__ import annotations

import torch
from avalanche.core import SupervisedPlugin

from csl_avalanche.benchmarks.features import FeatureSet
from csl_avalanche.core import learned_weights as lw

UNROUTED = -1  # the key's experience stamp where the student does not route


def sample_keys(stamp: int, rows: torch.Tensor, subdomain: torch.Tensor | None) -> torch.Tensor:
    """The key column [n, 3] (experience stamp, pool row, subdomain) of an experience's samples;
    `subdomain` None (no routing): 0."""
    keys = torch.zeros(len(rows), 3, dtype=torch.long)
    keys[:, 0] = stamp
    keys[:, 1] = rows
    if subdomain is not None:
        keys[:, 2] = subdomain
    return keys


class LearnedWeightsPlugin(SupervisedPlugin):
    """Weights over the experience's teachers, `mode` global (one distribution) or
    per_subdomain (one per teacher's subdomain), stepped with rate `lr` (0: uniform, the
    ensemble's mean). Reads the features' teacher outputs; the batch's last-but-one column is
    its sample keys."""

    def __init__(self, features: FeatureSet, *, mode: str = "per_subdomain", lr: float = 1.0):
        super().__init__()
        if mode not in lw.WEIGHT_MODES:
            raise ValueError(f"unknown learned weights mode {mode!r}; choose {lw.WEIGHT_MODES}")
        self.features = features
        self.mode = mode
        self.lr = lr
        self.logits: torch.Tensor | None = None  # [S, K] of the routed experience in training
        self.history: list[list[list[float]]] = []  # the weights after each epoch
        self._batch: tuple | None = None  # what after_forward needs of before_forward's batch

    def before_training_exp(self, strategy, **kwargs) -> None:
        experience = strategy.experience
        self.history = []
        self.logits = None
        if experience.routed:
            k = experience.num_teachers
            self.logits = lw.initial_logits(k if self.mode == "per_subdomain" else 1, k)
            self.logits = self.logits.to(strategy.device)

    def before_forward(self, strategy, **kwargs) -> None:
        """The current experience's samples of the batch get the mixture's labels."""
        self._batch = None
        if self.logits is None:
            return
        keys = strategy.mbatch[-2]
        mine = (keys[:, 0] == strategy.clock.train_exp_counter).nonzero().flatten()
        if not len(mine):
            return
        rows = keys[mine, 1].cpu()
        teachers = strategy.experience.teachers
        probs = self.features.teacher_probs("train", teachers, rows, strategy.device)
        probs = probs.permute(1, 0, 2)
        subdomain = keys[mine, 2] if self.mode == "per_subdomain" else torch.zeros_like(mine)
        targets = lw.weighted_targets(self.logits, probs, subdomain)
        labels = strategy.mbatch[1].clone()
        labels[mine] = targets.argmax(dim=1)
        strategy.mbatch[1] = labels
        if strategy.labels == "soft":
            soft = strategy.mbatch[2].clone()
            soft[mine] = targets.to(soft.dtype)
            strategy.mbatch[2] = soft
        self._batch = (mine, probs, subdomain)

    def after_forward(self, strategy, **kwargs) -> None:
        """One gradient step on the weights, the student's prediction held fixed."""
        if self._batch is None:
            return
        mine, probs, subdomain = self._batch
        output = strategy.mb_output[mine]
        gradient = lw.logit_gradient(self.logits, probs, subdomain, output)
        self.logits = lw.gradient_step(self.logits, gradient, self.lr)
        self._batch = None

    def after_training_epoch(self, strategy, **kwargs) -> None:
        if self.logits is None:
            return
        self.history.append(lw.teacher_weights(self.logits).cpu().tolist())
        strategy.experience.teacher_weights = self.history[-1]

    def after_training_exp(self, strategy, **kwargs) -> None:
        if self.logits is not None:
            strategy.record_teacher_weights(self.history)
