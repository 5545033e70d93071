"""Threshold policies: pure functions from a champion's metric series to a verdict.

No I/O and no cloud SDK here; scipy is imported lazily by the policies that need it.
"""

from thresholds.base import Point, Policy, Verdict, VerdictStatus
from thresholds.registry import build_policy
from thresholds.spec import Direction, PolicySpec

__all__ = ["Direction", "Point", "Policy", "PolicySpec", "Verdict", "VerdictStatus", "build_policy"]
