"""The teacher hierarchy: levels of subdomains (class sets), each refining the one above.

Level 0 is one generalist over all classes; each subdomain of level l is the union of some
subdomains of level l+1. Teachers are numbered globally in level order (level 0 is teacher 0,
then the teachers of level 1, ...), which is also the order of the first axis of cached teacher
outputs. When subdomains are input domains (DomainNet), the same structure partitions domain
indices instead of classes; "classes" then reads "domains".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from csl_avalanche.core.errors import ConfigError


class HierarchyError(ConfigError):
    """A hierarchy whose levels do not partition the classes or do not refine each other."""


@dataclass(frozen=True)
class Hierarchy:
    """`levels[l][k]` is the sorted tuple of classes of teacher k at level l."""

    levels: tuple[tuple[tuple[int, ...], ...], ...]
    num_classes: int

    def __init__(self, levels: Sequence[Sequence[Sequence[int]]], num_classes: int):
        try:
            frozen = tuple(
                tuple(tuple(sorted(int(c) for c in sub)) for sub in lvl) for lvl in levels
            )
        except (TypeError, ValueError):  # not nested three deep, or a member not an index
            raise HierarchyError(f"{SHAPE}, as class indices; got {_brief(levels)}") from None
        object.__setattr__(self, "levels", frozen)
        object.__setattr__(self, "num_classes", int(num_classes))
        _validate(self.levels, self.num_classes)

    @classmethod
    def contiguous_blocks(cls, num_classes: int, teachers_per_level: Sequence[int]) -> Hierarchy:
        """Blocks of contiguous class indices, as in the paper (e.g. 1 -> 2 -> 4 -> 8)."""
        levels = []
        for k in teachers_per_level:
            if not 1 <= k <= num_classes:
                raise HierarchyError(f"cannot split {num_classes} classes into {k} blocks")
            bounds = [round(i * num_classes / k) for i in range(k + 1)]
            levels.append([list(range(bounds[i], bounds[i + 1])) for i in range(k)])
        return cls(levels, num_classes)

    @classmethod
    def from_groups(
        cls,
        levels: Sequence[Sequence[Sequence[int | str]]],
        num_classes: int,
        names: Sequence[str] = (),
    ) -> Hierarchy:
        """Levels whose subdomains list members by index or, where the classes have `names`
        (e.g. class folders), by name."""
        if not is_levels(levels):
            raise HierarchyError(f"{SHAPE}; got {_brief(levels)}")
        index = {name: i for i, name in enumerate(names)}
        resolved = []
        for lvl_idx, level in enumerate(levels):
            resolved.append([])
            for group in level:
                members = []
                for member in group:
                    if isinstance(member, str) and member in index:
                        members.append(index[member])
                    elif isinstance(member, int) and not isinstance(member, bool):
                        members.append(member)
                    else:
                        shown = list(names)[:10] + (["..."] if len(names) > 10 else [])
                        named = f", or their names {shown}" if names else ""
                        raise HierarchyError(
                            f"level {lvl_idx} names {member!r}, which is not a class: the "
                            f"classes are 0..{num_classes - 1}{named}"
                        )
                resolved[-1].append(members)
        return cls(resolved, num_classes)

    @classmethod
    def from_teacher_lists(
        cls,
        levels: Sequence[Sequence[int]],
        subdomains: Sequence[Sequence[int]],
        num_classes: int,
    ) -> Hierarchy:
        """Build from the features-file form: teacher indices per level, classes per teacher.

        Teachers must be numbered in level order (0, then level 1's, ...).
        """
        flat = [t for lvl in levels for t in lvl]
        if flat != list(range(len(subdomains))):
            raise HierarchyError(
                f"`levels` must list every teacher once, in order 0..{len(subdomains) - 1} "
                f"(level 0 first); got {list(levels)}"
            )
        return cls([[subdomains[t] for t in lvl] for lvl in levels], num_classes)

    @property
    def num_levels(self) -> int:
        return len(self.levels)

    @property
    def num_teachers(self) -> int:
        return sum(len(lvl) for lvl in self.levels)

    def teachers_per_level(self) -> list[int]:
        return [len(lvl) for lvl in self.levels]

    def teacher_slice(self, level: int) -> slice:
        """Global teacher indices of `level`, a contiguous range by construction."""
        start = sum(len(lvl) for lvl in self.levels[:level])
        return slice(start, start + len(self.levels[level]))

    def class_to_teacher(self, level: int) -> torch.Tensor:
        """LongTensor [C]: the index (within `level`) of the teacher whose subdomain has class c."""
        owner = torch.empty(self.num_classes, dtype=torch.long)
        for k, sub in enumerate(self.levels[level]):
            owner[list(sub)] = k
        return owner

    @property
    def finest(self) -> tuple[tuple[int, ...], ...]:
        return self.levels[-1]

    def teacher_lists(self) -> tuple[list[list[int]], list[list[int]]]:
        """The features-file form: (teacher indices per level, classes per teacher)."""
        slices = [self.teacher_slice(level) for level in range(self.num_levels)]
        levels = [list(range(s.start, s.stop)) for s in slices]
        return levels, [list(sub) for level in self.levels for sub in level]

    def as_lists(self) -> list[list[list[int]]]:
        return [[list(sub) for sub in lvl] for lvl in self.levels]


SHAPE = (
    "a hierarchy is a list of levels, each a list of groups of classes: level 0 one group of "
    "all, e.g. [[[0,1,2,3]],[[0,1],[2,3]]]"
)


def is_levels(levels: object) -> bool:
    """Whether `levels` has a hierarchy's shape: a list of levels, each a list of groups, each a
    list of members that are not lists (class indices or names; `from_groups` checks which)."""

    def listed(value: object) -> bool:
        return isinstance(value, Sequence) and not isinstance(value, str | bytes)

    return listed(levels) and all(
        listed(level) and all(listed(g) and not any(listed(m) for m in g) for g in level)
        for level in levels
    )


def _brief(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= 80 else f"{shown[:77]}..."


def _validate(levels: tuple[tuple[tuple[int, ...], ...], ...], num_classes: int) -> None:
    if num_classes < 1:
        raise HierarchyError(f"num_classes must be positive, got {num_classes}")
    if not levels:
        raise HierarchyError("a hierarchy needs at least level 0 (one generalist)")
    if len(levels[0]) != 1:
        raise HierarchyError(
            f"level 0 must hold exactly one generalist teacher, got {len(levels[0])} subdomains"
        )
    everything = set(range(num_classes))
    owner_above: dict[int, int] | None = None
    for lvl_idx, lvl in enumerate(levels):
        owner: dict[int, int] = {}
        for k, sub in enumerate(lvl):
            if not sub:
                raise HierarchyError(f"level {lvl_idx}, subdomain {k} is empty")
            for c in sub:
                if c not in everything:
                    raise HierarchyError(
                        f"level {lvl_idx}, subdomain {k} has class {c}, "
                        f"outside 0..{num_classes - 1}"
                    )
                if c in owner:
                    raise HierarchyError(
                        f"level {lvl_idx}: class {c} is in subdomains {owner[c]} and {k}; "
                        "subdomains of a level must not overlap"
                    )
                owner[c] = k
        missing = sorted(everything - owner.keys())
        if missing:
            raise HierarchyError(
                f"level {lvl_idx} does not cover classes {missing}; "
                "every level must partition all classes"
            )
        if owner_above is not None:
            for k, sub in enumerate(lvl):
                parents = sorted({owner_above[c] for c in sub})
                if len(parents) > 1:
                    raise HierarchyError(
                        f"level {lvl_idx}, subdomain {k} {list(sub)} spans subdomains {parents} "
                        f"of level {lvl_idx - 1}; each level must refine the level above"
                    )
        owner_above = owner
