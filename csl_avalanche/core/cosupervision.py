"""The CSL math as pure tensor functions (docs/design.md explains the method).

Everything here takes tensors and returns tensors on the inputs' device, with no loop over
samples, so the E-step and the noise reduction run batched on the GPU when there is one.
Shapes: N samples, K teachers of one level, C classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

ASSIGNMENT_RULES = ("class_partition", "likelihood", "kl", "oracle")
# What `strategy.assignment` may name: a rule above; `posterior`, the E-step's posterior over
# the teachers instead of its argmax (a mixture of the teachers per sample); or `ensemble` (no
# assignment: the plain mean of the level's teachers); or `learned`, a mixture of the teachers
# whose weights are learned with the student (`core.learned_weights`): the E-step gives it the
# weights' uniform start, the ensemble's mean, and each sample's subdomain, routed as
# `class_partition` routes it.
TARGET_RULES = (*ASSIGNMENT_RULES, "posterior", "ensemble", "learned")
LABEL_KINDS = ("hard", "soft")
_EPS = 1e-12


def assign_teachers(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    rule: str,
    *,
    class_to_teacher: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
) -> torch.Tensor:
    """E-step: the index (0..K-1) of the teacher that supervises each sample, LongTensor [N].

    student_logits [N, C]; teacher_probs [N, K, C]; class_to_teacher [C] (teacher of each class,
    -1 for a class no teacher covers); targets [N] (ground truth, `oracle` only: the other
    rules refuse it, so that no label a student trains on can depend on it).
    `class_partition` routes a sample whose predicted class no teacher covers by `likelihood`.
    Ties go to the lower teacher index.
    """
    _check_shapes(student_logits, teacher_probs)
    if targets is not None and rule in ASSIGNMENT_RULES and rule != "oracle":
        raise ValueError(
            f"assignment rule {rule!r} must not see the ground truth: only 'oracle' reads "
            "`targets`; pass targets=None"
        )
    if rule == "class_partition":
        owner = _require(class_to_teacher, "class_to_teacher", rule).to(student_logits.device)
        proxy = student_logits.argmax(dim=1)
        z = owner[proxy]
        uncovered = z < 0
        if uncovered.any():
            z = torch.where(uncovered, _most_likely_teacher(teacher_probs, proxy), z)
        return z
    if rule == "likelihood":
        return _most_likely_teacher(teacher_probs, student_logits.argmax(dim=1))
    if rule == "kl":
        log_p = F.log_softmax(student_logits.float(), dim=1)
        log_q = teacher_probs.float().clamp_min(_EPS).log()
        # KL(p || q_k) = sum_c p (log p - log q_k); the entropy term is the same for every k.
        cross = -torch.einsum("nc,nkc->nk", log_p.exp(), log_q)
        return cross.argmin(dim=1)
    if rule == "oracle":
        owner = _require(class_to_teacher, "class_to_teacher", rule).to(student_logits.device)
        truth = _require(targets, "targets", rule).to(student_logits.device)
        z = owner[truth]
        if (z < 0).any():
            raise ValueError("oracle assignment: some true classes are covered by no teacher")
        return z
    raise ValueError(f"unknown assignment rule {rule!r}; choose one of {ASSIGNMENT_RULES}")


def assignment_fault(rule: str, *, by_domain: bool) -> str | None:
    """Why `rule` cannot assign teachers whose subdomains are input domains, or None."""
    if rule in ("class_partition", "learned") and by_domain:
        return (
            f"strategy.assignment={rule} routes samples by predicted class, but this "
            "benchmark's subdomains are input domains (every teacher knows every class); "
            "use strategy.assignment=likelihood or kl"
        )
    return None


def posterior_weights(student_logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """r_ik, [N, K]: the E-step's posterior over the K teachers with a uniform gate, each
    teacher's likelihood of the student's predicted class y_hat_i, normalised per sample:
    r_ik = q_k(y_hat_i | x_i) / sum_j q_j(y_hat_i | x_i). A sample no teacher gives any mass to
    gets uniform weights. Its argmax is the `likelihood` rule's assignment."""
    _check_shapes(student_logits, teacher_probs)
    n, k, _ = teacher_probs.shape
    proxy = student_logits.argmax(dim=1).view(n, 1, 1).expand(n, k, 1)
    likelihood = teacher_probs.float().gather(2, proxy).squeeze(2)
    total = likelihood.sum(dim=1, keepdim=True)
    return torch.where(total > 0, likelihood / total.clamp_min(_EPS), 1.0 / k)


