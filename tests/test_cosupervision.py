"""The CSL math against cases computed by hand."""

import math

import pytest
import torch

from csl_avalanche.core import cosupervision as cs


def probs(*rows):
    return torch.tensor(rows, dtype=torch.float32)


# Two teachers over four classes: teacher 0 owns {0, 1}, teacher 1 owns {2, 3}.
OWNER = torch.tensor([0, 0, 1, 1])
TEACHERS = torch.stack(
    [
        probs([0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.7, 0.1]),  # sample 0: teacher 0, teacher 1
        probs([0.1, 0.6, 0.2, 0.1], [0.1, 0.1, 0.1, 0.7]),  # sample 1
    ]
)  # [N=2, K=2, C=4]


def test_class_partition_routes_by_the_students_argmax():
    logits = torch.tensor([[0.0, 0.0, 3.0, 0.0], [5.0, 0.0, 0.0, 0.0]])
    z = cs.assign_teachers(logits, TEACHERS, "class_partition", class_to_teacher=OWNER)
    assert z.tolist() == [1, 0]


def test_class_partition_falls_back_to_likelihood_for_an_uncovered_class():
    owner = torch.tensor([0, 0, 1, -1])  # nobody owns class 3
    logits = torch.tensor([[0.0, 0.0, 0.0, 9.0], [0.0, 0.0, 0.0, 9.0]])
    z = cs.assign_teachers(logits, TEACHERS, "class_partition", class_to_teacher=owner)
    # q(class 3): sample 0 -> 0.1 vs 0.1 (tie, lower index 0); sample 1 -> 0.1 vs 0.7 -> 1
    assert z.tolist() == [0, 1]


def test_likelihood_picks_the_teacher_most_confident_in_the_proxy_label():
    logits = torch.tensor([[0.0, 4.0, 0.0, 0.0], [0.0, 0.0, 4.0, 0.0]])
    z = cs.assign_teachers(logits, TEACHERS, "likelihood")
    # sample 0, class 1: 0.1 vs 0.1 -> tie -> 0; sample 1, class 2: 0.2 vs 0.1 -> 0
    assert z.tolist() == [0, 0]


def test_kl_picks_the_teacher_closest_to_the_student():
    student = torch.log(probs([0.1, 0.1, 0.7, 0.1], [0.1, 0.6, 0.2, 0.1]))
    z = cs.assign_teachers(student, TEACHERS, "kl")
    # sample 0 equals teacher 1 (KL 0); sample 1 equals teacher 0 (KL 0)
    assert z.tolist() == [1, 0]


def test_posterior_weights_and_mixture_by_hand():
    # Sample 0: the student predicts class 0; the teachers give it 0.6 and 0.2, so r = 3/4, 1/4.
    # Sample 1: it predicts class 2, given 0.1 and 0.35 by the teachers: r = 2/9, 7/9. The
    # mixture's argmax is class 0, the first teacher's class: the likelihood rule would take
    # the second teacher alone, whose label is class 1.
    teachers = torch.tensor(
        [
            [[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]],
            [[0.9, 0.0, 0.1], [0.3, 0.35, 0.35]],
        ]
    )
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    weights = cs.posterior_weights(logits, teachers)
    assert torch.allclose(weights, torch.tensor([[0.75, 0.25], [2 / 9, 7 / 9]]))
    mixture = cs.mixture_targets(weights, teachers)
    expected = torch.tensor(
        [[0.5, 0.275, 0.225], [0.2 + 7 / 30, 0.35 * 7 / 9, 0.1 * 2 / 9 + 0.35 * 7 / 9]]
    )
    assert torch.allclose(mixture, expected)
    results = cs.sample_results(logits, teachers, "posterior", "soft", "all")
    assert results.assignment.tolist() == [0, 1]  # argmax r: the likelihood rule's teacher
    assert results.labels.tolist() == [0, 0]
    assert torch.allclose(results.soft, expected)
    likelihood = cs.sample_results(logits, teachers, "likelihood", "hard", "all")
    assert likelihood.assignment.tolist() == [0, 1] and likelihood.labels.tolist() == [0, 1]


def test_posterior_gives_uniform_weights_where_no_teacher_gives_the_class_any_mass():
    teachers = torch.tensor([[[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]]])
    weights = cs.posterior_weights(torch.tensor([[0.0, 0.0, 1.0]]), teachers)
    assert weights.tolist() == [[0.5, 0.5]]


def test_posterior_equals_likelihood_in_hard_labels_when_one_teacher_dominates():
    g = torch.Generator().manual_seed(0)
    n, k, c = 200, 4, 6
    logits = torch.randn(n, c, generator=g)
    teachers = torch.rand(n, k, c, generator=g).softmax(dim=-1)
    predicted = logits.argmax(dim=1)
    dominant = torch.randint(k, (n,), generator=g)
    others = torch.ones(n, k, dtype=torch.bool)
    others[torch.arange(n), dominant] = False
    # Every other teacher gives the student's class a millionth of its usual mass.
    scale = torch.where(others, 1e-6, 1.0)
    teachers[torch.arange(n), :, predicted] *= scale
    posterior = cs.sample_results(logits, teachers, "posterior", "hard", "top2")
    likelihood = cs.sample_results(logits, teachers, "likelihood", "hard", "top2")
    assert torch.equal(posterior.assignment, dominant)
    assert torch.equal(posterior.assignment, likelihood.assignment)
    assert torch.equal(posterior.labels, likelihood.labels)
    assert torch.equal(cs.select_kept(posterior), cs.select_kept(likelihood))


