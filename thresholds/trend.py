"""`trend`: a significant downward trajectory, by a robust (Theil–Sen) slope per day.

Also holds the pieces `forecast` shares: the lookback window and the robust fit. numpy and
scipy are imported inside the functions that use them, never at module import (cold start).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import Any, TypeVar

from thresholds.base import Point, Policy, Verdict
from thresholds.durations import format_duration
from thresholds.spec import PolicySpec, TrendSpec
from thresholds.theil_sen import SlidingPairs, sliding_statistics

DAY = 86_400.0


def recent_usable(policy: Policy, points: Sequence[Point], lookback: timedelta) -> list[Point]:
    """The usable points with time >= (latest usable point's time - `lookback`), oldest first.

    Walks back from the end of the (time-sorted) series and stops at the window's start.
    """
    if not policy.spec.min_examples:  # every point is usable: the walk only compares times
        if not points:
            return []
        start_time = points[-1].time - lookback.total_seconds()
        count = 0
        for point in reversed(points):
            if point.time < start_time:
                break
            count += 1
        return list(points[len(points) - count:])
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


class AllPairs:
    """A window's times (days before its latest point) and values, and the differences over
    every pair of points: what the Theil–Sen fit and Kendall's test both need, built once."""

    def __init__(self, points: Sequence[Point]) -> None:
        import numpy as np

        origin = points[-1].time
        self.size = len(points)
        self.days = (np.array([p.time for p in points], dtype=float) - origin) / DAY
        self.values = np.array([p.value for p in points], dtype=float)
        if self.size > 1 and not bool(np.all(self.days[1:] >= self.days[:-1])):
            order = np.argsort(self.days, kind="stable")  # callers pass sorted windows
            self.days, self.values = self.days[order], self.values[order]
        earlier, later = _pair_indices(self.size)
        # For sorted times, (later - earlier) is every pair with a non-negative time step:
        # the same subtractions as scipy's `x[:, None] - x` where that is > 0.
        self.time_steps = self.days[later] - self.days[earlier]
        self.value_steps = self.values[later] - self.values[earlier]
        self.time_tied = int(np.count_nonzero(self.time_steps == 0))
        self.time_ties = tie_sizes(self.days) if self.time_tied else []
        self.sorted_values = np.sort(self.values)
        self.value_ties = tie_sizes(self.sorted_values)

    def slopes(self) -> Any:
        """The slope of every pair of points at distinct times (±inf where a huge step over
        microseconds overflows: the verdict reports such numbers as undefined)."""
        import numpy as np

        with np.errstate(over="ignore"):
            if self.time_tied:
                distinct = self.time_steps > 0
                return self.value_steps[distinct] / self.time_steps[distinct]
            return self.value_steps / self.time_steps


@lru_cache(maxsize=64)
def _pair_indices(size: int) -> tuple[Any, Any]:
    """(earlier, later) index arrays of every pair of `size` points (cached per size)."""
    import numpy as np

    return np.triu_indices(size, 1)


def tie_sizes(ordered: Any) -> list[int]:
    """The sizes of the groups of equal values (of two or more) in sorted values."""
    import numpy as np

    same = ordered[1:] == ordered[:-1]
    if not same.any():
        return []
    edges = np.flatnonzero(np.concatenate(([True], ~same, [True])))
    sizes = edges[1:] - edges[:-1]
    return [int(size) for size in sizes[sizes > 1].tolist()]


def median_of_sorted(ordered: Any) -> float:
    """The median of sorted values, as numpy computes it (the mean of the middle two)."""
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return float(ordered[middle])
    return float((ordered[middle - 1] + ordered[middle]) / 2)


@lru_cache(maxsize=64)
def normal_quantile(probability: float) -> float:
    """The standard normal quantile of `probability` (remembered: a policy asks for the same
    one or two on every event)."""
    from scipy.special import ndtri  # type: ignore[import-untyped,unused-ignore]

    return float(ndtri(probability))


def theil_sen(points: Sequence[Point], confidence: float) -> RobustFit:
    """The Theil–Sen fit of `points` (at least two distinct times) with a `confidence` CI."""
    return theil_sen_of_pairs(AllPairs(points), confidence, points[-1].time)


def theil_sen_of_pairs(pairs: AllPairs, confidence: float, origin: float) -> RobustFit:
    """The arithmetic of `scipy.stats.theilslopes` (method "separate"), step by step, without
    its per-call overhead (a test checks the results are bit-identical). Sen's variance of
    the CI, negative under heavy ties in both time and value, gives a NaN interval, which
    callers handle."""

    slopes = pairs.slopes()
    count, size = slopes.size, pairs.size
    if count == 0:
        nan = float("nan")
        return RobustFit(nan, nan, nan, nan, origin)
    middle = count // 2
    ranks = {middle} if count % 2 else {middle - 1, middle}
    alpha = 1.0 - confidence if confidence > 0.5 else confidence
    z = normal_quantile(alpha / 2.0)
    tied = sum(k * (k - 1) * (2 * k + 5) for k in (*pairs.time_ties, *pairs.value_ties))
    variance = 1 / 18.0 * (size * (size - 1) * (2 * size + 5) - tied)
    interval: tuple[int, int] | None = None
    if variance >= 0:
        sigma = math.sqrt(variance)
        interval = (max(round((count + z * sigma) / 2.0) - 1, 0),
                    min(round((count - z * sigma) / 2.0), count - 1))
        ranks.update(interval)
    slopes.partition(sorted(ranks))  # a fresh array: ordered in place
    ordered = slopes
    slope = (float(ordered[middle]) if count % 2
             else float((ordered[middle - 1] + ordered[middle]) / 2))
    low, high = ((float(ordered[interval[0]]), float(ordered[interval[1]])) if interval
                 else (float("nan"), float("nan")))
    level = median_of_sorted(pairs.sorted_values) - slope * median_of_sorted(pairs.days)
    return RobustFit(slope=slope, low_slope=low, high_slope=high, level=level, origin=origin)


def kendall_p_value(points: Sequence[Point], decreasing: bool) -> float:
    """One-sided p-value of Kendall's tau against "no trend" (alternative: the given sign)."""
    return kendall_p_value_of_pairs(AllPairs(points), decreasing)


def kendall_p_value_of_pairs(pairs: AllPairs, decreasing: bool) -> float:
    """The arithmetic of `scipy.stats.kendalltau(method="auto")`, step by step: the exact null
    distribution without ties and with at most 33 points (or an almost perfect order), the
    normal approximation with the tie-corrected variance otherwise (a test checks the
    results are bit-identical)."""
    import numpy as np
    from scipy.special import ndtr  # type: ignore[import-untyped,unused-ignore]

    size = pairs.size
    steps, rises = pairs.time_steps, pairs.value_steps
    discordant = int(np.count_nonzero((steps > 0) & (rises < 0)))
    both_tied = (int(np.count_nonzero((steps == 0) & (rises == 0))) if pairs.time_tied else 0)
    time_ties, value_ties = pairs.time_ties, pairs.value_ties
    x_tie = sum(k * (k - 1) // 2 for k in time_ties)
    y_tie = sum(k * (k - 1) // 2 for k in value_ties)
    total = size * (size - 1) // 2
    if x_tie == total or y_tie == total:
        return float("nan")
    alternative = "less" if decreasing else "greater"
    if x_tie == 0 and y_tie == 0 and (size <= 33 or min(discordant, total - discordant) <= 1):
        return kendall_exact(size, total - discordant, alternative)
    x0 = sum(k * (k - 1) * (k - 2) for k in time_ties)
    y0 = sum(k * (k - 1) * (k - 2) for k in value_ties)
    x1 = sum(k * (k - 1) * (2 * k + 5) for k in time_ties)
    y1 = sum(k * (k - 1) * (2 * k + 5) for k in value_ties)
    m = size * (size - 1.0)
    variance = ((m * (2 * size + 5) - x1 - y1) / 18 + (2 * x_tie * y_tie) / m
                + x0 * y0 / (9 * m * (size - 2)))
    z = (total - x_tie - y_tie + both_tied - 2 * discordant) / math.sqrt(variance)
    return float(ndtr(z) if decreasing else ndtr(-z))


@lru_cache(maxsize=4096)
def kendall_exact(size: int, concordant: int, alternative: str) -> float:
    """SciPy's exact one-sided p-value of Kendall's tau (no ties); a pure function, cached."""
    from scipy.stats._mstats_basic import (  # type: ignore[import-untyped,unused-ignore]
        _kendall_p_exact,
    )

    return float(_kendall_p_exact(size, concordant, alternative))


_T = TypeVar("_T")


class FitMemo:
    """Robust fits of windows already seen, by the windows' points: a sweep over a policy's
    limit (or a backtest of several policies on one metric) fits each window once. Opt-in
    (`policy.fit_memo = FitMemo()`); holds at most `capacity` windows, oldest dropped first."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self.hits = 0
        self.misses = 0
        self._entries: dict[Hashable, Any] = {}

    def get(self, key: Hashable, compute: Callable[[], _T]) -> _T:
        """The value remembered for `key`, else `compute()` (remembered)."""
        entries = self._entries
        if key in entries:
            self.hits += 1
            value: _T = entries[key]
            return value
        self.misses += 1
        value = compute()
        if len(entries) >= self.capacity:
            del entries[next(iter(entries))]
        entries[key] = value
        return value


def window_key(window: Sequence[Point]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """A window's identity for `FitMemo`: its times and its values."""
    return tuple([p.time for p in window]), tuple([p.value for p in window])


class TrendPolicy(Policy[list[Point]]):
    """Fires when, over `lookback`, the Theil–Sen slope's confidence interval lies entirely
    beyond `max_decline_per_day` in the bad direction and a one-sided Kendall test rejects
    "no trend" at 1 - `confidence`."""

    kind = "trend"
    fit_memo: FitMemo | None = None

    def __init__(self, spec: PolicySpec) -> None:
        super().__init__(spec)
        assert spec.trend is not None  # Policy.__init__ checked the kind
        self.rule: TrendSpec = spec.trend
        self.sliding = SlidingPairs()
        """The last window's pairs: the next window, a point or two apart, is fitted from them."""

    def _statistics(self, window: Sequence[Point]) -> tuple[RobustFit, float]:
        """The window's Theil–Sen fit and Kendall p-value (remembered with a `fit_memo`)."""
        confidence, decreasing = self.rule.confidence, self.higher_is_better

        def compute() -> tuple[RobustFit, float]:
            quick = sliding_statistics(self.sliding, window, confidence, decreasing)
            if quick is not None:
                return quick
            pairs = AllPairs(window)
            return (theil_sen_of_pairs(pairs, confidence, window[-1].time),
                    kendall_p_value_of_pairs(pairs, decreasing))

        if self.fit_memo is None:
            return compute()
        return self.fit_memo.get(("trend", confidence, decreasing, *window_key(window)),
                                 compute)

    @property
    def lookback(self) -> timedelta:
        return self.rule.lookback

    @property
    def signed_limit(self) -> float:
        """The slope per day that the trend must be significantly worse than."""
        limit = self.rule.max_decline_per_day
        return -limit if self.higher_is_better else limit

    def select(self, points: Sequence[Point]) -> list[Point]:
        # Only the lookback window matters: walk back from the end, not over the whole series.
        return recent_usable(self, points, self.rule.lookback)

    def breached(self, window: list[Point]) -> bool:
        # The tests of `judge` without its verdict's text.
        if window_problem(self, window, self.rule.min_points, self.rule.lookback):
            return False
        values = [point.value for point in window]
        if min(values) == max(values):
            return False
        beyond, significant = self._tests(*self._statistics(window))
        return bool(beyond and significant)

    def _tests(self, fit: RobustFit, p_value: float) -> tuple[bool | None, bool]:
        """(the slope's interval lies beyond the limit — None when it is undefined, the
        Kendall test rejects "no trend"): the policy fires when both hold."""
        # The end of the interval nearest to "healthy" must itself be worse than the limit.
        # NaN: undefined (ties); ±inf: a step of ~1e300 within microseconds overflowed, which
        # is beyond any limit, not "too many tied values"
        near_end = fit.high_slope if self.higher_is_better else fit.low_slope
        beyond = None if math.isnan(near_end) else self.is_worse(near_end, self.signed_limit)
        return beyond, p_value < 1 - self.rule.confidence  # NaN compares False

    def judge(self, window: list[Point]) -> Verdict:
        """The verdict on the lookback window (usable points, oldest first)."""
        rule, limit = self.rule, self.signed_limit
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
        fit, p_value = self._statistics(window)
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
        beyond, significant = self._tests(fit, p_value)
        if beyond is None:
            return self.verdict(
                "insufficient_data",
                f"{described}: the confidence interval is undefined (too many tied values)",
                fit.slope,
                limit,
                **details,
            )
        side = "below" if self.higher_is_better else "above"
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