def mixture_targets(weights: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """sum_k r_ik q_k(. | x_i), [N, C]: the teachers' class probabilities mixed per sample by
    `weights` [N, K] (rows summing to 1)."""
    return torch.einsum("nk,nkc->nc", weights, teacher_probs.float())


def gather_targets(teacher_probs: torch.Tensor, assignment: torch.Tensor) -> torch.Tensor:
    """t_i = q_{i z_i}: each sample's assigned teacher's class probabilities, [N, C]."""
    n = teacher_probs.shape[0]
    return teacher_probs[torch.arange(n, device=teacher_probs.device), assignment]


def make_targets(probs: torch.Tensor, labels: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(hard labels [N], soft targets [N, C] or None) from target probabilities [N, C].

    Hard labels are the argmax and need no target vector; `soft` targets are the probabilities
    themselves (renormalised, since cached outputs may be rounded).
    """
    hard = probs.argmax(dim=1)
    if labels == "hard":
        return hard, None
    if labels == "soft":
        return hard, probs / probs.sum(dim=1, keepdim=True).clamp_min(_EPS)
    raise ValueError(f"unknown label kind {labels!r}; choose one of {LABEL_KINDS}")


def topk_of(criterion: str) -> int | None:
    """`all` -> None, `topK` -> K; anything else is an error that lists the choices."""
    if criterion == "all":
        return None
    if criterion.startswith("top") and criterion[3:].isdigit() and int(criterion[3:]) >= 1:
        return int(criterion[3:])
    raise ValueError(f"unknown denoising criterion {criterion!r}; use 'all' or 'topK' (top3 ...)")


def in_topk(student_logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """BoolTensor [N]: whether each label is among the student's top-k classes."""
    top = student_logits.topk(min(k, student_logits.shape[1]), dim=1).indices
    return (top == labels.unsqueeze(1)).any(dim=1)


def label_losses(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE(student, label) per sample, float32 [N]: how much the student distrusts each label."""
    return F.cross_entropy(student_logits.float(), labels, reduction="none")


def keep_lowest(losses: torch.Tensor, m: int) -> torch.Tensor:
    """BoolTensor [N], True for the `m` smallest losses (a stable sort: ties to the lower
    index). A global rule over the whole pool's losses, however they were computed."""
    order = torch.sort(losses, stable=True).indices
    keep = torch.zeros(losses.shape[0], dtype=torch.bool, device=losses.device)
    keep[order[:m]] = True
    return keep


def select_confident(
    student_logits: torch.Tensor, labels: torch.Tensor, criterion: str
) -> torch.Tensor:
    """Noise reduction: BoolTensor [N], True for the kept samples.

    With criterion `topK`, M = the number of samples whose label is in the student's top-K;
    keep the M samples with the smallest CE(student, label), ties to the lower index.
    """
    if labels.shape != student_logits.shape[:1]:
        raise ValueError(
            f"labels have shape {tuple(labels.shape)}, expected [{student_logits.shape[0]}] "
            f"to match student_logits {tuple(student_logits.shape)}"
        )
    k = topk_of(criterion)
    if k is None:
        return torch.ones(labels.shape[0], dtype=torch.bool, device=labels.device)
    m = int(in_topk(student_logits, labels, k).sum())  # M = rho * N, the consensus count
    return keep_lowest(label_losses(student_logits, labels), m)


@dataclass(frozen=True)
class SampleResults:
    """What the E-step keeps of each pool sample: enough to build the level's dataset and to
    select globally, without the [N, K, C] teacher outputs or the student's [N, C] logits.

    assignment [n] (None: the `ensemble` has none); labels [n], the hard labels; soft [n, C],
    the soft targets (None for hard labels); losses [n], CE(student, label), and in_topk [n],
    whether the label is in the student's top K (both None where nothing is filtered: level 0,
    or the criterion `all`).
    """

    assignment: torch.Tensor | None
    labels: torch.Tensor
    soft: torch.Tensor | None
    losses: torch.Tensor | None
    in_topk: torch.Tensor | None

    def to(self, device: torch.device | str) -> SampleResults:
        return SampleResults(*(None if t is None else t.to(device) for t in self._tensors()))

    def empty(self, n: int) -> SampleResults:
        """Results for `n` rows, uninitialised, of these results' kinds, dtypes and device,
        to be filled a range of rows at a time (`write`)."""
        return SampleResults(
            *(None if t is None else t.new_empty((n, *t.shape[1:])) for t in self._tensors())
        )

    def write(self, start: int, part: SampleResults) -> None:
        """Copy the results `part` into rows `start`, `start + 1`, ... of these."""
        for whole, rows in zip(self._tensors(), part._tensors(), strict=True):
            if whole is not None:
                whole[start : start + len(rows)] = rows

    def _tensors(self) -> tuple[torch.Tensor | None, ...]:
        return (self.assignment, self.labels, self.soft, self.losses, self.in_topk)


def sample_results(
    student_logits: torch.Tensor | None,
    teacher_probs: torch.Tensor,
    rule: str,
    labels: str,
    criterion: str,
    *,
    class_to_teacher: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
) -> SampleResults:
    """The E-step on some rows of the pool: teacher assignment, targets, and what the global
    selection needs (each sample's loss and top-K flag).

    student_logits [n, C], None at level 0 (no previous student: the generalist, teacher 0,
    labels every sample, and nothing is filtered); teacher_probs [n, K, C]; rule: one of
    TARGET_RULES (`ensemble`: the mean of the teachers; `learned`: the same mean, the learned
    weights' uniform start, with the `class_partition` assignment as each sample's subdomain);
    class_to_teacher and targets as for `assign_teachers`. `posterior` assigns the argmax of
    `posterior_weights` and targets their mixture of the teachers (`mixture_targets`). Every
    output row depends on its input row only, so the results of consecutive chunks,
    concatenated, are those of the whole pool, bit for bit; the selection over the whole pool
    is `select_kept`.
    """
    n = teacher_probs.shape[0]
    if student_logits is None:
        assignment = torch.zeros(n, dtype=torch.long, device=teacher_probs.device)
        target_probs = gather_targets(teacher_probs, assignment)
    elif rule == "ensemble":
        assignment, target_probs = None, teacher_probs.mean(dim=1)
    elif rule == "learned":
        assignment = assign_teachers(
            student_logits, teacher_probs, "class_partition", class_to_teacher=class_to_teacher
        )
        uniform = teacher_probs.new_full(teacher_probs.shape[:2], 1.0 / teacher_probs.shape[1])
        target_probs = mixture_targets(uniform.float(), teacher_probs)
    elif rule == "posterior":
        weights = posterior_weights(student_logits, teacher_probs)
        assignment, target_probs = weights.argmax(dim=1), mixture_targets(weights, teacher_probs)
    else:
        assignment = assign_teachers(
            student_logits, teacher_probs, rule, class_to_teacher=class_to_teacher, targets=targets
        )
        target_probs = gather_targets(teacher_probs, assignment)
    hard, soft = make_targets(target_probs, labels)
    k = topk_of(criterion)
    if student_logits is None or k is None:
        return SampleResults(assignment, hard, soft, None, None)
    return SampleResults(
        assignment,
        hard,
        soft,
        label_losses(student_logits, hard),
        in_topk(student_logits, hard, k),
    )


def select_kept(results: SampleResults) -> torch.Tensor:
    """Noise reduction over the whole pool, from its per-sample results: keep the M samples
    with the smallest losses, M = the number of labels in the student's top K (a global
    count, so this needs every row's results, gathered). Equals `select_confident`."""
    if results.losses is None:
        return torch.ones(len(results.labels), dtype=torch.bool, device=results.labels.device)
    return keep_lowest(results.losses, int(results.in_topk.sum()))


def scaled_epochs(epochs: int, keep_rate: float) -> int:
    """int(E / rho): the paper keeps the number of steps per level constant."""
    if not 0.0 < keep_rate <= 1.0:
        raise ValueError(f"keep rate must be in (0, 1], got {keep_rate}")
    return int(epochs / keep_rate + 1e-9)


def pgr(student_acc: float, weak_acc: float, ceiling_acc: float) -> float:
    """Performance gap recovered: (student - weak) / (ceiling - weak), for ceiling > weak."""
    if ceiling_acc <= weak_acc:
        relation = "equals" if ceiling_acc == weak_acc else f"({ceiling_acc:.4f}) is below"
        raise ValueError(
            f"PGR is undefined: the ceiling accuracy {relation} the weak accuracy "
            f"({weak_acc:.4f}): there is no gap to recover"
        )
    return (student_acc - weak_acc) / (ceiling_acc - weak_acc)


def pgr_note(
    weak_acc: float,
    ceiling_acc: float,
    *,
    missing_classes: Sequence[int] = (),
    ceiling_steps: int = 1,
    student_steps: int = 1,
) -> str | None:
    """Why PGR would not mean what it says, or None when it does.

    PGR compares the student with a ceiling trained on the pool's ground truth, so it needs a
    trained ceiling that can learn every class (`missing_classes`: classes without pool
    samples), a trained student, and a gap to recover (ceiling above weak).
    """
    if ceiling_steps == 0:
        return "the ground-truth ceiling ran no training step"
    if student_steps == 0:
        return "the student ran no training step at this level"
    if missing_classes:
        return (
            f"the transfer pool has no samples of class(es) {list(missing_classes)}, so the "
            "ceiling, trained on the pool's ground truth, cannot learn them and is no ceiling"
        )
    if ceiling_acc <= weak_acc:
        return (
            f"the ceiling accuracy ({ceiling_acc:.4f}) is not above the weak accuracy "
            f"({weak_acc:.4f}): there is no gap to recover"
        )
    return None


def _most_likely_teacher(teacher_probs: torch.Tensor, proxy: torch.Tensor) -> torch.Tensor:
    """argmax_k log q_k(proxy) under a uniform gate."""
    n, k, _ = teacher_probs.shape
    index = proxy.view(n, 1, 1).expand(n, k, 1)
    return teacher_probs.gather(2, index).squeeze(2).argmax(dim=1)


def _check_shapes(student_logits: torch.Tensor, teacher_probs: torch.Tensor) -> None:
    if student_logits.dim() != 2 or teacher_probs.dim() != 3:
        raise ValueError(
            f"expected student_logits [N, C] and teacher_probs [N, K, C], got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_probs.shape)}"
        )
    n, c = student_logits.shape
    if teacher_probs.shape[0] != n or teacher_probs.shape[2] != c:
        raise ValueError(
            f"student_logits {tuple(student_logits.shape)} and teacher_probs "
            f"{tuple(teacher_probs.shape)} disagree: expected teacher_probs [{n}, K, {c}]"
        )


def _require(value: torch.Tensor | None, name: str, rule: str) -> torch.Tensor:
    if value is None:
        raise ValueError(f"assignment rule {rule!r} needs `{name}`")
    return value
