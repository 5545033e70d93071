"""The policy math: exact trigger points on seeded synthetic series, and shared behaviour.

Every expected index below is derived in the comment beside it from how the series is built,
never copied from a run.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from thresholds import Point, Policy, PolicySpec, Verdict, build_policy
from thresholds.absolute import AbsolutePolicy
from thresholds.baseline import BaselinePolicy
from thresholds.cost import CostPolicy
from thresholds.forecast import ForecastPolicy
from thresholds.registry import POLICY_CLASSES
from thresholds.spec import POLICY_KINDS, PolicyKind
from thresholds.trend import TrendPolicy

DAY = 86_400.0
T0 = 1_790_000_000.0  # 2026-09-21, an arbitrary event-time origin


def make(
    kind: str,
    rule: dict[str, Any],
    direction: str = "higher_is_better",
    metric: str = "accuracy",
    **top: Any,
) -> Policy:
    spec = PolicySpec.parse(
        {"name": f"{kind}-test", "metric": metric, "direction": direction, kind: rule, **top}
    )
    return build_policy(spec)


def series(
    values: Iterable[float],
    times: Iterable[float] | None = None,
    examples: Iterable[int | None] | None = None,
) -> list[Point]:
    """Points at `times` (default: daily from T0)."""
    values = list(values)
    times = [T0 + i * DAY for i in range(len(values))] if times is None else times
    examples = [None] * len(values) if examples is None else examples
    return [Point(float(t), float(v), e) for t, v, e in zip(times, values, examples, strict=True)]


def statuses(policy: Policy, points: Sequence[Point]) -> list[str]:
    """The verdict status after each point arrives (the series fed prefix by prefix)."""
    return [policy.evaluate(points[: k + 1]).status for k in range(len(points))]


def first_firing(policy: Policy, points: Sequence[Point]) -> int | None:
    for k in range(len(points)):
        if policy.evaluate(points[: k + 1]).fired:
            return k
    return None


def noise(seed: int, size: int, width: float) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-width, width, size)


class Spy(Sequence[Point]):
    """A series that records which indices a policy reads."""

    def __init__(self, points: list[Point]) -> None:
        self.points = points
        self.touched: set[int] = set()

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            self.touched.update(range(*index.indices(len(self.points))))
        else:
            self.touched.add(index % len(self.points))
        return self.points[index]


# --------------------------------------------------------------------------------------------
# absolute


ABSOLUTE_3_OF_5: dict[str, Any] = {"breaches_to_trigger": 3, "evaluation_points": 5}


def step_series(seed: int = 7) -> np.ndarray:
    """0.96 ± 0.002 for days 0-19, then 0.93 ± 0.002 from day 20 (40 days)."""
    values = 0.96 + noise(seed, 40, 0.002)
    values[20:] = 0.93 + noise(seed + 1, 20, 0.002)
    return values


def test_absolute_3_of_5_fires_on_the_third_breach() -> None:
    # Healthy points are >= 0.958 and bad ones <= 0.932, so the threshold 0.95 splits them
    # exactly: the breaches are days 20, 21, 22, ... and the latest 5 first hold 3 of them on
    # day 22. Before day 4 there are fewer than 5 points.
    policy = make("absolute", {"threshold": 0.95}, **ABSOLUTE_3_OF_5)
    points = series(step_series())
    assert statuses(policy, points) == (["insufficient_data"] * 4 + ["ok"] * 18 + ["fired"] * 18)
    verdict = policy.evaluate(points[:23])
    assert (verdict.statistic, verdict.limit) == (3.0, 3.0)
    assert verdict.reason == (
        f"3 of the latest 5 accuracy points are below 0.95 (latest {points[22].value:.6g})"
    )
    assert verdict.details["latest"] == points[22].value
    assert verdict.details["threshold"] == 0.95
    ok = policy.evaluate(points[:22])
    assert ok.statistic == 2.0 and "3 needed to fire" in ok.reason


def test_absolute_lower_is_better_mirrors_higher() -> None:
    # The error rate is 1 - accuracy: the same days breach 0.05 from above.
    policy = make(
        "absolute", {"threshold": 0.05}, "lower_is_better", "error_rate", **ABSOLUTE_3_OF_5
    )
    points = series(1 - step_series())
    assert first_firing(policy, points) == 22
    assert "are above 0.05" in policy.evaluate(points[:23]).reason


def test_absolute_breaches_need_not_be_consecutive() -> None:
    healthy, bad = 0.97, 0.90
    policy = make("absolute", {"threshold": 0.95}, **ABSOLUTE_3_OF_5)
    # Breaches on days 10, 12, 14: the window of days 10-14 holds all three.
    values = [bad if day in (10, 12, 14) else healthy for day in range(30)]
    assert first_firing(policy, series(values)) == 14
    # Breaches every third day: any 5 consecutive days hold at most 2 of them.
    values = [bad if day % 3 == 1 else healthy for day in range(30)]
    assert first_firing(policy, series(values)) is None


def test_absolute_breach_is_strictly_worse() -> None:
    at_threshold = make("absolute", {"threshold": 0.95})
    assert at_threshold.evaluate(series([0.95])).status == "ok"
    assert at_threshold.evaluate(series([0.9499])).status == "fired"
    lower = make("absolute", {"threshold": 0.05}, "lower_is_better")
    assert lower.evaluate(series([0.05])).status == "ok"
    assert lower.evaluate(series([0.0501])).status == "fired"


def test_absolute_default_is_1_of_1() -> None:
    policy = make("absolute", {"threshold": 0.95})
    points = series(step_series())
    assert first_firing(policy, points) == 20
    reason = policy.evaluate(points[:21]).reason
    assert reason == f"the latest accuracy point {points[20].value:.6g} is below 0.95"


def test_absolute_reads_only_the_tail() -> None:
    values = [0.97] * 10_000
    values[-2:] = [0.90, 0.90]
    spy = Spy(series(values))
    verdict = make("absolute", {"threshold": 0.95}, **ABSOLUTE_3_OF_5).evaluate(spy)
    assert verdict.statistic == 2.0
    assert spy.touched <= set(range(10_000 - 5, 10_000))

    # With min_examples, noisy points in the tail are skipped, and only the tail is read.
    examples = [1000] * 10_000
    examples[-3:] = [5, 5, 5]
    values[-3:] = [0.5, 0.5, 0.5]
    spy = Spy(series(values, examples=examples))
    policy = make("absolute", {"threshold": 0.95}, **ABSOLUTE_3_OF_5, min_examples=100)
    assert policy.evaluate(spy).status == "ok"
    assert spy.touched <= set(range(10_000 - 8, 10_000))


# --------------------------------------------------------------------------------------------
# baseline


def test_baseline_step_down_fires_at_the_step() -> None:
    # Reference = mean of days 0-2, within 0.97 ± 0.001. Before the step every drop is
    # <= 0.002 / 0.969 (0.21%); from day 15 on (0.94 ± 0.001) every drop is
    # >= (0.969 - 0.941) / 0.971 (2.9%) > 2%. Days 0-2 only build the reference.
    values = 0.97 + noise(11, 30, 0.001)
    values[15:] = 0.94 + noise(12, 15, 0.001)
    policy = make("baseline", {"max_relative_drop": 0.02})
    points = series(values)
    assert statuses(policy, points) == (["insufficient_data"] * 3 + ["ok"] * 12 + ["fired"] * 15)
    verdict = policy.evaluate(points[:16])
    reference = float(np.mean(values[:3]))
    assert verdict.statistic == pytest.approx((reference - values[15]) / reference)
    assert verdict.limit == 0.02
    assert verdict.details["reference"] == pytest.approx(reference)
    assert "accuracy fell by" in verdict.reason and "more than the allowed" in verdict.reason


def test_baseline_is_anchored_at_the_champion_start() -> None:
    # A slow drift 0.97 - 0.001 * day (± 0.0001): the reference stays the mean of days 0-2,
    # 0.969 ± 0.0001, so it fires once value < 0.98 * reference, i.e. in [0.949522, 0.949718].
    # Day 20 is 0.9500 ± 0.0001 (above), day 21 is 0.9490 ± 0.0001 (below). A rolling
    # reference would never fire on this drift.
    values = 0.97 - 0.001 * np.arange(40) + noise(13, 40, 0.0001)
    policy = make("baseline", {"max_relative_drop": 0.02})
    assert first_firing(policy, series(values)) == 21


def test_baseline_absolute_drop_lower_is_better() -> None:
    # Log loss 0.30 ± 0.002, then 0.33 ± 0.002 from day 10: rises <= 0.004 before, >= 0.026
    # after, against an allowed absolute rise of 0.02.
    values = 0.30 + noise(17, 20, 0.002)
    values[10:] = 0.33 + noise(18, 10, 0.002)
    policy = make("baseline", {"max_absolute_drop": 0.02}, "lower_is_better", "log_loss")
    points = series(values)
    assert first_firing(policy, points) == 10
    verdict = policy.evaluate(points[:11])
    assert verdict.statistic == pytest.approx(values[10] - np.mean(values[:3]))
    assert verdict.limit == 0.02
    assert "log_loss rose by" in verdict.reason


def test_baseline_reference_near_zero() -> None:
    points = series([0.0, 0.0, 0.0, 0.5])
    relative_only = make("baseline", {"max_relative_drop": 0.1}, "lower_is_better", "bias")
    verdict = relative_only.evaluate(points)
    assert verdict.status == "insufficient_data"
    assert "bias" in verdict.reason and "zero" in verdict.reason
    both = make(
        "baseline",
        {"max_relative_drop": 0.1, "max_absolute_drop": 0.1},
        "lower_is_better",
        "bias",
    )
    verdict = both.evaluate(points)
    assert verdict.status == "fired"
    assert (verdict.statistic, verdict.limit) == (0.5, 0.1)


def test_baseline_relative_drop_uses_the_reference_magnitude() -> None:
    # A negative higher-is-better metric: -2 to -2.1 is a 5% drop from |-2|.
    points = series([-2.0, -2.0, -2.0, -2.1])
    assert make("baseline", {"max_relative_drop": 0.04}).evaluate(points).status == "fired"
    assert make("baseline", {"max_relative_drop": 0.06}).evaluate(points).status == "ok"
    # An improvement is never a drop.
    assert make("baseline", {"max_relative_drop": 0.04}).evaluate(
        series([-2.0, -2.0, -2.0, -1.0])
    ).statistic == pytest.approx(-0.5)


def test_baseline_statistic_is_the_limit_that_decides() -> None:
    points = series([1.0, 1.0, 1.0, 0.9])  # drop 0.1, i.e. 10%
    both = {"max_relative_drop": 0.05, "max_absolute_drop": 0.5}
    verdict = make("baseline", both).evaluate(points)
    assert (verdict.status, verdict.limit) == ("fired", 0.05)
    assert verdict.statistic == pytest.approx(0.1)
    only_absolute_breached = {"max_relative_drop": 0.5, "max_absolute_drop": 0.05}
    verdict = make("baseline", only_absolute_breached).evaluate(points)
    assert (verdict.status, verdict.limit) == ("fired", 0.05)
    assert verdict.statistic == pytest.approx(0.1)
    assert "absolute drop of 0.05" in verdict.reason and "relative" not in verdict.reason
    neither = {"max_relative_drop": 0.5, "max_absolute_drop": 0.5}
    verdict = make("baseline", neither).evaluate(points)
    assert (verdict.status, verdict.limit) == ("ok", 0.5)


def test_baseline_strictly_more_than_the_limit() -> None:
    points = series([1.0, 1.0, 1.0, 0.5])  # an exact drop of 0.5, i.e. 50%
    assert make("baseline", {"max_absolute_drop": 0.5}).evaluate(points).status == "ok"
    assert make("baseline", {"max_absolute_drop": 0.49}).evaluate(points).status == "fired"
    assert make("baseline", {"max_relative_drop": 0.5}).evaluate(points).status == "ok"
    assert make("baseline", {"max_relative_drop": 0.49}).evaluate(points).status == "fired"


def test_baseline_reads_only_the_reference_and_the_latest() -> None:
    spy = Spy(series([0.97] * 10_000))
    make("baseline", {"max_relative_drop": 0.02, "reference_points": 3}).evaluate(spy)
    assert spy.touched == {0, 1, 2, 9_999}


# --------------------------------------------------------------------------------------------
# trend

TREND = {"lookback": "14d", "min_points": 8, "max_decline_per_day": 0.002, "confidence": 0.95}


def flat_then_decline(seed: int = 23) -> np.ndarray:
    """0.96 ± 0.001 for days 0-29, then falling 0.04/day from day 30 (45 days)."""
    values = 0.96 + noise(seed, 45, 0.001)
    days = np.arange(45)
    values[30:] = 0.96 - 0.04 * (days[30:] - 29)
    return values


# Why day 36. A 14-day lookback holds 15 daily points, i.e. 105 pair slopes. scipy's Sen
# interval at 95% is [s(32), s(72)] of the sorted slopes (z = 1.96, sigma^2 = 15*14*35/18,
# indices round((105 -/+ 39.6) / 2) [- 1]), so its upper end is below -0.002/day once at
# least 73 slopes are. Flat-flat slopes are > -0.002 (|noise difference| < 0.002 over >= 1
# day); every slope touching a declining point is <= (-0.04 + 0.001) / 14 < -0.002. With j
# declining points that is 105 - C(15 - j, 2) slopes: >= 73 first for j = 7, day 36.
# Kendall's S is then <= -77 + 28 = -49 (z ~ -2.4, one-sided p ~ 0.01 < 0.05).
TREND_FIRST_FIRING = 36


def test_trend_fires_when_the_decline_is_significant() -> None:
    policy = make("trend", TREND)
    points = series(flat_then_decline())
    assert statuses(policy, points) == (
        ["insufficient_data"] * 7
        + ["ok"] * (TREND_FIRST_FIRING - 7)
        + ["fired"] * (45 - TREND_FIRST_FIRING)
    )
    verdict = policy.evaluate(points[: TREND_FIRST_FIRING + 1])
    assert verdict.limit == -0.002
    assert verdict.statistic is not None and verdict.statistic < -0.002
    details = verdict.details
    assert isinstance(details["high_slope"], float) and details["high_slope"] < -0.002
    assert isinstance(details["low_slope"], float) and details["low_slope"] <= verdict.statistic
    assert isinstance(details["p_value"], float) and details["p_value"] < 0.05
    assert details["points"] == 15
    assert "accuracy slope" in verdict.reason and "entirely below" in verdict.reason


def test_trend_higher_confidence_needs_more_evidence() -> None:
    # At 99%, z = 2.576: the upper end is s(79), so 80 slopes must be below the limit:
    # C(15 - j, 2) <= 25, j = 8, one day later. Kendall: S <= -84 + 21 = -63, p ~ 0.001.
    policy = make("trend", {**TREND, "confidence": 0.99})
    assert first_firing(policy, series(flat_then_decline())) == TREND_FIRST_FIRING + 1


def test_trend_needs_kendall_significance_too() -> None:
    # A perfect decline of 0.01/day: every pair slope is -0.01, so Sen's interval lies
    # entirely below -0.002 at any size. Kendall's exact one-sided p of a perfect ordering is
    # 1/n!: 1/24 with 4 points (not < 0.01 at 99% confidence), 1/120 with 5.
    policy = make("trend", {**TREND, "min_points": 4, "confidence": 0.99})
    values = [0.97 - 0.01 * day for day in range(5)]
    four = policy.evaluate(series(values[:4]))
    assert four.status == "ok" and four.details["high_slope"] == pytest.approx(-0.01)
    assert four.details["p_value"] == pytest.approx(1 / 24)
    assert "p=0.042 >= 0.01" in four.reason
    five = policy.evaluate(series(values))
    assert five.status == "fired" and five.details["p_value"] == pytest.approx(1 / 120)


def test_trend_lower_is_better_mirrors_higher() -> None:
    policy = make("trend", TREND, "lower_is_better", "error_rate")
    points = series(1 - flat_then_decline())
    assert first_firing(policy, points) == TREND_FIRST_FIRING
    verdict = policy.evaluate(points)
    assert verdict.limit == 0.002 and "entirely above" in verdict.reason


def test_trend_never_fires_on_a_flat_noisy_series() -> None:
    # Noise ± 0.002: only slopes between adjacent days can be below -0.002, at most 14 of
    # the 105 in a window, never the 73 needed.
    policy = make("trend", TREND)
    points = series(0.96 + noise(29, 90, 0.002))
    assert statuses(policy, points) == ["insufficient_data"] * 7 + ["ok"] * 83


def test_trend_uses_real_timestamps() -> None:
    # The same ten values, each 0.01 below the previous one: daily that is -0.01/day, beyond
    # the -0.002 allowed; one point every 10 days it is -0.001/day, within it.
    values = [0.97 - 0.01 * i for i in range(10)]
    policy = make("trend", {**TREND, "lookback": "120d"})
    daily = policy.evaluate(series(values))
    sparse = policy.evaluate(series(values, [T0 + 10 * i * DAY for i in range(10)]))
    assert daily.statistic == pytest.approx(-0.01)
    assert sparse.statistic == pytest.approx(-0.001)
    assert (daily.status, sparse.status) == ("fired", "ok")


def test_trend_irregular_spacing_recovers_the_slope() -> None:
    # Exactly linear in time at -0.004/day, sampled at random gaps of 0.1 to 3 days: every
    # pair slope is -0.004, whatever the gaps; by index it would be -0.004 * mean gap.
    gaps = np.random.default_rng(31).uniform(0.1, 3.0, 20)
    days = np.cumsum(gaps)
    values = 0.97 - 0.004 * days
    policy = make("trend", {**TREND, "lookback": "90d"})
    verdict = policy.evaluate(series(values, T0 + days * DAY))
    assert verdict.statistic == pytest.approx(-0.004, rel=1e-9)
    assert verdict.status == "fired"
    assert -0.004 * float(np.mean(gaps[1:])) != pytest.approx(-0.004, rel=0.05)


def test_trend_window_is_by_event_time() -> None:
    # Ten points, the last eight within 14 days of the latest: 8 = min_points.
    times = [T0 - 100 * DAY, T0 - 50 * DAY] + [T0 + i * DAY for i in range(8)]
    points = series([0.9] * 2 + [0.96] * 8, times)
    verdict = make("trend", TREND).evaluate(points)
    assert verdict.status == "ok" and verdict.details["points"] == 8
    verdict = make("trend", {**TREND, "min_points": 9}).evaluate(points)
    assert verdict.status == "insufficient_data"
    assert "need 9 accuracy points within 2w" in verdict.reason


@pytest.mark.filterwarnings("error")
def test_trend_degenerate_series_do_not_crash() -> None:
    policy = make("trend", TREND)
    flat = policy.evaluate(series([0.96] * 10))
    assert (flat.status, flat.statistic) == ("ok", 0.0)
    assert "no trend" in flat.reason
    same_time = policy.evaluate(series(np.linspace(0.9, 0.99, 10), [T0] * 10))
    assert same_time.status == "insufficient_data"
    assert "one event time" in same_time.reason
    # Nine points tied in time and value, one apart: Sen's variance is negative.
    ties = series([0.96] * 9 + [0.5], [T0] * 9 + [T0 + DAY])
    assert policy.evaluate(ties).status in ("ok", "insufficient_data")


def test_trend_reads_only_the_window() -> None:
    spy = Spy(series(0.96 + noise(37, 10_000, 0.001)))
    assert make("trend", TREND).evaluate(spy).status == "ok"
    # The 15 points of the window, and the one before it that ends the walk back.
    assert spy.touched == set(range(10_000 - 16, 10_000))


# --------------------------------------------------------------------------------------------
# forecast

FORECAST = {"threshold": 161, "horizon": "7d", "lookback": "14d", "min_points": 8}


def test_forecast_fires_before_the_threshold_is_crossed() -> None:
    # Latency 100 + 2/day ± 0.01 (lower is better), limit 161, reached on day 30.5.
    # Every pair slope is 2 ± 0.02 (noise difference <= 0.02 over >= 1 day), so the
    # Theil-Sen slope is too; the values are monotone, so median(value) is the value at the
    # median time (± 0.01), 7 days or less before the latest. The projection 7 days ahead is
    # thus off by <= 0.01 + 0.02 * 14 = 0.29: on day 23 it is 160 ± 0.29 (not above 161), on
    # day 24 it is 162 ± 0.29 (above). The first 7 days are fewer than min_points.
    values = 100 + 2 * np.arange(40) + noise(41, 40, 0.01)
    policy = make("forecast", FORECAST, "lower_is_better", "latency_ms")
    points = series(values)
    assert statuses(policy, points) == ["insufficient_data"] * 7 + ["ok"] * 17 + ["fired"] * 16
    verdict = policy.evaluate(points[:25])
    assert verdict.limit == 161
    assert verdict.statistic == pytest.approx(162, abs=0.3)
    # The line reaches 161 at day 30.5: level on day 24 is 148 ± 0.15, slope 2 ± 0.02.
    crossing = verdict.details["crossing_time"]
    assert isinstance(crossing, float) and abs(crossing - (T0 + 30.5 * DAY)) < 0.2 * DAY
    assert verdict.details["slope"] == pytest.approx(2, abs=0.02)
    assert "latency_ms is projected at" in verdict.reason and "above 161" in verdict.reason


def test_forecast_higher_is_better_mirrors_lower() -> None:
    # Accuracy 1 - latency / 1000 against 1 - 161 / 1000: the same projection, mirrored.
    values = 0.9 - 0.002 * np.arange(40) + noise(41, 40, 0.00001)
    policy = make("forecast", {**FORECAST, "threshold": 0.839})
    assert first_firing(policy, series(values)) == 24
    assert "below 0.839" in policy.evaluate(series(values)).reason


def test_forecast_never_fires_on_a_flat_noisy_series() -> None:
    # 0.97 ± 0.0005: every pair slope is within ± 0.001/day, so the projection 7 days ahead
    # is >= 0.9695 - 0.001 * 14 = 0.9555, above 0.95.
    policy = make("forecast", {**FORECAST, "threshold": 0.95})
    points = series(0.97 + noise(43, 60, 0.0005))
    assert statuses(policy, points) == ["insufficient_data"] * 7 + ["ok"] * 53


def test_forecast_already_crossed_and_recovering() -> None:
    policy = make("forecast", {**FORECAST, "threshold": 0.95})
    below = policy.evaluate(series([0.94] * 10))
    assert below.status == "fired" and below.statistic == pytest.approx(0.94)
    assert below.details["crossing_time"] is None
    # Below the threshold now but rising 0.005/day: 0.945 now, 0.98 projected in 7 days.
    rising = policy.evaluate(series(0.90 + 0.005 * np.arange(10)))
    assert rising.status == "ok" and rising.statistic == pytest.approx(0.98)
    assert rising.details["crossing_time"] is None
    # Falling 0.005/day from 0.99: 0.945 now, crossed 0.95 one day before the latest point.
    falling = policy.evaluate(series(0.99 - 0.005 * np.arange(10)))
    assert falling.status == "fired"
    assert falling.details["crossing_time"] == pytest.approx(T0 + 8 * DAY, abs=60)
    assert "crossed it at" in falling.reason


@pytest.mark.filterwarnings("error")
def test_forecast_degenerate_series_do_not_crash() -> None:
    policy = make("forecast", {**FORECAST, "threshold": 0.95})
    assert policy.evaluate(series([0.96] * 10, [T0] * 10)).status == "insufficient_data"
    ties = series([0.96] * 9 + [0.97], [T0] * 9 + [T0 + DAY])
    assert policy.evaluate(ties).status == "ok"


def test_forecast_reads_only_the_window() -> None:
    spy = Spy(series(0.97 + noise(47, 10_000, 0.0005)))
    assert make("forecast", {**FORECAST, "threshold": 0.95}).evaluate(spy).status == "ok"
    assert spy.touched == set(range(10_000 - 16, 10_000))


# --------------------------------------------------------------------------------------------
# every policy, through the same checks


@dataclass(frozen=True)
class Case:
    """One policy kind in one direction. Series are written as accuracy (higher is better);
    for lower_is_better the metric is the error rate 1 - accuracy."""

    kind: PolicyKind
    rule: dict[str, Any]
    top: dict[str, Any]
    minimum: int  # the fewest usable points that give a verdict
    direction: str

    @property
    def higher(self) -> bool:
        return self.direction == "higher_is_better"

    @property
    def metric(self) -> str:
        return "accuracy" if self.higher else "error_rate"

    def value(self, accuracy: float) -> float:
        return accuracy if self.higher else 1 - accuracy

    def policy(self, sign: float = 1.0, flip: bool = False, **top: Any) -> Policy:
        """`sign=-1, flip=True`: the mirror image (values negated, direction flipped)."""
        rule = {
            key: (sign * self.value(v) if key == "threshold" else v) for key, v in self.rule.items()
        }
        direction = self.direction
        if flip:
            direction = "lower_is_better" if self.higher else "higher_is_better"
        return make(self.kind, rule, direction, self.metric, **{**self.top, **top})

    def points(self, accuracy: Sequence[float], sign: float = 1.0, **kwargs: Any) -> list[Point]:
        return series([sign * self.value(a) for a in accuracy], **kwargs)


KINDS: list[tuple[PolicyKind, dict[str, Any], dict[str, Any], int]] = [
    ("absolute", {"threshold": 0.95}, ABSOLUTE_3_OF_5, 5),
    ("baseline", {"max_relative_drop": 0.2}, {}, 4),
    ("trend", TREND, {}, 8),
    ("forecast", {"threshold": 0.95, "horizon": "7d", "lookback": "14d"}, {}, 8),
    ("cost", {"retrain_cost": 500, "loss_per_unit_day": 20000, "lookback": "14d"}, {}, 4),
]
CASE_LIST = [
    Case(kind, rule, top, minimum, direction)
    for kind, rule, top, minimum in KINDS
    for direction in ("higher_is_better", "lower_is_better")
]
CASES = [pytest.param(case, id=f"{case.kind}-{case.direction.split('_')[0]}") for case in CASE_LIST]

# 30 days at 0.97 ± 0.0005: no slope below -0.001/day, no drop of even 4% (error rate 0.03
# ± 0.0005), nothing near 0.95.
HEALTHY = list(0.97 + noise(53, 30, 0.0005))
# The same until day 15, then down 0.02/day to 0.69: under 0.95 from day 17, 29% down, the
# last 15 days a straight decline.
DEGRADED = HEALTHY[:16] + [0.97 - 0.02 * (day - 15) for day in range(16, 30)]


def test_cases_cover_every_policy_class() -> None:
    # `alert` judges Cloud Monitoring incidents, not series: tests/test_incidents.py
    assert {case.kind for case in CASE_LIST} | {"alert"} == set(POLICY_CLASSES) \
        == set(POLICY_KINDS)


def check(case: Case, verdict: Verdict, status: str) -> None:
    assert verdict.status == status, verdict.reason
    assert verdict.policy == f"{case.kind}-test"
    assert verdict.metric == case.metric
    assert verdict.reason and case.metric in verdict.reason
    if verdict.fired:
        assert verdict.statistic is not None and math.isfinite(verdict.statistic)
        assert verdict.limit is not None and math.isfinite(verdict.limit)


@pytest.mark.parametrize("case", CASES)
def test_every_policy_empty_and_too_few(case: Case) -> None:
    policy = case.policy()
    check(case, policy.evaluate([]), "insufficient_data")
    check(case, policy.evaluate(case.points(HEALTHY[:2])), "insufficient_data")
    check(case, policy.evaluate(case.points(HEALTHY[: case.minimum - 1])), "insufficient_data")
    check(case, policy.evaluate(case.points(HEALTHY[: case.minimum])), "ok")


@pytest.mark.parametrize("case", CASES)
def test_every_policy_healthy_ok_degraded_fired(case: Case) -> None:
    policy = case.policy()
    check(case, policy.evaluate(case.points(HEALTHY)), "ok")
    check(case, policy.evaluate(case.points(DEGRADED)), "fired")


@pytest.mark.parametrize("case", CASES)
def test_every_policy_direction_symmetry(case: Case) -> None:
    policy, mirror = case.policy(), case.policy(sign=-1, flip=True)
    for accuracy in (HEALTHY[:2], HEALTHY, DEGRADED):
        verdict = policy.evaluate(case.points(accuracy))
        mirrored = mirror.evaluate(case.points(accuracy, sign=-1))
        assert mirrored.status == verdict.status
        if verdict.statistic is not None:
            assert mirrored.statistic is not None
            assert abs(mirrored.statistic) == pytest.approx(abs(verdict.statistic))
    assert mirror.evaluate(case.points(DEGRADED, sign=-1)).fired


@pytest.mark.parametrize("case", CASES)
def test_every_policy_ignores_points_with_few_examples(case: Case) -> None:
    # Healthy points (some without an example count, which always count), then ten terrible
    # ones backed by 10 examples each.
    accuracy = HEALTHY + [0.5 - 0.02 * i for i in range(10)]
    examples = [1000, None] * 15 + [10] * 10
    points = case.points(accuracy, examples=examples)
    check(case, case.policy(min_examples=100).evaluate(points), "ok")
    check(case, case.policy().evaluate(points), "fired")
    # Too few usable points left is insufficient, not ok.
    few = case.points(HEALTHY[: case.minimum], examples=[10] + [1000] * (case.minimum - 1))
    check(case, case.policy(min_examples=100).evaluate(few), "insufficient_data")


@pytest.mark.parametrize("case", CASES)
def test_every_policy_fast_path_matches_the_base_semantics(case: Case) -> None:
    # Each policy reads only the points it needs (tail, reference, window); the result must be
    # what the base class gives by filtering the whole series and judging all of it.
    accuracy = DEGRADED + [0.5 - 0.02 * i for i in range(10)] + HEALTHY[:5]
    examples = [1000, None, 20] * 15
    for min_examples in (0, 100):
        policy = case.policy(min_examples=min_examples)
        points = case.points(accuracy, examples=examples)
        for k in range(len(points) + 1):
            assert policy.evaluate(points[:k]) == Policy.evaluate(policy, points[:k])


# --------------------------------------------------------------------------------------------
# registry and imports


@pytest.mark.parametrize(
    ("kind", "rule", "cls", "lookback"),
    [
        ("absolute", {"threshold": 0.9}, AbsolutePolicy, None),
        ("baseline", {"max_absolute_drop": 0.1}, BaselinePolicy, None),
        ("trend", TREND, TrendPolicy, timedelta(days=14)),
        ("forecast", {**FORECAST, "lookback": "36h"}, ForecastPolicy, timedelta(hours=36)),
        ("cost", {"retrain_cost": 1, "loss_per_unit_day": 1}, CostPolicy, timedelta(days=14)),
    ],
)
def test_build_policy(
    kind: PolicyKind, rule: dict[str, Any], cls: type[Policy], lookback: Any
) -> None:
    policy = make(kind, rule)
    assert type(policy) is cls and POLICY_CLASSES[kind] is cls and cls.kind == kind
    assert policy.lookback == lookback


def test_a_policy_refuses_another_kind_of_spec() -> None:
    spec = PolicySpec.parse(
        {"name": "x", "metric": "m", "direction": "higher_is_better", "trend": TREND}
    )
    with pytest.raises(ValueError, match="AbsolutePolicy evaluates absolute policies, not trend"):
        AbsolutePolicy(spec)


def test_scipy_is_imported_only_when_a_line_is_fitted() -> None:
    code = """
