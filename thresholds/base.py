"""The shared shape of every policy: a point series in, a verdict out.

Subclasses implement `_evaluate` on points already filtered by `min_examples`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import ClassVar, Literal, overload

from thresholds.spec import PolicyKind, PolicySpec

VerdictStatus = Literal["fired", "ok", "insufficient_data"]


@dataclass(frozen=True, slots=True)
class Point:
    """One metric value at its event time (`time`: window_end as seconds since the epoch)."""

    time: float
    value: float
    examples: int | None = None


@dataclass(frozen=True)
class Verdict:
    """What one policy says about one series: status, the statistic, its limit, and why."""

    policy: str
    metric: str
    status: VerdictStatus
    reason: str
    statistic: float | None = None
    limit: float | None = None
    details: Mapping[str, float | int | str | None] = field(default_factory=dict)

    @property
    def fired(self) -> bool:
        return self.status == "fired"


class Policy(ABC):
    """Base class: holds the spec, filters noisy points, and compares values by direction."""

    kind: ClassVar[PolicyKind]

    def __init__(self, spec: PolicySpec) -> None:
        if spec.kind != self.kind:
            raise ValueError(
                f"{type(self).__name__} evaluates {self.kind} policies, not {spec.kind}"
            )
        self.spec = spec
        self.name = spec.name
        self.metric = spec.metric
        self.higher_is_better = spec.direction == "higher_is_better"

    def evaluate(self, points: Sequence[Point]) -> Verdict:
        """Verdict on `points` (sorted by time, oldest first) of this policy's metric."""
        if self.spec.min_examples:
            points = [p for p in points if self.is_usable(p)]
        return self._evaluate(points)

    def fires(self, points: Sequence[Point]) -> bool:
        """Whether `evaluate(points)` fires. Subclasses that can tell without building the
        verdict (its reason, its details) say so faster; the backtest asks this of every point
        and builds verdicts only where a policy fires."""
        return self.evaluate(points).fired

    def is_usable(self, point: Point) -> bool:
        """False for a point backed by fewer than `min_examples` labelled examples (noise)."""
        return point.examples is None or point.examples >= self.spec.min_examples

    @abstractmethod
    def _evaluate(self, points: Sequence[Point]) -> Verdict: ...

    @property
    def lookback(self) -> timedelta | None:
        """How far back (event time, from the latest point) this policy looks; None: count-based."""
        return None

    def is_worse(self, value: float, limit: float) -> bool:
        """True when `value` is strictly worse than `limit` in this policy's direction."""
        return value < limit if self.higher_is_better else value > limit

    def verdict(
        self,
        status: VerdictStatus,
        reason: str,
        statistic: float | None = None,
        limit: float | None = None,
        **details: float | int | str | None,
    ) -> Verdict:
        """A verdict whose numbers are finite or None (undefined): extreme but valid series
        can overflow a slope, and ties leave a confidence interval undefined (NaN); JSON, the
        audit trail and the HTTP answers have no NaN or infinity."""
        return Verdict(self.name, self.metric, status, reason, _finite(statistic),
                       _finite(limit), {key: _finite(value) for key, value in details.items()})


@overload
def _finite(value: float | None) -> float | None: ...


@overload
def _finite(value: float | int | str | None) -> float | int | str | None: ...


def _finite(value: float | int | str | None) -> float | int | str | None:
    """`value`, or None in place of NaN and infinities."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
