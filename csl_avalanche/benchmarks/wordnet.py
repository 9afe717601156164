"""Reading WordNet's noun and verb synsets from its database files (`data.noun`, `data.verb`).

Each synset becomes one text, "lemma: gloss", labelled with its lexicographer file (its
*supersense*: `noun.animal`, `verb.motion`, ...). Nouns fall under one of WordNet's own two
tops, `physical_entity` (concrete) or `abstraction` (abstract), found by following hypernym
pointers upwards; that gives the benchmark its first level, verbs | concrete nouns | abstract
nouns. The format is WordNet's `wndb(5WN)`: one synset per line,

    offset lex_filenum ss_type w_cnt word lex_id ... p_cnt [symbol offset pos source/target]...
    [f_cnt + f_num w_num ...] | gloss

with `w_cnt` in hexadecimal and the licence at the top of each file, on lines that start with
two spaces.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from csl_avalanche.core.errors import ConfigError

DEBIAN_DIR = Path("/usr/share/wordnet")
FILES = ("data.noun", "data.verb")
HOW_TO_GET = (
    "Install it with `apt-get install wordnet-base` (Debian/Ubuntu; files go to "
    f"{DEBIAN_DIR}, used when data.root is unset), or point data.root=DIR at a folder holding "
    "WordNet 3.0's data.noun and data.verb"
)

# The lexicographer files, by number (WordNet's lexnames(5WN)).
LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event",
    "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
    "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather",
    "adj.ppl",
)  # fmt: skip

# noun.Tops holds the tops themselves (entity, physical_entity, abstraction, and the heads of
# the other noun files): it spans both groups, so it is no class of its own.
NOT_A_CLASS = ("noun.Tops",)
HYPERNYMS = ("@", "@i")  # hypernym and instance hypernym pointers
# WordNet's own split of the nouns: the first word of each top's synset, and what it makes a
# noun under it.
TOPS = {"physical_entity": "concrete", "abstraction": "abstract"}
GROUPS = ("verb", "concrete", "abstract")


class WordNetError(ConfigError):
    """WordNet's files are missing, or a line is not in WordNet's database format."""


@dataclass(frozen=True)
class Synset:
    """One noun or verb synset: its words, gloss, supersense and noun hypernyms (offsets)."""

    offset: int
    pos: str  # "n" or "v"
    lexname: str
    words: tuple[str, ...]
    gloss: str
    hypernyms: tuple[int, ...]

    @property
    def text(self) -> str:
        """ "lemma: gloss", the first word with spaces for underscores."""
        return f"{self.words[0].replace('_', ' ')}: {self.gloss}"


def find_wordnet(root: str | os.PathLike[str] | None) -> Path:
    """The folder holding data.noun and data.verb: `root`, or Debian's when `root` is None."""
    folder = DEBIAN_DIR if root is None else Path(root).expanduser()
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise WordNetError(
            f"benchmark=wordnet: WordNet not found, {folder} lacks {', '.join(missing)}. "
            + HOW_TO_GET
        )
    return folder


def parse_line(line: str) -> Synset:
    """One line of a data file as a Synset; ValueError saying what is wrong with it."""
    head, bar, gloss = line.partition(" | ")
    if not bar:
        head, bar, gloss = line.rstrip().partition(" |")
    if not bar:
        raise ValueError("no ' | ' before the gloss")
    fields = head.split()
    if len(fields) < 6:
        raise ValueError("fewer fields than offset, lex_filenum, ss_type, w_cnt, word, lex_id")
    offset, filenum, pos = int(fields[0]), int(fields[1]), fields[2]
    if not 0 <= filenum < len(LEXNAMES):
        raise ValueError(f"lex_filenum {filenum} is not a lexicographer file (0..44)")
    count = int(fields[3], 16)
    words = tuple(fields[4 : 4 + 2 * count : 2])
    at = 4 + 2 * count
    if count < 1 or len(words) != count or at >= len(fields):
        raise ValueError(f"w_cnt {fields[3]} does not match the words that follow")
    pointers = int(fields[at])
    if len(fields) < at + 1 + 4 * pointers:
        raise ValueError(f"p_cnt {pointers} is more pointers than the line holds")
    hypernyms = []
    for index in range(pointers):
        symbol, target, target_pos = fields[at + 1 + 4 * index : at + 4 + 4 * index]
        if symbol in HYPERNYMS and target_pos == "n":
            hypernyms.append(int(target))
    return Synset(offset, pos, LEXNAMES[filenum], words, gloss.strip(), tuple(hypernyms))


