"""What the ranks exchange, checked function by function in one torchrun launch (2 processes,
gloo on CPU) by tests/test_distributed.py: `python -m torch.distributed.run --standalone
--nproc_per_node=2 tests/rank_checks.py OUT`. Each rank writes what it got to OUT/rank<r>.pt;
`relabelled_level` also runs in one process, for the test to compare."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from avalanche.distributed import DistributedHelper
from avalanche.training.plugins import EvaluationPlugin
from conftest import make_feature_set

from csl_avalanche import distributed
from csl_avalanche.benchmarks.streams import make_csl_benchmark
from csl_avalanche.strategies import StudentTemplate
from csl_avalanche.training.loader import materialize
from csl_avalanche.training.plugins.cosupervision import CoSupervisionPlugin

CLASSES = 64  # soft targets of 64 classes: 128 bytes a sample in float16


def relabelled_level() -> dict:
    """Level 1's E-step and selection with soft labels, as the plugin runs them (each process
    a block of whole evaluation batches of 64 rows, chunks of 24 rows), and the kept dataset."""
    features = make_feature_set(n=512, c=CLASSES, noise=1.5)
    experience = make_csl_benchmark(features).train_stream[1].logging()
    torch.manual_seed(0)
    model = torch.nn.Linear(features.train_x.shape[1], CLASSES)
    strategy = SimpleNamespace(model=model, eval_mb_size=64, train_mb_size=16, device="cpu")
    plugin = CoSupervisionPlugin(features, labels="soft", denoise="top32", chunk_size=24)
    with torch.no_grad():
        results, keep = plugin._relabel(strategy, experience, "level 1")
    return {
        "assignment": results.assignment,
        "labels": results.labels,
        "losses": results.losses,
        "in_topk": results.in_topk,
        "keep": keep,
        "kept_soft": results.soft[keep],
        "dataset": materialize(experience.dataset),
    }


def shared_rows() -> dict:
    """`share_rows` with rows of several broadcasts each (a small staging size), some ranks'
    rows not contiguous, and bool and float16 tensors."""
    me = distributed.rank()
    rows = [torch.tensor([0, 2, 3, 7, 8]), torch.tensor([1, 4, 5, 6, 9])]
    values = torch.zeros(10, 3, dtype=torch.float16)
    flags = torch.zeros(10, dtype=torch.bool)
    values[rows[me]] = torch.arange(5 * 3, dtype=torch.float16).view(5, 3) + 100 * me
    flags[rows[me]] = torch.tensor([True, False, True, True, False]) ^ bool(me)
    distributed.SHARE_BYTES = 7  # a row of values at a time: every row its own broadcast
    distributed.share_rows(values, rows)
    distributed.share_rows(flags, rows)
    return {"values": values, "flags": flags}


def shared_batchnorm() -> dict:
    """`StudentTemplate.share_model` after each rank's BatchNorm statistics moved apart."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    strategy = StudentTemplate(
        model=model, lr=0.1, epochs=1, batch_size=4, evaluator=EvaluationPlugin(loggers=[])
    )
    strategy.parallel_model = distributed.data_parallel(model)
    model[1].running_mean.fill_(distributed.rank() + 1.0)
    model[1].running_var.fill_(distributed.rank() + 2.0)
    strategy.share_model()
    return {name: value.clone() for name, value in model.state_dict().items()}


def main(out: Path) -> None:
    distributed.join("cpu", seed=0)
    sizes = []  # the pickled size of every object the ranks exchange
    gather, broadcast = DistributedHelper.gather_all_objects, DistributedHelper.broadcast_object

    def spy(exchange):
        def exchanged(obj, *args, **kwargs):
            sizes.append(len(pickle.dumps(obj)))
            return exchange(obj, *args, **kwargs)

        return exchanged

    DistributedHelper.gather_all_objects = spy(gather)
    DistributedHelper.broadcast_object = spy(broadcast)
    got = {"level": relabelled_level(), "objects": list(sizes)}
    got["rows"] = shared_rows()
    got["batchnorm"] = shared_batchnorm()
    torch.save(got, out / f"rank{distributed.rank()}.pt")
    distributed.leave()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
