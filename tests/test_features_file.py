"""The features-file format: every shape and index checked, with messages that say what."""

from dataclasses import replace

import pytest
import torch
from conftest import make_feature_set, run_cli

from csl_avalanche.benchmarks.features import FeaturesFileError, load_features, save_features


def saved(tmp_path, **changes):
    features = make_feature_set()
    raw = {f: getattr(features, f) for f in features.__dataclass_fields__ if f != "teacher_logits"}
    raw.update(changes)
    path = tmp_path / "features.pt"
    torch.save(raw, path)
    return path


def test_round_trip(tmp_path):
    features = make_feature_set()
    save_features(features, tmp_path / "f.pt")
    loaded = load_features(tmp_path / "f.pt")
    assert torch.equal(loaded.teacher_test_probs, features.teacher_test_probs)
    assert loaded.levels == [[0], [1, 2]]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"train_y": torch.zeros(239, dtype=torch.long)},
            r"train_y has shape \[239\], expected \[240\]",
        ),
        ({"test_x": torch.zeros(120, 9)}, r"test_x has shape \[120, 9\], expected \[120, 8\]"),
        ({"teacher_test_probs": torch.full((2, 120, 4), 0.25)}, r"expected \[3, 120, 4\]"),
        ({"train_y": torch.full((240,), 7)}, r"outside 0..3"),
        ({"train_x": torch.zeros(240, 8, dtype=torch.long)}, "must be a floating-point"),
        ({"test_y": torch.zeros(120)}, "must be an integer"),
        ({"train_x": torch.zeros(240)}, "must have 2 dimensions"),
        ({"teacher_train_probs": torch.ones(3, 240, 4)}, "teacher 0, sample 0 sums to 4.0000"),
        ({"subdomains": [[0, 1, 2, 3], [0, 1]]}, "subdomains lists 2 teachers"),
        ({"subdomains": [[0, 1, 2, 3], [0, 1], [1, 2, 3]]}, "class 1 is in subdomains 0 and 1"),
        ({"levels": [[0, 1], [2]]}, "level 0 must hold exactly one generalist"),
        ({"levels": "nope"}, "lists of lists of integers"),
        ({"test_x": [[0.0]]}, "test_x is a list, not a tensor"),
    ],
)
def test_bad_files_name_the_problem(tmp_path, changes, message):
    with pytest.raises(FeaturesFileError, match=message):
        load_features(saved(tmp_path, **changes))


def test_missing_keys_and_missing_file(tmp_path):
    path = tmp_path / "partial.pt"
    torch.save({"train_x": torch.zeros(2, 2)}, path)
    with pytest.raises(FeaturesFileError, match=r"lacks keys \['train_y'"):
        load_features(path)
    with pytest.raises(FeaturesFileError, match="not found; write one with torch.save"):
        load_features(tmp_path / "absent.pt")
    (tmp_path / "junk.pt").write_text("junk")
    with pytest.raises(FeaturesFileError, match="is not a torch.save file"):
        load_features(tmp_path / "junk.pt")


def test_validate_catches_in_memory_mistakes():
    features = make_feature_set()
    with pytest.raises(FeaturesFileError, match="test_y has shape"):
        replace(features, test_y=features.test_y[:-1]).validate()


def test_cli_trains_from_a_features_file(tmp_path):
    path = tmp_path / "features.pt"
    save_features(make_feature_set(), path)
    results = run_cli(
        tmp_path / "run",
        "benchmark=features",
        f"data.path={path}",
        "strategy.epochs=3",
        "strategy.lr=0.05",
        "strategy.batch_size=16",
    )
    assert [lvl["num_teachers"] for lvl in results["levels"]] == [1, 2]
    assert results["weak_accuracy"] < results["ceiling_accuracy"]
    assert set(results["levels"][1]["subdomain_accuracy"]) == {"classes_0-1", "classes_2-3"}


def test_loading_reads_every_value_once_and_keeps_teacher_outputs_compact(tmp_path, monkeypatch):
    """Each tensor is checked once, in its stored dtype; teacher outputs are not converted
    (a conversion would read the file a second time and hold a float32 copy in memory)."""
    import csl_avalanche.benchmarks.features as module

    features = make_feature_set()
    path = tmp_path / "features.pt"
    save_features(
        replace(
            features,
            teacher_train_probs=features.teacher_train_probs.half(),
            teacher_test_probs=features.teacher_test_probs.half(),
        ),
        path,
    )
    checked = []
    for name in ("finite_fault", "probability_fault"):
        check = getattr(module, name)
        monkeypatch.setattr(
            module,
            name,
            lambda key, tensor, *a, check=check: checked.append(key) or check(key, tensor, *a),
        )
    loaded = load_features(path)
    assert sorted(checked) == ["teacher_test_probs", "teacher_train_probs", "test_x", "train_x"]
    assert loaded.teacher_train_probs.dtype == loaded.teacher_test_probs.dtype == torch.float16
