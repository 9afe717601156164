"""Speed of the CSL strategy against the same algorithm as a plain PyTorch loop.

Builds a synthetic features file at ImageNet scale (pool 40,000, test 10,000, D=384, C=1000,
levels 1/2/4/8 with contiguous class blocks), runs CSLStrategy through Avalanche, then the same
algorithm as a plain loop over in-memory tensors (the paper's way), in the same process, and
prints both training times, their ratio, and the E-step time per level.

    python benchmarks/csl_speed.py                 # paper batch 100, 3 epochs per level
    python benchmarks/csl_speed.py --epochs 20 --device cuda
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

warnings.filterwarnings("ignore", message="no QP solver found")

from avalanche.evaluation.metrics import accuracy_metrics  # noqa: E402
from avalanche.training.plugins import EvaluationPlugin  # noqa: E402

from csl_avalanche.benchmarks.features import FeatureSet, load_features, save_features  # noqa: E402
from csl_avalanche.benchmarks.streams import make_csl_benchmark  # noqa: E402
from csl_avalanche.core import cosupervision as cs  # noqa: E402
from csl_avalanche.core.hierarchy import Hierarchy  # noqa: E402
from csl_avalanche.strategies import CSLStrategy  # noqa: E402


def synthetic_features(n: int, m: int, d: int, c: int, blocks: list[int], seed: int) -> FeatureSet:
    """Gaussian class clusters; teachers are noisy, specialists less so and only on their block."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(c, d, generator=g)
    hierarchy = Hierarchy.contiguous_blocks(c, blocks)

    def split(k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        y = torch.randint(c, (k,), generator=g)
        x = centers[y] + 0.8 * torch.randn(k, d, generator=g)
        probs = torch.empty(hierarchy.num_teachers, k, c)
        teacher = 0
        for level, subdomains in enumerate(hierarchy.levels):
            accuracy = 0.5 + 0.08 * level
            for classes in subdomains:
                classes = torch.tensor(classes)
                guess = classes[torch.randint(len(classes), (k,), generator=g)]
                label = torch.where(torch.rand(k, generator=g) < accuracy, y, guess)
                logits = torch.full((k, c), -30.0)
                logits[:, classes] = torch.randn(k, len(classes), generator=g)
                logits[torch.arange(k), label] += 4.0
                probs[teacher] = logits.softmax(dim=1)
                teacher += 1
        return x, y, probs

    train_x, train_y, train_probs = split(n)
    test_x, test_y, test_probs = split(m)
    offsets = [hierarchy.teacher_slice(lvl) for lvl in range(hierarchy.num_levels)]
    return FeatureSet(
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        teacher_train_probs=train_probs,
        teacher_test_probs=test_probs,
        levels=[list(range(s.start, s.stop)) for s in offsets],
        subdomains=[list(sub) for level in hierarchy.levels for sub in level],
    )


def run_avalanche(features: FeatureSet, args, device: torch.device) -> tuple[list, list, list]:
    torch.manual_seed(0)
    model = torch.nn.Linear(features.train_x.shape[1], features.num_classes)
    strategy = CSLStrategy(
        model=model,
        features=features,
        lr=args.lr,
        epochs=args.epochs,
        batch_size=args.batch_size,
        device=device,
        evaluator=EvaluationPlugin(accuracy_metrics(experience=True, stream=True)),
    )
    benchmark = make_csl_benchmark(features)
    train_seconds, accuracies = [], []
    for experience in benchmark.train_stream:
        start = time.perf_counter()
        strategy.train(experience, eval_streams=[])
        _sync(device)
        train_seconds.append(
            time.perf_counter() - start - strategy.level_statistics[-1].estep_seconds
        )
        metrics = strategy.eval(benchmark.test_stream)
        accuracies.append(metrics["Top1_Acc_Stream/eval_phase/test_stream"])
    estep = [s.estep_seconds for s in strategy.level_statistics]
    return train_seconds, estep, accuracies


def run_plain(features: FeatureSet, args, device: torch.device) -> tuple[list, list, list]:
    """The paper's loop: E-step, then epochs of index-gathered batches, Adam + cosine per level."""
    torch.manual_seed(0)
    hierarchy = features.hierarchy
    x = features.train_x.to(device)
    test_x, test_y = features.test_x.to(device), features.test_y.to(device)
    model = torch.nn.Linear(x.shape[1], features.num_classes).to(device)
    train_seconds, estep, accuracies = [], [], []
    for level in range(hierarchy.num_levels):
        start = time.perf_counter()
        probs = features.teacher_train_probs[hierarchy.teacher_slice(level)].to(device)
        probs = probs.permute(1, 0, 2)
        if level == 0:
            keep = torch.ones(len(x), dtype=torch.bool, device=device)
            labels = probs[:, 0].argmax(1)
        else:
            with torch.no_grad():
                logits = model(x)
            owner = hierarchy.class_to_teacher(level).to(device)
            z = cs.assign_teachers(logits, probs, "class_partition", class_to_teacher=owner)
            labels = cs.gather_targets(probs, z).argmax(1)
            keep = cs.select_confident(logits, labels, "top3")
        epochs = cs.scaled_epochs(args.epochs, keep.float().mean().item())
        kept_x, kept_y = x[keep], labels[keep]
        _sync(device)
        estep.append(time.perf_counter() - start)

        start = time.perf_counter()
        if level > 0:
            model.reset_parameters()
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        steps = epochs * -(-len(kept_x) // args.batch_size)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(kept_x), device=device)
            for i in range(0, len(kept_x), args.batch_size):
                idx = order[i : i + args.batch_size]
                loss = F.cross_entropy(model(kept_x[idx]), kept_y[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
        _sync(device)
        train_seconds.append(time.perf_counter() - start)
        with torch.no_grad():
            accuracies.append((model(test_x).argmax(1) == test_y).float().mean().item())
    return train_seconds, estep, accuracies


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=int, default=40_000)
    parser.add_argument("--test", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")

    start = time.perf_counter()
    features = synthetic_features(args.pool, args.test, args.dim, args.classes, [1, 2, 4, 8], 0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "features.pt"
        save_features(features, path)
        features = load_features(path)
        print(
            f"features file: {path.stat().st_size / 2**30:.2f} GiB, "
            f"built and validated in {time.perf_counter() - start:.1f} s"
        )
        avalanche_train, avalanche_estep, avalanche_acc = run_avalanche(features, args, device)
    plain_train, plain_estep, plain_acc = run_plain(features, args, device)

    print(
        f"\n{'level':>5} {'avalanche train s':>17} {'plain train s':>13} {'E-step s':>9} "
        f"{'plain E-step s':>14} {'acc (aval/plain)':>17}"
    )
    for level in range(len(plain_train)):
        print(
            f"{level:>5} {avalanche_train[level]:>17.2f} {plain_train[level]:>13.2f} "
            f"{avalanche_estep[level]:>9.3f} {plain_estep[level]:>14.3f} "
            f"{avalanche_acc[level]:>8.3f}/{plain_acc[level]:.3f}"
        )
    total_a, total_p = sum(avalanche_train), sum(plain_train)
    print(
        f"\ntraining: CSL strategy {total_a:.1f} s, plain loop {total_p:.1f} s, "
        f"ratio {total_a / total_p:.2f}x (target <= 1.3x)"
    )
    print(
        f"E-step (levels 1-3, CSL strategy): max {max(avalanche_estep[1:]):.3f} s "
        f"(target < 1 s on 2 CPU cores)"
    )


if __name__ == "__main__":
    main()
