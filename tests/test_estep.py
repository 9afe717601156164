"""The chunked E-step equals the whole-pool functions bit for bit; compact teacher outputs
(float16, logits) are read a chunk at a time and give the same assignment."""

from __future__ import annotations

import dataclasses
import itertools
from types import SimpleNamespace

import pytest
import torch

from csl_avalanche.benchmarks.features import FeatureSet, load_features, save_features
from csl_avalanche.benchmarks.streams import generalist_routed_labels, make_csl_benchmark
from csl_avalanche.core import cosupervision as cs
from csl_avalanche.core.estep import (
    CHUNK_MEMORY,
    SOFT_TARGET_DTYPE,
    aligned,
    chunk_rows,
    level_results,
)
from csl_avalanche.models.fit import predict
from csl_avalanche.training.plugins.cosupervision import CoSupervisionPlugin

N, K, C = 53, 3, 7
CHUNKS = (1, 5, 17, 52, 53, 100)  # most do not divide N


def pool(dtype: torch.dtype = torch.float32, logits: bool = False) -> tuple[FeatureSet, dict]:
    """A pool of N samples, a generalist and K specialists over C classes (each owning a block
    of classes), with ties: student logits on a coarse grid and repeated rows give equal
    losses, so the selection's tie rule matters."""
    g = torch.Generator().manual_seed(0)
    teacher_logits = 3 * torch.randn(1 + K, N, C, generator=g)
    student = torch.randint(-2, 3, (N, C), generator=g).float()
    student[10:20] = student[0]  # equal rows: equal losses
    stored = teacher_logits if logits else teacher_logits.softmax(dim=-1)
    subdomains = [list(range(C)), [0, 1, 2], [3, 4], [5, 6]]
    truth = torch.randint(C, (N,), generator=g)
    features = FeatureSet(
        train_x=torch.zeros(N, 2),
        train_y=truth,
        test_x=torch.zeros(C, 2),
        test_y=torch.arange(C),
        teacher_train_probs=stored.to(dtype),
        teacher_test_probs=stored[:, :C].to(dtype),
        levels=[[0], [1, 2, 3]],
        subdomains=subdomains,
        teacher_logits=logits,
    )
    return features, {"student": student, "truth": truth}


def whole_pool(features: FeatureSet, student, truth, rule, labels, criterion):
    """Today's functions on whole tensors: assignment, hard and soft targets, kept samples."""
    hierarchy = features.hierarchy
    probs = features.teacher_probs("train", hierarchy.teacher_slice(1)).permute(1, 0, 2)
    owner = hierarchy.class_to_teacher(1)
    if rule == "ensemble":
        assignment, target = None, probs.mean(dim=1)
    elif rule == "posterior":
        weights = cs.posterior_weights(student, probs)
        assignment, target = weights.argmax(dim=1), cs.mixture_targets(weights, probs)
    elif rule == "learned":  # routed as class_partition, the weights' uniform start
        assignment = cs.assign_teachers(student, probs, "class_partition", class_to_teacher=owner)
        target = probs.float().mean(dim=1)
    else:
        targets = truth if rule == "oracle" else None
        assignment = cs.assign_teachers(
            student, probs, rule, class_to_teacher=owner, targets=targets
        )
        target = cs.gather_targets(probs, assignment)
    hard, soft = cs.make_targets(target, labels)
    soft = None if soft is None else soft.to(SOFT_TARGET_DTYPE)  # what the E-step keeps
    return assignment, hard, soft, cs.select_confident(student, hard, criterion)


def chunked(features: FeatureSet, student, truth, rule, labels, criterion, chunk_size):
    hierarchy = features.hierarchy
    results = level_results(
        features,
        hierarchy.teacher_slice(1),
        lambda rows: student[rows],
        rule=rule,
        labels=labels,
        criterion=criterion,
        class_to_teacher=hierarchy.class_to_teacher(1),
        targets=truth if rule == "oracle" else None,
        chunk_size=chunk_size,
    )
    return results.assignment, results.labels, results.soft, cs.select_kept(results)


def same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))


