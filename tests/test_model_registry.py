"""The model registry: timm and torchvision names, local checkpoints, clear offline errors."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from csl_avalanche.models import registry as model_registry
from csl_avalanche.models.registry import (
    CheckpointError,
    PretrainedWeightsError,
    UnknownModelError,
    create_model,
    feature_extractor,
    preprocessing,
)


def test_timm_feature_extractor_at_a_chosen_image_size():
    model = feature_extractor("test_vit", image_size=32)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 64)
    prep = preprocessing("test_vit", model, 32, crop_pct=1.0)
    assert (prep.image_size, prep.crop_pct, prep.mean) == (32, 1.0, (0.5, 0.5, 0.5))
    image = prep.transform()(Image.new("RGB", (40, 20)))
    assert image.shape == (3, 32, 32)


def test_torchvision_heads_are_replaced():
    classifier = create_model("torchvision:resnet18", num_classes=7)
    assert classifier(torch.zeros(1, 3, 64, 64)).shape == (1, 7)
    features = feature_extractor("torchvision:resnet18")
    assert features(torch.zeros(1, 3, 64, 64)).shape == (1, 512)
    assert preprocessing("torchvision:resnet18", features).mean == (0.485, 0.456, 0.406)


def test_checkpoint_loads_the_backbone_despite_another_head(tmp_path):
    torch.manual_seed(0)
    trained = create_model("test_vit", num_classes=10, image_size=32).eval()
    path = tmp_path / "vit.pt"
    torch.save({"state_dict": trained.state_dict(), "epoch": 3}, path)
    torch.manual_seed(1)  # a different random init, overwritten by the checkpoint
    loaded = feature_extractor("test_vit", checkpoint=str(path), image_size=32)
    x = torch.randn(2, 3, 32, 32)
    expected = trained.forward_head(trained.forward_features(x), pre_logits=True)
    torch.testing.assert_close(loaded(x), expected)


def test_torchvision_checkpoint_roundtrip(tmp_path):
    torch.manual_seed(0)
    trained = create_model("torchvision:resnet18", num_classes=5).eval()
    torch.save(trained.state_dict(), tmp_path / "r18.pt")
    loaded = create_model("torchvision:resnet18", num_classes=5, checkpoint=tmp_path / "r18.pt")
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(loaded.eval()(x), trained(x))


@pytest.mark.parametrize("content", ["junk", "other_arch", "not_a_state_dict", "missing"])
def test_bad_checkpoint_is_a_one_line_error_naming_the_file(tmp_path, content):
    path = tmp_path / f"{content}.pt"
    if content == "junk":
        path.write_text("not a checkpoint")
    elif content == "other_arch":
        torch.save(create_model("test_resnet", num_classes=0).state_dict(), path)
    elif content == "not_a_state_dict":
        torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError) as err:
        feature_extractor("test_vit", checkpoint=str(path), image_size=32, key="student")
    message = str(err.value)
    assert f"student.checkpoint={path}" in message and "\n" not in message


def test_pretrained_without_network_points_to_checkpoint(monkeypatch):
    monkeypatch.setattr(model_registry, "_reachable", lambda url, timeout=3.0: False)
    monkeypatch.setattr(model_registry, "_hf_cached_weights", lambda arch: None)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(PretrainedWeightsError, match=r"student\.checkpoint=FILE"):
        feature_extractor("test_vit.r160_in1k", pretrained=True, key="student")


def test_unknown_architectures_are_named():
    with pytest.raises(UnknownModelError, match="teacher.arch=torchvision:alexnett"):
        create_model("torchvision:alexnett", num_classes=0, key="teacher")
    with pytest.raises(UnknownModelError, match="not a timm model"):
        create_model("resnet_that_does_not_exist", num_classes=0)
