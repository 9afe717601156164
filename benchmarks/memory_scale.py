"""Peak memory and time of a full CSL run as the pool grows past what float32 would fit.

For each pool size N, writes a synthetic features file with float16 embeddings (D=384) and
float16 teacher probabilities (C=1000 classes, T=15 teachers in levels of 1/2/4/8 contiguous
class blocks; a test split of 10,000), written in place so that not even the generator holds
it in memory; then runs `python -m csl_avalanche.run benchmark=features` on it (ceiling and
every level, 1 epoch each, on the CPU) in a fresh process whose thread samples the process's
RssAnon (anonymous resident memory, /proc/self/status) every 20 ms; prints, per N, that peak
and the wall time. Each file is deleted after its run. A size whose file the disk cannot hold
is skipped, and said so.

    python benchmarks/memory_scale.py                          # N = 50k, 200k, 800k
    python benchmarks/memory_scale.py --sizes 50000 --dir /data/tmp
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from csl_avalanche.core.hierarchy import Hierarchy
from csl_avalanche.storage.atomic import Blank, save_in_place

DIM, CLASSES, BLOCKS = 384, 1000, [1, 2, 4, 8]
ROWS = 8192  # rows generated at a time
BANK = 4096  # rows of random teacher noise, drawn from for every sample
RESULT = "memory-scale: "  # the line of the child's output that holds its measurements


def file_bytes(n: int, m: int) -> int:
    """Size of the features file: float16 embeddings and teacher probabilities, int64 labels."""
    teachers = sum(BLOCKS)
    return (n + m) * (2 * DIM + 8 + 2 * teachers * CLASSES)


def write_features(path: Path, n: int, m: int, seed: int = 0) -> None:
    """Gaussian class clusters; each teacher is right on 50% (level 0) to 74% (level 3) of the
    samples of its own classes and puts no probability outside them."""
    hierarchy = Hierarchy.contiguous_blocks(CLASSES, BLOCKS)
    levels, subdomains = hierarchy.teacher_lists()
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(CLASSES, DIM, generator=g)
    bank = torch.randn(BANK, CLASSES, generator=g).exp()  # unnormalised probabilities
    masks = torch.zeros(len(subdomains), CLASSES)
    for teacher, classes in enumerate(subdomains):
        masks[teacher, classes] = 1.0
    accuracy = [0.5 + 0.08 * level for level, teachers in enumerate(levels) for _ in teachers]
    labels = {"train": torch.randint(CLASSES, (n,), generator=g)}
    labels["test"] = torch.randint(CLASSES, (m,), generator=g)

    def teacher_probs(teacher: int, y: torch.Tensor) -> torch.Tensor:
        k, classes = len(y), torch.tensor(subdomains[teacher])
        probs = bank[torch.randint(BANK, (k,), generator=g)] * masks[teacher]
        guess = classes[torch.randint(len(classes), (k,), generator=g)]
        right = (torch.rand(k, generator=g) < accuracy[teacher]) & (masks[teacher, y] > 0)
        probs[torch.arange(k), torch.where(right, y, guess)] *= 50.0
        return (probs / probs.sum(dim=1, keepdim=True)).half()

    def fill(out: dict) -> None:
        for split, y in labels.items():
            x, probs = out[f"{split}_x"], out[f"teacher_{split}_probs"]
            for start in range(0, len(y), ROWS):
                rows, part = slice(start, start + ROWS), y[start : start + ROWS]
                noise = 0.8 * torch.randn(len(part), DIM, generator=g)
                x[rows] = (centers[part] + noise).half()
                for teacher in range(len(subdomains)):
                    probs[teacher, rows] = teacher_probs(teacher, part)

    save_in_place(
        path,
        {
            "train_x": Blank((n, DIM), torch.float16),
            "train_y": labels["train"],
            "test_x": Blank((m, DIM), torch.float16),
            "test_y": labels["test"],
            "teacher_train_probs": Blank((len(subdomains), n, CLASSES), torch.float16),
            "teacher_test_probs": Blank((len(subdomains), m, CLASSES), torch.float16),
            "levels": levels,
            "subdomains": subdomains,
        },
        fill,
    )


def rss_anon() -> int:
    """Anonymous resident memory of this process, bytes."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("RssAnon:"))
    return int(line.split()[1]) * 1024


