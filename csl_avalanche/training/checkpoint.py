"""What a run must keep to continue after a kill: the state of a strategy, its plugins and the
random generators, written atomically, plus the log files rewound to the same moment.

A run is a sequence of units of work (the ground-truth ceiling, then each level with its
evaluation). After each one, the experiment writes one checkpoint file; a rerun restores it and
goes on with the next unit, so a kill costs at most the unit in flight. Only state is stored:
weights, every shipped plugin's buffers, importances and previous models (replay, EWC, LwF, SI,
MAS, RWalk, A-GEM, GDumb; ours through state_dict()), statistics, RNG states; never
the features, which are re-attached from the cache. Every value is a tensor or plain Python
data, so the file loads with `torch.load(weights_only=True)`.

Avalanche's own `save_checkpoint` dill-pickles the whole strategy. We write the state ourselves:
with torch 2.14 dill cannot pickle the optimiser, and a whole-strategy pickle would also copy
the features the co-supervision plugin holds and every level's in-memory loader.
"""

from __future__ import annotations

import copy
import os
import random
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from avalanche.benchmarks.utils.data_loader import GroupBalancedInfiniteDataLoader
from avalanche.training.plugins import (
    AGEMPlugin,
    EWCPlugin,
    GDumbPlugin,
    LwFPlugin,
    MASPlugin,
    ReplayPlugin,
    RWalkPlugin,
    SynapticIntelligencePlugin,
)
from avalanche.training.storage_policy import (
    BalancedExemplarsBuffer,
    ClassBalancedBuffer,
    ExperienceBalancedBuffer,
    ReservoirSamplingBuffer,
)
from avalanche.training.utils import ParamData

from csl_avalanche.benchmarks.streams import labelled_dataset
from csl_avalanche.core.errors import ConfigError
from csl_avalanche.storage.atomic import unwritable_because, write_atomically
from csl_avalanche.training.loader import materialize

CLOCK_FIELDS = (
    "train_iterations",
    "train_exp_counter",
    "train_exp_epochs",
    "train_exp_iterations",
    "train_epoch_iterations",
    "total_iterations",
)


def write_checkpoint(state: dict, path: Path) -> None:
    """`state` to `path`, atomically: if the write fails (a full disk), the previous checkpoint
    stays as it was, and rerunning the same command continues after it."""
    try:
        write_atomically(path, lambda file: torch.save(state, file))
    except (OSError, RuntimeError) as err:  # torch.save reports write errors as either
        raise ConfigError(
            f"cannot write the checkpoint {path}: {unwritable_because(err, path)}, then run the "
            "same command again (it continues after the last saved unit)"
        ) from None


def read_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ConfigError(
            f"checkpoint {path} is unreadable ({type(err).__name__}); delete it to start over, "
            "or run with resume=false"
        ) from None


# -- random generators -------------------------------------------------------------------


def rng_state() -> dict:
    """The global generators' states (Python, NumPy, torch, CUDA) as tensors and lists."""
    name, keys, position, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- Avalanche's anti-forgetting plugins ---------------------------------------------------
# They keep their state in attributes (Avalanche 0.6 names them below); these pairs read and
# write exactly those. Our own plugins and metrics offer state_dict()/load_state_dict().


def _buffer_state(policy: BalancedExemplarsBuffer) -> dict:
    """A balanced buffer's groups (samples, reservoir weights, sizes) and what it counts:
    the experiences seen (replay) or the classes seen (GDumb)."""
    if type(policy) not in (ExperienceBalancedBuffer, ClassBalancedBuffer):
        raise ConfigError(f"cannot checkpoint a replay buffer of type {type(policy).__name__}")
    groups = {
        key: {
            "columns": materialize(group.buffer) if len(group.buffer) else [],
            "weights": group._buffer_weights,
            "max_size": group.max_size,
        }
        for key, group in policy.buffer_groups.items()
    }
    if isinstance(policy, ClassBalancedBuffer):
        return {"seen_classes": sorted(policy.seen_classes), "groups": groups}
    return {"num_experiences": policy._num_exps, "groups": groups}


def _load_buffer(policy: BalancedExemplarsBuffer, state: dict) -> None:
    if isinstance(policy, ClassBalancedBuffer):
        policy.seen_classes = set(state["seen_classes"])
    else:
        policy._num_exps = state["num_experiences"]
    policy.buffer_groups = {}
    for key, group in state["groups"].items():
        buffer = ReservoirSamplingBuffer(group["max_size"])
        if group["columns"]:
            buffer.buffer = _dataset(group["columns"])
        buffer._buffer_weights = group["weights"]
        policy.buffer_groups[key] = buffer


def _dataset(columns: list) -> Any:
    """A materialised dataset ([x, y, (soft,) (keys,) task] columns) as a labelled dataset
    again."""
    x, y, *extra, _task = columns
    return labelled_dataset(x, y, *extra)


