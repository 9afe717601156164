"""What a model factory's results depend on, for the cache keys of the models it trains.

The Avalanche adapter builds its teachers, backbone and confusion probe from user factories
(`make_teacher`, `make_backbone`) that no config describes, and a model's `repr` misses much of
what it computes: an init scheme, an activation called in `forward`, a changed `forward`. So a
factory is known by the model it builds (its repr and its initial weights, seeded) and by the
source code of the factory and of every module class in that model, base classes included:
change any of them and the cache computes afresh instead of returning the old model's results.

What the key cannot see: code the model calls outside these (a helper function its `forward`
calls) and the code of a class or factory whose source Python cannot find (one defined in an
interactive session); the qualified name stands in for the latter, with a warning.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable

import torch
from torch import nn

from csl_avalanche.storage.cache import fingerprint

log = logging.getLogger(__name__)


def model_code(model: nn.Module) -> list[str]:
    """The source of every module class in `model` and of their bases below `nn.Module`, each
    once, in order of first appearance."""
    classes = dict.fromkeys(
        cls
        for module in model.modules()
        for cls in type(module).__mro__
        if issubclass(cls, nn.Module) and cls is not nn.Module
    )
    return [source(cls) for cls in classes]


def factory_identity(make_model: Callable[[], nn.Module]) -> str:
    """A fingerprint of `make_model`: its source, and the repr, initial weights (seed 0) and
    class sources of the model it builds. The global random state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = make_model()
    return fingerprint("factory", source(make_model), repr(model), model, model_code(model))


def source(obj: object) -> str:
    """The source code of a function, class or callable object (its class); for a
    functools.partial, its function's. Where Python cannot find it, the qualified name."""
    if isinstance(obj, functools.partial):
        return source(obj.func)
    target = obj if inspect.isroutine(obj) or inspect.isclass(obj) else type(obj)
    try:
        return inspect.getsource(target)
    except (OSError, TypeError):
        name = f"{target.__module__}.{target.__qualname__}"
        log.warning(
            "no source code found for %s: the cache keys of the models it builds cannot see "
            "changes to its code; after changing it, delete the cache folder",
            name,
        )
        return name
