"""The text benchmarks end to end through `python -m csl_avalanche.run`, offline: WordNet's frozen
subset (tests/data/wordnet) with the real default encoder, every option on it, a user's CSV with
a local encoder, and two processes under torchrun."""

from __future__ import annotations

import pytest
import torch
from conftest import REPO, features_from_config, run_cli
from results_checks import check_against_cached_features, compose_config
from text_helpers import tiny_encoder

from csl_avalanche.storage.cache import TensorCache

pytest.importorskip("sentence_transformers")

# The frozen subset has 8 texts of each of 40 supersenses: 3 for the teachers, 3 for the pool,
# 2 for the test split.
WORDNET = (
    "benchmark=wordnet",
    f"data.root={REPO / 'tests' / 'data' / 'wordnet'}",
    "benchmark.splits={teachers: 0.375, pool: 0.375, test: 0.25}",
    "teacher.min_df=1",
    "teacher.steps=60",
    "strategy.epochs=4",
    "strategy.batch_size=16",
)


@pytest.fixture(scope="module")
def wordnet_cache(tmp_path_factory):
    """One cache for the module: the subset is encoded once."""
    return tmp_path_factory.mktemp("cache")


def test_wordnet_runs_end_to_end_with_the_default_encoder(tmp_path, wordnet_cache):
    results = run_cli(tmp_path / "run", *WORDNET, cache_dir=wordnet_cache)
    assert [level["num_teachers"] for level in results["levels"]] == [1, 3, 6]
    assert results["hierarchy_names"][1][0][0] == "verb.body"
    assert 0 <= results["weak_accuracy"] < results["ceiling_accuracy"] <= 1
    check_against_cached_features(results, wordnet_cache, *WORDNET)
    store = TensorCache(wordnet_cache)
    features = features_from_config(compose_config(*WORDNET), store)
    assert store.misses == 0
    pool, test = len(features.train_y), len(features.test_y)
    assert features.train_x.shape == (pool, 384) and features.test_x.shape == (test, 384)
    # Every teacher gives probabilities over all 40 classes; a specialist, trained on its own
    # supersenses only, moves them onto its own classes, whatever the text.
    probs = features.teacher_probs("train")
    assert probs.shape == (10, pool, 40)
    torch.testing.assert_close(probs.sum(-1), torch.ones(10, pool), atol=2e-3, rtol=0)
    for teacher, classes in enumerate(features.subdomains[1:], start=1):
        assert probs[teacher][:, classes].sum(-1).mean() > 1.5 * len(classes) / 40


def test_class_incremental_with_replay_and_an_automatic_hierarchy(tmp_path, wordnet_cache):
    results = run_cli(
        tmp_path / "run",
        *WORDNET,
        "scenario=class_incremental",
        "plugins=[replay]",
        "benchmark.hierarchy=auto",
        "benchmark.auto_levels=[2,4]",
        "scenario.joint_reference=false",
        "strategy.batch_size=4",  # about 30 pool texts arrive at a time, a third kept
        cache_dir=wordnet_cache,
    )
    assert results["scenario"] == "class_incremental"
    assert len(results["arrivals"]) == 4
    assert [len(level) for level in results["hierarchy"]] == [1, 2, 4]
    assert sorted(c for group in results["hierarchy"][2] for c in group) == list(range(40))


def test_the_options_beyond_the_paper_on_text(tmp_path, wordnet_cache):
    results = run_cli(
        tmp_path / "run",
        *WORDNET,
        "strategy.assignment=posterior",
        "strategy.labels=soft",
        "strategy.loss=logconf",
        "strategy.reassign_every=2",
        cache_dir=wordnet_cache,
    )
    assert [level["num_teachers"] for level in results["levels"]] == [1, 3, 6]
    assert results["levels"][2]["reassignments"]


TOPICS = {
    "cooking": ["simmer the onions", "bake the bread", "whisk the eggs", "season the soup"],
    "sailing": ["trim the sail", "drop the anchor", "tack into the wind", "coil the rope"],
    "music": ["tune the violin", "play a chord", "sing the chorus", "keep the tempo"],
    "football": ["score a goal", "pass the ball", "save the penalty", "head the cross"],
}


def write_topics(path, copies: int = 3):
    lines = ["text,label"]
    for topic, phrases in TOPICS.items():
        lines += [f"{phrase} (take {n}),{topic}" for phrase in phrases for n in range(copies)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def topics(tmp_path_factory):
    root = tmp_path_factory.mktemp("topics")
    return (
        "benchmark=text_file",
        f"data.path={write_topics(root / 'topics.csv')}",
        f"student.arch=sentence-transformers:{tiny_encoder(root)}",
        "benchmark.hierarchy=[[[cooking,sailing,music,football]],[[cooking,music],[sailing,football]]]",
        "benchmark.splits={teachers: 0.34, pool: 0.33, test: 0.33}",
        "teacher.min_df=1",
        "teacher.steps=60",
        "strategy.epochs=3",
        "strategy.batch_size=4",
    )


def test_a_csv_of_ones_own_runs_with_a_local_encoder(tmp_path, topics):
    results = run_cli(tmp_path / "run", *topics)
    assert results["hierarchy_names"][1] == [["cooking", "music"], ["football", "sailing"]]
    features = features_from_config(compose_config(*topics), TensorCache(tmp_path / "cache"))
    assert features.train_x.shape == (16, 16)  # 4 of each topic's 12 texts, 16-d embeddings
    check_against_cached_features(results, tmp_path / "cache", *topics)


def test_two_processes_encode_a_block_each_and_match_one(tmp_path, topics, single_threaded):
    from test_distributed import assert_same_numbers, distributed_results, torchrun

    run_dir = tmp_path / "p2" / "run"
    parallel = distributed_results(run_dir, torchrun(run_dir, *topics, cache_dir=tmp_path / "c2"))
    single = run_cli(tmp_path / "p1", *topics, "device=cpu", cache_dir=tmp_path / "c1")
    assert_same_numbers(parallel, single)
    cfg = compose_config(*topics)
    sharded = features_from_config(cfg, store := TensorCache(tmp_path / "c2"))
    whole = features_from_config(cfg, TensorCache(tmp_path / "c1"))
    assert store.misses == 0
    torch.testing.assert_close(sharded.train_x, whole.train_x, atol=1e-5, rtol=1e-4)
    # The ranks' blocks joined are one process's embeddings of every text, no more.
    entries = [next((tmp_path / c).glob("text-embeddings-*.pt")) for c in ("c2", "c1")]
    joined, one = (torch.load(entry, weights_only=True)["value"] for entry in entries)
    assert joined.shape == one.shape == (48, 16)
    torch.testing.assert_close(joined, one, atol=1e-5, rtol=1e-4)
