"""Why a CSL variant recovers what it does: per level, the student's accuracy beside the keep
rate, the routing accuracy and the precision of the kept labels, mean ± std over each
configuration's seeds (results.json's co-supervision statistics; the report has the PGR).

    python benchmarks/level_diagnostics.py multirun/text/wordnet/levels

Routing accuracy is `assignment_accuracy`: how often the E-step sends a pool sample to the
teacher of its true subdomain (1 for the oracle, null for the ensemble).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from csl_avalanche.evaluation.report import Variant, load_variants, mean_spread

COLUMNS = {
    "student_accuracy": "student acc %",
    "keep_rate": "keep %",
    "assignment_accuracy": "routing acc %",
    "label_precision": "kept labels right %",
    "teacher_accuracy": "assigned labels right %",
}


def percent(values: list[float | None]) -> str:
    mean, spread = mean_spread(values)
    return "–" if mean != mean else f"{100 * mean:.1f} ± {100 * spread:.1f}"


def rows(variant: Variant) -> list[list[str]]:
    """One row per level of the variant's runs."""
    found = []
    for level in range(variant.num_levels()):
        runs = [run["levels"][level] for run in variant.runs]
        cells = [percent([run.get(key) for run in runs]) for key in COLUMNS]
        found.append([variant.label, str(level), str(runs[0]["num_teachers"]), *cells])
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="a sweep folder (or a folder of sweeps)")
    args = parser.parse_args(argv)
    variants = [v for v in load_variants(args.root) if v.scenario == "levels"]
    weak = [run["weak_accuracy"] for v in variants for run in v.runs]
    ceiling = [run["ceiling_accuracy"] for v in variants for run in v.runs]
    print(f"weak accuracy {percent(weak)} %, ceiling {percent(ceiling)} % (every run)\n")
    head = ["variant", "level", "teachers", *COLUMNS.values()]
    table = [head, ["---"] * len(head), *(row for v in variants for row in rows(v))]
    print("\n".join("| " + " | ".join(row) + " |" for row in table))


if __name__ == "__main__":
    main()
