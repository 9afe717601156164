"""Data-parallel runs under torchrun: which process this is, and how the processes agree.

`torchrun --nproc_per_node=P -m csl_avalanche.run ...` starts P processes (ranks) on one
machine; `csl_avalanche.experiments.launch` joins them into one process group through Avalanche's
`DistributedHelper` (gloo on CPU, nccl on CUDA). With one process every helper here runs its
function directly and communicates nothing, so a plain run is unchanged.

The patterns: work that splits by samples is sharded by rows (`shard_rows`), and where every
rank needs every row's result, each rank's rows are broadcast into the others' tensors in
place (`share_rows`: tensors never travel as pickled objects, which would hold several copies
of them on every rank); work that writes a file (cache entries, TensorBoard, checkpoints,
results.json) runs on rank 0 alone (`main_only`) while the others wait and then read what it
wrote. An error the user must fix (ConfigError) reaches every rank, so all of them stop with
the same one-line message instead of some waiting forever for a rank that stopped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import torch
import torch.distributed as dist
from avalanche.distributed import DistributedHelper
from torch.nn.parallel import DistributedDataParallel

from csl_avalanche.core.errors import ConfigError

T = TypeVar("T")

SHARE_BYTES = 64 * 2**20  # staged per broadcast by `share_rows`


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


def check_world(refusals: Mapping[str, str]) -> None:
    """What a data-parallel run cannot do, refused before any work: `refusals` maps each
    setting that cannot run under torchrun (an anti-forgetting plugin, by its config key and
    class; learned teacher weights) to why."""
    if world_size() > 1 and refusals:
        reasons = "; ".join(f"{plugin}: {why}" for plugin, why in refusals.items())
        raise ConfigError(
            f"not supported under torchrun: {reasons}; run them in one process "
            "(python -m csl_avalanche.run)"
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


def shard_rows(n: int, rank: int, world_size: int, unit: int = 1) -> slice:
    """Rank `rank`'s contiguous block of `n` rows, cut at multiples of `unit` (whole batches):
    the blocks differ in size by at most one unit and, in rank order, cover 0..n-1 exactly
    once."""
    units = -(-n // unit)
    start, stop = units * rank // world_size, units * (rank + 1) // world_size
    return slice(min(n, start * unit), min(n, stop * unit))


def share_rows(tensor: torch.Tensor, rows_by_rank: Sequence[torch.Tensor]) -> None:
    """Fill the rows `rows_by_rank[r]` (indices of dim 0) of every rank's `tensor` with rank
    r's, in place: the rows a rank computed, received by the others without padding, without
    pickling and without a second copy of the whole. Each rank's rows are broadcast from it
    SHARE_BYTES at a time, staged on the process group's device (a GPU under nccl, which
    carries no CPU tensors; under gloo the CPU)."""
    if world_size() == 1:
        return
    device = DistributedHelper.make_device()
    shape = tensor.shape[1:]
    step = max(1, SHARE_BYTES // max(1, shape.numel() * tensor.element_size()))
    for source, rows in enumerate(rows_by_rank):
        for part in rows.split(step):
            if rank() == source:
                staged = tensor[part].to(device)
            else:
                staged = torch.empty((len(part), *shape), dtype=tensor.dtype, device=device)
            # gloo carries no bool: the same bytes as uint8
            dist.broadcast(
                staged.view(torch.uint8) if staged.dtype == torch.bool else staged, source
            )
            if rank() != source:
                tensor[part] = staged.to(tensor.device)


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


def on_every_rank(fn: Callable[[], T]) -> T:
    """Run `fn` on every rank and return this rank's value; an error on any rank stops every
    rank (the lowest failing rank's, for the others), so that none waits forever in a
    collective the failed rank never joins. Only the errors are exchanged."""
    if world_size() == 1:
        return fn()
    value, error = None, None
    try:
        value = fn()
    except Exception as err:
        error = err
    shared = DistributedHelper.gather_all_objects(None if error is None else _shareable(error))
    if error is not None:
        raise error
    for other in shared:
        if other is not None:
            raise other
    return value


def all_ranks(fn: Callable[[], T]) -> list[T]:
    """Run `fn` on every rank; every rank gets every rank's value (small, picklable: it is
    pickled), in rank order. Errors as `on_every_rank`."""
    if world_size() == 1:
        return [fn()]
    return DistributedHelper.gather_all_objects(on_every_rank(fn))


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
