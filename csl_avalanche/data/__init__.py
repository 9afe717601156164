"""Benchmark sources; importing this package registers the built-in ones."""

from csl_avalanche.data import digits, features_source  # noqa: F401 - registers sources
