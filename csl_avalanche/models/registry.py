"""Vision models by name: a timm model name, or `torchvision:<name>`.

`teacher.arch` and `student.arch` resolve here, with `*.pretrained` (download the published
weights) and `*.checkpoint` (load a local file: the only way to get pretrained weights offline
or behind a firewall). A file that is not a valid checkpoint for the model raises
CheckpointError, a one-line message naming the file; unreachable published weights raise
PretrainedWeightsError, pointing to `*.checkpoint`.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from csl_avalanche.core.errors import ConfigError
from csl_avalanche.models.factories import ImageStudent

TORCHVISION_PREFIX = "torchvision:"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class CheckpointError(ConfigError):
    """A `*.checkpoint` file that is missing, unreadable, or holds weights of another model."""


class PretrainedWeightsError(ConfigError):
    """`*.pretrained=true`, but the published weights cannot be fetched (no network)."""


class UnknownModelError(ConfigError):
    """An `*.arch` that names no timm or torchvision model."""


@dataclass(frozen=True)
class Preprocessing:
    """What a model expects of an image: resize, centre crop, normalise.

    The shorter side is resized to image_size / crop_pct, then the centre image_size square is
    cropped (crop_pct 1.0: no border is cut from square images). Part of every cache key.
    """

    image_size: int
    crop_pct: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str

    def transform(self) -> Callable:
        """PIL image -> normalised float tensor [3, S, S], what a frozen backbone reads."""
        from torchvision import transforms as T

        return T.Compose([*self._geometry(), T.ToTensor(), T.Normalize(self.mean, self.std)])

    def pixels(self) -> Callable:
        """PIL image -> uint8 tensor [3, S, S], resized and cropped but not normalised: what a
        fine-tuned student (ImageStudent) stores and later augments and normalises itself."""
        from torchvision import transforms as T

        return T.Compose([*self._geometry(), T.PILToTensor()])

    def geometry(self) -> dict:
        """What `pixels` depends on (its cache key): everything but the normalisation."""
        return {k: v for k, v in self.as_dict().items() if k not in ("mean", "std")}

    def _geometry(self) -> list[Callable]:
        from torchvision import transforms as T

        mode = T.InterpolationMode(self.interpolation)
        return [
            T.Resize(round(self.image_size / self.crop_pct), interpolation=mode),
            T.CenterCrop(self.image_size),
        ]

    def as_dict(self) -> dict:
        return asdict(self)


def create_model(
    arch: str,
    *,
    num_classes: int,
    pretrained: bool = False,
    checkpoint: str | os.PathLike[str] | None = None,
    image_size: int | None = None,
    key: str = "model",
) -> nn.Module:
    """The model `arch` with a `num_classes`-way head (0: no head, pooled features out).

    `checkpoint` wins over `pretrained`; its classifier head is skipped when its shape differs
    from this model's (a backbone saved with another number of classes, or with none).
    `key` (e.g. "student") names the config keys in error messages.
    """
    _check_known(arch, key)

    def build(weights: bool | str) -> tuple[nn.Module, str | None]:
        """weights: False (random), True (published), or a file in timm's download cache."""
        if arch.startswith(TORCHVISION_PREFIX):
            return _torchvision_model(arch[len(TORCHVISION_PREFIX) :], num_classes, bool(weights))
        return _timm_model(arch, num_classes, weights, image_size)

    if checkpoint:
        model, head = build(False)
        load_checkpoint(model, checkpoint, arch=arch, head=head, key=key)
        return model
    if pretrained:
        return _download(build, arch, key)[0]
    return build(False)[0]


def feature_extractor(
    arch: str,
    *,
    pretrained: bool = False,
    checkpoint: str | os.PathLike[str] | None = None,
    image_size: int | None = None,
    key: str = "model",
) -> nn.Module:
    """The model without its classifier: images [B, 3, H, W] -> pooled features [B, D], eval."""
    model = create_model(
        arch,
        num_classes=0,
        pretrained=pretrained,
        checkpoint=checkpoint,
        image_size=image_size,
        key=key,
    )
    return model.eval()


