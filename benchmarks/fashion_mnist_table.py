"""The README's Fashion-MNIST table: PGR per level over seeds, hard and soft labels.

Runs `python -m csl_avalanche.run benchmark=fashion_mnist seed=S strategy.labels=L` for every
seed and label kind (the soft run of a seed reuses the hard run's cached backbone, teachers and
features), then prints a markdown table of PGR per level (mean +- sample std over seeds), the
weak and ceiling accuracies, and the wall time of each run.

    python benchmarks/fashion_mnist_table.py                      # seeds 0 1 2, hard and soft
    python benchmarks/fashion_mnist_table.py --seeds 0 --out /tmp/fm   # one seed

Needs the real data (`apt-get install dataset-fashion-mnist`, or pass --set data.root=DIR).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def run(out: Path, seed: int, labels: str, extra: list[str]) -> tuple[dict, float]:
    run_dir = out / f"seed{seed}-{labels}"
    cmd = [
        sys.executable,
        "-m",
        "csl_avalanche.run",
        "benchmark=fashion_mnist",
        f"seed={seed}",
        f"strategy.labels={labels}",
        f"hydra.run.dir={run_dir}",
        f"cache_dir={out / 'cache'}",
        "progress=false",
        *extra,
    ]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    return json.loads((run_dir / "results.json").read_text()), seconds


def mean_std(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    values = [v * scale for v in values]
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {spread:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("outputs/fashion_mnist_table"))
    parser.add_argument("--set", nargs="*", default=[], help="extra overrides, key=value")
    args = parser.parse_args()

    results: dict[str, list[dict]] = {"hard": [], "soft": []}
    walls: dict[str, list[float]] = {"hard": [], "soft": []}
    for seed in args.seeds:
        for labels in ("hard", "soft"):
            result, seconds = run(args.out, seed, labels, args.set)
            results[labels].append(result)
            walls[labels].append(seconds)
            pgrs = " ".join(f"{lvl['pgr']:.3f}" for lvl in result["levels"])
            print(f"seed {seed} {labels}: PGR per level {pgrs}  ({seconds:.0f} s)", flush=True)

    levels = results["hard"][0]["levels"]
    teachers = " | ".join(str(lvl["num_teachers"]) for lvl in levels)
    print(f"\n| teachers at the last level | {teachers} |")
    print("|---|" + "---|" * len(levels))
    for labels in ("hard", "soft"):
        cells = " | ".join(
            mean_std([r["levels"][i]["pgr"] for r in results[labels]], 100)
            for i in range(len(levels))
        )
        print(f"| {labels} labels, PGR % | {cells} |")
    weak = mean_std([r["weak_accuracy"] for r in results["hard"]], 100)
    ceiling = mean_std([r["ceiling_accuracy"] for r in results["hard"]], 100)
    print(f"\nweak (level-0 generalist) accuracy {weak} %, ceiling {ceiling} %")
    for labels in ("hard", "soft"):
        accs = " | ".join(
            mean_std([r["levels"][i]["student_accuracy"] for r in results[labels]], 100)
            for i in range(len(levels))
        )
        print(f"student accuracy %, {labels}: {accs}")
    print(
        f"wall time per run: hard (each seed builds its backbone, teachers and features) "
        f"{mean_std(walls['hard'], digits=0)} s; soft (reuses them from the cache) "
        f"{mean_std(walls['soft'], digits=0)} s"
    )


if __name__ == "__main__":
    main()
