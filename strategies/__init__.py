"""Avalanche strategies for weak-to-strong learning: CSL and its baselines."""

from strategies.baselines import GroundTruthCeiling, WeakToStrong
from strategies.csl import CSLStrategy
from strategies.student import StudentTemplate

__all__ = ["CSLStrategy", "GroundTruthCeiling", "StudentTemplate", "WeakToStrong"]
