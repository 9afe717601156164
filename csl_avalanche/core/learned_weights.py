"""Learned teacher weights (`strategy.assignment=learned`; RAVEN, Jeon et al., NeurIPS 2025):
a distribution over an experience's teachers, one for all samples or one per subdomain,
learned by gradient descent on the student's loss, jointly with the student.

The weights are the softmax of free logits [S, K] (S = 1 for global weights, else one row per
subdomain, K teachers), so they stay a distribution. Sample i, of subdomain s_i, gets the target
t_i = sum_k w_{s_i k} q_ik. The weights' loss is the student's cross-entropy against that target,
L = mean_i -sum_c t_ic log p_ic, p_i the student's prediction, held fixed for the weights' step
(the student's own step holds the target fixed: both are the one loss's partial gradients).
Its gradient in w is dL/dw_sk = mean_i [s_i = s] CE(p_i, q_ik): the weights move towards the
teachers whose labels the student finds likely. Shapes: B samples, K teachers, C classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from csl_avalanche.core.cosupervision import mixture_targets

WEIGHT_MODES = ("global", "per_subdomain")


def initial_logits(num_subdomains: int, num_teachers: int) -> torch.Tensor:
    """Zero logits [S, K]: uniform weights, the ensemble's mean."""
    return torch.zeros(num_subdomains, num_teachers)


def teacher_weights(logits: torch.Tensor) -> torch.Tensor:
    """w = softmax(logits) per row, [S, K]: non-negative, each row summing to 1."""
    return torch.softmax(logits.float(), dim=1)


def weighted_targets(
    logits: torch.Tensor, teacher_probs: torch.Tensor, subdomain: torch.Tensor
) -> torch.Tensor:
    """t_i = sum_k w_{s_i k} q_ik, [B, C]: each sample's teachers mixed by its subdomain's
    weights. teacher_probs [B, K, C]; subdomain [B], rows of `logits` (zeros for global)."""
    return mixture_targets(teacher_weights(logits)[subdomain], teacher_probs)


def logit_gradient(
    logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    subdomain: torch.Tensor,
    student_logits: torch.Tensor,
) -> torch.Tensor:
    """dL/d logits [S, K] of L = mean_i CE(student_i, t_i), the student's prediction fixed:
    g_sk = mean_i [s_i = s] CE(p_i, q_ik) is the gradient in w, and through the softmax
    dL/d logit_sj = w_sj (g_sj - sum_k w_sk g_sk)."""
    log_p = F.log_softmax(student_logits.detach().float(), dim=1)
    per_teacher = -torch.einsum("bkc,bc->bk", teacher_probs.float(), log_p)  # CE(p_i, q_ik)
    g = torch.zeros_like(logits, dtype=torch.float32)
    g.index_add_(0, subdomain, per_teacher)
    g /= max(1, len(subdomain))
    w = teacher_weights(logits)
    return w * (g - (w * g).sum(dim=1, keepdim=True))


def gradient_step(logits: torch.Tensor, gradient: torch.Tensor, lr: float) -> torch.Tensor:
    """One step of gradient descent on the logits: logits - lr * gradient (lr 0: unchanged)."""
    return logits - lr * gradient
