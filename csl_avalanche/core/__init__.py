"""The pure math of co-supervision: hierarchies, the E-step and the noise reduction, the
confidence loss, the clustering behind an automatic hierarchy, forgetting arithmetic, and the
rules settings are checked with. Tensors in, tensors out: no Avalanche, no Hydra."""
