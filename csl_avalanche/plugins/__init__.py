"""Avalanche plugins of csl-avalanche."""

from csl_avalanche.plugins.cosupervision import CoSupervisionPlugin, LevelStatistics

__all__ = ["CoSupervisionPlugin", "LevelStatistics"]