def test_oracle_uses_the_true_class():
    logits = torch.zeros(2, 4)
    z = cs.assign_teachers(
        logits, TEACHERS, "oracle", class_to_teacher=OWNER, targets=torch.tensor([3, 1])
    )
    assert z.tolist() == [1, 0]


def test_rules_check_their_inputs():
    with pytest.raises(ValueError, match="needs `class_to_teacher`"):
        cs.assign_teachers(torch.zeros(2, 4), TEACHERS, "class_partition")
    with pytest.raises(ValueError, match="needs `targets`"):
        cs.assign_teachers(torch.zeros(2, 4), TEACHERS, "oracle", class_to_teacher=OWNER)
    with pytest.raises(ValueError, match="unknown assignment rule"):
        cs.assign_teachers(torch.zeros(2, 4), TEACHERS, "vote")
    with pytest.raises(ValueError, match=r"expected teacher_probs \[2, K, 5\]"):
        cs.assign_teachers(torch.zeros(2, 5), TEACHERS, "kl")


@pytest.mark.parametrize("rule", ["class_partition", "likelihood", "kl"])
def test_only_the_oracle_may_read_the_ground_truth(rule):
    with pytest.raises(ValueError, match=f"rule '{rule}' must not see the ground truth"):
        cs.assign_teachers(
            torch.zeros(2, 4), TEACHERS, rule, class_to_teacher=OWNER, targets=torch.tensor([3, 1])
        )


def test_gather_and_hard_versus_soft_targets():
    t = cs.gather_targets(TEACHERS, torch.tensor([1, 0]))
    assert torch.equal(t, probs([0.1, 0.1, 0.7, 0.1], [0.1, 0.6, 0.2, 0.1]))
    hard, no_vector = cs.make_targets(t, "hard")
    assert hard.tolist() == [2, 1]
    assert no_vector is None
    hard_soft, soft = cs.make_targets(t * 2, "soft")  # renormalised
    assert hard_soft.tolist() == [2, 1]
    assert torch.allclose(soft, t)


def test_select_confident_keeps_the_m_smallest_losses_ties_to_lower_index():
    logits = torch.tensor(
        [
            [0.0, 0.5, 0.0],  # label 1: in top-1, CE = log(e^.5 + 2) - .5 = 0.7944
            [0.0, 0.5, 0.0],  # the same: a tie with sample 0
            [2.0, 1.9, -10.0],  # label 1: not in top-1, but CE = 0.7444 is the smallest
            [3.0, 0.0, 0.0],  # label 2: not in top-1, CE = 3.0949
        ]
    )
    labels = torch.tensor([1, 1, 1, 2])
    # M = 2 samples have their label in the top-1; keep the 2 smallest CE: sample 2, then
    # samples 0 and 1 tie, and the lower index wins.
    assert cs.select_confident(logits, labels, "top1").tolist() == [True, False, True, False]
    # top-2: samples 0, 1, 2 in the top-2 (sample 3's label 2 is ranked last) -> M = 3
    assert cs.select_confident(logits, labels, "top2").tolist() == [True, True, True, False]
    assert cs.select_confident(logits, labels, "all").all()
    ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    assert ce[2] < ce[0] == ce[1] < ce[3]
    assert math.isclose(ce[0].item(), math.log(math.exp(0.5) + 2) - 0.5, rel_tol=1e-5)


def test_select_confident_checks_criterion_and_shapes():
    with pytest.raises(ValueError, match="unknown denoising criterion"):
        cs.select_confident(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), "best")
    with pytest.raises(ValueError, match="labels have shape"):
        cs.select_confident(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long), "top1")


def test_scaled_epochs_keeps_the_steps_constant():
    assert cs.scaled_epochs(20, 0.5) == 40
    assert cs.scaled_epochs(20, 1.0) == 20
    assert cs.scaled_epochs(20, 0.96) == 20  # int(20.83)
    assert cs.scaled_epochs(10, 0.1) == 100  # no float round-down to 99
    with pytest.raises(ValueError, match="keep rate"):
        cs.scaled_epochs(20, 0.0)


def test_pgr_arithmetic():
    assert cs.pgr(0.8, 0.6, 1.0) == pytest.approx(0.5)
    assert cs.pgr(0.5, 0.6, 1.0) == pytest.approx(-0.25)
    assert cs.pgr(1.0, 0.6, 1.0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="ceiling accuracy equals the weak accuracy"):
        cs.pgr(0.7, 0.6, 0.6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_matches_cpu():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 20, generator=g)
    teachers = torch.rand(500, 4, 20, generator=g).softmax(-1)
    owner = torch.arange(20) // 5
    for rule in ("class_partition", "likelihood", "kl"):
        cpu = cs.assign_teachers(logits, teachers, rule, class_to_teacher=owner)
        gpu = cs.assign_teachers(logits.cuda(), teachers.cuda(), rule, class_to_teacher=owner)
        assert gpu.device.type == "cuda"
        assert torch.equal(cpu, gpu.cpu())
    labels = logits.argmax(1).roll(1)
    assert torch.equal(
        cs.select_confident(logits, labels, "top3"),
        cs.select_confident(logits.cuda(), labels.cuda(), "top3").cpu(),
    )
