"""Experiments: the only floor that sees the Hydra config. It checks the settings against
their schema, turns them into typed arguments for the floors below, and runs a scenario
(levels or class-incremental) with resume and results.json."""
