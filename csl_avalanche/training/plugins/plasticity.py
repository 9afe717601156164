"""ShrinkPerturbPlugin: shrink and perturb the continual student between experiences
(`core.plasticity`), so that it keeps learning each new level as a fresh student would.

The fresh initialisation is drawn from a generator seeded by the plugin's seed and the
experience's index, on a CPU copy of the model, with the global generators forked and restored:
the draw is the same on every rank and device, after a resume, and whatever ran before, and the
rest of the run's random numbers are the ones it would have drawn without the plugin. So the
plugin keeps no state for the checkpoint.
"""

from __future__ import annotations

import copy

import torch
from avalanche.core import SupervisedPlugin

from csl_avalanche.core.plasticity import shrink_perturb

# Spreads (seed, experience) over the generator's seeds: experience < this, seed < 2**32.
_EXPERIENCES_PER_SEED = 1_000_003


def fresh_parameters(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """The parameters of a freshly initialised CPU copy of `model` (each module's own
    `reset_parameters`, drawn with `seed`), by name; parameters of modules without an
    initialiser are left out. The global random state is left as it was."""
    draw = copy.deepcopy(model).cpu()
    fresh: dict[str, torch.Tensor] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for prefix, module in draw.named_modules():
            if not callable(getattr(module, "reset_parameters", None)):
                continue
            module.reset_parameters()
            for name, parameter in module.named_parameters(recurse=False):
                fresh[f"{prefix}.{name}" if prefix else name] = parameter.detach()
    return fresh


class ShrinkPerturbPlugin(SupervisedPlugin, supports_distributed=True):
    """Before every training experience after the first, each parameter becomes
    `shrink * theta + noise * theta_fresh`. It acts after the E-step (which needs the student
    as it was trained) and before the experience's first step."""

    keeps_state = False  # each draw is seeded by (seed, experience): nothing to checkpoint

    def __init__(self, shrink: float = 0.5, noise: float = 0.1, seed: int | None = None):
        """`seed` None: the run's seed, read (not drawn) from torch's generator, which the run
        seeds with `seed` before it builds a strategy (`torch.initial_seed()`)."""
        super().__init__()
        self.shrink = shrink
        self.noise = noise
        self.seed = torch.initial_seed() if seed is None else seed

    def before_training_exp(self, strategy, **kwargs) -> None:
        experience = strategy.clock.train_exp_counter
        if experience == 0:
            return
        model = strategy.model
        fresh = fresh_parameters(model, self.seed * _EXPERIENCES_PER_SEED + experience)
        weights = {name: p.detach().cpu() for name, p in model.named_parameters()}
        moved = shrink_perturb(weights, fresh, self.shrink, self.noise)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                parameter.copy_(moved[name])
