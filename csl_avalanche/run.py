"""`python -m csl_avalanche.run`: the Hydra entry point (configs: the `configs` package)."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

# avalanche-lib imports qpsolvers, which warns about solvers that only GEM-style plugins use.
warnings.filterwarnings("ignore", message="no QP solver found", category=UserWarning)

from csl_avalanche.errors import ConfigError  # noqa: E402
from csl_avalanche.experiment import run_experiment  # noqa: E402

log = logging.getLogger(__name__)


def summary_table(results: dict) -> str:
    """The per-level results as an aligned text table."""
    head = (
        f"{'level':>5} {'teachers':>8} {'teacher_acc':>11} {'keep':>6} "
        f"{'student_acc':>11} {'PGR':>7}"
    )
    rows = [
        f"weak (level-0 generalist) accuracy {results['weak_accuracy']:.4f}   "
        f"ceiling (ground truth) accuracy {results['ceiling_accuracy']:.4f}",
        head,
        "-" * len(head),
    ]
    for lvl in results["levels"]:
        rows.append(
            f"{lvl['level']:>5} {lvl['num_teachers']:>8} {lvl['teacher_accuracy']:>11.4f} "
            f"{lvl['keep_rate']:>6.3f} {lvl['student_accuracy']:>11.4f} {lvl['pgr']:>7.3f}"
        )
    return "\n".join(rows)


@hydra.main(version_base="1.3", config_path="pkg://csl_avalanche.configs", config_name="config")
def main(cfg: DictConfig) -> dict:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        results = run_experiment(cfg, run_dir)
    except ConfigError as err:  # its message says what to fix: no traceback
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(summary_table(results))
    print(f"results: {run_dir / 'results.json'}   tensorboard --logdir {run_dir / 'tb'}")
    return results


if __name__ == "__main__":
    main()
