"""`cost`: retrain when keeping the champion is projected to lose more than one run costs.

The seed's trade-off as one number: the projected loss of the champion over a horizon, in the
same money as a run, at a stated confidence. Pure arithmetic on the champion's series; no I/O.

A champion's fresh level is the mean of its first `reference_points` usable points (how it
scored when it was fresh). The expected fresh level F — what a model retrained now is expected
to score — is the upper quartile of the fresh levels of the latest `champions` champions, the
current one included: the series puts the earlier champions' first points
(`Point.earlier_champion`) before the current one's. After an abrupt drift a run promotes a
model that saw little of the new data: its own first points are already low, and only the
earlier champions' levels show what another run can still buy. Of five champions the upper
quartile is the second best: one or two such partly fresh champions do not drag it down, and
one lucky start does not set it. A lasting change of what any model can score moves it once
four of the five champions have seen it (up to three runs that buy nothing).

The champion's path over the next `horizon` days is the robust (Theil–Sen) line fitted over
`lookback` (its own points only), from its value now. The projected loss is

    loss = loss_per_unit_day × ∫₀ᴴ max(0, F − path(d)) dd      (direction-aware)

and its bound at `confidence` uses the line's slope bound and its level shifted by z standard
errors (of the residuals' robust spread, for the level and for F, as if F were the mean of
all the first points its levels average), both in the champion's favour. The policy fires
when that bound exceeds `retrain_cost`: the run pays for itself with probability of about
`confidence`, or more.

The default horizon is (√2 − 1) × the champion's age (from its first point to its latest):
for a model whose metric decays linearly by b per day, `loss over that horizon > retrain_cost`
is first true at age √(2·retrain_cost / (loss_per_unit_day·b)), the period that minimises
(runs × cost + staleness loss) per day — the best fixed schedule — with no b to tune. A sudden
drop of δ fires as soon as loss_per_unit_day × δ × horizon exceeds one run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import timedelta

from thresholds.base import Point, Policy, Verdict
from thresholds.durations import format_duration
from thresholds.spec import CostSpec, PolicySpec
from thresholds.trend import DAY, normal_quantile, recent_usable, theil_sen, window_problem

#: The default horizon as a fraction of the champion's age (see the module docstring).
AUTO_HORIZON_FRACTION = math.sqrt(2.0) - 1.0
#: The robust spread of residuals: 1.4826 × median absolute deviation ≈ σ for normal noise.
_MAD_TO_SIGMA = 1.4826


def positive_area(start: float, rate: float, length: float) -> float:
    """∫₀ᴸ max(0, start + rate·d) dd: the area of a line's positive part over [0, length]."""
    if length <= 0:
        return 0.0
    end = start + rate * length
    if start >= 0 and end >= 0:
        return (start + end) / 2.0 * length
    if start <= 0 and end <= 0:
        return 0.0
    crossing = -start / rate  # 0 < crossing < length: the line changes sign once
    if start > 0:
        return start * crossing / 2.0
    return end * (length - crossing) / 2.0


CostWindow = tuple[list[tuple[float, int]], list[Point], list[Point]]
"""What the cost policy reads: the earlier champions' fresh levels (each with the number of
points it averages), the current champion's first points, its lookback window."""


