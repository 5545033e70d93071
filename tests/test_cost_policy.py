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
