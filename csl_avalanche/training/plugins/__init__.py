"""Avalanche plugins of csl-avalanche: co-supervision, anti-forgetting, divergence, progress."""