class CostPolicy(Policy[CostWindow]):
    """Fires when keeping the champion over the horizon is projected, at `confidence`, to
    lose more (`loss_per_unit_day` × metric gap × days) than one run costs (`retrain_cost`)."""

    kind = "cost"

    def __init__(self, spec: PolicySpec) -> None:
        super().__init__(spec)
        assert spec.cost is not None  # Policy.__init__ checked the kind
        self.rule: CostSpec = spec.cost

    @property
    def lookback(self) -> timedelta:
        return self.rule.lookback

    def select(self, points: Sequence[Point]) -> CostWindow:
        """(the earlier champions' fresh levels, the current champion's first
        `reference_points` usable points, its lookback window)."""
        earlier: list[tuple[str, list[Point]]] = []
        index = 0
        while index < len(points) and points[index].earlier_champion is not None:
            point = points[index]
            if not earlier or earlier[-1][0] != point.earlier_champion:
                earlier.append((point.earlier_champion, []))  # type: ignore[arg-type]
            if self.is_usable(point):
                earlier[-1][1].append(point)
            index += 1
        wanted = self.rule.reference_points
        levels = [(math.fsum(p.value for p in heads[:wanted]) / wanted, wanted)
                  for _, heads in earlier if len(heads) >= wanted]
        reference: list[Point] = []
        for point in points[index:] if index else points:
            if len(reference) == wanted:
                break
            if self.is_usable(point):
                reference.append(point)
        recent = recent_usable(self, points, self.rule.lookback)
        if recent and recent[0].earlier_champion is not None:
            recent = [p for p in recent if p.earlier_champion is None]
        return levels[max(0, len(levels) - self.rule.champions + 1):], reference, recent

    def judge(self, window: CostWindow) -> Verdict:
        return self._judge(*window)

    def _judge(self, earlier: list[tuple[float, int]], reference: list[Point],
               window: list[Point]) -> Verdict:
        rule = self.rule
        if len(reference) < rule.reference_points:
            return self.verdict(
                "insufficient_data",
                f"need the champion's first {rule.reference_points} {self.metric} points "
                f"for its fresh level, have {len(reference)}",
                limit=rule.retrain_cost, points=len(reference))
        problem = window_problem(self, window, rule.min_points, rule.lookback)
        if problem:
            return self.verdict("insufficient_data", problem, limit=rule.retrain_cost,
                                points=len(window))
        own = math.fsum(p.value for p in reference) / len(reference)
        fresh = _upper_quartile([level for level, _ in earlier] + [own])
        fresh_points = len(reference) + sum(count for _, count in earlier)
        fit = theil_sen(window, 2.0 * rule.confidence - 1.0)
        age = (window[-1].time - reference[0].time) / DAY
        horizon = (rule.horizon.total_seconds() / DAY if rule.horizon is not None
                   else AUTO_HORIZON_FRACTION * age)
        sign = 1.0 if self.higher_is_better else -1.0
        # gap(d) = sign × (fresh − path(d)), path(d) = level + slope × d
        gap_now, gap_rate = sign * (fresh - fit.level), -sign * fit.slope
        loss = rule.loss_per_unit_day * positive_area(gap_now, gap_rate, horizon)
        # The bound: the slope bound and the level in the champion's favour.
        import numpy as np

        days = np.array([(p.time - fit.origin) / DAY for p in window])
        residuals = np.array([p.value for p in window]) - (fit.level + fit.slope * days)
        spread = _MAD_TO_SIGMA * float(np.median(np.abs(residuals - np.median(residuals))))
        error = spread * math.sqrt(1.0 / len(window) + 1.0 / fresh_points)
        favourable = fit.high_slope if self.higher_is_better else fit.low_slope
        if not math.isfinite(favourable):
            favourable = fit.slope
        z = normal_quantile(rule.confidence)
        bound = rule.loss_per_unit_day * positive_area(
            gap_now - z * error, min(gap_rate, -sign * favourable), horizon)
        fired = bound > rule.retrain_cost
        level = f"{int(round(rule.confidence * 100))} % bound"
        reason = (
            f"keeping the champion {_days(horizon)} more: projected {self.metric} loss "
            f"{loss:.4g} ({level} {bound:.4g}) {'>' if fired else '<='} one run "
            f"{rule.retrain_cost:g} (fresh level {fresh:.4g}: {_fresh_source(earlier, own)}"
            f", now {fit.level:.4g}, slope {fit.slope:+.3g}/day over "
            f"{len(window)} points in {format_duration(rule.lookback)})"
        )
        return self.verdict(
            "fired" if fired else "ok", reason, bound, rule.retrain_cost,
            projected_loss=loss, loss_bound=bound, fresh_level=fresh, own_fresh_level=own,
            champions=len(earlier) + 1, level=fit.level,
            slope=fit.slope, horizon_days=horizon, age_days=age, points=len(window),
            confidence=rule.confidence)


def _fresh_source(earlier: list[tuple[float, int]], own: float) -> str:
    """Where the expected fresh level comes from, for the verdict's reason."""
    if not earlier:
        return "the champion's first points"
    return (f"the upper quartile of the latest {len(earlier) + 1} champions' first points, "
            f"this one's {own:.4g}")


def _days(days: float) -> str:
    return f"{days:.3g} day" + ("" if days == 1 else "s")


def _upper_quartile(values: list[float]) -> float:
    """The 75th percentile of `values`, interpolated between order statistics (of 5: the
    second best; of 2: three quarters of the way from the lower to the higher)."""
    ordered = sorted(values)
    position = 0.75 * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (position - low) * (ordered[high] - ordered[low])
