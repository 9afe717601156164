"""Avalanche strategies for weak-to-strong learning: CSL and its baselines."""

from csl_avalanche.strategies.baselines import GroundTruthCeiling, WeakToStrong
from csl_avalanche.strategies.csl import CSLStrategy
from csl_avalanche.strategies.student import StudentTemplate

__all__ = ["CSLStrategy", "GroundTruthCeiling", "StudentTemplate", "WeakToStrong"]