def measure_run(path: Path, run_dir: Path, epochs: int) -> None:
    """The child: one CSL run on `path`, in this process, with a thread sampling RssAnon."""
    peak, done = [rss_anon()], threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], rss_anon())

    from csl_avalanche.run import main as run_main

    baseline = rss_anon()  # the interpreter, torch and Hydra imported
    sys.argv = [
        "csl_avalanche.run",
        "benchmark=features",
        f"data.path={path}",
        f"strategy.epochs={epochs}",
        "strategy.lr=0.005",
        "device=cpu",
        "progress=false",
        f"hydra.run.dir={run_dir}",
        f"cache_dir={run_dir / 'cache'}",
    ]
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    try:
        run_main()
    except SystemExit as exit_:  # Hydra's main exits on an error, after printing it
        if exit_.code:
            raise
    wall = time.perf_counter() - start
    done.set()
    thread.join()
    peak[0] = max(peak[0], rss_anon())
    results = json.loads((run_dir / "results.json").read_text())
    timings = results["timings"]
    measured = {
        "peak_rss_anon": peak[0],
        "baseline_rss_anon": baseline,
        "wall_seconds": wall,
        "estep_seconds": sum(timings["estep_seconds"]),
        "train_seconds": sum(timings["train_seconds"]),
        "keep_rates": [level["keep_rate"] for level in results["levels"]],
    }
    print(RESULT + json.dumps(measured), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000, 200_000, 800_000])
    parser.add_argument("--test", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--run", type=Path, help=argparse.SUPPRESS)  # the child's file
    parser.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        measure_run(args.run, args.run_dir, args.epochs)
        return

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, data in {args.dir}")
    header = (
        f"{'N':>9} {'file GiB':>8} {'f32 teachers GiB':>16} {'write s':>7} {'run s':>7} "
        f"{'E-step s':>8} {'train s':>7} {'peak RssAnon GiB':>16} {'(imports)':>9}"
    )
    print(header + "\n" + "-" * len(header), flush=True)
    for n in args.sizes:
        needed = file_bytes(n, args.test)
        free = shutil.disk_usage(args.dir).free
        if needed + 2**30 > free:
            print(
                f"{n:>9} skipped: the file needs {needed / 2**30:.1f} GiB and {args.dir} has "
                f"{free / 2**30:.1f} GiB free (with 1 GiB to spare); nothing is extrapolated",
                flush=True,
            )
            continue
        with tempfile.TemporaryDirectory(dir=args.dir, prefix="memory-scale-") as tmp:
            path = Path(tmp) / "features.pt"
            start = time.perf_counter()
            write_features(path, n, args.test)
            write_seconds = time.perf_counter() - start
            child = subprocess.run(
                [sys.executable, __file__, "--run", str(path), "--run-dir", f"{tmp}/run"]
                + ["--epochs", str(args.epochs)],
                capture_output=True,
                text=True,
            )
        if child.returncode != 0:
            raise SystemExit(f"the run at N={n} failed:\n{child.stdout}\n{child.stderr}")
        line = next(line for line in child.stdout.splitlines() if line.startswith(RESULT))
        measured = json.loads(line.removeprefix(RESULT))
        dense = sum(BLOCKS) * n * CLASSES * 4
        print(
            f"{n:>9} {needed / 2**30:>8.1f} {dense / 2**30:>16.1f} {write_seconds:>7.0f} "
            f"{measured['wall_seconds']:>7.0f} {measured['estep_seconds']:>8.1f} "
            f"{measured['train_seconds']:>7.0f} {measured['peak_rss_anon'] / 2**30:>16.2f} "
            f"{measured['baseline_rss_anon'] / 2**30:>9.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