def _replay_state(plugin: ReplayPlugin) -> dict:
    return _buffer_state(plugin.storage_policy)


def _load_replay(plugin: ReplayPlugin, state: dict) -> None:
    _load_buffer(plugin.storage_policy, state)


def _param_tensors(params: dict[int, dict[str, ParamData]]) -> dict:
    return {exp: {name: p.data for name, p in by_name.items()} for exp, by_name in params.items()}


def _param_data(tensors: dict) -> dict[int, dict[str, ParamData]]:
    return {
        exp: {name: ParamData(name, init_tensor=value) for name, value in by_name.items()}
        for exp, by_name in tensors.items()
    }


def _ewc_state(plugin: EWCPlugin) -> dict:
    return {
        "saved_params": _param_tensors(plugin.saved_params),
        "importances": _param_tensors(plugin.importances),
    }


def _load_ewc(plugin: EWCPlugin, state: dict) -> None:
    plugin.saved_params.clear()
    plugin.saved_params.update(_param_data(state["saved_params"]))
    plugin.importances.clear()
    plugin.importances.update(_param_data(state["importances"]))


def _lwf_state(plugin: LwFPlugin) -> dict:
    lwf = plugin.lwf
    previous = None if lwf.prev_model is None else lwf.prev_model.state_dict()
    classes = {task: sorted(c) for task, c in lwf.prev_classes_by_task.items()}
    return {"expcount": lwf.expcount, "prev_model": previous, "prev_classes": classes}


def _load_lwf(plugin: LwFPlugin, state: dict, model: torch.nn.Module) -> None:
    lwf = plugin.lwf
    lwf.expcount = state["expcount"]
    lwf.prev_model = None
    if state["prev_model"] is not None:
        lwf.prev_model = copy.deepcopy(model)
        lwf.prev_model.load_state_dict(state["prev_model"])
    lwf.prev_classes_by_task.clear()
    lwf.prev_classes_by_task.update({t: set(c) for t, c in state["prev_classes"].items()})


def _agem_state(plugin: AGEMPlugin) -> dict:
    return {"buffers": [materialize(buffer) for buffer in plugin.buffers]}


def _load_agem(plugin: AGEMPlugin, state: dict) -> None:
    """The memory, and its loader as `update_memory` builds it (the loader draws its first
    sample lazily, so the restored generators decide it, as in an uninterrupted run)."""
    plugin.buffers = [_dataset(columns) for columns in state["buffers"]]
    if plugin.buffers:
        plugin.buffer_dataloader = GroupBalancedInfiniteDataLoader(
            plugin.buffers,
            batch_size=plugin.sample_size // len(plugin.buffers),
            num_workers=0,
            pin_memory=False,
            persistent_workers=False,
        )
        plugin.buffer_dliter = iter(plugin.buffer_dataloader)


def _gdumb_state(plugin: GDumbPlugin) -> dict:
    initial = None if plugin.init_model is None else plugin.init_model.state_dict()
    return {"buffer": _buffer_state(plugin.storage_policy), "init_model": initial}


def _load_gdumb(plugin: GDumbPlugin, state: dict, model: torch.nn.Module) -> None:
    _load_buffer(plugin.storage_policy, state["buffer"])
    plugin.init_model = None
    if state["init_model"] is not None:
        plugin.init_model = copy.deepcopy(model)
        plugin.init_model.load_state_dict(state["init_model"])


# The attributes in which Avalanche 0.6's regularisation plugins keep what one experience
# leaves to the next: dictionaries (or tuples of them) of ParamData, or None.
PARAMETER_ATTRIBUTES: dict[type, tuple[str, ...]] = {
    SynapticIntelligencePlugin: ("ewc_data", "syn_data"),
    MASPlugin: ("params", "importance"),
    RWalkPlugin: (
        "checkpoint_params",
        "checkpoint_loss",
        "checkpoint_scores",
        "iter_grad",
        "iter_importance",
        "iter_params",
        "exp_scores",
        "exp_params",
        "exp_importance",
        "exp_penalties",
    ),
}


def _plain(value: Any) -> Any:
    """ParamData (inside dicts and tuples) as {"param": name, "data": tensor}."""
    if isinstance(value, ParamData):
        return {"param": value.name, "data": value.data.detach().cpu()}
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(_plain(item) for item in value)
    return value


