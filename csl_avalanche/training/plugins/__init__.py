"""Avalanche plugins of csl-avalanche."""

from csl_avalanche.training.plugins.cosupervision import CoSupervisionPlugin, LevelStatistics

__all__ = ["CoSupervisionPlugin", "LevelStatistics"]
