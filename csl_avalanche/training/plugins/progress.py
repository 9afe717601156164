"""A compact console progress bar: one bar per experience, advancing by epoch.

Avalanche's InteractiveLogger prints a bar per epoch plus every metric, which buries a run of
many short epochs; full metrics still go to TensorBoard and the text log.
"""

from __future__ import annotations

from avalanche.core import SupervisedPlugin
from tqdm.auto import tqdm


class EpochProgressPlugin(SupervisedPlugin, supports_distributed=True):
    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self._bar: tqdm | None = None

    def before_training_exp(self, strategy, **kwargs) -> None:
        counter = strategy.clock.train_exp_counter
        label = getattr(strategy.experience, "label", f"level {counter}")
        self._bar = tqdm(
            total=strategy.train_epochs,
            desc=f"{self.name} {label}",
            unit="epoch",
            leave=False,
        )

    def after_training_epoch(self, strategy, **kwargs) -> None:
        self._bar.update(1)

    def after_training_exp(self, strategy, **kwargs) -> None:
        self._bar.close()
