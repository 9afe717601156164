"""The paper's protocol (`scenario=levels`): the configured strategy level by level on the
Avalanche train stream, each level evaluated on the test stream (one experience per finest
subdomain). A unit of work is a level with its evaluation (and, with a validation split, its
evaluation on it: `val_accuracy`, `val_pgr`).

A level's `pgr` is null where it would not mean what it says (`cosupervision.pgr_note`: the
ceiling is not above the weak accuracy, a class has no pool samples, or no training step ran);
that level then also holds `pgr_note`, the reason.
"""

from __future__ import annotations

import logging
import statistics
import time

from csl_avalanche.benchmarks.features import FeatureSet
from csl_avalanche.evaluation.metrics import SubdomainForgettingMetric
from csl_avalanche.experiments.scenario import RunContext, hierarchy_entry
from csl_avalanche.experiments.schema import RunSettings
from csl_avalanche.experiments.strategy_setup import (
    STREAM_ACCURACY,
    make_strategy,
    seed_everything,
    subdomain_accuracy,
)

log = logging.getLogger(__name__)


class LevelsScenario:
    def __init__(self, settings: RunSettings, features: FeatureSet):
        self.settings = settings
        self.features = features

    def run(self, context: RunContext) -> dict:
        benchmark, progress, reference = context.benchmark, context.progress, context.reference
        seed_everything(self.settings.seed)
        forgetting = SubdomainForgettingMetric(benchmark.subdomain_names())
        strategy = make_strategy(
            self.settings,
            benchmark,
            context.device,
            context.run_dir,
            reference.metric(),
            forgetting,
        )
        progress.restore(strategy)
        for experience in strategy.levels(benchmark.train_stream)[len(progress.levels) :]:
            log.info("level %d: training (teachers: %d)", experience.level, experience.num_teachers)
            start = time.perf_counter()
            strategy.train(experience, eval_streams=[])
            stats = strategy.level_statistics[-1]
            train_seconds = time.perf_counter() - start - stats.estep_seconds
            metrics = strategy.eval(benchmark.test_stream)
            accuracy = metrics[STREAM_ACCURACY]
            level = {
                "level": experience.level,
                "num_teachers": experience.num_teachers,
                "student_accuracy": accuracy,
                **reference.pgr_entry(accuracy, strategy.clock.train_exp_iterations),
                **reference.validation_entry(strategy, benchmark.val_stream),
                "subdomain_accuracy": subdomain_accuracy(metrics, benchmark),
                **{
                    k: v
                    for k, v in stats.as_dict().items()
                    if k not in ("level", "num_teachers", "estep_seconds")
                },
            }
            if subdomain_forgetting := forgetting.result():
                level["subdomain_forgetting"] = subdomain_forgetting
                level["mean_forgetting"] = statistics.fmean(subdomain_forgetting.values())
            progress.save_level(level, train_seconds, strategy)
        return {
            "levels": progress.levels,
            "subdomains": benchmark.subdomain_names(),
            **hierarchy_entry(self.features),
            "accuracy_matrix": forgetting.accuracy_matrix,  # [level][subdomain]
            "timings": {
                "train_seconds": progress.state["train_seconds"],
                "estep_seconds": [s.estep_seconds for s in strategy.level_statistics],
            },
        }