@pytest.mark.parametrize("rule", cs.TARGET_RULES)
@pytest.mark.parametrize("labels", cs.LABEL_KINDS)
def test_chunked_equals_the_whole_pool_bit_for_bit(rule, labels):
    features, data = pool()
    for criterion in ("all", "top1", "top3"):
        expected = whole_pool(features, data["student"], data["truth"], rule, labels, criterion)
        for chunk_size in CHUNKS:
            got = chunked(
                features, data["student"], data["truth"], rule, labels, criterion, chunk_size
            )
            assert all(map(same, got, expected)), (criterion, chunk_size)


def test_row_ranges_received_in_place_equal_one_pass():
    """What a data-parallel E-step does: each process its own rows of results for all rows
    (`whole`), the others' rows received into them, then one global selection."""
    features, data = pool()
    hierarchy = features.hierarchy
    kwargs = dict(
        rule="kl",
        labels="soft",
        criterion="top2",
        class_to_teacher=hierarchy.class_to_teacher(1),
        chunk_size=3,
        batch_size=4,
    )
    student = lambda rows: data["student"][rows]  # noqa: E731
    whole = level_results(features, hierarchy.teacher_slice(1), student, **kwargs)
    shares = (range(0, 20), range(20, 20), range(20, 44), range(44, N))  # one process has none
    parts = [
        level_results(
            features, hierarchy.teacher_slice(1), student, positions=rows, whole=True, **kwargs
        )
        for rows in shares
    ]
    received = parts[0]
    for part, rows in zip(parts[1:], shares[1:], strict=True):
        for into, column in zip(received._tensors(), part._tensors(), strict=True):
            into[rows.start : rows.stop] = column[rows.start : rows.stop]
    assert all(map(same, received._tensors(), whole._tensors()))
    assert torch.equal(cs.select_kept(received), cs.select_kept(whole))


def real_student_pool(width: int = 16) -> tuple[FeatureSet, torch.nn.Module]:
    """`pool()` with inputs, and a small network whose outputs on a row depend, in their last
    bits, on how many rows share its batch (as matrix products do)."""
    features, _ = pool()
    g = torch.Generator().manual_seed(1)
    features = dataclasses.replace(features, train_x=torch.randn(N, width, generator=g))
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(width, 32), torch.nn.ReLU(), torch.nn.Linear(32, C)
    ).eval()
    return features, model


def test_a_real_students_logits_are_those_of_one_pass_whatever_the_chunks_and_shares():
    """The student computes its logits inside the chunks: it must see the evaluation batches
    of one pass over the pool (chunks smaller than a batch included) for the results to be
    bit-identical."""
    features, model = real_student_pool()
    batch = 8
    with torch.no_grad():
        one_pass = predict(model, features.train_x, batch_size=batch)
        assert not torch.equal(model(features.train_x[:3]), one_pass[:3])  # batch size matters
    hierarchy = features.hierarchy
    kwargs = dict(rule="kl", labels="soft", criterion="top2", batch_size=batch)
    kwargs["class_to_teacher"] = hierarchy.class_to_teacher(1)
    teachers = hierarchy.teacher_slice(1)

    def student(rows):
        with torch.no_grad():
            return predict(model, features.train_x[rows], batch_size=batch)

    expected = level_results(
        features, teachers, lambda rows: one_pass[rows], chunk_size=N, **kwargs
    )
    for chunk_size in (1, 3, 8, 13, 24, N):
        got = level_results(features, teachers, student, chunk_size=chunk_size, **kwargs)
        assert all(map(same, got._tensors(), expected._tensors())), chunk_size
        # Two processes' shares, cut at a multiple of the batch.
        parts = [
            level_results(
                features, teachers, student, chunk_size=chunk_size, positions=rows, **kwargs
            )
            for rows in (range(0, 24), range(24, N))
        ]
        for column, left, right in zip(
            expected._tensors(), parts[0]._tensors(), parts[1]._tensors(), strict=True
        ):
            assert same(column, None if left is None else torch.cat([left, right]))


