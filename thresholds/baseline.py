"""`baseline`: drop of the latest value from the champion's reference (its first points)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from thresholds.base import Point, Policy, Verdict
from thresholds.spec import BaselineSpec, PolicySpec

#: A reference closer to zero than this makes a relative drop meaningless.
ZERO_REFERENCE = 1e-12


class BaselinePolicy(Policy[list[Point]]):
    """Fires when the latest value dropped (in the bad direction) from the reference — the mean
    of the first `reference_points` points of the champion's series — by more than
    `max_relative_drop` and/or `max_absolute_drop` (either limit that is set, exceeded strictly)."""

    kind = "baseline"

    def __init__(self, spec: PolicySpec) -> None:
        super().__init__(spec)
        assert spec.baseline is not None  # Policy.__init__ checked the kind
        self.rule: BaselineSpec = spec.baseline

    def select(self, points: Sequence[Point]) -> list[Point]:
        # The reference (the first usable points) and the latest usable point after them.
        # Only the first `reference_points` usable points and the latest one after them matter:
        # walk in from both ends instead of filtering the whole series.
        wanted = self.rule.reference_points
        reference: list[Point] = []
        index = 0
        while index < len(points) and len(reference) < wanted:
            if self.is_usable(points[index]):
                reference.append(points[index])
            index += 1
        for later in range(len(points) - 1, index - 1, -1):
            if self.is_usable(points[later]):
                return [*reference, points[later]]
        return reference

    def judge(self, points: list[Point]) -> Verdict:
        count = self.rule.reference_points
        relative_limit, absolute_limit = self.rule.max_relative_drop, self.rule.max_absolute_drop
        if len(points) < count + 1:
            return self.verdict(
                "insufficient_data",
                f"need {count + 1} {self.metric} points ({count} for the reference, then 1 to "
                f"compare), have {len(points)}",
                points=len(points),
            )
        reference = math.fsum(point.value for point in points[:count]) / count
        latest = points[-1]
        drop = reference - latest.value if self.higher_is_better else latest.value - reference
        relative = drop / abs(reference) if abs(reference) >= ZERO_REFERENCE else None
        details: dict[str, float | int | str | None] = {
            "reference": reference,
            "reference_points": count,
            "latest": latest.value,
            "latest_time": latest.time,
            "absolute_drop": drop,
            "relative_drop": relative,
            "max_relative_drop": relative_limit,
            "max_absolute_drop": absolute_limit,
        }
        if relative is None and absolute_limit is None:
            return self.verdict(
                "insufficient_data",
                f"the {self.metric} reference {reference:.6g} is about zero: "
                "a relative drop from it is undefined",
                None,
                None,
                **details,
            )
        relative_breach = (
            relative_limit is not None and relative is not None and relative > relative_limit
        )
        absolute_breach = absolute_limit is not None and drop > absolute_limit
        fired = relative_breach or absolute_breach
        # The statistic is the relative drop, unless only the absolute limit decides.
        statistic: float
        limit: float
        if (
            relative_limit is not None
            and relative is not None
            and (relative_breach or not absolute_breach)
        ):
            statistic, limit = relative, relative_limit
        else:
            assert absolute_limit is not None  # the spec needs one limit; see the zero check
            statistic, limit = drop, absolute_limit

        if self.higher_is_better:
            verb = "fell" if drop > 0 else "rose"
        else:
            verb = "rose" if drop > 0 else "fell"
        change = f"{abs(drop):.6g}" + (f" ({abs(relative):.2%})" if relative is not None else "")
        limits = []
        if relative_limit is not None and (relative_breach or not fired):
            limits.append(f"relative drop of {relative_limit * 100:g}%")
        if absolute_limit is not None and (absolute_breach or not fired):
            limits.append(f"absolute drop of {absolute_limit:g}")
        reason = (
            f"{self.metric} {verb} by {change} from its reference {reference:.6g} (mean of the "
            f"first {count} points) to {latest.value:.6g}: "
            f"{'more than' if fired else 'within'} the allowed {' and '.join(limits)}"
        )
        if relative is None:
            reason += " (the reference is about zero, so only the absolute drop counts)"
        return self.verdict("fired" if fired else "ok", reason, statistic, limit, **details)