def read_synsets(folder: Path) -> list[Synset]:
    """Every noun and verb synset of `folder`'s data files, in file order."""
    synsets = []
    for name in FILES:
        path = folder / name
        try:
            with open(path, encoding="utf-8", errors="replace") as file:
                synsets += _parse_file(path, file)
        except OSError as err:
            raise WordNetError(f"benchmark=wordnet: cannot read {path} ({err.strerror})") from None
    return synsets


def _parse_file(path: Path, lines: Iterable[str]) -> Iterator[Synset]:
    for number, line in enumerate(lines, start=1):
        if line.startswith("  ") or not line.strip():  # the licence header
            continue
        try:
            yield parse_line(line)
        except (ValueError, IndexError) as err:
            raise WordNetError(
                f"benchmark=wordnet: {path} line {number} is not a WordNet synset ({err}); "
                f"data.root must hold WordNet's database files. " + HOW_TO_GET
            ) from None


def noun_tops(synsets: Iterable[Synset]) -> dict[int, set[str]]:
    """For each noun synset's offset, the groups of the tops (TOPS) its hypernyms reach:
    {"concrete"}, {"abstract"}, both (several hypernyms), or none (entity itself)."""
    nouns = {s.offset: s for s in synsets if s.pos == "n"}
    tops = {
        s.offset: group
        for s in nouns.values()
        for word, group in TOPS.items()
        if s.lexname == "noun.Tops" and s.words[0] == word
    }
    lacking = [word for word, group in TOPS.items() if group not in tops.values()]
    if lacking:
        raise WordNetError(
            f"benchmark=wordnet: data.noun has no noun.Tops synset {' or '.join(lacking)}, the "
            "tops that split concrete from abstract nouns. " + HOW_TO_GET
        )
    reached: dict[int, frozenset[str]] = {}

    def reach(offset: int) -> frozenset[str]:
        if offset not in reached:
            reached[offset] = frozenset()  # stops a cycle of pointers in damaged files
            found = {tops[offset]} if offset in tops else set()
            for hypernym in nouns[offset].hypernyms:
                if hypernym in nouns:
                    found |= reach(hypernym)
            reached[offset] = frozenset(found)
        return reached[offset]

    return {offset: set(reach(offset)) for offset in nouns}


def supersense_groups(synsets: list[Synset]) -> dict[str, str]:
    """Each supersense's group (GROUPS): `verb`, or the top most of its nouns are under (a noun
    under both, through several hypernyms, counts for both)."""
    reached = noun_tops(synsets)
    votes: dict[str, Counter] = {}
    for synset in synsets:
        if synset.lexname in NOT_A_CLASS:
            continue
        tally = votes.setdefault(synset.lexname, Counter())
        if synset.pos == "v":
            tally["verb"] += 1
        else:
            tally.update(reached[synset.offset])
    return {lexname: _majority(lexname, tally) for lexname, tally in votes.items()}


def _majority(lexname: str, tally: Mapping[str, int]) -> str:
    ranked = sorted(tally.items(), key=lambda item: (-item[1], item[0]))
    if not ranked or (len(ranked) > 1 and ranked[0][1] == ranked[1][1]):
        raise WordNetError(
            f"benchmark=wordnet: the nouns of {lexname} lie as much under physical_entity as "
            f"under abstraction ({dict(tally)}), so it is neither a concrete nor an abstract "
            "supersense; data.noun's hypernym pointers are incomplete. " + HOW_TO_GET
        )
    return ranked[0][0]
