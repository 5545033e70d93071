"""The shared shape of every policy: a point series in, a verdict out.

A policy says which points it reads (`select`, the window) and what it concludes from them
(`judge`); `evaluate` and `fires` are those two, composed here once for every policy.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, overload

from thresholds.records import record
from thresholds.spec import PolicyKind, PolicySpec

VerdictStatus = Literal["fired", "ok", "insufficient_data"]

if TYPE_CHECKING:  # a bare `Policy` is `Policy[Any]` (PEP 696; typing has it from 3.13)
    from typing_extensions import TypeVar

    Window = TypeVar("Window", default=Any)
else:
    from typing import TypeVar

    Window = TypeVar("Window")
"""What a policy reads of a series (for most, its usable points in some range)."""


@dataclass(frozen=True, slots=True)
class Point:
    """One metric value at its event time (`time`: window_end as seconds since the epoch).

    `earlier_champion` is set only on an earlier champion's first points, which the series
    puts before the current champion's for the `cost` policy's fresh level (None: the current
    champion's point)."""

    time: float
    value: float
    examples: int | None = None
    earlier_champion: str | None = None


@record
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


class Policy(ABC, Generic[Window]):
    """Base class: holds the spec, composes `select` and `judge`, filters noisy points, and
    compares values by direction."""

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
        return self.judge(self.select(points))

    def fires(self, points: Sequence[Point]) -> bool:
        """Whether `evaluate(points)` fires. The backtest asks this of every point and
        builds verdicts only where a policy fires, so it skips the verdict's text."""
        return self.breached(self.select(points))

    @abstractmethod
    def select(self, points: Sequence[Point]) -> Window:
        """The part of `points` (time-sorted) that `judge` reads: usable points only, found
        from the series' ends without walking all of it."""

    @abstractmethod
    def judge(self, window: Window) -> Verdict:
        """The verdict on a window that `select` returned."""

    def breached(self, window: Window) -> bool:
        """Whether `judge(window)` fires; policies that can tell without building the
        verdict (its reason, its details) say so faster."""
        return self.judge(window).fired

    def is_usable(self, point: Point) -> bool:
        """False for a point backed by fewer than `min_examples` labelled examples (noise)."""
        return point.examples is None or point.examples >= self.spec.min_examples

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
