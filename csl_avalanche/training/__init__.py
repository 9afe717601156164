"""Avalanche training glue: the in-memory batch loader, the plugins (co-supervision, the
anti-forgetting ones, divergence, progress) and the strategy state a checkpoint holds."""
