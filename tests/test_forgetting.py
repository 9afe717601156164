"""Per-subdomain forgetting: the arithmetic on a hand-made accuracy sequence, and the Avalanche
metric that feeds it from evaluations of the test stream."""

from __future__ import annotations

import pytest
from continual_helpers import run_csl

from csl_avalanche.benchmark import make_csl_benchmark
from csl_avalanche.forgetting import forgetting

# Accuracy on three subdomains after levels 0, 1, 2.
MATRIX = [
    [0.9, 0.5, 0.2],
    [0.6, 0.7, 0.3],
    [0.8, 0.4, 0.35],
]


def test_forgetting_is_best_earlier_accuracy_minus_now():
    assert forgetting(MATRIX[:2]) == pytest.approx([0.3, -0.2, -0.1])
    # After level 2 the best earlier accuracy comes from level 0, level 1, level 1.
    assert forgetting(MATRIX) == pytest.approx([0.9 - 0.8, 0.7 - 0.4, 0.3 - 0.35])


def test_forgetting_needs_two_levels_of_equal_width():
    with pytest.raises(ValueError, match="at least two levels"):
        forgetting(MATRIX[:1])
    with pytest.raises(ValueError, match="differ in length"):
        forgetting([[0.5, 0.5], [0.5]])


def test_metric_rows_are_avalanche_subdomain_accuracies(tiny_features):
    strategy, metric = run_csl(tiny_features, ("replay",))
    last = strategy.evaluator.get_last_metrics()
    names = ["classes_0-1", "classes_2-3"]
    assert metric.subdomain_names == names
    assert len(metric.accuracy_matrix) == 2  # one row per trained level
    assert metric.accuracy_matrix[-1] == pytest.approx(
        [last[f"Top1_Acc_Exp/eval_phase/test_stream/Exp{i:03d}"] for i in range(2)]
    )
    expected = forgetting(metric.accuracy_matrix)
    assert metric.result() == pytest.approx(dict(zip(names, expected, strict=True)))
    for name, value in zip(names, expected, strict=True):
        logged = last[f"Forgetting_Subdomain/eval_phase/test_stream/{name}"]
        assert type(logged) is float and logged == pytest.approx(value)
    mean = last["MeanForgetting/eval_phase/test_stream"]
    assert type(mean) is float and mean == pytest.approx(sum(expected) / 2)

    # Evaluating again without training replaces the level's row instead of adding one.
    strategy.eval(make_csl_benchmark(tiny_features).test_stream)
    assert len(metric.accuracy_matrix) == 2
