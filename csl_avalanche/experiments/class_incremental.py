"""The class-incremental scenario (`scenario=class_incremental`): after the weak accuracy and
the ground-truth ceiling (`experiments.runner`), the joint reference, then the configured
strategy arrival by arrival, evaluated on the test stream after every arrival.

Units of work for resuming (`experiments.resume`): the ceiling, the joint reference, each
arrival with its evaluation. The joint reference is the levels protocol on the same features
(all the data at once, the paper's fresh student at every level, no anti-forgetting plugin):
`joint_accuracy`, the accuracy the continual student is measured against. For
`strategy=ground_truth` it is the ceiling itself; `scenario.joint_reference=false` skips it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from csl_avalanche.benchmarks.arrivals import (
    ArrivalBenchmark,
    arrival_order,
    by_arrival,
    make_arrival_benchmark,
)
from csl_avalanche.benchmarks.features import FeatureSet
from csl_avalanche.benchmarks.streams import finest_subdomain_names
from csl_avalanche.evaluation.metrics import (
    ArrivalAccuracyMetric,
    SubdomainForgettingMetric,
)
from csl_avalanche.experiments.checks import check_arrivals_against_data
from csl_avalanche.experiments.scenario import RunContext, hierarchy_entry
from csl_avalanche.experiments.schema import GROUND_TRUTH, RunSettings
from csl_avalanche.experiments.strategy_setup import (
    STRATEGIES,
    STREAM_ACCURACY,
    loss_kwargs,
    make_evaluator,
    make_strategy,
    run_plugins,
    seed_everything,
    student_model,
    subdomain_accuracy,
    training_kwargs,
    validation_accuracy,
)
from csl_avalanche.strategies import GroundTruthCeiling
from csl_avalanche.training.plugins.continual import build_continual_plugins

log = logging.getLogger(__name__)


class ClassIncrementalScenario:
    """The arrival stream of `settings` on `features`, checked against the data on
    construction (before any training); `run` trains it."""

    def __init__(self, settings: RunSettings, features: FeatureSet):
        self.settings = settings
        self.hierarchy = hierarchy_entry(features)
        self.strategy_name = settings.strategy.name
        names = finest_subdomain_names(features, features.hierarchy)
        order = arrival_order(settings.scenario.order, names, settings.seed)
        self.arrivals = make_arrival_benchmark(features, order)
        self.experiences = self._experiences(self.arrivals)
        sizes = {names[a.subdomain]: len(a.samples) for a in self.arrivals.arrivals}
        check_arrivals_against_data(
            settings, arrival_sizes=sizes, num_experiences=len(self.experiences)
        )

    def _experiences(self, arrivals: ArrivalBenchmark) -> list:
        """The experiences the configured strategy trains on, in order."""
        if self.strategy_name == GROUND_TRUTH:
            return list(arrivals.ground_truth_stream)
        return STRATEGIES[self.strategy_name].levels(arrivals.train_stream)

    def run(self, context: RunContext) -> dict:
        arrivals, progress, reference = self.arrivals, context.progress, context.reference
        if self._joint_wanted() and progress.joint is None:
            self._run_joint(context)
        seed_everything(self.settings.seed)
        metric = ArrivalAccuracyMetric(arrivals.subdomain_names, arrivals.arrived_at())
        strategy = self._strategy(context, reference.metric(), metric)
        progress.restore(strategy)
        for group in by_arrival(self.experiences)[len(progress.arrivals) :]:
            arrival = group[0].arrival
            log.info("arrival %d: %s (%d experiences)", arrival, group[0].subdomain, len(group))
            start = time.perf_counter()
            for experience in group:
                strategy.train(experience, eval_streams=[])
            estep = sum(stats.estep_seconds for stats in _statistics(strategy, arrival))
            train_seconds = time.perf_counter() - start - estep
            metrics = strategy.eval(arrivals.test_stream)
            accuracy = metrics[STREAM_ACCURACY]
            entry = {
                "arrival": arrival,
                "subdomain": group[0].subdomain,
                "accuracy": accuracy,
                **reference.pgr_entry(accuracy, strategy.clock.train_exp_iterations),
                **reference.validation_entry(strategy, arrivals.val_stream),
                **metric.summary(),
                "subdomain_accuracy": subdomain_accuracy(metrics, context.benchmark),
                "subdomain_forgetting": metric.result(),
                **_last_phase_statistics(strategy, arrival),
            }
            progress.save_arrival(entry, train_seconds, strategy)
        return self._results(progress, reference.ceiling, metric, strategy)

    def _joint_wanted(self) -> bool:
        return self.settings.scenario.joint_reference and self.strategy_name != GROUND_TRUTH

    def _run_joint(self, context: RunContext) -> None:
        """The levels protocol with the same strategy settings on all the data, as
        `python -m csl_avalanche.run` runs it: a fresh student at every level, no plugins."""
        log.info("joint reference: the levels protocol on all the data")
        settings = self.settings
        joint = replace(
            settings, strategy=replace(settings.strategy, reinit_student=True), plugins={}
        )
        seed_everything(joint.seed)
        benchmark = context.benchmark
        strategy = make_strategy(
            joint,
            benchmark,
            context.device,
            context.run_dir,
            context.reference.metric(),
            SubdomainForgettingMetric(benchmark.subdomain_names()),
            log_name="joint",
        )
        for experience in strategy.levels(benchmark.train_stream):
            strategy.train(experience, eval_streams=[])
        accuracy = strategy.eval(benchmark.test_stream)[STREAM_ACCURACY]
        val_accuracy = validation_accuracy(strategy, benchmark.val_stream)
        context.progress.save_joint(accuracy, strategy.evaluator, val_accuracy)

    def _joint_validation(self, progress) -> dict:
        """`joint_val_accuracy` where there is a validation split: the joint reference's, or
        for ground truth the ceiling's."""
        if self._joint_wanted():
            unit = progress.joint
        else:
            unit = progress.ceiling if self.strategy_name == GROUND_TRUTH else {}
        return {"joint_val_accuracy": unit["val_accuracy"]} if "val_accuracy" in unit else {}

    def _strategy(self, context: RunContext, pgr_metric, metric):
        """The configured strategy, logging to tb/<strategy name>; ground truth trains the
        student as the ceiling does, with the configured plugins."""
        settings = self.settings
        if self.strategy_name != GROUND_TRUTH:
            return make_strategy(
                settings, context.benchmark, context.device, context.run_dir, pgr_metric, metric
            )
        return GroundTruthCeiling(
            model=student_model(settings, context.benchmark),
            evaluator=make_evaluator(settings, context.run_dir, GROUND_TRUTH, pgr_metric, metric),
            plugins=run_plugins(settings, GROUND_TRUTH) + build_continual_plugins(settings.plugins),
            **loss_kwargs(settings),
            **training_kwargs(settings, context.device),
        )

    def _results(self, progress, ceiling: float, metric, strategy) -> dict:
        arrivals = progress.arrivals
        last = arrivals[-1]
        if not self._joint_wanted():
            joint = ceiling if self.strategy_name == GROUND_TRUTH else None
        else:
            joint = progress.joint["accuracy"]
        return {
            "joint_accuracy": joint,
            **self._joint_validation(progress),
            "final_accuracy": last["accuracy"],
            "final_average_accuracy": last["average_accuracy"],
            "final_mean_forgetting": last["mean_forgetting"],
            "final_backward_transfer": last["backward_transfer"],
            "pgr": last["pgr"],
            **({"pgr_note": last["pgr_note"]} if "pgr_note" in last else {}),
            "order": self.arrivals.order(),
            "arrivals": arrivals,
            "subdomains": self.arrivals.subdomain_names,
            **self.hierarchy,
            "accuracy_matrix": metric.accuracy_matrix,  # [arrival][subdomain]
            "timings": {
                "train_seconds": progress.state["train_seconds"],
                "estep_seconds": [
                    sum(stats.estep_seconds for stats in _statistics(strategy, entry["arrival"]))
                    for entry in arrivals
                ],
            },
        }


def _statistics(strategy, arrival: int) -> list:
    """The co-supervision statistics of the arrival's phases (none on ground truth)."""
    return [stats for stats in getattr(strategy, "level_statistics", []) if stats.level == arrival]


def _last_phase_statistics(strategy, arrival: int) -> dict:
    """The co-supervision statistics of the arrival's last phase (the routed one; w2s: its
    only one), without the stage and timing; none for ground truth."""
    return {
        key: value
        for stats in _statistics(strategy, arrival)[-1:]
        for key, value in stats.as_dict().items()
        if key not in ("level", "estep_seconds")
    }
