"""`absolute`: M-of-N breaches of a fixed threshold over the latest N points (like CloudWatch)."""

from __future__ import annotations

from collections.abc import Sequence

from thresholds.base import Point, Policy, Verdict
from thresholds.spec import AbsoluteSpec, PolicySpec


def latest_usable(policy: Policy, points: Sequence[Point], count: int) -> list[Point]:
    """The latest `count` usable points of `points`, oldest first, found walking back from the end.

    Touches only the tail (plus any unusable points inside it), never the whole series.
    """
    if count <= 0:
        return []
    if not policy.spec.min_examples:  # every point is usable
        return list(points[-count:])
    picked: list[Point] = []
    for index in range(len(points) - 1, -1, -1):
        if len(picked) == count:
            break
        point = points[index]
        if policy.is_usable(point):
            picked.append(point)
    picked.reverse()
    return picked


class AbsolutePolicy(Policy[Sequence[Point]]):
    """Fires when `breaches_to_trigger` of the latest `evaluation_points` values (not necessarily
    consecutive) are strictly worse than `threshold`; fewer points than that: insufficient data."""

    kind = "absolute"

    def __init__(self, spec: PolicySpec) -> None:
        super().__init__(spec)
        assert spec.absolute is not None  # Policy.__init__ checked the kind
        self.rule: AbsoluteSpec = spec.absolute

    def select(self, points: Sequence[Point]) -> Sequence[Point]:
        # Only the latest N usable points matter: O(N), however long the history is.
        if not self.spec.min_examples:  # the backtest's hot loop: no walk
            return points[-self.spec.evaluation_points:]
        return latest_usable(self, points, self.spec.evaluation_points)

    def breached(self, window: Sequence[Point]) -> bool:
        # The rule of `judge` without its verdict: N points, at least M of them breaches.
        return (len(window) >= self.spec.evaluation_points
                and self._breaches(window) >= self.spec.breaches_to_trigger)

    def _breaches(self, points: Sequence[Point], start: int = 0) -> int:
        """How many values of `points[start:]` are strictly worse than the threshold."""
        threshold = self.rule.threshold  # as `is_worse`, inlined: the backtest's hot loop
        count = 0
        if self.higher_is_better:
            for index in range(start, len(points)):
                if points[index].value < threshold:
                    count += 1
        else:
            for index in range(start, len(points)):
                if points[index].value > threshold:
                    count += 1
        return count

    def judge(self, points: Sequence[Point]) -> Verdict:
        needed, window = self.spec.breaches_to_trigger, self.spec.evaluation_points
        threshold = self.rule.threshold
        if len(points) < window:
            return self.verdict(
                "insufficient_data",
                f"need the latest {window} {self.metric} points, have {len(points)}",
                limit=float(needed),
                points=len(points),
                threshold=threshold,
            )
        tail = points[-window:]
        breaches = self._breaches(tail)
        latest = tail[-1]
        fired = breaches >= needed
        side = "below" if self.higher_is_better else "above"
        if window == 1:
            reason = (
                f"the latest {self.metric} point {latest.value:.6g} is "
                f"{'' if fired else 'not '}{side} {threshold:g}"
            )
        else:
            verb = "is" if breaches == 1 else "are"
            reason = (
                f"{breaches} of the latest {window} {self.metric} points {verb} {side} "
                f"{threshold:g} (latest {latest.value:.6g})"
            )
            if not fired:
                reason += f"; {needed} needed to fire"
        return self.verdict(
            "fired" if fired else "ok",
            reason,
            statistic=float(breaches),
            limit=float(needed),
            latest=latest.value,
            latest_time=latest.time,
            threshold=threshold,
            breaches=breaches,
            evaluation_points=window,
        )
