"""Data-parallel runs under torchrun: which process this is, and how the processes agree.

`torchrun --nproc_per_node=P -m csl_avalanche.run ...` starts P processes (ranks) on one
machine; `csl_avalanche.experiments.launch` joins them into one process group through Avalanche's
`DistributedHelper` (gloo on CPU, nccl on CUDA). With one process every helper here runs its
function directly and communicates nothing, so a plain run is unchanged.

The patterns: work that splits by samples is sharded by rows (`shard_rows`); work that writes a
file (cache entries, TensorBoard, checkpoints, results.json) runs on rank 0 alone
(`main_only`) while the others wait and then read what it wrote. An error the user must fix
(ConfigError) reaches every rank, so all of them stop with the same one-line message instead
of some waiting forever for a rank that stopped.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.distributed as dist
from avalanche.distributed import DistributedHelper
from torch.nn.parallel import DistributedDataParallel

from csl_avalanche.core.errors import ConfigError

T = TypeVar("T")


def world_size() -> int:
    return DistributedHelper.world_size


def rank() -> int:
    return DistributedHelper.rank


def is_main() -> bool:
    return DistributedHelper.is_main_process


def join(device: str, seed: int) -> None:
    """Join the process group torchrun describes (its environment variables): nccl when the run
    uses CUDA (each rank then uses GPU `rank`), gloo otherwise. One machine only: Avalanche's
    helper picks the GPU by global rank."""
    if os.environ.get("LOCAL_WORLD_SIZE") != os.environ.get("WORLD_SIZE"):
        raise ConfigError(
            "torchrun across several machines is not supported: run all processes on one "
            "machine (torchrun --standalone --nproc_per_node=P)"
        )
    use_cuda = device != "cpu" and torch.cuda.is_available()
    DistributedHelper.init_distributed(
        seed, backend="nccl" if use_cuda else "gloo", use_cuda=use_cuda
    )


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def check_world(plugins: list[str]) -> None:
    """What a data-parallel run cannot do, refused before any work: the anti-forgetting
    `plugins` (names). Avalanche 0.6's EWC and LwF do not declare distributed support, and
    replay brings its own loader, whose batches are per process (the global batch would grow
    with P)."""
    if world_size() > 1 and plugins:
        raise ConfigError(
            f"plugins {', '.join(plugins)} are not supported under torchrun; run them in "
            "one process (python -m csl_avalanche.run)"
        )


def data_parallel(model: torch.nn.Module) -> DistributedDataParallel:
    """`model` (already on its device) wrapped for training steps whose gradients are averaged
    over the ranks. Not Avalanche's `DistributedHelper.wrap_model`, which sets
    find_unused_parameters=True: an autograd traversal at every step, and a warning on every
    rank. A student's graph is the same at every step, so `static_graph` finds any unused
    parameter (a model's spare head) once, at the first step."""
    device = next(model.parameters()).device
    return DistributedDataParallel(
        model, device_ids=[device] if device.type == "cuda" else None, static_graph=True
    )


def broadcast_state(model: torch.nn.Module) -> None:
    """Copy rank 0's weights and buffers into every rank's `model`. The E-step and the
    evaluation need the same model everywhere, and after training BatchNorm's running
    statistics differ: each rank's last step updated them from its own share."""
    for tensor in model.state_dict().values():
        dist.broadcast(tensor, src=0)


def shard_rows(n: int, rank: int, world_size: int) -> slice:
    """Rank `rank`'s contiguous block of `n` rows: the blocks differ in size by at most one and,
    in rank order, cover 0..n-1 exactly once."""
    return slice(n * rank // world_size, n * (rank + 1) // world_size)


def seed_rank_stream(seed: int) -> None:
    """Under torchrun, seed the global generators (augmentation, dropout) differently on each
    rank, so that the ranks' samples do not all get the same random crops and masks."""
    if world_size() > 1:
        torch.manual_seed(seed * 1024 + rank())


def broadcast_object(value: T) -> T:
    """Rank 0's `value` on every rank (small, picklable values)."""
    return DistributedHelper.broadcast_object(value)


def main_only(fn: Callable[[], T]) -> T | None:
    """Run `fn` on rank 0 alone while the other ranks wait for it to finish: rank 0 gets its
    value, the others None. An error in `fn` stops every rank (a ConfigError with its own
    message)."""
    if world_size() == 1:
        return fn()
    value, error = None, None
    if is_main():
        try:
            value = fn()
        except Exception as err:
            error = err
    shared = broadcast_object(None if error is None else _shareable(error))
    if error is not None:
        raise error
    if shared is not None:
        raise shared
    return value


def all_ranks(fn: Callable[[], T]) -> list[T]:
    """Run `fn` on every rank; every rank gets every rank's value (small, picklable), in rank
    order. An error on any rank stops every rank (the lowest failing rank's, for the others)."""
    if world_size() == 1:
        return [fn()]
    value, error = None, None
    try:
        value = fn()
    except Exception as err:
        error = err
    outcomes = DistributedHelper.gather_all_objects(
        ("ok", value) if error is None else ("error", _shareable(error))
    )
    if error is not None:
        raise error
    for kind, payload in outcomes:
        if kind == "error":
            raise payload
    return [payload for _, payload in outcomes]


def all_true(flag: torch.Tensor) -> bool:
    """Whether the boolean `flag` is true on every rank (Avalanche's helper has no all-reduce)."""
    if world_size() == 1:
        return bool(flag)
    value = flag.to(torch.int32)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value)


def _shareable(error: Exception) -> Exception:
    """What the other ranks raise for `error`: a ConfigError as it is (its message says what to
    fix), anything else as a RuntimeError naming the rank whose traceback to read."""
    if isinstance(error, ConfigError):
        return error
    return RuntimeError(f"rank {rank()} failed with {type(error).__name__}: {error}")
