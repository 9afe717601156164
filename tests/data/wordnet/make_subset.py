"""How the frozen WordNet subset beside this file was made from WordNet 3.0 (Debian's
wordnet-base): `python tests/data/wordnet/make_subset.py /usr/share/wordnet tests/data/wordnet`.

Per supersense, the PER_CLASS synsets nearest to the tops (the fewest hypernym steps, then the
lowest offset; nouns among those under their supersense's top in the whole of WordNet), plus
every noun hypernym above them, so that each noun reaches its top. Lines keep WordNet's format
and the licence header; only their pointers are cut to the hypernyms (`@`, `@i`) with p_cnt to
match, which keeps the files small; the verb frames stay.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

from csl_avalanche.benchmarks.wordnet import (
    FILES,
    HYPERNYMS,
    noun_tops,
    parse_line,
    supersense_groups,
)

PER_CLASS = 8


def _depth(offset: int, synsets: dict, memo: dict) -> int:
    if offset not in memo:
        memo[offset] = 0
        ups = [h for h in synsets[offset].hypernyms if h in synsets]
        memo[offset] = 1 + min((_depth(h, synsets, memo) for h in ups), default=-1)
    return memo[offset]


def _pruned(line: str) -> str:
    """The line with only its hypernym pointers."""
    head, _, gloss = line.partition(" | ")
    fields = head.split()
    at = 4 + 2 * int(fields[3], 16)
    count = int(fields[at])
    pointers = [fields[at + 1 + 4 * i : at + 5 + 4 * i] for i in range(count)]
    kept = [" ".join(p) for p in pointers if p[0] in HYPERNYMS]
    frames = fields[at + 1 + 4 * count :]
    return " ".join([*fields[:at], f"{len(kept):03d}", *kept, *frames]) + f" | {gloss}"


def main(source: Path, target: Path) -> None:
    lines, synsets = {}, {}
    for name in FILES:
        for line in (source / name).read_text(encoding="utf-8").splitlines(keepends=True):
            if not line.startswith("  "):
                synset = parse_line(line)
                lines[synset.offset, synset.pos], synsets[synset.offset, synset.pos] = line, synset
    nouns = {offset: s for (offset, pos), s in synsets.items() if pos == "n"}
    tops, memo = noun_tops(synsets.values()), {}
    groups = supersense_groups(list(synsets.values()))
    by_class = defaultdict(list)
    for (offset, pos), synset in synsets.items():
        if pos == "n" and tops[offset] != {groups.get(synset.lexname)}:
            continue
        depth = _depth(offset, nouns, memo) if pos == "n" else 0
        by_class[synset.lexname].append((depth, offset, pos))
    nearest = (sorted(members)[:PER_CLASS] for members in by_class.values())
    chosen = {(offset, pos) for members in nearest for _, offset, pos in members}
    stack = [offset for offset, pos in chosen if pos == "n"]
    while stack:
        for hypernym in nouns[stack.pop()].hypernyms:
            if (hypernym, "n") not in chosen:
                chosen.add((hypernym, "n"))
                stack.append(hypernym)
    for name, pos in zip(FILES, "nv", strict=True):
        header = [line for line in (source / name).open(encoding="utf-8") if line.startswith("  ")]
        body = [_pruned(lines[key]) for key in sorted(chosen) if key[1] == pos]
        (target / name).write_text("".join(header + body), encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
