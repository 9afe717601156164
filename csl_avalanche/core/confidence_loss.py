"""The auxiliary confidence loss of Burns et al. (2023, "Weak-to-strong generalization").

A student trained on a weak teacher's labels learns to imitate the teacher's mistakes. The
confidence loss mixes the teacher target with the student's own prediction, hardened to one
class per sample, so that a strong student can confidently disagree with its teacher:

    loss = (1 - w) * CE(student, teacher target) + w * CE(student, hardened student labels)

with w ramped from 0 to `alpha` over the first `warmup` fraction of the level's steps
(`WeightRamp`). The hardening keeps the teacher labels' class balance within the batch, so
the student cannot satisfy the second term by predicting one class everywhere: Burns et al.
threshold a binary student's probability at the quantile that matches the teacher labels'
positive rate; `hardened_labels` generalises that to C classes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

LOSSES = ("ce", "logconf")


def teacher_classes(target: torch.Tensor) -> torch.Tensor:
    """The teacher's class per sample: `target` itself for class indices [B], the argmax (ties
    to the lower class) of each row for probability rows [B, C]."""
    return target.argmax(dim=1) if target.is_floating_point() else target


def hardened_labels(probs: torch.Tensor, quota: torch.Tensor) -> torch.Tensor:
    """The student's prediction hardened to one class per sample, class c given to exactly
    `quota[c]` samples (the quotas sum to the batch size).

    The rule is the greedy balanced assignment: visit the (sample, class) pairs in decreasing
    student probability `probs[i, c]` (ties to the lower sample, then the lower class) and give
    sample i class c when i has no class yet and c has quota left. With a quota of B for one
    class that class is everyone's; with ample quota for every class it is the argmax.

    Computed in rounds instead of pair by pair (B x C pairs would be a Python loop per step):
    each unlabelled sample takes its best class with quota left when fewer unlabelled samples
    rank above it in that class than the quota left there. The greedy visit then cannot find
    the class full, so every such pair is one the greedy visit makes; the best open pair always
    qualifies, so each round labels at least one sample and the rounds end with the greedy
    labels exactly.
    """
    batch, classes = probs.shape
    if quota.shape != (classes,) or int(quota.sum()) != batch:
        raise ValueError(
            f"quota must give each of the {classes} classes a count summing to the batch size "
            f"{batch}, got {quota.tolist()}"
        )
    probs = probs.nan_to_num(nan=-1.0)  # a diverged student's NaNs rank last, not undefined
    labels = torch.full((batch,), -1, dtype=torch.long, device=probs.device)
    left = quota.to(device=probs.device, dtype=torch.long).clone()
    index = torch.arange(batch, device=probs.device)
    while (open_rows := labels < 0).any():
        best = probs.masked_fill(left[None, :] == 0, -math.inf).argmax(dim=1)  # first maximum
        mine = probs[index, best]
        theirs = probs[:, best]  # [j, i]: sample j's probability of sample i's best class
        above = (theirs > mine) | ((theirs == mine) & (index[:, None] < index[None, :]))
        rank = (above & open_rows[:, None]).sum(dim=0)
        taken = open_rows & (rank < left[best])
        labels[taken] = best[taken]
        left -= torch.bincount(best[taken], minlength=classes)
    return labels


def batch_hardened_labels(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The confidence term's labels for a batch: the student's prediction (detached, no
    gradient) hardened with quotas = the teacher's class counts in the batch. `target` holds
    class indices [B] or probability rows [B, C]."""
    with torch.no_grad():
        quota = torch.bincount(teacher_classes(target), minlength=logits.shape[1])
        return hardened_labels(logits.softmax(dim=1), quota)


def logconf_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: float,
    hardened: torch.Tensor | None = None,
) -> torch.Tensor:
    """(1 - weight) * CE(logits, target) + weight * CE(logits, hardened labels), the batch mean.

    `target` holds class indices [B] or probability rows [B, C]; `hardened`: the confidence
    term's labels, by default `batch_hardened_labels(logits, target)` (a data-parallel rank
    passes its share of the whole batch's). With weight 0 this is `F.cross_entropy(logits,
    target)` itself, bit for bit.
    """
    if not 0 <= weight <= 1:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    teacher_loss = F.cross_entropy(logits, target)
    if weight == 0:
        return teacher_loss
    if hardened is None:
        hardened = batch_hardened_labels(logits, target)
    return (1 - weight) * teacher_loss + weight * F.cross_entropy(logits, hardened)


@dataclass(frozen=True)
class WeightRamp:
    """The confidence term's weight over one level's steps: linear from `start_weight` at
    `start_step` to `alpha` at `end_step`, then `alpha`. Burns et al. ramp it in so the student
    first learns the teacher.

    A level starts with `WeightRamp.for_level`: from 0 at step 0 to alpha at `warmup` times the
    level's steps (warmup 0: alpha from the first step). A re-assignment inside the level changes
    how many steps it has left, and so where the ramp should end: `replanned` starts a new
    segment at the current step with the weight the old plan gives there, ending at `warmup`
    times the new length, so the weight never jumps at a pass (it moves by the old plan's
    increment to that step, then by the new one's) and reaches alpha where a level planned with
    the new length would. A new end the level has already passed ends the ramp at the next step.
    """

    alpha: float
    warmup: float
    end_step: float
    start_step: int = 0
    start_weight: float = 0.0

    @classmethod
    def for_level(cls, total_steps: int, alpha: float, warmup: float) -> WeightRamp:
        return cls(alpha, warmup, end_step=warmup * total_steps)

    def weight(self, step: int) -> float:
        """The weight at `step` (0-based, counted from the level's start)."""
        if step >= self.end_step:
            return self.alpha
        rise = (self.alpha - self.start_weight) * (step - self.start_step)
        return self.start_weight + rise / (self.end_step - self.start_step)

    def replanned(self, step: int, total_steps: int) -> WeightRamp:
        """The ramp from `step` on, once the level has `total_steps` steps in all."""
        end = max(self.warmup * total_steps, step + 1)
        return replace(self, end_step=end, start_step=step, start_weight=self.weight(step))
