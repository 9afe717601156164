"""Avalanche 0.6's Synaptic Intelligence with its weight snapshots copied.

Avalanche stores a snapshot as `param.detach().cpu().flatten()`, which on a CPU model is a view
of the live weights, not a copy: the weights before a step then move with the step (every
path integral is 0) and the anchor of the penalty is the current weights (every penalty is 0),
so on CPU the plugin does nothing at all. These callbacks replace the two snapshots that must
outlive a step by copies; everything else is Avalanche's.
"""

from __future__ import annotations

import torch
from avalanche.training.plugins import SynapticIntelligencePlugin as AvalancheSI


class SynapticIntelligencePlugin(AvalancheSI):
    def before_training_exp(self, strategy, **kwargs) -> None:
        super().before_training_exp(strategy, **kwargs)
        self._copy_weights(strategy.model, self.ewc_data[0])  # the penalty's anchor

    def before_training_iteration(self, strategy, **kwargs) -> None:
        super().before_training_iteration(strategy, **kwargs)
        self._copy_weights(strategy.model, self.syn_data["old_theta"])  # the step's start

    @torch.no_grad()
    def _copy_weights(self, model: torch.nn.Module, target: dict) -> None:
        for name, param in self.allowed_parameters(model, self.excluded_parameters):
            target[name].data = param.detach().flatten().clone().cpu()
