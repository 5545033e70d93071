"""`forecast`: the robust trend line, projected `horizon` ahead, crosses `threshold`.

Like Prometheus `predict_linear`, but with a Theil–Sen fit: retrain before the floor is hit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from thresholds.base import Point, Policy, Verdict
from thresholds.durations import format_duration
from thresholds.spec import ForecastSpec, PolicySpec
from thresholds.theil_sen import SlidingPairs, sliding_statistics
from thresholds.trend import (
    DAY,
    FitMemo,
    RobustFit,
    recent_usable,
    theil_sen,
    window_key,
    window_problem,
)

#: Only the fit's slope and level are used; the CI level is irrelevant here.
_CONFIDENCE = 0.95


def _when(time: float) -> str:
    try:
        return datetime.fromtimestamp(time, tz=UTC).strftime("%Y-%m-%dT%H:%MZ")
    except (OverflowError, OSError, ValueError):
        return "far from now"


class ForecastPolicy(Policy[list[Point]]):
    """Fires when the Theil–Sen line fitted over `lookback`, projected to the latest point's
    time + `horizon`, is strictly worse than `threshold` (it crosses within the horizon, or has
    already crossed)."""

    kind = "forecast"
    fit_memo: FitMemo | None = None

    def __init__(self, spec: PolicySpec) -> None:
        super().__init__(spec)
        assert spec.forecast is not None  # Policy.__init__ checked the kind
        self.rule: ForecastSpec = spec.forecast
        self.sliding = SlidingPairs()
        """The last window's pairs: the next window, a point or two apart, is fitted from them."""

    @property
    def lookback(self) -> timedelta:
        return self.rule.lookback

    def _fit(self, window: Sequence[Point]) -> RobustFit:
        """The window's Theil–Sen fit (remembered with a `fit_memo`)."""
        if self.fit_memo is None:
            return self._fit_now(window)
        return self.fit_memo.get(("fit", _CONFIDENCE, *window_key(window)),
                                 lambda: self._fit_now(window))

    def _fit_now(self, window: Sequence[Point]) -> RobustFit:
        """From the last window's pairs where they give it exactly, else a full refit."""
        quick = sliding_statistics(self.sliding, window, _CONFIDENCE, None)
        return quick[0] if quick is not None else theil_sen(window, _CONFIDENCE)

    def select(self, points: Sequence[Point]) -> list[Point]:
        # Only the lookback window matters: walk back from the end, not over the whole series.
        return recent_usable(self, points, self.rule.lookback)

    def breached(self, window: list[Point]) -> bool:
        # The test of `judge` without its verdict's text.
        if window_problem(self, window, self.rule.min_points, self.rule.lookback):
            return False
        _, _, projected = self._projection(window)
        return self.is_worse(projected, self.rule.threshold)

    def _projection(self, window: Sequence[Point]) -> tuple[RobustFit, float, float]:
        """The window's fit, the time it is projected to (the latest point's + horizon), and
        the fitted line's value then."""
        fit = self._fit(window)
        target = window[-1].time + self.rule.horizon.total_seconds()
        return fit, target, fit.at(target)

    def judge(self, window: list[Point]) -> Verdict:
        """The verdict on the lookback window (usable points, oldest first)."""
        rule, threshold = self.rule, self.rule.threshold
        problem = window_problem(self, window, rule.min_points, rule.lookback)
        if problem:
            return self.verdict("insufficient_data", problem, limit=threshold, points=len(window))
        fit, target, projected = self._projection(window)
        latest = window[-1].time
        # When the line reaches the threshold heading the bad way (None if it never does).
        crossing: float | None = None
        if self.is_worse(fit.slope, 0.0):
            crossing = latest + (threshold - fit.level) / fit.slope * DAY
            if not math.isfinite(crossing):
                crossing = None
        fired = self.is_worse(projected, threshold)
        side = "below" if self.higher_is_better else "above"
        horizon = format_duration(rule.horizon)
        reason = (
            f"{self.metric} is projected at {projected:.6g} in {horizon}, "
            f"{'' if fired else 'not '}{side} {threshold:g} "
            f"(slope {fit.slope:+.3g}/day over {len(window)} points in "
            f"{format_duration(rule.lookback)}"
        )
        if crossing is None:
            reason += ", not heading towards the threshold)"
        elif crossing <= latest:
            reason += f"; the fitted line crossed it at {_when(crossing)})"
        else:
            reason += f"; the fitted line crosses it at {_when(crossing)})"
        return self.verdict(
            "fired" if fired else "ok",
            reason,
            projected,
            threshold,
            points=len(window),
            slope=fit.slope,
            level=fit.level,
            projected_time=target,
            crossing_time=crossing,
            horizon_days=rule.horizon.total_seconds() / DAY,
        )
