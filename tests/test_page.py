"""The page's pure parts: what it takes for each policy to fire next, the period's bounds,
and the drawing's downsampling (every decision mark kept)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from thresholds.base import Point
from thresholds.registry import build_policy
from thresholds.spec import PolicySpec
from triggers.cloud.page.data import MAX_WINDOW, choose_period
from triggers.cloud.page.next_fire import baseline_fire_level, breach_points_needed, outlook
from triggers.cloud.page.svg import downsample
from triggers.errors import RequestError
from triggers.state.protocol import StoredPoint

DAY = 86400.0


def policy(**rule: object) -> object:
    return build_policy(PolicySpec.parse({"name": "p", "metric": "accuracy",
                                          "direction": "higher_is_better", **rule}))


def series(values: list[float], step: float = DAY) -> list[Point]:
    return [Point(i * step, v, 1000) for i, v in enumerate(values)]


@pytest.mark.parametrize("breaches,needed,window,expected", [
    ([False, False, False], 2, 3, (2, 2)),
    ([True, False, False], 2, 3, (2, 2)),   # the old breach slides out before two new ones count
    ([False, True, False], 2, 3, (1, 1)),
    ([], 2, 3, (3, 2)),                     # three points to judge, two of them breaches
    ([False, True], 3, 5, (3, 2)),
    ([True, True, False], 2, 3, (0, 0)),    # fires already
])
def test_breach_points_needed(breaches: list[bool], needed: int, window: int,
                              expected: tuple[int, int]) -> None:
    assert breach_points_needed(breaches, needed, window) == expected


def test_absolute_says_how_many_more_points_below_the_threshold() -> None:
    rule = policy(absolute={"threshold": 0.95}, breaches_to_trigger=3, evaluation_points=5)
    view = outlook(rule, series([0.96, 0.96, 0.94, 0.96, 0.96]))  # type: ignore[arg-type]
    assert view.next_fire == "2 more points below 0.95 (now 1 of the latest 5; 3 fire)"
    assert [(g.role, g.v0) for g in view.guides] == [("threshold", 0.95)]
    fired = outlook(rule, series([0.94, 0.94, 0.94, 0.96, 0.96]))  # type: ignore[arg-type]
    assert fired.verdict.fired and fired.next_fire.startswith("firing: 3 of the latest 5")


def test_baseline_names_the_value_that_fires() -> None:
    rule = policy(baseline={"max_relative_drop": 0.02, "max_absolute_drop": 0.05})
    assert baseline_fire_level(rule, 0.9) == pytest.approx(0.9 - 0.018)  # type: ignore[arg-type]
    view = outlook(rule, series([0.9, 0.9, 0.9, 0.89]))  # type: ignore[arg-type]
    assert view.next_fire.startswith("a point below 0.882 (reference 0.9")
    assert {g.role: g.v0 for g in view.guides} == pytest.approx(
        {"reference": 0.9, "threshold": 0.882})
    early = outlook(rule, series([0.9]))  # type: ignore[arg-type]
    assert early.next_fire.startswith("2 more points to set the reference")


def test_trend_names_the_slope_limit_and_its_confidence() -> None:
    rule = policy(trend={"lookback": "10d", "min_points": 5, "max_decline_per_day": 0.002,
                         "confidence": 0.95})
    flat = outlook(rule, series([0.95, 0.951, 0.949, 0.95, 0.951, 0.95]))  # type: ignore[arg-type]
    assert flat.next_fire.startswith("slope below -0.002/day at 95 %")
    assert {g.role for g in flat.guides} == {"fit", "limit"}
    short = outlook(rule, series([0.95, 0.94]))  # type: ignore[arg-type]
    assert short.next_fire.startswith("3 more points within 10d of the latest")


def test_forecast_projects_the_line_to_its_horizon() -> None:
    rule = policy(forecast={"threshold": 0.9, "horizon": "5d", "lookback": "10d",
                            "min_points": 4})
    points = series([0.96, 0.958, 0.956, 0.954, 0.952])
    view = outlook(rule, points)  # type: ignore[arg-type]
    assert not view.verdict.fired
    assert view.next_fire.startswith("the fitted line projected below 0.9 within 5d (now 0.942")
    fit = next(g for g in view.guides if g.role == "fit")
    assert fit.t1 == points[-1].time + 5 * DAY and fit.v1 == pytest.approx(0.942)


def test_the_period_is_bounded_and_names_the_wrong_field() -> None:
    period = choose_period(None, None, 100 * DAY)
    assert (period.start, period.end) == (70 * DAY, 100 * DAY)
    assert choose_period("1970-01-02", "1970-01-03", None).end == 3 * DAY  # to: the whole day
    for start, end, field in [("yesterday", None, "from"), (None, "2026-13-01", "to"),
                              ("1970-01-05", "1970-01-02", "from"),
                              ("1970-01-01", "1970-01-01T00:00:00Z", "from")]:
        with pytest.raises(RequestError) as caught:
            choose_period(start, end, 100 * DAY)
        assert caught.value.field == field and caught.value.status == 400
    assert MAX_WINDOW < timedelta(days=405)
    with pytest.raises(RequestError, match="longer than"):
        choose_period("1970-01-01", "1971-02-10", None)  # 405 days


def test_downsampling_keeps_the_extremes_and_bounds_the_count() -> None:
    points = [StoredPoint("m", "overall", "a", float(i), 0.9 + (0.05 if i == 4321 else 0.0))
              for i in range(20_000)]
    kept = downsample(points, 1000)
    assert len(kept) <= 1000 and any(p.window_end == 4321.0 for p in kept)
    assert [p.window_end for p in kept] == sorted(p.window_end for p in kept)