class BudgetedTeachers:
    """Teacher outputs of many classes that only shapes matter for (one value, broadcast):
    a chunk that would take more than the E-step's memory budget fails its read."""

    def __init__(self, n: int, teachers: int, classes: int, batch_size: int):
        self.train_y = torch.zeros(n, dtype=torch.long)
        self.train_x = torch.zeros(n, 2)
        self.num_classes, self.by_domain = classes, False
        self.teachers, self.batch_size = teachers, batch_size
        self.reads: list[int] = []

    def teacher_probs(self, split, teachers, rows, device=None):
        n = len(range(self.train_y.numel())[rows])
        per_row = 4 * self.num_classes * (3 * self.teachers + 5)
        logits = 4 * self.batch_size * self.num_classes  # the student's batch, held meanwhile
        assert n * per_row + logits <= CHUNK_MEMORY, f"a chunk of {n} rows is over the budget"
        self.reads.append(n)
        return torch.tensor(1 / self.num_classes).expand(self.teachers, n, self.num_classes)

    def units(self, split):
        return self.train_y


def test_the_plugins_chunks_keep_the_memory_budget_with_many_classes():
    """ImageNet-21k's 21,841 classes and 16 teachers: a row of teacher outputs takes 4.6 MB,
    so fewer rows than one evaluation batch fit in the budget; the student still runs on
    whole batches."""
    batch, classes, teachers = 1024, 21841, 16
    features = BudgetedTeachers(batch + 100, teachers, classes, batch)
    plugin = CoSupervisionPlugin(features, denoise="all")
    model = torch.nn.Linear(2, classes)
    strategy = SimpleNamespace(model=model, eval_mb_size=batch, train_mb_size=16, device="cpu")
    experience = SimpleNamespace(
        samples=None,
        num_teachers=teachers,
        teachers=slice(0, teachers),
        routed=True,
        owner=torch.arange(classes) % teachers,
    )
    calls = []
    student = plugin._student(strategy)
    plugin._student = lambda strategy: lambda rows: calls.append(rows) or student(rows)
    with torch.no_grad():
        results, _ = plugin._relabel(strategy, experience, "level 1")
    assert len(results.labels) == batch + 100
    assert sum(features.reads) == batch + 100 and max(features.reads) < batch
    assert calls == [slice(0, batch), slice(batch, batch + 100)]  # whole evaluation batches


@pytest.mark.parametrize("teachers", [slice(1, 4), [0, 2, 3]], ids=["level", "list"])
def test_a_subset_of_samples_reads_its_own_rows(teachers):
    """A class-incremental arrival covers some pool rows, in any order, and its teachers may be
    any list: every sample's results are those of its row in a pass over the whole pool."""
    features, data = pool()
    owner = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    kwargs = dict(rule="kl", labels="soft", criterion="top2", class_to_teacher=owner)
    student = lambda rows: data["student"][rows]  # noqa: E731
    samples = torch.tensor([40, 3, 17, 18, 5, 52, 0, 11, 29])
    whole = level_results(features, teachers, student, chunk_size=N, **kwargs)
    subset = level_results(features, teachers, student, samples=samples, chunk_size=4, **kwargs)
    for got, expected in zip(subset._tensors(), whole._tensors(), strict=True):
        assert torch.equal(got, expected[samples])


def test_selection_is_global_with_ties_to_the_lower_index():
    # M = 2 labels in the top 1; losses 0.5 (rows 1, 3) and 0.2 (row 2): keep rows 2 and 1.
    results = cs.SampleResults(
        assignment=None,
        labels=torch.zeros(5, dtype=torch.long),
        soft=None,
        losses=torch.tensor([0.9, 0.5, 0.2, 0.5, 0.7]),
        in_topk=torch.tensor([True, False, False, False, True]),
    )
    assert cs.select_kept(results).tolist() == [False, True, True, False, False]


def test_level_zero_keeps_everything_with_the_generalists_labels():
    features, _ = pool()
    results = level_results(
        features, slice(0, 1), None, rule="kl", labels="hard", criterion="top1", chunk_size=6
    )
    generalist = features.teacher_probs("train", [0])[0]
    assert torch.equal(results.labels, generalist.argmax(dim=1))
    assert results.assignment.tolist() == [0] * N
    assert cs.select_kept(results).all()


