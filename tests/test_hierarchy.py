import pytest
import torch
from conftest import assert_clean_error, cli

from csl_avalanche.core.hierarchy import Hierarchy, HierarchyError

DIGITS = [
    [list(range(10))],
    [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9]],
    [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]],
]


def test_valid_hierarchy_and_its_indexing():
    h = Hierarchy(DIGITS, num_classes=10)
    assert h.teachers_per_level() == [1, 2, 5]
    assert h.num_teachers == 8
    assert h.teacher_slice(2) == slice(3, 8)
    assert h.class_to_teacher(1).tolist() == [0] * 6 + [1] * 4
    assert torch.equal(h.class_to_teacher(2), torch.arange(10) // 2)


def test_contiguous_blocks_like_the_paper():
    h = Hierarchy.contiguous_blocks(1000, [1, 2, 4, 8])
    assert h.teachers_per_level() == [1, 2, 4, 8]
    assert h.levels[3][0] == tuple(range(125))


@pytest.mark.parametrize(
    ("levels", "message"),
    [
        ([[[0, 1, 2]], [[0, 1], [1, 2]]], "class 1 is in subdomains 0 and 1"),
        ([[[0, 1, 2]], [[0], [1]]], r"does not cover classes \[2\]"),
        ([[[0, 1, 2]], [[0, 1, 2], []]], "level 1, subdomain 1 is empty"),
        ([[[0, 1, 2]], [[0, 1], [2, 3]]], "has class 3, outside 0..2"),
        ([[[0, 1, 2, 3]], [[0, 1], [2, 3]], [[0], [1, 2], [3]]], "spans subdomains"),
        ([[[0, 1], [2]]], "level 0 must hold exactly one generalist"),
        ([], "at least level 0"),
    ],
)
def test_invalid_hierarchies_say_what_is_wrong(levels, message):
    n = 4 if levels and 3 in levels[0][0] else 3
    with pytest.raises(HierarchyError, match=message):
        Hierarchy(levels, num_classes=n)


def test_teacher_lists_must_be_in_level_order():
    with pytest.raises(HierarchyError, match="in order"):
        Hierarchy.from_teacher_lists([[0], [2, 1]], [[0, 1], [0], [1]], 2)
    h = Hierarchy.from_teacher_lists([[0], [1, 2]], [[0, 1], [0], [1]], 2)
    assert h.levels == (((0, 1),), ((0,), (1,)))


@pytest.mark.parametrize(
    ("levels", "message"),
    [
        ([0, 1, 2], r"a list of levels, each a list of groups of classes.*got \[0, 1, 2\]"),
        ([[0, 1, 2]], r"e\.g\. \[\[\[0,1,2,3\]\],\[\[0,1\],\[2,3\]\]\]"),
        ([[["zero", "one", "two"]]], "as class indices; got"),
    ],
)
def test_levels_of_another_shape_or_with_names_are_refused(levels, message):
    with pytest.raises(HierarchyError, match=message):
        Hierarchy(levels, num_classes=3)


def test_groups_name_classes_by_index_or_name():
    names = ["cat", "dog", "fox"]
    assert Hierarchy.from_groups([[[0, "dog", 2]], [["cat"], [1, "fox"]]], 3, names).levels == (
        ((0, 1, 2),),
        ((0,), (1, 2)),
    )
    with pytest.raises(
        HierarchyError, match=r"names 'cow', which is not a class: the classes are "
    ):
        Hierarchy.from_groups([[["cow", "dog", "fox"]]], 3, names)
    with pytest.raises(HierarchyError, match=r"names 'one', .* the classes are 0\.\.2$"):
        Hierarchy.from_groups([[[0, "one", 2]]], 3)
    with pytest.raises(HierarchyError, match="a list of levels"):
        Hierarchy.from_groups([0, 1, 2], 3)


@pytest.mark.parametrize(
    ("override", "phrases"),
    [
        (
            "benchmark.hierarchy=[0,1,2]",
            ["benchmark.hierarchy must be", "a list of levels", "[[[0,1,2,3]],[[0,1],[2,3]]]"],
        ),
        (
            "benchmark.hierarchy=[[[zero,one,two,three,four,five,six,seven,eight,nine]]]",
            ["benchmark.hierarchy: level 0 names 'zero'", "the classes are 0..9"],
        ),
        (
            "benchmark.hierarchy=null",
            ["benchmark=digits has no hierarchy of its own", "benchmark.hierarchy", "0..9"],
        ),
    ],
)
def test_a_bad_hierarchy_for_digits_is_a_clean_error(tmp_path, override, phrases):
    assert_clean_error(cli(tmp_path / "run", override), *phrases)
