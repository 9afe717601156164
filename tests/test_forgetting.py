"""Per-subdomain forgetting: the arithmetic on a hand-made accuracy sequence, and the Avalanche
metric that feeds it from evaluations of the test stream."""

from __future__ import annotations

import pytest
import torch
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import EvaluationPlugin
from conftest import make_feature_set
from continual_helpers import run_csl

from csl_avalanche.benchmarks.features import FeatureSet
from csl_avalanche.benchmarks.streams import make_csl_benchmark
from csl_avalanche.core.forgetting import (
    average_accuracy,
    backward_transfer,
    forgetting,
    forgetting_since_arrival,
)
from csl_avalanche.evaluation.metrics import SubdomainForgettingMetric
from csl_avalanche.models.factories import linear_probe
from csl_avalanche.strategies import CSLStrategy

pytestmark = pytest.mark.usefixtures("single_threaded")

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


# Accuracy on subdomains (columns) after arrivals 0, 1, 2; column j arrives at ARRIVED_AT[j].
ARRIVAL_MATRIX = [
    [0.1, 0.0, 0.9],
    [0.8, 0.2, 0.5],
    [0.6, 0.7, 0.4],
]
ARRIVED_AT = [1, 2, 0]


def test_class_incremental_summaries_by_hand():
    matrix, at = ARRIVAL_MATRIX, ARRIVED_AT
    # After arrival 1: only column 2 arrived before it: 0.9 - 0.5.
    assert forgetting_since_arrival(matrix[:2], at) == pytest.approx([None, None, 0.4])
    # After arrival 2: column 0 since arrival 1 (0.8, not the 0.1 before it), column 2 since 0.
    assert forgetting_since_arrival(matrix, at) == pytest.approx([0.2, None, 0.5])
    assert backward_transfer(matrix, at) == pytest.approx(((0.6 - 0.8) + (0.4 - 0.9)) / 2)
    assert backward_transfer(matrix[:1], at) is None
    assert average_accuracy(matrix[:1], at) == pytest.approx(0.9)
    assert average_accuracy(matrix[:2], at) == pytest.approx((0.8 + 0.5) / 2)
    assert average_accuracy(matrix, at) == pytest.approx((0.6 + 0.7 + 0.4) / 3)


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


def accuracies_by_hand(model: torch.nn.Module, features: FeatureSet) -> list[float]:
    """The model's accuracy on each finest subdomain (classes {0, 1} and {2, 3})."""
    with torch.no_grad():
        correct = model(features.test_x).argmax(dim=1) == features.test_y
    return [correct[features.test_y // 2 == half].float().mean().item() for half in (0, 1)]


class EvaluatedModels(SupervisedPlugin):
    """The by-hand accuracies of the model at every evaluation, mid-level ones included."""

    def __init__(self, features: FeatureSet):
        super().__init__()
        self.features = features
        self.seen: list[list[float]] = []

    def after_eval(self, strategy, **kwargs):
        self.seen.append(accuracies_by_hand(strategy.model, self.features))


@pytest.mark.parametrize("eval_after_each_level", [False, True])
def test_periodic_evaluation_inside_a_level_keeps_one_row_per_level(eval_after_each_level):
    """eval_every=1 evaluates the test stream before each `train` and after every epoch; the
    matrix still holds one row per level, the accuracies after that level."""
    tiny_features = make_feature_set(noise=2.0)  # overlapping clusters: accuracies below 1
    benchmark = make_csl_benchmark(tiny_features)
    metric = SubdomainForgettingMetric(benchmark.subdomain_names())
    evaluated = EvaluatedModels(tiny_features)
    torch.manual_seed(0)
    strategy = CSLStrategy(
        model=linear_probe(tiny_features.train_x.shape[1], tiny_features.num_classes),
        features=tiny_features,
        reinit_student=True,
        lr=0.01,
        epochs=3,
        batch_size=16,
        device="cpu",
        eval_every=1,
        evaluator=EvaluationPlugin(metric, loggers=[]),
        plugins=[evaluated],
    )
    after_level = []
    for experience in benchmark.train_stream:
        strategy.train(experience, eval_streams=[benchmark.test_stream])
        after_level.append(accuracies_by_hand(strategy.model, tiny_features))
        if eval_after_each_level:
            strategy.eval(benchmark.test_stream)

    # Evaluations ran in the middle of each level, on models unlike the level's final one.
    assert len(evaluated.seen) >= 2 * 4
    assert any(seen not in after_level for seen in evaluated.seen)
    assert len(metric.accuracy_matrix) == 2
    torch.testing.assert_close(torch.tensor(metric.accuracy_matrix), torch.tensor(after_level))
    assert after_level[0] != after_level[1]
    names = benchmark.subdomain_names()
    assert metric.result() == pytest.approx(dict(zip(names, forgetting(after_level), strict=True)))