def test_default_labels_are_lazy_and_chunked(monkeypatch):
    features, _ = pool()
    benchmark = make_csl_benchmark(features)
    calls = []
    monkeypatch.setattr(
        "csl_avalanche.benchmarks.streams.generalist_routed_labels",
        lambda *args: calls.append(args) or generalist_routed_labels(*args),
    )
    experience = benchmark.train_stream[1]
    assert not calls  # building the stream computed no labels
    routed = experience.dataset.targets
    assert len(calls) == 1
    # The generalist's argmax routes each sample to the specialist owning that class.
    probs = features.teacher_probs("train").permute(1, 0, 2)
    owner = features.hierarchy.class_to_teacher(1)
    teacher = owner[probs[:, 0].argmax(dim=1)] + 1
    expected = probs[torch.arange(N), teacher].argmax(dim=1)
    assert list(routed) == expected.tolist()


def clear_choices(features: FeatureSet, student: torch.Tensor, rule: str) -> torch.Tensor:
    """The samples whose best teacher beats the second best by a clear margin under `rule`
    (its score: the likelihood of the student's class, or minus the cross-entropy)."""
    probs = features.teacher_probs("train", slice(1, None)).permute(1, 0, 2)
    if rule == "likelihood":
        index = student.argmax(dim=1).view(N, 1, 1).expand(N, K, 1)
        score = probs.gather(2, index).squeeze(2)
    else:
        score = torch.einsum("nc,nkc->nk", student.softmax(dim=1), probs.clamp_min(1e-12).log())
    best = score.topk(2, dim=1).values
    return best[:, 0] - best[:, 1] > 1e-2


@pytest.mark.parametrize("logits", [False, True], ids=["float16 probs", "float16 logits"])
def test_compact_teacher_outputs_load_and_assign_as_float32(tmp_path, logits):
    """A features file with float16 probabilities or logits stays compact when loaded, and
    gives the same assignment as float32 probabilities wherever the choice is clear."""
    reference, data = pool(torch.float32)
    features, _ = pool(torch.float16, logits=logits)
    save_features(features, tmp_path / "compact.pt")
    assert ("teacher_train_logits" in torch.load(tmp_path / "compact.pt")) == logits
    loaded = load_features(tmp_path / "compact.pt")
    assert loaded.teacher_train_probs.dtype == torch.float16
    assert loaded.teacher_logits == logits
    for rule in ("class_partition", "likelihood", "kl"):
        got = chunked(loaded, data["student"], None, rule, "hard", "all", 8)[0]
        want = chunked(reference, data["student"], None, rule, "hard", "all", 8)[0]
        clear = clear_choices(reference, data["student"], rule)
        assert clear.float().mean() > 0.8
        assert torch.equal(got[clear], want[clear]), rule


def test_logits_are_read_as_their_softmax():
    probs, _ = pool()
    logits, _ = pool(logits=True)
    for rows, teachers in itertools.product((slice(0, 5), slice(7, N)), (slice(None), [3, 1])):
        assert torch.equal(
            logits.teacher_probs("train", teachers, rows),
            probs.teacher_probs("train", teachers, rows),
        )


def test_chunks_fit_the_memory_budget_and_align_with_evaluation_batches():
    assert chunk_rows(8, 1000, memory=2**20) == 2**20 // (4 * 1000 * 29)
    assert chunk_rows(8, 10**6, memory=1) == 1
    # Fewer rows than a batch of 1024 fit: the batch's logits (4 * 1024 * 21841 bytes) first.
    per_row, logits = 4 * 21841 * (3 * 16 + 5), 4 * 1024 * 21841
    assert chunk_rows(16, 21841, batch_size=1024) == (CHUNK_MEMORY - logits) // per_row == 38
    assert chunk_rows(8, 1000, memory=2**20, batch_size=8) == 2**20 // (4 * 1000 * 29)
    assert aligned(2500, 1024) == 2048
    assert aligned(100, 1024) == 1024
