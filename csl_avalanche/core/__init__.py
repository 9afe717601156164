"""The pure math of co-supervision: hierarchies, the E-step and the noise reduction, the
confidence loss, the clustering behind an automatic hierarchy, forgetting arithmetic, the
rules settings are checked with, and which settings cannot change results. Tensors in,
tensors out: no Avalanche, no Hydra."""
