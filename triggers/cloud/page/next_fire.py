"""What it would take for a policy to fire next, and the guides it draws on the chart.

Pure functions of a policy and the champion's current window (no I/O): the page's
"2 more points below 0.95" and "slope's 95 % interval below -0.002/day".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from thresholds.absolute import latest_usable
from thresholds.base import Point, Policy, Verdict
from thresholds.baseline import ZERO_REFERENCE
from thresholds.durations import format_duration
from thresholds.trend import DAY, recent_usable, theil_sen, window_problem


@dataclass(frozen=True)
class Guide:
    """A line a policy draws on its metric's chart, from (t0, v0) to (t1, v1) in event time
    (epoch seconds) and metric units; `role`: threshold, reference, fit or limit."""

    policy: str
    role: str
    label: str
    t0: float
    v0: float
    t1: float
    v1: float


@dataclass(frozen=True)
class Outlook:
    """A policy's verdict on the current window, what would make it fire next, its guides."""

    verdict: Verdict
    next_fire: str
    guides: tuple[Guide, ...] = ()


def outlook(policy: Policy, points: Sequence[Point], start: float | None = None) -> Outlook:
    """The policy's outlook on `points` (the champion's window, oldest first); `start`: where
    the champion's history starts (where a baseline's reference line begins)."""
    verdict = policy.evaluate(points)
    kind = policy.spec.kind
    if kind == "absolute":
        return _absolute(policy, points, verdict, start)
    if kind == "baseline":
        return _baseline(policy, points, verdict, start)
    if kind == "trend":
        return _trend(policy, points, verdict)
    if kind == "forecast":
        return _forecast(policy, points, verdict)
    if kind == "cost":
        return _cost(policy, points, verdict)
    alert = policy.spec.alert
    named = (f"alerting policy {alert.policy_name!r}" if alert is not None and alert.policy_name
             else "an alerting policy labelled retrain_model with this model")
    return Outlook(verdict, f"an open Cloud Monitoring incident of {named}")


def _side(policy: Policy) -> str:
    return "below" if policy.higher_is_better else "above"


def _plural(count: int, word: str) -> str:
    return f"{count} more {word}" + ("" if count == 1 else "s")


def _examples(policy: Policy) -> str:
    needed = policy.spec.min_examples
    return f", each backed by at least {needed} examples" if needed else ""


def _span(points: Sequence[Point]) -> tuple[float, float]:
    return (points[0].time, points[-1].time) if points else (0.0, 0.0)


def breach_points_needed(breaches: Sequence[bool], needed: int, window: int) -> tuple[int, int]:
    """(how many more points, how many of them breaching) make at least `needed` of the latest
    `window` points breaches, given the latest points' breaches (oldest first): the fewest
    points first, then the fewest breaches among them. (0, 0) if that holds already."""
    tail = list(breaches[-window:])
    for more in range(window + 1):
        if len(tail) + more < window:
            continue
        kept = sum(tail[len(tail) - (window - more):]) if more < window else 0
        if kept + more >= needed:
            return more, max(0, needed - kept)
    return window, needed  # unreachable: `window` breaching points always suffice


def _absolute(policy: Policy, points: Sequence[Point], verdict: Verdict,
              start: float | None) -> Outlook:
    rule = policy.spec.absolute
    assert rule is not None
    needed, window = policy.spec.breaches_to_trigger, policy.spec.evaluation_points
    tail = latest_usable(policy, points, window)
    breaches = [policy.is_worse(p.value, rule.threshold) for p in tail]
    more, breaching = breach_points_needed(breaches, needed, window)
    side = _side(policy)
    if more == 0:
        text = (f"firing: {sum(breaches)} of the latest {window} points are {side} "
                f"{rule.threshold:g}")
    else:
        of_them = "" if breaching == more else f", {breaching} of them"
        text = f"{_plural(more, 'point')}{of_them} {side} {rule.threshold:g}{_examples(policy)}"
        if len(tail) < window:
            text += f" (has {len(tail)} of the {window} points it judges)"
        elif window > 1:
            text += f" (now {sum(breaches)} of the latest {window}; {needed} fire)"
    t0, t1 = _span(points)
    t0 = start if start is not None else 0.0  # the whole champion's history (chart clips)
    label = (f"{policy.name}: {side} {rule.threshold:g}"
             + (f", {needed} of {window}" if window > 1 else ""))
    guides = (Guide(policy.name, "threshold", label, t0, rule.threshold, t1, rule.threshold),)
    return Outlook(verdict, text, guides if points else ())


def baseline_fire_level(policy: Policy, reference: float) -> float | None:
    """The value a point must be strictly worse than for a baseline policy to fire, given the
    champion's reference (None when neither limit applies: reference about zero)."""
    rule = policy.spec.baseline
    assert rule is not None
    drops = []
    if rule.max_relative_drop is not None and abs(reference) >= ZERO_REFERENCE:
        drops.append(rule.max_relative_drop * abs(reference))
    if rule.max_absolute_drop is not None:
        drops.append(rule.max_absolute_drop)
    if not drops:
        return None
    drop = min(drops)  # either limit fires: the smaller drop is reached first
    return reference - drop if policy.higher_is_better else reference + drop


