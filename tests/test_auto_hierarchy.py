"""`benchmark.hierarchy=auto`: the clustering on hand-made confusions, the probe that never
reads the pool's or the test split's labels, and a digits run that writes its hierarchy."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re

import pytest
import torch
from conftest import assert_clean_error, cli, features_from_config, make_feature_set
from hydra import compose, initialize_config_module
from test_image_benchmarks import write_class_tree

from csl_avalanche.benchmarks.confusion_probe import probe_confusion
from csl_avalanche.benchmarks.features import FeaturesFileError, load_features, save_features
from csl_avalanche.benchmarks.pipeline import SplitData
from csl_avalanche.benchmarks.sources import digits
from csl_avalanche.core.clustering import (
    check_sizes,
    class_affinity,
    confusion_matrix,
    hierarchy_from_confusion,
    merged_confusion,
    nested_groups,
)
from csl_avalanche.core.errors import ConfigError
from csl_avalanche.core.hierarchy import Hierarchy
from csl_avalanche.storage.cache import TensorCache

TINY = ["teacher.steps=30", "student.pretrain.steps=30", "strategy.epochs=1"]
AUTO = ["benchmark.hierarchy=auto", "benchmark.auto_levels=[2,5]"]


def blocks() -> torch.Tensor:
    """Six classes: {0, 1, 2} confused among themselves (0-1 most), {3, 4} with each other,
    5 with nothing."""
    return torch.tensor(
        [
            [10, 6, 2, 0, 0, 0],
            [6, 10, 2, 0, 0, 0],
            [2, 2, 14, 0, 0, 0],
            [0, 0, 0, 12, 4, 0],
            [0, 0, 0, 4, 12, 0],
            [0, 0, 0, 0, 0, 16],
        ]
    )


def test_confusion_matrix_counts_true_class_by_prediction():
    counts = confusion_matrix(torch.tensor([0, 1, 1, 2, 0]), torch.tensor([0, 0, 1, 2, 2]), 3)
    assert counts.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]


def test_affinity_is_row_normalised_symmetric_and_zero_on_the_diagonal():
    # Class 2 has no held-out samples: a zero row, no NaN.
    affinity = class_affinity(torch.tensor([[3, 1, 0], [2, 2, 0], [0, 0, 0]]))
    expected = torch.tensor([[0, (0.25 + 0.5) / 2, 0], [(0.25 + 0.5) / 2, 0, 0], [0, 0, 0]])
    assert torch.equal(affinity, expected.double())


def test_block_structure_gives_the_nested_groups_computed_by_hand():
    # Affinities: 0-1 1/3, 3-4 1/4, 0-2 and 1-2 1/9, everything else 0. On the way to 5, 4 and
    # 3 subdomains no group may exceed 2 classes: 0-1, then 3-4, then 2 can only pair with 5
    # (the never-confused class is not left alone). On the way to 2 the bound is 3, which no
    # merge of two pairs fits: the best merge anyway, {0,1}-{2,5} at 2/9 / 4.
    affinity = class_affinity(blocks())
    assert nested_groups(affinity, [2, 3, 4, 5, 6]) == [
        [[0, 1, 2, 5], [3, 4]],
        [[0, 1], [2, 5], [3, 4]],
        [[0, 1], [2], [3, 4], [5]],
        [[0, 1], [2], [3], [4], [5]],
        [[0], [1], [2], [3], [4], [5]],
    ]
    assert nested_groups(affinity, [3]) == [[[0, 1], [2, 5], [3, 4]]]  # any subset of sizes


def test_never_confused_classes_are_merged_in_index_order():
    # Class 0 is never confused; 2 and 3 are. Zero affinities tie: the smallest index goes first.
    confusion = torch.tensor([[5, 0, 0, 0], [0, 5, 0, 0], [0, 0, 4, 1], [0, 0, 1, 4]])
    assert nested_groups(class_affinity(confusion), [2, 3]) == [
        [[0, 1], [2, 3]],
        [[0], [1], [2, 3]],
    ]
    # Nothing confused: 0-1 first; then the bound (2) leaves 2-3 as the only merge.
    nothing = torch.zeros(4, 4, dtype=torch.long)
    assert nested_groups(class_affinity(nothing), [2, 3]) == [[[0, 1], [2, 3]], [[0, 1], [2], [3]]]


def test_exact_ties_break_towards_the_smallest_class_index():
    # 0-1 and 2-3 tie at 5/12: 0-1 merges first. On the way to 2 subdomains (bound 3) the pairs
    # may not merge (the 0-2 bridge would have joined them without the bound); 4 ties at 0 with
    # both pairs and joins the first one.
    confusion = torch.tensor(
        [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 2]]
    )
    confusion[0, 2] = confusion[2, 0] = 1  # a weaker bridge between the two pairs
    assert nested_groups(class_affinity(confusion), [2, 3, 4]) == [
        [[0, 1, 4], [2, 3]],
        [[0, 1], [2, 3], [4]],
        [[0, 1], [2], [3], [4]],
    ]


def _confusion(num_classes: int, pairs: dict[tuple[int, int], int]) -> torch.Tensor:
    """Ten held-out samples per class; `pairs[(i, j)]` of class i's are predicted as j."""
    confusion = torch.diag(torch.full((num_classes,), 10))
    for (i, j), count in pairs.items():
        confusion[i, j] += count
        confusion[i, i] -= count
    return confusion