def image_student(
    arch: str,
    *,
    num_classes: int,
    image_size: int,
    pretrained: bool = False,
    checkpoint: str | os.PathLike[str] | None = None,
) -> ImageStudent:
    """The whole `student.arch` network for fine-tuning on image_size x image_size images, with
    its own normalisation and train-time augmentation (ImageStudent)."""
    model = create_model(
        arch,
        num_classes=num_classes,
        pretrained=pretrained,
        checkpoint=checkpoint,
        image_size=image_size,
        key="student",
    )
    prep = preprocessing(arch, model, image_size)
    return ImageStudent(model, mean=prep.mean, std=prep.std)


def preprocessing(
    arch: str, model: nn.Module, image_size: int | None = None, crop_pct: float | None = None
) -> Preprocessing:
    """The model's own normalisation (timm's pretrained config; ImageNet's for torchvision),
    at `image_size` (default: the model's) with `crop_pct` (default: the model's)."""
    if arch.startswith(TORCHVISION_PREFIX):
        cfg = {"input_size": (3, 224, 224), "crop_pct": 0.875, "interpolation": "bilinear"}
        cfg |= {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    else:
        cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    return Preprocessing(
        image_size=int(image_size or cfg.get("input_size", (3, 224, 224))[-1]),
        crop_pct=float(crop_pct or cfg.get("crop_pct") or 0.875),
        mean=tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(float(v) for v in cfg.get("std", IMAGENET_STD)),
        interpolation=str(cfg.get("interpolation") or "bilinear"),
    )


def load_checkpoint(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    arch: str,
    head: str | None = None,
    key: str = "model",
) -> None:
    """Load a local weights file into `model`, or raise CheckpointError naming the file.

    Accepts a state_dict, or a dict holding one under 'state_dict' or 'model' (training
    checkpoints), saved with torch.save or as .safetensors; a 'module.' prefix (DataParallel)
    is stripped. Keys under `head` whose shape differs from the model's are skipped and left
    freshly initialised; any other missing, unexpected or mis-shaped key is an error.
    """
    path = Path(path).expanduser()
    where = f"{key}.checkpoint={path}"
    if not path.is_file():
        raise CheckpointError(f"{where}: no such file")
    state = _read_state_dict(path, where)
    filter_fn = _timm_filter(model) if not arch.startswith(TORCHVISION_PREFIX) else None
    if filter_fn is not None:
        try:
            state = filter_fn(state, model)
        except Exception as err:
            raise CheckpointError(
                f"{where} is not a checkpoint for {arch}: {_one_line(err)}"
            ) from None
    own = model.state_dict()

    def in_head(name: str) -> bool:
        return bool(head) and (name == head or name.startswith(f"{head}."))

    state = {
        name: value
        for name, value in state.items()
        if not (in_head(name) and (name not in own or own[name].shape != value.shape))
    }
    missing = [name for name in own if name not in state and not in_head(name)]
    unexpected = [name for name in state if name not in own]
    mismatched = [
        f"{name} {list(state[name].shape)} vs {list(own[name].shape)}"
        for name in state
        if name in own and state[name].shape != own[name].shape
    ]
    problems = [
        f"{len(names)} {what} (e.g. {names[0]})"
        for what, names in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("mis-shaped tensors", mismatched),
        )
        if names
    ]
    if problems:
        raise CheckpointError(f"{where} is not a checkpoint for {arch}: {'; '.join(problems)}")
    model.load_state_dict(state, strict=False)


def _read_state_dict(path: Path, where: str) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw = load_file(str(path))
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"{where} is not a readable weights file ({type(err).__name__}: {_one_line(err)})"
        ) from None
    if isinstance(raw, dict):
        for wrapper in ("state_dict", "model"):
            if isinstance(raw.get(wrapper), dict):
                raw = raw[wrapper]
                break
    if not isinstance(raw, dict) or not raw:
        raise CheckpointError(
            f"{where} holds a {type(raw).__name__}, not a state_dict "
            "(save one with torch.save(model.state_dict(), FILE))"
        )
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in raw.items()):
        raise CheckpointError(
            f"{where} is not a state_dict: expected names mapped to tensors "
            "(save one with torch.save(model.state_dict(), FILE))"
        )
    if all(name.startswith("module.") for name in raw):
        raw = {name[len("module.") :]: value for name, value in raw.items()}
    return raw