def _baseline(policy: Policy, points: Sequence[Point], verdict: Verdict,
              start: float | None) -> Outlook:
    rule = policy.spec.baseline
    assert rule is not None
    usable = [p for p in points if policy.is_usable(p)][: rule.reference_points]
    if len(usable) < rule.reference_points:
        missing = rule.reference_points - len(usable)
        return Outlook(verdict, f"{_plural(missing, 'point')} to set the reference (mean of the "
                       f"champion's first {rule.reference_points}), then one worse than the "
                       "allowed drop")
    reference = math.fsum(p.value for p in usable) / len(usable)
    level = baseline_fire_level(policy, reference)
    if level is None:
        return Outlook(verdict, f"nothing: the reference {reference:.4g} is about zero and no "
                       "max_absolute_drop is set")
    limits = []
    if rule.max_relative_drop is not None:
        limits.append(f"{rule.max_relative_drop:.2%}")
    if rule.max_absolute_drop is not None:
        limits.append(f"{rule.max_absolute_drop:g}")
    text = (f"a point {_side(policy)} {level:.4g}{_examples(policy)} (reference "
            f"{reference:.4g}, allowed drop {' or '.join(limits)})")
    if verdict.fired:
        text = (f"firing: the latest point is {_side(policy)} {level:.4g} "
                f"(reference {reference:.4g})")
    t0 = start if start is not None else usable[0].time
    t1 = points[-1].time
    return Outlook(verdict, text, (
        Guide(policy.name, "reference", f"{policy.name}: reference {reference:.4g}", t0,
              reference, t1, reference),
        Guide(policy.name, "threshold", f"{policy.name}: fires {_side(policy)} {level:.4g}",
              t0, level, t1, level),
    ))


def _more_points(policy: Policy, window: Sequence[Point], min_points: int,
                 lookback: timedelta) -> str:
    return (f"{_plural(min_points - len(window), 'point')} within "
            f"{format_duration(lookback)} of the latest{_examples(policy)} (has {len(window)} "
            f"of {min_points}) before a line is fitted")


def _trend(policy: Policy, points: Sequence[Point], verdict: Verdict) -> Outlook:
    rule = policy.spec.trend
    assert rule is not None
    window = recent_usable(policy, points, rule.lookback)
    if window_problem(policy, window, rule.min_points, rule.lookback):
        if len(window) < rule.min_points:
            return Outlook(verdict, _more_points(policy, window, rule.min_points, rule.lookback))
        return Outlook(verdict, "points at more than one event time, to fit a slope")
    limit = -rule.max_decline_per_day if policy.higher_is_better else rule.max_decline_per_day
    confidence = f"{rule.confidence * 100:g} %"
    near = verdict.details.get("high_slope" if policy.higher_is_better else "low_slope")
    text = (f"slope {_side(policy)} {limit:+g}/day at {confidence} (its interval entirely "
            f"{_side(policy)}, Kendall test significant)")
    if isinstance(near, float):
        text += f"; the interval's near end is now {near:+.3g}/day"
    if verdict.fired:
        text = f"firing: {verdict.reason}"
    fit = theil_sen(window, rule.confidence)
    t0, t1 = window[0].time, window[-1].time
    return Outlook(verdict, text, (
        Guide(policy.name, "fit", f"{policy.name}: slope {fit.slope:+.3g}/day", t0, fit.at(t0),
              t1, fit.at(t1)),
        Guide(policy.name, "limit", f"{policy.name}: limit {limit:+g}/day", t0,
              fit.at(t1) - limit * (t1 - t0) / DAY, t1, fit.at(t1)),
    ))


def _forecast(policy: Policy, points: Sequence[Point], verdict: Verdict) -> Outlook:
    rule = policy.spec.forecast
    assert rule is not None
    window = recent_usable(policy, points, rule.lookback)
    if window_problem(policy, window, rule.min_points, rule.lookback):
        if len(window) < rule.min_points:
            return Outlook(verdict, _more_points(policy, window, rule.min_points, rule.lookback))
        return Outlook(verdict, "points at more than one event time, to fit a line")
    fit = theil_sen(window, 0.95)
    t0, t1 = window[0].time, window[-1].time
    target = t1 + rule.horizon.total_seconds()
    projected = fit.at(target)
    horizon = format_duration(rule.horizon)
    if verdict.fired:
        text = (f"firing: projected {projected:.4g} in {horizon}, {_side(policy)} "
                f"{rule.threshold:g}")
    else:
        text = (f"the fitted line projected {_side(policy)} {rule.threshold:g} within "
                f"{horizon} (now {projected:.4g} at {horizon}, slope {fit.slope:+.3g}/day)")
    return Outlook(verdict, text, (
        Guide(policy.name, "threshold", f"{policy.name}: {_side(policy)} {rule.threshold:g}",
              t0, rule.threshold, target, rule.threshold),
        Guide(policy.name, "fit", f"{policy.name}: projected {projected:.4g} in {horizon}",
              t0, fit.at(t0), target, projected),
    ))


def _cost(policy: Policy, points: Sequence[Point], verdict: Verdict) -> Outlook:
    rule = policy.spec.cost
    assert rule is not None
    if verdict.status == "insufficient_data":
        return Outlook(verdict, f"more points: {verdict.reason}")
    bound = verdict.details.get("loss_bound")
    fresh = verdict.details.get("fresh_level")
    horizon = verdict.details.get("horizon_days")
    now = f" (now {bound:.4g} over {horizon:.3g} days)" if isinstance(bound, float) and \
        isinstance(horizon, float) else ""
    text = (f"a projected loss at {rule.confidence * 100:g} % above one run's cost "
            f"{rule.retrain_cost:g}{now}")
    if verdict.fired:
        text = f"firing: {verdict.reason}"
    guides: tuple[Guide, ...] = ()
    own = [p for p in points if p.earlier_champion is None]  # not the earlier champions'
    if isinstance(fresh, float) and own:
        t0, t1 = _span(own)
        guides = (Guide(policy.name, "reference", f"{policy.name}: fresh level {fresh:.4g}",
                        t0, fresh, t1, fresh),)
    return Outlook(verdict, text, guides)
