"""Per-subdomain forgetting and the other class-incremental summaries of an accuracy matrix, as
pure arithmetic.

CSL trains level after level like a class-incremental stream; forgetting measures what the
student lost on a subdomain it once knew. Row l of the accuracy matrix holds the accuracy on
each finest subdomain after training level l (or, in the class-incremental scenario, after
arrival l). Forgetting after row t is, per subdomain, the best accuracy after any earlier row
minus the accuracy now (positive: forgotten; negative: the subdomain improved beyond its
earlier best).

When subdomains arrive one at a time (`arrived_at[j]`: the row after which subdomain j had
arrived), only the rows since its arrival count (Chaudhry et al. 2018), and only subdomains
that arrived before the last row have something to forget: they are the ones the
class-incremental summaries (forgetting, backward transfer) cover, and the arrived subdomains
are those the average accuracy covers.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def forgetting(accuracy_matrix: Sequence[Sequence[float]]) -> list[float]:
    """Forgetting per column after the last row: max over earlier rows minus the last row."""
    if len(accuracy_matrix) < 2:
        raise ValueError(
            f"forgetting needs accuracies after at least two levels, got {len(accuracy_matrix)}"
        )
    return forgetting_since_arrival(accuracy_matrix, [0] * len(accuracy_matrix[0]))


def forgetting_since_arrival(
    accuracy_matrix: Sequence[Sequence[float]], arrived_at: Sequence[int]
) -> list[float | None]:
    """Per column j after the last row t: max over rows arrived_at[j] .. t-1 minus row t;
    None for a column that arrived at row t or has not arrived yet."""
    now = _last_row(accuracy_matrix, arrived_at)
    t = len(accuracy_matrix) - 1
    return [
        None if start >= t else max(row[j] for row in accuracy_matrix[start:t]) - now[j]
        for j, start in enumerate(arrived_at)
    ]


def backward_transfer(
    accuracy_matrix: Sequence[Sequence[float]], arrived_at: Sequence[int]
) -> float | None:
    """Mean over the columns that arrived before the last row of (accuracy now minus accuracy
    right after the column arrived) (Lopez-Paz & Ranzato 2017); None when there is none."""
    now = _last_row(accuracy_matrix, arrived_at)
    t = len(accuracy_matrix) - 1
    changes = [
        now[j] - accuracy_matrix[start][j] for j, start in enumerate(arrived_at) if start < t
    ]
    return statistics.fmean(changes) if changes else None


def average_accuracy(
    accuracy_matrix: Sequence[Sequence[float]], arrived_at: Sequence[int]
) -> float:
    """Mean accuracy of the last row over the columns that have arrived by then."""
    now = _last_row(accuracy_matrix, arrived_at)
    t = len(accuracy_matrix) - 1
    arrived = [now[j] for j, start in enumerate(arrived_at) if start <= t]
    if not arrived:
        raise ValueError(f"no column has arrived by row {t}: arrived_at is {list(arrived_at)}")
    return statistics.fmean(arrived)


def _last_row(accuracy_matrix: Sequence[Sequence[float]], arrived_at: Sequence[int]):
    if not accuracy_matrix:
        raise ValueError("the accuracy matrix has no row")
    widths = {len(row) for row in accuracy_matrix}
    if len(widths) != 1:
        raise ValueError(f"accuracy matrix rows differ in length: {sorted(widths)}")
    if len(arrived_at) != len(accuracy_matrix[0]):
        raise ValueError(
            f"arrived_at has {len(arrived_at)} entries for {len(accuracy_matrix[0])} columns"
        )
    return accuracy_matrix[-1]
