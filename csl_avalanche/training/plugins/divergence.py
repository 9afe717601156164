"""DivergencePlugin: stop a run whose student diverged instead of reporting its accuracy.

A too-large learning rate, or a plugin term that overflows (an LwF temperature near 0), makes
the loss, then the weights, NaN or Inf; the student then predicts one class and the run would
print a plausible-looking accuracy. The loss is checked once per epoch (accumulated on the
device, so there is no synchronisation per step) and the weights after each level. Under
torchrun the ranks agree on the loss check, so that all of them stop together.
"""

from __future__ import annotations

import torch
from avalanche.core import SupervisedPlugin

from csl_avalanche.core.errors import ConfigError
from csl_avalanche.distributed import all_true


class DivergencePlugin(SupervisedPlugin, supports_distributed=True):
    """Raises ConfigError naming the level (`name`: the run's strategy, or the ceiling) and
    giving `advice` (what to change) once the loss or the weights are not finite."""

    def __init__(self, name: str, advice: str):
        super().__init__()
        self.name = name
        self.advice = advice
        self._finite: torch.Tensor | None = None

    def before_training_epoch(self, strategy, **kwargs) -> None:
        self._finite = torch.ones((), dtype=torch.bool, device=strategy.device)

    def after_training_iteration(self, strategy, **kwargs) -> None:
        self._finite &= torch.isfinite(strategy.loss.detach()).all()

    def after_training_epoch(self, strategy, **kwargs) -> None:
        if not all_true(self._finite):
            epoch = strategy.clock.train_exp_epochs + 1
            self._stop(strategy, f"the training loss became NaN or Inf in epoch {epoch}")

    def after_training_exp(self, strategy, **kwargs) -> None:
        bad = [
            name
            for name, value in strategy.model.named_parameters()
            if not torch.isfinite(value).all()
        ]
        if bad:
            self._stop(strategy, f"the student's weights {bad} are NaN or Inf after training")

    def _stop(self, strategy, what: str) -> None:
        label = getattr(strategy.experience, "label", None)  # "level 1", "arrival 2 (...)"
        where = self.name if label is None else f"{self.name} {label}"
        raise ConfigError(f"{where}: {what}: the student diverged; {self.advice}")