def test_a_never_confused_class_is_paired_not_left_alone():
    # Ten classes; 6 is never confused (plain average linkage keeps it a singleton to the end).
    # Affinities: 0-1 .4, 2-3 .3, 4-5 .2, 7-8 .1, 1-2 .1, 5-7 .1, 8-9 .05.
    confusion = _confusion(
        10,
        {(0, 1): 4, (1, 0): 4, (2, 3): 3, (3, 2): 3, (4, 5): 2, (5, 4): 2, (7, 8): 1, (8, 7): 1}
        | {(1, 2): 2, (5, 7): 2, (8, 9): 1},
    )
    # To 5 (bound 2): 0-1, 2-3, 4-5, 7-8 (1-2 and 5-7 would break the bound), then 6-9, the
    # only merge left. To 2 (bound 5): {0,1}-{2,3} and {4,5}-{7,8} tie at .1 / 4, the first
    # goes first; then 4 + 2 and 4 + 4 both break the bound, so the best merge anyway:
    # {6,9}-{4,5,7,8} at .05 / 8 (the other two at 0).
    levels = nested_groups(class_affinity(confusion), [2, 5])
    assert levels == [
        [[0, 1, 2, 3], [4, 5, 6, 7, 8, 9]],
        [[0, 1], [2, 3], [4, 5], [6, 9], [7, 8]],
    ]
    assert Hierarchy([[list(range(10))], *levels], 10)  # nested


def test_no_group_exceeds_the_bound_of_its_cut():
    # Eight classes: {0, 1, 2} mutually confused (0-1 .4, 0-2 and 1-2 .3), 3-4 .2, 5-6 .1, 7
    # never. To 4 (bound ceil(8/4) = 2) the triple is refused: 0-1, 3-4, 5-6, then 2-7. To 2
    # (bound 4): {0,1}-{2,7} (.6 / 4), then {3,4}-{5,6}, the only merge within the bound.
    mutual = {(0, 1): 4, (1, 0): 4, (0, 2): 3, (2, 0): 3, (1, 2): 3, (2, 1): 3}
    confusion = _confusion(8, mutual | {(3, 4): 2, (4, 3): 2, (5, 6): 1, (6, 5): 1})
    levels = nested_groups(class_affinity(confusion), [2, 4])
    assert levels == [[[0, 1, 2, 7], [3, 4, 5, 6]], [[0, 1], [2, 7], [3, 4], [5, 6]]]
    assert [max(map(len, level)) for level in levels] == [4, 2]


def test_when_the_bound_blocks_every_merge_the_best_merge_is_taken():
    # Twelve classes in four mutually confused triples (.2 within); the triples fit the bound
    # ceil(12/3) = 4, but no two of them do. Across: 2-3 .05, 8-9 .1, so the best merge
    # anyway joins {6,7,8} and {9,10,11} (.1 / 9 against .05 / 9), not the first pair.
    triples = {
        (a + i, a + j): 2 for a in range(0, 12, 3) for i in range(3) for j in range(3) if i != j
    }
    confusion = _confusion(12, triples | {(2, 3): 1, (8, 9): 2})
    assert nested_groups(class_affinity(confusion), [3]) == [
        [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9, 10, 11]]
    ]


