"""The `cost` policy: exact fire points on constructed series, the money in its verdict, its
settings' validation, and the live service reading the champion's first points for it."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError

from tests.conftest import Harness
from thresholds import Point, PolicySpec, build_policy
from thresholds.cost import AUTO_HORIZON_FRACTION, CostPolicy, positive_area

DAY = 86_400.0
T0 = 1_790_000_000.0


def cost_policy(direction: str = "higher_is_better", **rule: Any) -> CostPolicy:
    spec = PolicySpec.parse({"name": "worth-a-run", "metric": "accuracy",
                             "direction": direction, "cost": rule})
    policy = build_policy(spec)
    assert isinstance(policy, CostPolicy)
    return policy


def daily(values: list[float]) -> list[Point]:
    return [Point(T0 + i * DAY, v) for i, v in enumerate(values)]


def first_fire(policy: CostPolicy, points: list[Point]) -> int | None:
    for k in range(1, len(points) + 1):
        if policy.evaluate(points[:k]).fired:
            return k - 1
    return None


def test_positive_area() -> None:
    assert positive_area(1.0, 0.0, 3.0) == 3.0
    assert positive_area(1.0, 1.0, 2.0) == 4.0          # trapezoid 1 → 3 over 2
    assert positive_area(1.0, -1.0, 3.0) == 0.5         # triangle until d = 1
    assert positive_area(-1.0, 1.0, 3.0) == 2.0         # triangle from d = 1 to 3, height 2
    assert positive_area(-1.0, -1.0, 3.0) == 0.0
    assert positive_area(5.0, 1.0, 0.0) == 0.0


def test_linear_decay_fires_at_the_cost_optimal_age() -> None:
    # accuracy 0.95 − 0.01·day, no noise: the fit is exact (slope −0.01, level today, zero
    # residuals, a slope interval of one value). The fresh level is the mean of days 0–2:
    # 0.94, so at day τ the gap is 0.01·(τ − 1) and grows 0.01/day; the horizon is h·τ with
    # h = √2 − 1. Loss = 1000·(0.01(τ−1)·hτ + 0.01(hτ)²/2):
    #   τ = 4: 1000·(0.03·1.657 + 0.01·1.373) = 63.4;  τ = 5: 1000·(0.04·2.071 + 0.01·2.145) = 104.3
    # so with one run at 100 it fires first at day 5.
    policy = cost_policy(retrain_cost=100, loss_per_unit_day=1000, min_points=4)
    points = daily([0.95 - 0.01 * day for day in range(12)])
    assert first_fire(policy, points) == 5
    verdict = policy.evaluate(points[:6])
    h = AUTO_HORIZON_FRACTION * 5
    assert verdict.details["projected_loss"] == pytest.approx(1000 * (0.04 * h + 0.01 * h * h / 2))
    assert verdict.details["loss_bound"] == pytest.approx(verdict.details["projected_loss"])
    assert verdict.details["fresh_level"] == pytest.approx(0.94)
    assert verdict.statistic == verdict.details["loss_bound"] and verdict.limit == 100
    before = policy.evaluate(points[:5])
    assert before.status == "ok"
    assert before.details["projected_loss"] == pytest.approx(
        1000 * (0.03 * AUTO_HORIZON_FRACTION * 4 + 0.01 * (AUTO_HORIZON_FRACTION * 4) ** 2 / 2))
    # twice the run cost: later; the loss grows as τ², so day 7 (loss 219.9 > 200; day 6: 156.6)
    assert first_fire(cost_policy(retrain_cost=200, loss_per_unit_day=1000, min_points=4),
                      points) == 7


def test_a_step_down_fires_on_the_money_it_loses() -> None:
    # 0.9 for days 0–9, 0.8 from day 10; lookback 2d (the last 3 points), horizon 2d.
    # Day 10, window 0.9 0.9 0.8: pairwise slopes 0, −0.05, −0.1 → slope −0.05, level
    # 0.9 − (−0.05)(−1) = 0.85; the residuals −0.05 0 −0.05 have no spread; the slope bound
    # in the champion's favour (the interval's top, 0) stops the decline: the bound is the gap
    # 0.9 − 0.85 = 0.05 for 2 days × 1000 = 100 (the estimate, declining, 0.05·2 + 0.05·2 = 200).
    # Day 11, window 0.9 0.8 0.8: slope −0.05, level 0.8 − 0.05 = 0.75, bound 0.15·2·1000 = 300.
    # Day 12 on: all 0.8, the gap 0.1: bound 200.
    values = [0.9] * 10 + [0.8] * 10
    points = daily(values)
    rule = {"loss_per_unit_day": 1000, "lookback": "2d", "horizon": "2d", "min_points": 3}
    at_10 = cost_policy(retrain_cost=99, **rule).evaluate(points[:11])
    assert at_10.details["loss_bound"] == pytest.approx(100)
    assert at_10.details["projected_loss"] == pytest.approx(200)
    assert first_fire(cost_policy(retrain_cost=99, **rule), points) == 10
    assert first_fire(cost_policy(retrain_cost=150, **rule), points) == 11
    assert first_fire(cost_policy(retrain_cost=250, **rule), points) == 11
    assert first_fire(cost_policy(retrain_cost=301, **rule), points) is None  # never above 300
    assert cost_policy(retrain_cost=150, **rule).evaluate(points).details[
        "loss_bound"] == pytest.approx(200)


def test_lower_is_better_mirrors() -> None:
    values = [0.9] * 10 + [0.8] * 10
    rule = {"loss_per_unit_day": 1000, "lookback": "2d", "horizon": "2d", "min_points": 3}
    errors = daily([1 - v for v in values])
    assert first_fire(cost_policy("lower_is_better", retrain_cost=150, **rule), errors) == 11
    # an improvement is no loss, in either direction
    assert first_fire(cost_policy("lower_is_better", retrain_cost=1, **rule), daily(values)) \
        is None


def test_noise_widens_the_bound_and_the_verdict_speaks_money() -> None:
    # A flat series with noise: the estimate may be positive, the 80 % bound is below it.
    import numpy as np

    noise = np.random.default_rng(7).normal(0, 0.01, 40)
    points = daily(list(0.9 + noise))
    policy = cost_policy(retrain_cost=500, loss_per_unit_day=20000, horizon="30d")
    verdict = policy.evaluate(points)
    assert verdict.details["loss_bound"] < verdict.details["projected_loss"] or \
        verdict.details["loss_bound"] == 0.0
    assert verdict.reason.startswith("keeping the champion 30 days more: projected accuracy loss ")
    assert "(80 % bound " in verdict.reason and "one run 500" in verdict.reason
    higher = cost_policy(retrain_cost=500, loss_per_unit_day=20000, horizon="30d",
                         confidence=0.95).evaluate(points)
    assert higher.details["loss_bound"] <= verdict.details["loss_bound"]
    assert "(95 % bound " in higher.reason


def test_needs_the_reference_and_the_window() -> None:
    policy = cost_policy(retrain_cost=1, loss_per_unit_day=1, reference_points=5, min_points=3)
    verdict = policy.evaluate(daily([0.9] * 4))
    assert verdict.status == "insufficient_data"
    assert "first 5 accuracy points" in verdict.reason
    assert cost_policy(retrain_cost=1, loss_per_unit_day=1).evaluate(daily([0.9] * 3)).reason \
        == "need 4 accuracy points within 2w of the latest, have 3"


@pytest.mark.parametrize(("rule", "field"), [
    ({"loss_per_unit_day": 1}, "retrain_cost"),
    ({"retrain_cost": 0, "loss_per_unit_day": 1}, "retrain_cost"),
    ({"retrain_cost": 1, "loss_per_unit_day": -1}, "loss_per_unit_day"),
    ({"retrain_cost": 1, "loss_per_unit_day": 1, "confidence": 0.5}, "confidence"),
    ({"retrain_cost": 1, "loss_per_unit_day": 1, "budget": 3}, "budget"),
])
def test_bad_settings_name_the_field(rule: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        PolicySpec.parse({"name": "c", "metric": "m", "direction": "higher_is_better",
                          "cost": rule})
    assert field in str(caught.value)


def test_zero_horizon_is_refused() -> None:
    with pytest.raises(ValidationError, match="cost.horizon must be longer than zero"):
        PolicySpec.parse({"name": "c", "metric": "m", "direction": "higher_is_better",
                          "cost": {"retrain_cost": 1, "loss_per_unit_day": 1, "horizon": 0}})


def test_spec_round_trips() -> None:
    spec = PolicySpec.parse({"name": "c", "metric": "m", "direction": "higher_is_better",
                             "cost": {"retrain_cost": 5, "loss_per_unit_day": 7,
                                      "horizon": "30d"}})
    assert PolicySpec.from_dict(spec.to_dict()) == spec
    assert spec.to_dict()["cost"]["horizon"] == "30d"
    auto = PolicySpec.parse({"name": "c", "metric": "m", "direction": "higher_is_better",
                             "cost": {"retrain_cost": 5, "loss_per_unit_day": 7}})
    assert auto.cost is not None and auto.cost.horizon is None
    assert PolicySpec.from_dict(auto.to_dict()) == auto


COST_YAML = """
models:
  fraud-detector:
    pipeline: {template: %(template)s, pipeline_root: gs://test-bucket/root}
    policies:
      - {name: worth-a-run, metric: accuracy, direction: higher_is_better,
         cost: {retrain_cost: 100, loss_per_unit_day: 1000, lookback: 3d, min_points: 3}}
"""


def test_the_service_reads_the_champions_first_points_beyond_the_lookback(
    make_harness: Callable[..., Harness],
) -> None:
    # 0.95 for 3 days (the fresh level), then 0.93 flat: the 3-day window alone holds no
    # decline; only the reference (older than the lookback) shows the 0.02 gap. Horizon
    # h·age: loss 1000·0.02·h·τ > 100 ⟺ τ > 5/h = 12.07: fires first at day 13.
    h = make_harness(COST_YAML)
    values = [0.95] * 3 + [0.93] * 20
    fired = [day for day, value in enumerate(values)
             if h.send(h.event(day, value)).launched]
    assert fired[:1] == [math.ceil(5 / AUTO_HORIZON_FRACTION)] == [13]
    policy = build_policy(h.service.config.models["fraud-detector"].policies[0].spec)
    assert first_fire(policy, daily(values)) == 13  # the same as the policy on the whole series


def champions(levels: dict[str, float], days: int = 3) -> list[Point]:
    """Earlier champions' first points (tagged, as the series puts them), each its level for
    `days` days, oldest champion first, ending before T0."""
    points: list[Point] = []
    start = T0 - (len(levels) * days + 10) * DAY
    for version, level in levels.items():
        points += [Point(start + i * DAY, level, None, version) for i in range(days)]
        start += days * DAY
    return points


def test_earlier_champions_set_the_fresh_level_by_their_upper_quartile() -> None:
    # After an abrupt drift a half-retrained champion starts (and stays) at 0.90 while the
    # three champions before it started at 0.95: the fresh level is the upper quartile of
    # 0.90 0.95 0.95 0.95 = 0.95. Flat, noise-free: slope 0, level 0.90, no spread, so the
    # bound is 1000 × 0.05 × h·τ > 100 ⟺ τ > 2/h = 4.83: fires first at day 5.
    # Its own first points alone (`champions: 1`, the old fresh level) show no gap: never.
    earlier = champions({"v1": 0.95, "v2": 0.95, "v3": 0.95})
    own = daily([0.90] * 20)
    policy = cost_policy(retrain_cost=100, loss_per_unit_day=1000, min_points=3)
    assert first_fire(policy, earlier + own) == len(earlier) + 5  # its day 5
    assert math.ceil(2 / AUTO_HORIZON_FRACTION) == 5
    verdict = policy.evaluate(earlier + own[:6])
    assert verdict.details["fresh_level"] == pytest.approx(0.95)
    assert verdict.details["own_fresh_level"] == pytest.approx(0.90)
    assert verdict.details["champions"] == 4
    assert verdict.details["loss_bound"] == pytest.approx(1000 * 0.05 * AUTO_HORIZON_FRACTION * 5)
    assert "fresh level 0.95: the upper quartile of the latest 4 champions' first points, " \
        "this one's 0.9" in verdict.reason
    alone = cost_policy(retrain_cost=100, loss_per_unit_day=1000, min_points=3, champions=1)
    assert not any(alone.evaluate(earlier + own[:k]).fired for k in range(3, 21))
    assert alone.evaluate(earlier + own).details["fresh_level"] == pytest.approx(0.90)


def test_the_upper_quartile_of_the_latest_champions_only() -> None:
    # Of five levels the upper quartile is the second best: two partly fresh champions (0.85,
    # 0.88) and one lucky start (0.99) leave it at the usual 0.95 (gap 0.05 to the own 0.90;
    # fires at day 5 as above); `champions: 3` reads only the 2 latest earlier ones.
    own = daily([0.90] * 20)
    policy = cost_policy(retrain_cost=100, loss_per_unit_day=1000, min_points=3)
    mixed = champions({"v0": 0.70, "v1": 0.99, "v2": 0.95, "v3": 0.85, "v4": 0.88})
    assert policy.evaluate(mixed + own).details["fresh_level"] == pytest.approx(0.95)
    assert first_fire(policy, mixed + own) == len(mixed) + 5
    # 3 levels 0.85 0.88 0.90: position 1.5 → 0.89, below the champion: no gap, never fires
    three = cost_policy(retrain_cost=100, loss_per_unit_day=1000, min_points=3, champions=3)
    assert three.evaluate(mixed + own).details["fresh_level"] == pytest.approx(0.89)
    assert first_fire(three, mixed + own) is None
    # 2 levels 0.99 and 0.90: three quarters of the way up, 0.9675
    two = cost_policy(retrain_cost=100, loss_per_unit_day=1000, min_points=3, champions=2)
    assert two.evaluate(champions({"v1": 0.99}) + own).details["fresh_level"] \
        == pytest.approx(0.9675)
    # an earlier champion with fewer usable first points than `reference_points` is no level
    few = [Point(T0 - 9 * DAY, 0.99, None, "v9"), Point(T0 - 8 * DAY, 0.99, None, "v9")]
    assert policy.evaluate(few + own).details["champions"] == 1


def test_a_lasting_drop_of_every_model_stops_firing_once_four_of_five_saw_it() -> None:
    # What any model scores falls from 0.95 to 0.90 for good: retrained champions start at
    # 0.90. With 3 earlier 0.95s among the five, the upper quartile stays 0.95 (fires); once
    # four of the five started at 0.90 it is 0.90 and the champion's flat 0.90 costs nothing.
    own = daily([0.90] * 20)
    policy = cost_policy(retrain_cost=100, loss_per_unit_day=1000, min_points=3)
    seen_by_three = champions({"v1": 0.95, "v2": 0.95, "v3": 0.90, "v4": 0.90})
    assert first_fire(policy, seen_by_three + own) == len(seen_by_three) + 5
    seen_by_four = champions({"v1": 0.95, "v2": 0.90, "v3": 0.90, "v4": 0.90})
    assert first_fire(policy, seen_by_four + own) is None
    assert policy.evaluate(seen_by_four + own).details["fresh_level"] == pytest.approx(0.90)


def test_the_window_holds_the_current_champions_points_only() -> None:
    # The earlier champions' points lie within the 2-week lookback of the new champion's
    # third point: they set the fresh level but are not fitted (else a 0.95 → 0.90 "decline"
    # and min_points met at once); the champion needs its own 3 points.
    earlier = [Point(T0 - (5 - i) * DAY, 0.95, None, "v1") for i in range(3)]
    own = daily([0.90] * 3)
    policy = cost_policy(retrain_cost=100, loss_per_unit_day=1000, min_points=3)
    assert policy.evaluate(earlier + own[:2]).status == "insufficient_data"
    verdict = policy.evaluate(earlier + own)
    assert verdict.details["points"] == 3 and verdict.details["slope"] == 0.0
    assert verdict.details["fresh_level"] == pytest.approx(0.9375)  # 0.90 + ¾ × 0.05


def test_earlier_champion_heads_read_back_from_the_history_start() -> None:
    # Versions by day: a 0–4, b 5–9 with a challenger c's evaluation on day 7, d 10–11 (only
    # 2 points: no level), a again 12–14 (a rollback: a keeps its first points), then the
    # champion e. Each version's first 3 usable points (day 1 has too few examples).
    from triggers.series import earlier_champion_heads
    from triggers.state.protocol import StoredPoint

    versions = ["a"] * 5 + ["b", "b", "c", "b", "b"] + ["d", "d"] + ["a"] * 3 + ["e"] * 2
    stored = [StoredPoint("m", "overall", "accuracy", T0 + day * DAY, day / 100,
                          10 if day == 1 else 1000, version)
              for day, version in enumerate(versions)]
    start = T0 + 14.5 * DAY
    reads: list[int] = []

    def read(limit: int) -> list[StoredPoint]:
        reads.append(limit)
        before = [p for p in stored if p.window_end <= start]
        return before[-limit:]

    def usable(p: StoredPoint) -> bool:
        return p.examples is None or p.examples >= 100

    def days(heads: list[StoredPoint]) -> list[int]:
        return [round((p.window_end - T0) / DAY) for p in heads]

    assert days(earlier_champion_heads(read, "e", 3, 4, usable)) == [0, 2, 3, 5, 6, 8]
    assert reads == [64]  # the whole series in one read
    assert days(earlier_champion_heads(read, "e", 3, 1, usable)) == [5, 6, 8]
    assert earlier_champion_heads(read, "e", 3, 0, usable) == []
    assert earlier_champion_heads(read, None, 3, 4, usable) == []
    # A read that stops at its limit may cut its oldest run: that one is not counted until a
    # longer read reaches the start (limits 4·count·reference at least 64, then ×4).
    stored[:0] = [StoredPoint("m", "overall", "accuracy", T0 - (100 - i) * DAY, 0.5, None, "z")
                  for i in range(100)]
    reads.clear()
    heads = earlier_champion_heads(read, "e", 3, 3, usable)
    assert days(heads) == [-100, -99, -98, 0, 2, 3, 5, 6, 8] and reads == [64, 256]