def _check_known(arch: str, key: str) -> None:
    if arch.startswith(TORCHVISION_PREFIX):
        from torchvision.models import list_models

        name = arch[len(TORCHVISION_PREFIX) :]
        if name not in list_models():
            close = [m for m in list_models() if name[:4] in m][:8]
            raise UnknownModelError(
                f"{key}.arch={arch}: torchvision has no model {name!r} (similar: {close})"
            )
        return
    import timm

    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch.split('.')[0][:6]}*")[:8]
        raise UnknownModelError(
            f"{key}.arch={arch}: not a timm model name (similar: {close}); "
            "torchvision models are written torchvision:<name>"
        )


def _timm_model(
    arch: str, num_classes: int, pretrained: bool | str, image_size: int | None
) -> tuple[nn.Module, str | None]:
    import timm

    kwargs: dict = {}
    if isinstance(pretrained, str):  # already downloaded: load it without asking the hub
        kwargs["pretrained_cfg_overlay"] = {"file": pretrained}
    # Models with a fixed input size (ViTs) build their position embeddings for image_size.
    if image_size and timm.get_pretrained_cfg(arch).fixed_input_size:
        kwargs["img_size"] = image_size
    model = timm.create_model(arch, pretrained=bool(pretrained), num_classes=num_classes, **kwargs)
    classifier = model.pretrained_cfg.get("classifier")
    return model, classifier[0] if isinstance(classifier, list | tuple) else classifier


def _torchvision_model(
    name: str, num_classes: int, pretrained: bool
) -> tuple[nn.Module, str | None]:
    """torchvision builds heads for 1000 classes; replace the last Linear layer as needed."""
    from torchvision.models import get_model

    model = get_model(name, weights="DEFAULT" if pretrained else None)
    head = _last_linear(model, name)
    if num_classes != head[1].out_features:
        new = nn.Linear(head[1].in_features, num_classes) if num_classes else nn.Identity()
        model.set_submodule(head[0], new)
    return model, head[0]


def _last_linear(model: nn.Module, name: str) -> tuple[str, nn.Linear]:
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UnknownModelError(
            f"torchvision:{name} has no final nn.Linear classifier to replace; "
            "choose another architecture"
        )
    return linears[-1]


def _timm_filter(model: nn.Module) -> Callable | None:
    """timm's own checkpoint adapter for the model's family (e.g. resampling ViT position
    embeddings to another image size, converting original DINOv2 checkpoints)."""
    return getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)


def _timm_weights_host(arch: str) -> str | None:
    import timm

    if not timm.is_model(arch):
        return None
    cfg = timm.get_pretrained_cfg(arch)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        from huggingface_hub import constants

        return constants.ENDPOINT
    return cfg.url or None


def _download(build: Callable[[bool | str], tuple], arch: str, key: str) -> tuple:
    hint = (
        f"download the weights where a network exists, save them with "
        f"torch.save(model.state_dict(), FILE) and pass {key}.checkpoint=FILE "
        f"(with {key}.pretrained=false)"
    )
    # huggingface_hub retries for most of a minute without a network: ask the host first,
    # and fall back to weights an earlier download left in the hub's cache.
    if not arch.startswith(TORCHVISION_PREFIX) and not _hf_offline():
        host = _timm_weights_host(arch)
        if host and not _reachable(host):
            cached = _hf_cached_weights(arch)
            if cached:
                return build(cached)
            raise PretrainedWeightsError(
                f"{key}.pretrained=true: cannot reach {host} to download the weights of "
                f"{arch}; " + hint
            )
    try:
        return build(True)
    except Exception as err:
        raise PretrainedWeightsError(
            f"{key}.pretrained=true: could not get the weights of {arch} "
            f"({type(err).__name__}: {_one_line(err)}); " + hint
        ) from None


def _hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no")


def _hf_cached_weights(arch: str) -> str | None:
    import timm
    from huggingface_hub import try_to_load_from_cache

    repo = timm.get_pretrained_cfg(arch).hf_hub_id
    for filename in ("model.safetensors", "pytorch_model.bin"):
        path = try_to_load_from_cache(repo, filename) if repo else None
        if isinstance(path, str):
            return path
    return None


def _reachable(url: str, timeout: float = 3.0) -> bool:
    parsed = urlparse(url)
    host = parsed.hostname or url
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def _one_line(err: Exception) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= 200 else text[:197] + "..."
