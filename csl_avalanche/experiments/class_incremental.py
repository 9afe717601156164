"""The class-incremental experiment (`scenario=class_incremental`): after the weak accuracy and
the ground-truth ceiling (`experiment.run_experiment`), the joint reference, then the configured
strategy arrival by arrival, evaluated on the test stream after every arrival.

Units of work for resuming (`csl_avalanche.experiments.resume`): the ceiling, the joint reference, each
arrival with its evaluation. The joint reference is the levels protocol on the same features
(all the data at once, the paper's fresh student at every level, no anti-forgetting plugin):
`joint_accuracy`, the accuracy the continual student is measured against. For
`strategy=ground_truth` it is the ceiling itself; `scenario.joint_reference=false` skips it.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from csl_avalanche.benchmarks.arrivals import (
    ArrivalBenchmark,
    arrival_order,
    by_arrival,
    make_arrival_benchmark,
)
from csl_avalanche.benchmarks.features import FeatureSet
from csl_avalanche.benchmarks.streams import CSLBenchmark, finest_subdomain_names
from csl_avalanche.core.cosupervision import pgr, pgr_note
from csl_avalanche.evaluation.metrics import (
    ArrivalAccuracyMetric,
    PGRMetric,
    SubdomainForgettingMetric,
)
from csl_avalanche.experiments.resume import RunProgress
from csl_avalanche.experiments.runner import hierarchy_entry
from csl_avalanche.experiments.settings import check_arrivals_against_data
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
)
from csl_avalanche.strategies import GroundTruthCeiling
from csl_avalanche.training.plugins.continual import build_continual_plugins

log = logging.getLogger(__name__)
GROUND_TRUTH = "ground_truth"


class ClassIncrementalRun:
    """The arrival stream of `cfg` on `features`, checked against the data on construction
    (before any training); `run` trains it and returns results.json's content."""

    def __init__(self, cfg: DictConfig, features: FeatureSet):
        self.cfg = cfg
        self.hierarchy = hierarchy_entry(features)
        self.strategy_name = cfg.strategy.name
        order = cfg.scenario.order
        if isinstance(order, ListConfig):
            order = OmegaConf.to_container(order)
        names = finest_subdomain_names(features, features.hierarchy)
        self.arrivals = make_arrival_benchmark(features, arrival_order(order, names, cfg.seed))
        self.experiences = self._experiences(self.arrivals)
        sizes = {names[a.subdomain]: len(a.samples) for a in self.arrivals.arrivals}
        check_arrivals_against_data(cfg, arrival_sizes=sizes, num_experiences=len(self.experiences))

    def _experiences(self, arrivals: ArrivalBenchmark) -> list:
        """The experiences the configured strategy trains on, in order."""
        if self.strategy_name == GROUND_TRUTH:
            return list(arrivals.ground_truth_stream)
        return STRATEGIES[self.strategy_name].levels(arrivals.train_stream)

    def run(
        self,
        benchmark: CSLBenchmark,
        device: torch.device,
        run_dir: Path,
        progress: RunProgress,
        *,
        weak: float,
        ceiling: float,
        ceiling_steps: int,
        missing: list[int],
    ) -> dict:
        cfg, arrivals = self.cfg, self.arrivals
        reference = {"missing_classes": missing, "ceiling_steps": ceiling_steps}
        if self._joint_wanted() and progress.joint is None:
            self._run_joint(benchmark, device, run_dir, progress, weak, ceiling, reference)
        seed_everything(int(cfg.seed))
        metric = ArrivalAccuracyMetric(arrivals.subdomain_names, arrivals.arrived_at())
        strategy = self._strategy(
            benchmark, device, run_dir, PGRMetric(weak, ceiling, **reference), metric
        )
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
            entry = {
                "arrival": arrival,
                "subdomain": group[0].subdomain,
                **_pgr_entry(metrics[STREAM_ACCURACY], strategy, weak, ceiling, reference),
                **metric.summary(),
                "subdomain_accuracy": subdomain_accuracy(metrics, benchmark),
                "subdomain_forgetting": metric.result(),
                **_last_phase_statistics(strategy, arrival),
            }
            progress.save_arrival(entry, train_seconds, strategy)
        return self._results(progress, weak, ceiling, metric, strategy, device)

    def _joint_wanted(self) -> bool:
        return bool(self.cfg.scenario.joint_reference) and self.strategy_name != GROUND_TRUTH

    def _run_joint(self, benchmark, device, run_dir, progress, weak, ceiling, reference) -> None:
        """The levels protocol with the same strategy settings on all the data, as
        `python -m csl_avalanche.run` runs it: a fresh student at every level, no plugins."""
        log.info("joint reference: the levels protocol on all the data")
        joint = copy.deepcopy(self.cfg)
        joint.strategy.reinit_student = True
        joint.plugins = {}
        seed_everything(int(joint.seed))
        strategy = make_strategy(
            joint,
            benchmark,
            device,
            run_dir,
            PGRMetric(weak, ceiling, **reference),
            SubdomainForgettingMetric(benchmark.subdomain_names()),
            log_name="joint",
        )
        for experience in strategy.levels(benchmark.train_stream):
            strategy.train(experience, eval_streams=[])
        accuracy = strategy.eval(benchmark.test_stream)[STREAM_ACCURACY]
        progress.save_joint(accuracy, strategy.evaluator)

    def _strategy(self, benchmark, device, run_dir, pgr_metric, metric):
        """The configured strategy, logging to tb/<strategy name>; ground truth trains the
        student as the ceiling does, with the configured plugins."""
        cfg = self.cfg
        if self.strategy_name != GROUND_TRUTH:
            return make_strategy(cfg, benchmark, device, run_dir, pgr_metric, metric)
        plugins = build_continual_plugins(OmegaConf.to_container(cfg.plugins))
        return GroundTruthCeiling(
            model=student_model(cfg, benchmark),
            evaluator=make_evaluator(cfg, run_dir / "tb" / GROUND_TRUTH, pgr_metric, metric),
            plugins=run_plugins(cfg, GROUND_TRUTH) + plugins,
            **loss_kwargs(cfg),
            **training_kwargs(cfg, device),
        )

    def _results(self, progress, weak, ceiling, metric, strategy, device) -> dict:
        arrivals = progress.arrivals
        last = arrivals[-1]
        if not self._joint_wanted():
            joint = ceiling if self.strategy_name == GROUND_TRUTH else None
        else:
            joint = progress.joint["accuracy"]
        return {
            "scenario": "class_incremental",
            "weak_accuracy": weak,
            "ceiling_accuracy": ceiling,
            "joint_accuracy": joint,
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
            "seed": int(self.cfg.seed),
            "device": str(device),
            "config": OmegaConf.to_container(self.cfg, resolve=True),
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


def _pgr_entry(accuracy: float, strategy, weak: float, ceiling: float, reference: dict) -> dict:
    """`accuracy` on the whole test split and its `pgr` (null, with `pgr_note`, where PGR would
    not mean what it says)."""
    steps = strategy.clock.train_exp_iterations
    note = pgr_note(weak, ceiling, student_steps=steps, **reference)
    if note:
        return {"accuracy": accuracy, "pgr": None, "pgr_note": note}
    return {"accuracy": accuracy, "pgr": pgr(accuracy, weak, ceiling)}
