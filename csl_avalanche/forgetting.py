"""Per-subdomain forgetting from an accuracy matrix, as pure arithmetic.

CSL trains level after level like a class-incremental stream; forgetting measures what the
student lost on a subdomain it once knew. Row l of the accuracy matrix holds the accuracy on
each finest subdomain after training level l. Forgetting after level l is, per subdomain, the
best accuracy after any earlier level minus the accuracy now (positive: forgotten; negative:
the subdomain improved beyond its earlier best).
"""

from __future__ import annotations

from collections.abc import Sequence


def forgetting(accuracy_matrix: Sequence[Sequence[float]]) -> list[float]:
    """Forgetting per column after the last row: max over earlier rows minus the last row."""
    if len(accuracy_matrix) < 2:
        raise ValueError(
            f"forgetting needs accuracies after at least two levels, got {len(accuracy_matrix)}"
        )
    *earlier, now = accuracy_matrix
    widths = {len(row) for row in accuracy_matrix}
    if len(widths) != 1:
        raise ValueError(f"accuracy matrix rows differ in length: {sorted(widths)}")
    columns = zip(*earlier, strict=True)
    return [max(column) - current for column, current in zip(columns, now, strict=True)]