@pytest.mark.parametrize("seed", range(5))
def test_any_sizes_give_a_valid_hierarchy(seed):
    g = torch.Generator().manual_seed(seed)
    confusion = torch.randint(0, 5, (9, 9), generator=g)
    confusion[:, 4] = confusion[4] = 0  # a class never seen confused, nor predicted
    sizes = sorted(torch.randperm(8, generator=g)[:3].add(2).tolist())
    hierarchy = hierarchy_from_confusion(confusion, sizes)
    assert isinstance(hierarchy, Hierarchy)  # validated: partitions, each refining the last
    assert hierarchy.teachers_per_level() == [1, *sizes]
    assert Hierarchy(hierarchy.as_lists(), 9) == hierarchy
    # The size bound: on the way from the finer level (the classes, for the finest) to k
    # groups, a merge may not make more than ceil(9 / k) classes unless no two groups fit
    # together any more; the bound then holds for no later merge either. So every group the
    # level made keeps the bound, or the level's groups are pairwise too large to merge.
    levels = hierarchy.as_lists()[1:]
    finer_levels = [*levels[1:], [[c] for c in range(9)]]
    for level, finer in zip(levels, finer_levels, strict=True):
        bound = math.ceil(9 / len(level))
        made = [group for group in level if group not in finer]
        stuck = all(len(a) + len(b) > bound for a, b in itertools.combinations(level, 2))
        assert stuck or all(len(group) <= bound for group in made), (level, bound)


@pytest.mark.parametrize("sizes", [[5, 2], [2, 2], [1, 3], [2, 7], [], [2.5]])
def test_invalid_sizes_are_refused_naming_the_setting(sizes):
    with pytest.raises(ConfigError, match=r"benchmark\.auto_levels=.*strictly increasing.*2\.\.6"):
        nested_groups(class_affinity(blocks()), sizes)


@pytest.mark.parametrize("num_classes", [2, 3, 4, 6, 12])
def test_the_sizes_an_error_suggests_are_valid(num_classes):
    with pytest.raises(ConfigError) as refused:
        check_sizes([num_classes + 1], num_classes)
    suggested = re.search(r"e\.g\. benchmark\.auto_levels=(\[[\d,]+\])", str(refused.value))
    check_sizes(json.loads(suggested.group(1)), num_classes)


def test_a_size_bound_below_two_says_to_drop_the_automatic_hierarchy():
    with pytest.raises(ConfigError, match=r"no level fits .* drop benchmark\.hierarchy=auto$"):
        check_sizes([2], 1)


def suggested_holdout(message: str) -> float:
    return float(re.search(r"use benchmark\.auto_holdout=([\d.e-]+) or", message).group(1))


def held_out_per_class(holdout: float) -> tuple[list[int], list[int]]:
    """(examples per class, held out per class) of a probe on 5, 8 and 12 examples."""
    y = torch.tensor([0] * 5 + [1] * 8 + [2] * 12)
    x = torch.nn.functional.one_hot(y).float()
    confusion = probe_confusion(
        x,
        y,
        lambda: torch.nn.Linear(3, 3),
        num_classes=3,
        holdout=holdout,
        steps=2,
        batch_size=4,
        lr=0.1,
        seed=0,
    )
    return y.bincount().tolist(), confusion.sum(dim=1).tolist()


def test_a_holdout_that_empties_either_part_is_refused_with_a_value_that_works():
    with pytest.raises(ConfigError, match=r"holds out no example .* 5 in its smallest") as low:
        held_out_per_class(0.01)
    _, held_out = held_out_per_class(suggested_holdout(str(low.value)))
    assert min(held_out) >= 1  # every class held out
    with pytest.raises(ConfigError, match="holds out the whole teacher split") as high:
        held_out_per_class(0.99)
    counts, held_out = held_out_per_class(suggested_holdout(str(high.value)))
    assert all(n > h for n, h in zip(counts, held_out, strict=True))  # every class trains


@pytest.mark.parametrize(
    ("holdout", "phrases"),
    [
        ("0.001", ["benchmark.auto_holdout=0.001 holds out no example", "=0.012 or more"]),
        ("0.999", ["benchmark.auto_holdout=0.999 holds out the whole", "=0.988 or less"]),
    ],
)
def test_a_digits_holdout_that_empties_a_part_is_a_clean_error(tmp_path, holdout, phrases):
    outcome = cli(tmp_path / "run", *AUTO, f"benchmark.auto_holdout={holdout}", *TINY)
    assert_clean_error(outcome, *phrases)


def test_auto_holdout_without_the_automatic_hierarchy_is_refused(tmp_path):
    outcome = cli(tmp_path / "run", "benchmark.auto_holdout=0.3")
    assert_clean_error(outcome, "benchmark.auto_holdout=0.3", "add benchmark.hierarchy=auto")


def test_two_classes_are_told_a_size_that_is_valid(tmp_path):
    root = tmp_path / "data"
    write_class_tree(root, ["cat", "dog"], per_class=6)
    overrides = ["benchmark=imagefolder", f"data.root={root}", "benchmark.hierarchy=auto"]
    refused = cli(tmp_path / "run", *overrides, "benchmark.auto_levels=[3]")
    assert_clean_error(refused, "benchmark.auto_levels=[3]", "in 2..2", "auto_levels=[2]")


