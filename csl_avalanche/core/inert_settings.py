"""The settings that cannot change a run's results: where the caches live, progress bars,
whether to resume, the loggers, and the E-step's chunk size (chunks give the whole-pool
results bit for bit, docs/design.md). A resumed run may change them (`experiments.resume`),
and the report puts runs that differ only in them into one configuration
(`evaluation.report`)."""

from __future__ import annotations

import copy

INERT_SETTINGS = ("progress", "cache_dir", "resume", "loggers", "strategy.chunk_size")


def without_inert_settings(config: dict) -> dict:
    """A copy of the resolved config `config` without INERT_SETTINGS (dotted keys)."""
    config = copy.deepcopy(config)
    for key in INERT_SETTINGS:
        *parents, name = key.split(".")
        node = config
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(name, None)
    return config
