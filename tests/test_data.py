"""Splits, the cache, and the digits source."""

from pathlib import Path

import pytest
import torch
from conftest import features_from_config
from hydra import compose, initialize_config_module

from csl_avalanche.benchmarks.checks import finite_fault
from csl_avalanche.benchmarks.sources.digits import load_digits_tensors
from csl_avalanche.benchmarks.splits import stratified_split
from csl_avalanche.storage.atomic import Blank
from csl_avalanche.storage.cache import CacheError, InvalidValueError, TensorCache, fingerprint

FRACTIONS = {"pretrain": 0.2, "teachers": 0.25, "pool": 0.35, "test": 0.2}


def test_stratified_split_is_disjoint_seeded_and_stratified():
    _, y = load_digits_tensors()
    parts = stratified_split(y, FRACTIONS, seed=0)
    everything = torch.cat(list(parts.values()))
    assert len(everything) == len(torch.unique(everything)) == len(y)  # disjoint, complete
    for name, fraction in FRACTIONS.items():
        counts = torch.bincount(y[parts[name]], minlength=10)
        expected = torch.bincount(y, minlength=10) * fraction
        assert (counts - expected).abs().max() <= 1, name
    again = stratified_split(y, FRACTIONS, seed=0)
    other = stratified_split(y, FRACTIONS, seed=1)
    assert all(torch.equal(parts[k], again[k]) for k in parts)
    assert not torch.equal(parts["pool"], other["pool"])


def test_split_fractions_are_checked():
    with pytest.raises(ValueError, match="sum to at most 1"):
        stratified_split(torch.arange(10) % 2, {"a": 0.7, "b": 0.6}, seed=0)


def test_cache_reuses_and_keys_by_content(tmp_path):
    cache = TensorCache(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return {"x": torch.arange(5)}

    key = fingerprint(torch.arange(3), {"lr": 0.1})
    first = cache.get_or_compute("thing", key, compute)
    second = cache.get_or_compute("thing", key, compute)
    assert torch.equal(first["x"], second["x"]) and len(calls) == 1
    assert (cache.hits, cache.misses) == (1, 1)
    assert fingerprint(torch.arange(3), {"lr": 0.2}) != key
    assert fingerprint(torch.arange(3).float(), {"lr": 0.1}) != key


def test_cache_reports_unreadable_and_stale_files(tmp_path):
    cache = TensorCache(tmp_path)
    key = fingerprint("a")
    cache.path("thing", key).write_bytes(b"not a torch file")
    with pytest.raises(CacheError, match="unreadable.*delete it"):
        cache.get_or_compute("thing", key, lambda: 1)
    torch.save({"key": "other", "value": 1}, cache.path("thing", key))
    with pytest.raises(CacheError, match="stale"):
        cache.get_or_compute("thing", key, lambda: 1)


def rss_anon() -> int:
    """This process's anonymous resident memory, in bytes (Linux)."""
    status = Path("/proc/self/status").read_text()
    return (
        int(next(line for line in status.splitlines() if line.startswith("RssAnon")).split()[1])
        * 1024
    )


def test_cache_fills_large_values_in_place(tmp_path):
    cache = TensorCache(tmp_path)
    shape = (4, 4096, 2048)  # 64 MB of float16
    blanks = {"pool": Blank(shape, torch.float16), "test": Blank((4, 3, 2), torch.float16)}
    calls = []

    def fill(out):
        calls.append(1)
        for teacher in range(shape[0]):
            for start in range(0, shape[1], 512):
                out["pool"][teacher, start : start + 512] = teacher + start / shape[1]
        out["test"][:] = 2.0

    before = rss_anon()
    value = cache.get_or_fill("probs", "k", blanks, fill)
    assert rss_anon() - before < 16 * 2**20  # never the whole 64 MB in memory
    assert value["pool"].dtype == torch.float16 and value["pool"].shape == shape
    assert value["pool"][3, 2048, 5] == 3.5 and value["test"].sum() == 48
    again = cache.get_or_fill("probs", "k", blanks, fill)
    assert torch.equal(again["pool"], value["pool"]) and len(calls) == 1
    assert (cache.hits, cache.misses) == (1, 1)
    plain = torch.load(cache.path("probs", "k"), weights_only=True)  # a plain torch.save file
    assert plain["key"] == "k" and torch.equal(plain["value"]["test"], value["test"])


def test_a_failed_or_faulty_fill_leaves_no_entry(tmp_path):
    cache = TensorCache(tmp_path)
    blanks = {"pool": Blank((2, 3), torch.float32)}

    def broken(out):
        out["pool"][0] = 1.0
        raise RuntimeError("the teacher failed")

    with pytest.raises(RuntimeError, match="the teacher failed"):
        cache.get_or_fill("probs", "k", blanks, broken)
    with pytest.raises(InvalidValueError, match=r"v holds NaN at index \[1, 2\]\. Lower"):
        cache.get_or_fill(
            "probs",
            "k",
            blanks,
            lambda out: out["pool"][1, 2].fill_(float("nan")),
            check=lambda value: finite_fault("v", value["pool"]),
            cause="Lower the lr.",
        )
    assert list(tmp_path.iterdir()) == []


def digits_config():
    """The digits benchmark with two levels and tiny budgets."""
    with initialize_config_module("csl_avalanche.configs", version_base="1.3"):
        return compose(
            "config",
            [
                "benchmark.hierarchy=[[[0,1,2,3,4,5,6,7,8,9]],[[0,1,2,3,4,5],[6,7,8,9]]]",
                "teacher.steps=20",
                "teacher.batch_size=16",
                "student.hidden=16",
                "student.embed_dim=8",
                "student.pretrain.steps=20",
                "student.pretrain.batch_size=16",
                "student.pretrain.lr=0.01",
                "progress=false",
                *(f"benchmark.splits.{part}={share}" for part, share in FRACTIONS.items()),
            ],
        )


def test_digits_source_reuses_its_cache_on_a_second_run(tmp_path):
    cfg = digits_config()
    first_cache = TensorCache(tmp_path)
    first = features_from_config(cfg, first_cache, seed=0)
    assert first_cache.misses == 4 and first_cache.hits == 0
    second_cache = TensorCache(tmp_path)
    second = features_from_config(cfg, second_cache, seed=0)
    assert second_cache.misses == 0 and second_cache.hits == 4
    assert torch.equal(first.teacher_train_probs, second.teacher_train_probs)
    assert torch.equal(first.train_x, second.train_x)
    assert first.teacher_train_probs.shape == (3, len(first.train_y), 10)
    assert first.teacher_train_probs.dtype == torch.float16  # half the cache, read in chunks
    cfg.teacher.steps = 21  # a different teacher budget must not reuse the teachers
    third_cache = TensorCache(tmp_path)
    features_from_config(cfg, third_cache, seed=0)
    assert third_cache.hits == 2 and third_cache.misses == 2  # backbone + embeddings reused


def test_progress_false_draws_no_progress_bar(tmp_path, capsys):
    features_from_config(digits_config(), TensorCache(tmp_path), seed=0)  # progress=false
    assert capsys.readouterr().err == ""