def _restored(value: Any, device: torch.device) -> Any:
    if isinstance(value, dict) and value.keys() == {"param", "data"}:
        return ParamData(value["param"], init_tensor=value["data"].to(device), device=device)
    if isinstance(value, dict):
        return {key: _restored(item, device) for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(_restored(item, device) for item in value)
    return value


# -- a user's plugin -------------------------------------------------------------------------


def check_resumable(plugins: Mapping[str, Any]) -> None:
    """Refuse to resume a run that trained with a plugin whose state the checkpoint cannot
    hold (a silent restart of its state would change the results): one we do not know,
    without state_dict()/load_state_dict(), whose class does not declare `keeps_state = False`
    (a plugin that carries nothing from one unit to the next). `plugins`: name -> PluginSpec."""
    for name, spec in plugins.items():
        kind = spec.plugin_class()
        if _restorable_class(kind) or getattr(kind, "keeps_state", True) is False:
            continue
        raise ConfigError(
            f"plugins.{name} ({spec.target}) keeps state the checkpoint cannot restore; run "
            "with resume=false to start over, or give the class state_dict()/load_state_dict()"
        )


def _restorable_class(kind: type) -> bool:
    return issubclass(kind, KNOWN_PLUGINS) or (
        hasattr(kind, "state_dict") and hasattr(kind, "load_state_dict")
    )


# -- the strategy --------------------------------------------------------------------------


def _plugin_state(plugin: Any) -> dict:
    if isinstance(plugin, ReplayPlugin):
        return _replay_state(plugin)
    if isinstance(plugin, EWCPlugin):
        return _ewc_state(plugin)
    if isinstance(plugin, LwFPlugin):
        return _lwf_state(plugin)
    if isinstance(plugin, AGEMPlugin):
        return _agem_state(plugin)
    if isinstance(plugin, GDumbPlugin):
        return _gdumb_state(plugin)
    for kind, names in PARAMETER_ATTRIBUTES.items():
        if isinstance(plugin, kind):
            return {name: _plain(getattr(plugin, name)) for name in names}
    return plugin.state_dict()


def _load_plugin(plugin: Any, state: dict, strategy: Any) -> None:
    if isinstance(plugin, ReplayPlugin):
        _load_replay(plugin, state)
    elif isinstance(plugin, EWCPlugin):
        _load_ewc(plugin, state)
    elif isinstance(plugin, LwFPlugin):
        _load_lwf(plugin, state, strategy.model)
    elif isinstance(plugin, AGEMPlugin):
        _load_agem(plugin, state)
    elif isinstance(plugin, GDumbPlugin):
        _load_gdumb(plugin, state, strategy.model)
    elif isinstance(plugin, tuple(PARAMETER_ATTRIBUTES)):
        for name, value in state.items():
            setattr(plugin, name, _restored(value, torch.device(strategy.device)))
    else:
        plugin.load_state_dict(state)


def strategy_state(strategy: Any) -> dict:
    """Model weights, the training clock, and every stateful plugin's and metric's state."""
    return {
        "model": {k: v.detach().cpu() for k, v in strategy.model.state_dict().items()},
        "clock": {name: getattr(strategy.clock, name) for name in CLOCK_FIELDS},
        "plugins": {index: _plugin_state(item) for index, item in enumerate(_stateful(strategy))},
    }


def load_strategy_state(strategy: Any, state: dict) -> None:
    """Restore what `strategy_state` saved into a strategy built with the same config."""
    strategy.model.load_state_dict(state["model"])
    for name, value in state["clock"].items():
        setattr(strategy.clock, name, value)
    stateful = _stateful(strategy)
    if len(stateful) != len(state["plugins"]):
        raise ConfigError(
            f"the checkpoint holds the state of {len(state['plugins'])} plugins and metrics, "
            f"this strategy has {len(stateful)}; run with resume=false to start over"
        )
    for index, plugin in enumerate(stateful):
        _load_plugin(plugin, state["plugins"][index], strategy)


# The Avalanche plugins whose state we read and write by their attributes.
KNOWN_PLUGINS = (ReplayPlugin, EWCPlugin, LwFPlugin, AGEMPlugin, GDumbPlugin,
                 *PARAMETER_ATTRIBUTES)  # fmt: skip


def _stateful(strategy: Any) -> list:
    """The plugins and metrics that carry state from one level to the next, in a fixed order:
    the Avalanche plugins we know, and every other one that offers load_state_dict()."""
    metrics = getattr(strategy.evaluator, "metrics", [])
    return [item for item in [*strategy.plugins, *metrics] if _restorable_class(type(item))]


# -- log files -----------------------------------------------------------------------------


def log_sizes(root: Path, folders: Iterable[Path]) -> dict[str, int]:
    """The size of every file in `folders` (TensorBoard event files, text logs), by its path
    relative to `root` (the run folder), so that a run folder moved elsewhere still finds them."""
    return {
        _relative(path, root): path.stat().st_size
        for folder in folders
        if folder.is_dir()
        for path in sorted(folder.iterdir())
        if path.is_file()
    }


def rewind_logs(sizes: dict[str, int], root: Path, folders: Iterable[Path]) -> None:
    """Cut the logs back to the checkpoint: files are truncated to their recorded sizes and
    files written after it are removed, so a resumed run's TensorBoard series continue
    without the killed unit's duplicate points. `sizes` are `log_sizes(root, ...)`."""
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if not path.is_file():
                continue
            size = sizes.get(_relative(path, root))
            if size is None:
                path.unlink()
            elif path.stat().st_size > size:
                os.truncate(path, size)


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()
