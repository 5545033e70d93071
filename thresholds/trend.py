"""`trend`: a significant downward trajectory, by a robust (Theil–Sen) slope per day.

Also holds the pieces `forecast` shares: the lookback window and the robust fit. numpy and
scipy are imported inside the functions that use them, never at module import (cold start).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from thresholds.base import Point, Policy, Verdict
from thresholds.durations import format_duration
from thresholds.spec import PolicySpec, TrendSpec

DAY = 86_400.0


def recent_usable(policy: Policy, points: Sequence[Point], lookback: timedelta) -> list[Point]:
    """The usable points with time >= (latest usable point's time - `lookback`), oldest first.

    Walks back from the end of the (time-sorted) series and stops at the window's start.
    """
    picked: list[Point] = []
    start: float | None = None
    for index in range(len(points) - 1, -1, -1):
        point = points[index]
        if start is not None and point.time < start:
            break
        if policy.is_usable(point):
            if start is None:
                start = point.time - lookback.total_seconds()
            picked.append(point)
    picked.reverse()
    return picked


def window_problem(
    policy: Policy, window: Sequence[Point], min_points: int, lookback: timedelta
) -> str | None:
    """Why no line can be fitted to `window` (the reason of an insufficient_data verdict)."""
    if len(window) < min_points:
        return (
            f"need {min_points} {policy.metric} points within {format_duration(lookback)} "
            f"of the latest, have {len(window)}"
        )
    if window[0].time == window[-1].time:
        return f"all {len(window)} {policy.metric} points share one event time: no slope"
    return None


@dataclass(frozen=True, slots=True)
class RobustFit:
    """A Theil–Sen line of value against event time, in value units per day."""

    slope: float
    low_slope: float
    high_slope: float
    #: The fitted line's value at `origin`, the latest point's time.
    level: float
    origin: float

    def at(self, time: float) -> float:
        """The fitted line's value at `time` (epoch seconds)."""
        return self.level + self.slope * (time - self.origin) / DAY


def _days(points: Sequence[Point]) -> tuple[list[float], list[float]]:
    """(days relative to the latest point, values): real timestamps, irregular spacing kept."""
    origin = points[-1].time
    return [(point.time - origin) / DAY for point in points], [point.value for point in points]


def theil_sen(points: Sequence[Point], confidence: float) -> RobustFit:
    """The Theil–Sen fit of `points` (at least two distinct times) with a `confidence` CI."""
    import numpy as np
    from scipy.stats import theilslopes  # type: ignore[import-untyped,unused-ignore]

    days, values = _days(points)
    # Heavy ties in both time and value make Sen's variance negative: the CI is then NaN,
    # which callers handle; numpy's warning about it is noise.
    with np.errstate(invalid="ignore"):
        result = theilslopes(values, days, alpha=confidence)
    return RobustFit(
        slope=float(result.slope),
        low_slope=float(result.low_slope),
        high_slope=float(result.high_slope),
        level=float(result.intercept),
        origin=points[-1].time,
    )


def kendall_p_value(points: Sequence[Point], decreasing: bool) -> float:
    """One-sided p-value of Kendall's tau against "no trend" (alternative: the given sign)."""
    from scipy.stats import kendalltau  # type: ignore[import-untyped,unused-ignore]

    days, values = _days(points)
    result = kendalltau(days, values, alternative="less" if decreasing else "greater")
    return float(result.pvalue)


class TrendPolicy(Policy):
    """Fires when, over `lookback`, the Theil–Sen slope's confidence interval lies entirely
    beyond `max_decline_per_day` in the bad direction and a one-sided Kendall test rejects
    "no trend" at 1 - `confidence`."""

    kind = "trend"

    def __init__(self, spec: PolicySpec) -> None:
        super().__init__(spec)
        assert spec.trend is not None  # Policy.__init__ checked the kind
        self.rule: TrendSpec = spec.trend

    @property
    def lookback(self) -> timedelta:
        return self.rule.lookback

    @property
    def signed_limit(self) -> float:
        """The slope per day that the trend must be significantly worse than."""
        limit = self.rule.max_decline_per_day
        return -limit if self.higher_is_better else limit

    def evaluate(self, points: Sequence[Point]) -> Verdict:
        # Only the lookback window matters: walk back from the end, not over the whole series.
        return self._evaluate(recent_usable(self, points, self.rule.lookback))

    def _evaluate(self, points: Sequence[Point]) -> Verdict:
        rule, limit = self.rule, self.signed_limit
        window = recent_usable(self, points, rule.lookback)
        span = format_duration(rule.lookback)
        problem = window_problem(self, window, rule.min_points, rule.lookback)
        if problem:
            return self.verdict("insufficient_data", problem, limit=limit, points=len(window))
        values = [point.value for point in window]
        if min(values) == max(values):
            return self.verdict(
                "ok",
                f"all {len(window)} {self.metric} points in the last {span} equal "
                f"{values[0]:.6g}: no trend",
                statistic=0.0,
                limit=limit,
                points=len(window),
            )
        fit = theil_sen(window, rule.confidence)
        p_value = kendall_p_value(window, decreasing=self.higher_is_better)
        alpha = 1 - rule.confidence
        details: dict[str, float | int | str | None] = {
            "points": len(window),
            "low_slope": fit.low_slope,
            "high_slope": fit.high_slope,
            "confidence": rule.confidence,
            "p_value": p_value,
        }
        described = (
            f"{self.metric} slope {fit.slope:+.3g}/day over {len(window)} points in {span} "
            f"({rule.confidence:.0%} CI {fit.low_slope:+.3g} to {fit.high_slope:+.3g})"
        )
        # The end of the interval nearest to "healthy" must itself be worse than the limit.
        near_end = fit.high_slope if self.higher_is_better else fit.low_slope
        if not math.isfinite(near_end):
            return self.verdict(
                "insufficient_data",
                f"{described}: the confidence interval is undefined (too many tied values)",
                fit.slope,
                limit,
                **details,
            )
        side = "below" if self.higher_is_better else "above"
        beyond = self.is_worse(near_end, limit)
        significant = p_value < alpha  # NaN compares False
        fired = beyond and significant
        verdicts = [
            f"{'entirely' if beyond else 'not entirely'} {side} the {limit:+g}/day allowed",
            f"Kendall one-sided p={p_value:.2g} {'<' if significant else '>='} {alpha:.2g}",
        ]
        return self.verdict(
            "fired" if fired else "ok",
            f"{described}: {'; '.join(verdicts)}",
            fit.slope,
            limit,
            **details,
        )
