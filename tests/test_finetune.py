"""`student.finetune=true`: image tensors in the FeatureSet, the ImageStudent's augmentation and
normalisation, and re-initialisation that restores the pretrained backbone."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import EvaluationPlugin
from conftest import make_feature_set

from csl_avalanche.benchmarks.features import FeaturesFileError, load_features, save_features
from csl_avalanche.benchmarks.streams import make_csl_benchmark
from csl_avalanche.models.factories import ImageStudent, random_resized_crop_and_flip
from csl_avalanche.models.registry import create_model, image_student
from csl_avalanche.strategies import CSLStrategy

pytestmark = pytest.mark.usefixtures("single_threaded")


def image_feature_set(n: int = 48, m: int = 24, side: int = 16):
    """make_feature_set's labels and teachers, with noisy class-coloured uint8 images as inputs."""
    base = make_feature_set(n=n, m=m)
    g = torch.Generator().manual_seed(0)
    colours = torch.randint(0, 256, (base.num_classes, 3, 1, 1), generator=g)

    def images(y):
        noise = torch.randint(-40, 40, (len(y), 3, side, side), generator=g)
        return (colours[y] + noise).clamp(0, 255).to(torch.uint8)

    return replace(base, train_x=images(base.train_y), test_x=images(base.test_y)).validate()


def test_feature_sets_hold_images_and_reject_wrong_shapes(tmp_path):
    features = image_feature_set()
    assert features.holds_images and features.train_x.dtype == torch.uint8
    replace(features, train_x=features.train_x / 255.0, test_x=features.test_x / 255.0).validate()
    bad = [
        ({"train_x": features.train_x[:, :1]}, r"train_x must be images \[N, 3, H, W\]"),
        ({"test_x": torch.zeros(24, 8)}, r"test_x must be images \[N, 3, H, W\].*\[24, 8\]"),
        ({"test_x": features.test_x[..., :8]}, r"test_x has shape \[24, 3, 16, 8\], expected"),
        ({"test_x": features.test_x.long()}, "images must be uint8 or floating point"),
        ({"train_x": torch.zeros(48, 2, 3)}, r"2 dimensions \(embeddings \[N, D\]\), or 4"),
    ]
    for changes, message in bad:
        with pytest.raises(FeaturesFileError, match=message):
            replace(features, **changes).validate()
    save_features(features, tmp_path / "images.pt")  # features files hold embeddings only
    with pytest.raises(FeaturesFileError, match=r"train_x must have 2 dimensions, got \[48, 3"):
        load_features(tmp_path / "images.pt")


def test_augmentation_is_batched_seeded_and_only_in_training():
    x = torch.rand(6, 3, 8, 8)
    same = random_resized_crop_and_flip(x, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    for image, out in zip(x, same, strict=True):  # the whole image: itself, or mirrored
        assert torch.allclose(out, image, atol=1e-5) or torch.allclose(
            out, image.flip(-1), atol=1e-5
        )
    torch.manual_seed(1)
    first = random_resized_crop_and_flip(x)
    torch.manual_seed(1)
    assert torch.equal(random_resized_crop_and_flip(x), first)

    torch.manual_seed(0)
    student = ImageStudent(
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4)),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )
    pixels = (x * 255).to(torch.uint8)
    expected = student.model((pixels.float() / 255 - 0.5) / 0.25)
    student.eval()
    assert torch.allclose(student(pixels), expected, atol=1e-5)  # eval: no augmentation
    student.train()
    assert not torch.allclose(student(pixels), expected, atol=1e-3)
    assert list(student.state_dict()) == ["model.1.weight", "model.1.bias"]


def test_reinit_restores_the_pretrained_backbone_at_every_level(tmp_path):
    features = image_feature_set()
    torch.manual_seed(5)
    pretrained = create_model("test_resnet", num_classes=1000)  # its 1000-way head is skipped
    torch.save(pretrained.state_dict(), tmp_path / "backbone.pt")
    torch.manual_seed(0)
    student = image_student(
        "test_resnet", num_classes=4, image_size=16, checkpoint=tmp_path / "backbone.pt"
    )
    initial = {k: v.clone() for k, v in student.state_dict().items()}
    starts, ends = [], []

    class Probe(SupervisedPlugin):
        def before_training_exp(self, strategy, **kwargs):
            starts.append({k: v.clone() for k, v in strategy.model.state_dict().items()})

        def after_training_exp(self, strategy, **kwargs):
            ends.append({k: v.clone() for k, v in strategy.model.state_dict().items()})

    strategy = CSLStrategy(
        model=student,
        features=features,
        denoise="all",
        reinit_student=True,
        lr=0.01,
        epochs=1,
        batch_size=16,
        device="cpu",
        evaluator=EvaluationPlugin(loggers=[]),
        plugins=[Probe()],
    )
    for experience in make_csl_benchmark(features).train_stream:
        strategy.train(experience, eval_streams=[])

    backbone = [k for k in initial if not k.startswith("model.fc.")]
    assert backbone and all(
        torch.equal(initial[k], pretrained.state_dict()[k[6:]]) for k in backbone
    )
    for name in initial:  # level 1 starts from the pretrained backbone and the initial head
        assert torch.equal(starts[1][name], initial[name]), name
    assert not torch.equal(ends[0]["model.fc.weight"], initial["model.fc.weight"])  # trained