def test_merged_confusion_sums_over_groups_of_classes():
    merged = merged_confusion(blocks(), [[0, 3], [1, 2, 4], [5]])
    assert merged.tolist() == [[22, 12, 0], [12, 40, 0], [0, 0, 16]]
    assert merged.sum() == blocks().sum()


# --- the probe: teacher data only -----------------------------------------------------------


def _digits_cfg(*overrides: str):
    with initialize_config_module("csl_avalanche.configs", version_base="1.3"):
        return compose("config", [*AUTO, *TINY, *overrides])


def _auto_hierarchy_with(tmp_path, monkeypatch, relabel) -> list:
    """The hierarchy digits' source picks when `relabel(split)` changes the split's labels,
    computed afresh (its own cache folder)."""
    split_tensors = digits.split_tensors
    monkeypatch.setattr(digits, "split_tensors", lambda *args: relabel(split_tensors(*args)))
    cache = TensorCache(tmp_path / relabel.__name__)
    return features_from_config(_digits_cfg(), cache, seed=0).hierarchy.as_lists()


def _permuted(labelled: tuple[torch.Tensor, torch.Tensor], seed: int):
    x, y = labelled
    return x, y[torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))]


def test_the_auto_hierarchy_never_reads_pool_or_test_labels(tmp_path, monkeypatch, single_threaded):
    def same(split):
        return split

    def shuffled_pool_and_test(split):
        return SplitData(
            split.pretrain, split.teachers, _permuted(split.pool, 1), _permuted(split.test, 2)
        )

    def shuffled_teachers(split):  # the control: the teacher split's labels do matter
        return SplitData(split.pretrain, _permuted(split.teachers, 3), split.pool, split.test)

    chosen = _auto_hierarchy_with(tmp_path, monkeypatch, same)
    assert len(chosen) == 3 and len(chosen[1]) == 2 and len(chosen[2]) == 5
    assert _auto_hierarchy_with(tmp_path, monkeypatch, shuffled_pool_and_test) == chosen
    assert _auto_hierarchy_with(tmp_path, monkeypatch, shuffled_teachers) != chosen


# --- the command line -----------------------------------------------------------------------


def test_a_digits_run_writes_its_auto_hierarchy_and_resumes_with_it(tmp_path, single_threaded):
    run_dir = tmp_path / "run"
    first = cli(run_dir, *AUTO, *TINY)
    assert first.code == 0, first.err
    results = json.loads((run_dir / "results.json").read_text())
    levels = results["hierarchy"]
    assert [len(level) for level in levels] == [1, 2, 5]
    Hierarchy(levels, 10)  # a valid hierarchy
    assert "hierarchy_names" not in results  # digits' classes have no names
    assert len(results["levels"]) == 3
    again = cli(run_dir, *AUTO, *TINY)  # the same command: the finished run, not rerun
    assert again.code == 0, again.err
    assert json.loads((run_dir / "results.json").read_text())["hierarchy"] == levels
    other = cli(run_dir, "benchmark.hierarchy=auto", "benchmark.auto_levels=[3,5]", *TINY)
    assert_clean_error(other, "another configuration", "benchmark.auto_levels: [2, 5] -> [3, 5]")


def test_the_hand_picked_hierarchy_is_written_too(tmp_path, single_threaded):
    outcome = cli(tmp_path / "run", *TINY, "strategy=w2s")
    assert outcome.code == 0, outcome.err
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["hierarchy"][2] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]


def test_more_subdomains_than_classes_are_refused_before_training(tmp_path):
    outcome = cli(tmp_path / "run", "benchmark.hierarchy=auto", "benchmark.auto_levels=[2,12]")
    assert_clean_error(outcome, "benchmark.auto_levels=[2, 12]", "2..10", "[2,5]")
    assert not list((tmp_path / "cache").glob("*.pt"))  # nothing trained


def test_class_names_travel_through_a_features_file_into_hierarchy_names(tmp_path):
    from csl_avalanche.experiments.scenario import hierarchy_entry

    named = dataclasses.replace(make_feature_set(), class_names=["a", "b", "c", "d"])
    save_features(named, tmp_path / "f.pt")
    loaded = load_features(tmp_path / "f.pt")
    assert hierarchy_entry(loaded) == {
        "hierarchy": [[[0, 1, 2, 3]], [[0, 1], [2, 3]]],
        "hierarchy_names": [[["a", "b", "c", "d"]], [["a", "b"], ["c", "d"]]],
    }
    save_features(dataclasses.replace(named, class_names=["a"]), tmp_path / "bad.pt")
    with pytest.raises(FeaturesFileError, match="class_names must be a list of 4 strings"):
        load_features(tmp_path / "bad.pt")