import sys
from thresholds import Point, PolicySpec, build_policy
assert "scipy" not in sys.modules and "numpy" not in sys.modules, "imported at module import"
spec = PolicySpec.parse({"name": "t", "metric": "m", "direction": "higher_is_better",
    "trend": {"lookback": "14d", "max_decline_per_day": 0.01}})
policy = build_policy(spec)
policy.evaluate([Point(i * 86400.0, 0.9) for i in range(3)])
assert "scipy" not in sys.modules, "imported without a fit"
policy.evaluate([Point(i * 86400.0, 0.9 - 0.01 * i) for i in range(10)])
assert "scipy.stats" in sys.modules
"""
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 0, result.stderr


def test_every_policy_is_a_select_and_a_judge_composed_once_in_the_base() -> None:
    """No policy re-implements `evaluate` or `fires`: both are `select` then `judge` (or
    its fast `breached`), so the backtest's answer and the service's verdict cannot differ."""
    from thresholds.registry import POLICY_CLASSES

    for cls in POLICY_CLASSES.values():
        assert "evaluate" not in vars(cls) and "fires" not in vars(cls), cls.__name__
    rules = [{"absolute": {"threshold": 0.8}, "breaches_to_trigger": 2, "evaluation_points": 3},
             {"baseline": {"max_relative_drop": 0.05}},
             {"trend": {"lookback": "7d", "max_decline_per_day": 0.001, "min_points": 4}},
             {"forecast": {"threshold": 0.8, "horizon": "3d", "lookback": "7d",
                           "min_points": 3}},
             {"cost": {"retrain_cost": 1.0, "loss_per_unit_day": 50.0}}]
    series = [Point(float(day) * 86_400, 0.95 - 0.02 * day, 100 if day % 3 else 5)
              for day in range(12)]
    for rule in rules:
        for min_examples in (0, 10):
            policy = build_policy(PolicySpec.parse(
                {"name": "p", "metric": "m", "direction": "higher_is_better",
                 "min_examples": min_examples, **rule}))
            for end in range(len(series) + 1):
                points = series[:end]
                window = policy.select(points)
                verdict = policy.judge(window)
                assert policy.evaluate(points) == verdict
                assert policy.fires(points) == policy.breached(window) == verdict.fired
