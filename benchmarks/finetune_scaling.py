"""Fine-tuning time with one process against P processes under torchrun (one GPU each).

Writes a synthetic image tree (class = a noisy colour), fills the cache once with a P-process
run (extraction sharded over the GPUs), then runs the same fine-tuning (`student.finetune=true`,
random-initialised weights: no download) under `torchrun --nproc_per_node=1` and under
`--nproc_per_node=P` with that cache, and prints each run's wall time, training time
(results.json's train_seconds, summed over the levels; the ceiling and evaluation are in the
wall time only), final accuracy, and the speed-up. P defaults to the number of visible GPUs;
with one GPU the table has the 1-process row only.

    python benchmarks/finetune_scaling.py                  # CUDA: ViT-S/14 student, 224 px
    python benchmarks/finetune_scaling.py --device cpu --procs 2 --student test_vit \
        --teacher test_resnet --image-size 32 --classes 4 --per-class 12 --epochs 1  # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def write_images(root: Path, classes: int, per_class: int, side: int) -> None:
    """`classes` folders of `per_class` JPEGs, side x side; class = hue, plus noise."""
    rng = np.random.default_rng(0)
    for label in range(classes):
        folder = root / f"class{label:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        hue = np.array([np.cos(label), np.sin(label), np.cos(2 * label)]) * 80 + 128
        for index in range(per_class):
            pixels = np.clip(hue + rng.normal(0, 40, (side, side, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{index}.jpg", quality=90)


def run(procs: int, run_dir: Path, overrides: list[str]) -> dict:
    """One torchrun of the experiment; its wall time, summed training time and accuracy."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={procs}",
        "-m",
        "csl_avalanche.run",
        f"hydra.run.dir={run_dir}",
        *overrides,
    ]
    # torchrun sets OMP_NUM_THREADS=1 for several processes only: the same for every run.
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    results = json.loads((run_dir / "results.json").read_text())
    return {
        "procs": procs,
        "wall_seconds": wall,
        "train_seconds": sum(results["timings"]["train_seconds"]),
        "final_accuracy": results["levels"][-1]["student_accuracy"],
        "world_size": results["world_size"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--procs", type=int, default=torch.cuda.device_count())
    parser.add_argument("--student", default="vit_small_patch14_reg4_dinov2.lvd142m")
    parser.add_argument("--teacher", default="resnet18")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    args = parser.parse_args()
    if args.procs < 1:
        sys.exit("error: no GPU visible; give --device cpu --procs N for a CPU run")
    out = args.out or Path(tempfile.mkdtemp(prefix="finetune-scaling-"))
    data = out / "images"
    if not data.is_dir():
        write_images(data, args.classes, args.per_class, side=args.image_size * 8 // 7)
    overrides = [
        "benchmark=imagefolder",
        f"data.root={data}",
        f"student.arch={args.student}",
        "student.pretrained=false",
        "student.finetune=true",
        f"teacher.arch={args.teacher}",
        "teacher.pretrained=false",
        f"data.image_size={args.image_size}",
        f"data.num_workers={args.workers}",
        f"strategy.epochs={args.epochs}",
        f"strategy.batch_size={args.batch_size}",
        f"device={args.device}",
        f"cache_dir={out / 'cache'}",
        "progress=false",
    ]
    stamp = time.strftime("%H%M%S")
    print(f"torch {torch.__version__}; {args.classes * args.per_class} images in {data}")
    cold = run(args.procs, out / f"cold-{stamp}", overrides)
    print(f"cold run ({args.procs} processes, extraction + training): {cold['wall_seconds']:.1f} s")
    rows = [run(p, out / f"p{p}-{stamp}", overrides) for p in sorted({1, args.procs})]
    print(f"\n{'procs':>5} {'wall s':>8} {'train s':>8} {'speed-up':>8} {'final acc':>9}")
    for row in rows:
        speedup = rows[0]["train_seconds"] / row["train_seconds"]
        print(
            f"{row['procs']:>5} {row['wall_seconds']:>8.1f} {row['train_seconds']:>8.1f} "
            f"{speedup:>7.2f}x {row['final_accuracy']:>9.4f}"
        )
    (out / "finetune_scaling.json").write_text(json.dumps({"cold": cold, "runs": rows}, indent=2))
    print(f"\nresults: {out / 'finetune_scaling.json'}")


if __name__ == "__main__":
    main()
