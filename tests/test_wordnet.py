"""benchmark=wordnet: the parser on lines in WordNet's format, the supersense classes and their
verb | concrete | abstract groups, the hierarchy, and the errors; the frozen subset in
tests/data/wordnet (no encoder needed here: tests/test_text_benchmarks.py runs it end to end)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import REPO
from results_checks import compose_config

from csl_avalanche.benchmarks.sources.wordnet import supersense_hierarchy
from csl_avalanche.benchmarks.texts import capped, labelled_texts
from csl_avalanche.benchmarks.wordnet import (
    WordNetError,
    find_wordnet,
    noun_tops,
    parse_line,
    read_synsets,
    supersense_groups,
)
from csl_avalanche.core.errors import ConfigError
from csl_avalanche.experiments.schema import read_settings

FROZEN = REPO / "tests" / "data" / "wordnet"

# Lines copied from WordNet 3.0's data.noun and data.verb.
DOG = (
    "02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 023 @ 02083346 n 0000 @ 01317541 n "
    "0000 #m 02083863 n 0000 #m 07994941 n 0000 ~ 01322604 n 0000 ~ 02084732 n 0000 ~ 02084861 n "
    "0000 ~ 02085272 n 0000 ~ 02085374 n 0000 ~ 02087122 n 0000 ~ 02103406 n 0000 ~ 02110341 n "
    "0000 ~ 02110806 n 0000 ~ 02110958 n 0000 ~ 02111129 n 0000 ~ 02111277 n 0000 ~ 02111500 n "
    "0000 ~ 02111626 n 0000 ~ 02112497 n 0000 ~ 02112826 n 0000 ~ 02113335 n 0000 ~ 02113978 n "
    "0000 %p 02158846 n 0000 | a member of the genus Canis (probably descended from the common "
    'wolf) that has been domesticated by man since prehistoric times; occurs in many breeds; "the '
    'dog barked all night"  \n'
)
ASHCAN = (
    "02747177 06 n 0a ashcan 0 trash_can 0 garbage_can 0 wastebin 0 ash_bin 0 ash-bin 0 ashbin 0 "
    "dustbin 0 trash_barrel 0 trash_bin 0 001 @ 02839910 n 0000 | a bin that holds rubbish until "
    "it is collected  \n"
)
HEGIRA = (
    "00060548 04 n 02 Hegira 1 Hejira 1 001 @i 00058743 n 0000 | the flight of Muhammad from "
    "Mecca to Medina in 622 which marked the beginning of the Muslim era; the Muslim calendar "
    "begins in that year  \n"
)
RESPIRE = (
    "00002573 29 v 01 respire 2 003 $ 00001740 v 0000 @ 00001740 v 0000 + 03110323 a 0101 01 + 02 "
    "00 | breathe easily again, as after exertion or anxiety  \n"
)
HEADER = "  1 This software and database is being provided to you, the LICENSEE, by  \n  2   \n"


def test_real_lines_parse_into_words_gloss_supersense_and_noun_hypernyms():
    dog = parse_line(DOG)
    assert (dog.offset, dog.pos, dog.lexname) == (2084071, "n", "noun.animal")
    assert dog.words == ("dog", "domestic_dog", "Canis_familiaris")
    assert dog.hypernyms == (2083346, 1317541)  # the two `@`, not the `#m`, `~` or `%p`
    assert dog.text.startswith("dog: a member of the genus Canis")
    assert dog.text.endswith('"the dog barked all night"')
    ashcan = parse_line(ASHCAN)  # w_cnt is hexadecimal: 0a words
    assert len(ashcan.words) == 10 and ashcan.words[-1] == "trash_bin"
    assert ashcan.lexname == "noun.artifact" and ashcan.hypernyms == (2839910,)
    assert parse_line(HEGIRA).hypernyms == (58743,)  # an instance hypernym `@i`
    respire = parse_line(RESPIRE)  # verb pointers are no noun hypernyms; frames follow
    assert (respire.pos, respire.lexname, respire.hypernyms) == ("v", "verb.body", ())
    assert respire.text == "respire: breathe easily again, as after exertion or anxiety"


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("02084071 05 n 03 dog 0 domestic_dog 0\n", "no ' | ' before the gloss"),
        ("02084071 99 n 01 dog 0 000 | a dog\n", "lex_filenum 99"),
        ("02084071 05 n 03 dog 0 000 | a dog\n", "w_cnt 03"),
        ("02084071 05 n 01 dog 0 002 @ 02083346 n 0000 | a dog\n", "p_cnt 2"),
    ],
)
def test_a_damaged_line_is_named_with_its_file_and_number(tmp_path, line, why):
    write_wordnet(tmp_path, [DOG, line], [RESPIRE])
    with pytest.raises(WordNetError, match=rf"data\.noun line 4 .*{why}") as error:
        read_synsets(tmp_path)
    assert "apt-get install wordnet-base" in str(error.value)


def test_missing_wordnet_says_how_to_install_it_and_data_root(tmp_path):
    (tmp_path / "data.noun").write_text(HEADER)
    with pytest.raises(WordNetError, match="lacks data.verb") as error:
        find_wordnet(tmp_path)
    message = str(error.value)
    assert "apt-get install wordnet-base" in message and "data.root" in message
    assert "\n" not in message


def fake(offset: int, filenum: int, word: str, hypernyms: tuple[int, ...] = (), pos="n") -> str:
    pointers = " ".join(f"@ {h:08d} n 0000" for h in hypernyms)
    return (
        f"{offset:08d} {filenum:02d} {pos} 01 {word} 0 {len(hypernyms):03d} {pointers} | {word}\n"
    )


TOPS = [fake(1, 3, "entity"), fake(2, 3, "physical_entity", (1,)), fake(3, 3, "abstraction", (1,))]


def write_wordnet(folder: Path, nouns: list[str], verbs: list[str]) -> Path:
    (folder / "data.noun").write_text(HEADER + "".join(nouns))
    (folder / "data.verb").write_text(HEADER + "".join(verbs))
    return folder


def test_nouns_are_concrete_or_abstract_by_the_top_most_of_them_reach(tmp_path):
    nouns = [
        *TOPS,
        fake(10, 5, "canine", (2,)),  # noun.animal: three physical ...
        fake(11, 5, "dog", (10,)),
        fake(12, 5, "rex", (11,)).replace(" @ ", " @i "),  # (reached through `@i`)
        fake(13, 5, "genus_canis", (3,)),  # ... against two abstract
        fake(14, 5, "genus_felis", (3,)),
        fake(20, 4, "flight", (3,)),  # noun.act, abstract
        fake(21, 4, "odd_act", (2, 3)),  # under both tops
        fake(22, 4, "odd_deed", (21,)),
    ]
    synsets = read_synsets(write_wordnet(tmp_path, nouns, [fake(30, 38, "walk", pos="v")]))
    assert noun_tops(synsets)[22] == {"concrete", "abstract"}
    assert noun_tops(synsets)[1] == set()  # entity is above both
    assert supersense_groups(synsets) == {
        "noun.animal": "concrete",
        "noun.act": "abstract",
        "verb.motion": "verb",
    }  # noun.Tops, which holds the tops themselves, is no class


def test_a_supersense_split_evenly_between_the_tops_is_refused(tmp_path):
    nouns = [*TOPS, fake(10, 5, "dog", (2,)), fake(11, 5, "genus_canis", (3,))]
    synsets = read_synsets(write_wordnet(tmp_path, nouns, []))
    with pytest.raises(WordNetError, match="noun.animal lie as much under physical_entity"):
        supersense_groups(synsets)


def test_a_wordnet_without_its_tops_is_refused(tmp_path):
    synsets = read_synsets(write_wordnet(tmp_path, [fake(10, 5, "dog")], []))
    with pytest.raises(WordNetError, match="no noun.Tops synset physical_entity or abstraction"):
        supersense_groups(synsets)


def test_the_frozen_subset_has_the_forty_supersenses_in_three_groups():
    synsets = read_synsets(find_wordnet(FROZEN))
    groups = supersense_groups(synsets)
    counts = {
        group: sorted(n for n, g in groups.items() if g == group) for group in groups.values()
    }
    assert {group: len(names) for group, names in counts.items()} == {
        "verb": 15,
        "concrete": 11,
        "abstract": 14,
    }
    assert counts["concrete"] == [
        "noun.animal", "noun.artifact", "noun.body", "noun.food", "noun.location", "noun.object",
        "noun.person", "noun.phenomenon", "noun.plant", "noun.process", "noun.substance",
    ]  # fmt: skip
    assert "noun.Tops" not in groups


def wordnet_settings(*overrides: str):
    return read_settings(compose_config("benchmark=wordnet", *overrides)).source.benchmark


def test_the_default_hierarchy_is_all_then_the_three_groups_then_the_finer_groups():
    synsets = read_synsets(find_wordnet(FROZEN))
    groups = supersense_groups(synsets)
    names = sorted(groups)
    hierarchy = supersense_hierarchy(names, groups, wordnet_settings())
    assert hierarchy.teachers_per_level() == [1, 3, 6]
    by_name = [[sorted(names[c] for c in sub) for sub in level] for level in hierarchy.levels]
    assert by_name[1][0] == sorted(n for n in names if n.startswith("verb."))
    assert ["noun.animal", "noun.body", "noun.person", "noun.plant"] in by_name[2]


def test_a_finer_group_that_crosses_the_groups_or_names_no_supersense_is_refused():
    groups = supersense_groups(read_synsets(find_wordnet(FROZEN)))
    names = sorted(groups)
    default = wordnet_settings()
    (level,) = default.finer_groups
    crossing = [
        [*level[0], "noun.animal"],
        *([n for n in g if n != "noun.animal"] for g in level[1:]),
    ]
    with pytest.raises(ConfigError, match=r"benchmark\.finer_groups: level 2, .* refine"):
        supersense_hierarchy(names, groups, replace(default, finer_groups=[crossing]))
    unknown = [[["verb.bdy", *level[0]], *level[1:]]]
    with pytest.raises(ConfigError, match=r"benchmark\.finer_groups: level 2 names 'verb\.bdy'"):
        supersense_hierarchy(names, groups, replace(default, finer_groups=unknown))


def test_the_cap_keeps_one_fixed_draw_of_each_class_in_order():
    labels = ["a"] * 10 + ["b"] * 3 + ["a"] * 5
    texts = labelled_texts([f"text {i}" for i in range(len(labels))], labels)
    kept = capped(texts, 4)
    assert torch.bincount(kept.labels).tolist() == [4, 3]
    assert list(kept.texts) == sorted(kept.texts, key=lambda t: int(t.split()[1]))
    assert capped(texts, 4).texts == kept.texts  # no run seed: the same texts every time
    assert capped(texts, None) is texts
