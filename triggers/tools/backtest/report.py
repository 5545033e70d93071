"""What a replay found: triggers, suppressions, runs, time spent worse than each threshold,
and the text report.
"""

from __future__ import annotations

import io
import math
import statistics
import time
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from thresholds.base import Policy
from thresholds.durations import format_duration
from triggers.config import ServiceConfig
from triggers.events import MetricEvent
from triggers.state.protocol import IN_FLIGHT, Decision, StoredPoint, iso
from triggers.tools.backtest.io import RowError
from triggers.tools.backtest.replay import FIRED_KINDS, TRIGGERING_METRIC, BacktestSettings, Replay


# ----------------------------------------------------------------------------- report
@dataclass(frozen=True)
class TriggerRecord:
    """A verdict that launched a run (or whose launch was refused, `kind` launch_failed)."""

    time: float
    model: str
    policy: str
    metric: str
    kind: str
    reason: str
    run_id: str | None
    detection_delay: float | None
    lead_time: float | None
    simulated: bool


@dataclass(frozen=True)
class SuppressedRecord:
    """A verdict that fired while a guard blocked a new run."""

    time: float
    model: str
    policy: str
    reason: str


@dataclass(frozen=True)
class RunSummary:
    """A simulated run: launched when, ended how (as the service saw it)."""

    run_id: str
    model: str
    policy: str
    launched: float
    ended: float | None
    state: str


@dataclass(frozen=True)
class ThresholdTime:
    """Time the metric spent worse than a threshold, and how much of it came before a run
    was launched (or already in flight) for that stretch."""

    model: str
    slice: str
    metric: str
    threshold: float
    direction: str
    worse: float
    before_a_run: float
    stretches: int


@dataclass(frozen=True)
class PolicySummary:
    model: str
    policy: str
    kind: str
    metric: str
    threshold: float | None
    triggers: int
    suppressed: int
    median_delay: float | None
    max_delay: float | None
    time_worse: ThresholdTime | None


@dataclass
class BacktestReport:
    """Everything a backtest found, and what it counts."""

    policy_file: str
    history: str
    models: list[str]
    events: int
    points: int
    first_time: float | None
    last_time: float | None
    run_duration: float
    recovery: dict[str, float] | None
    runs: list[RunSummary]
    triggers: list[TriggerRecord]
    suppressed: list[SuppressedRecord]
    policies: list[PolicySummary]
    skipped_rows: list[RowError]
    fast_events: int
    elapsed: float
    notes: list[str] = field(default_factory=list)
    ignored_events: int = 0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("first_time", "last_time"):
            data[key] = iso(data[key])
        for record in (*data["runs"], *data["triggers"], *data["suppressed"]):
            for key in ("time", "launched", "ended"):
                if key in record:
                    record[key] = iso(record[key])
        data["skipped_rows"] = [asdict(row) for row in self.skipped_rows]
        data["runs_count"] = len(self.runs)
        data["suppressed_count"] = len(self.suppressed)
        return data


def threshold_of(policy: Policy) -> float | None:
    """The absolute threshold a policy compares values with (absolute and forecast rules)."""
    spec = policy.spec
    if spec.absolute is not None:
        return spec.absolute.threshold
    if spec.forecast is not None:
        return spec.forecast.threshold
    return None


def _coverage(points: Sequence[StoredPoint]) -> list[tuple[float, float]]:
    """The stretch of time each point stands for: its window (clipped to start where the
    point before ended: rolling windows overlap), or since the point before."""
    spans = []
    previous: float | None = None
    for point in points:
        start = point.window_start if point.window_start is not None else previous
        if start is not None and previous is not None:
            start = max(start, previous)
        spans.append((point.window_end if start is None else min(start, point.window_end),
                      point.window_end))
        previous = point.window_end
    return spans


def time_worse_than(
    points: Sequence[StoredPoint], threshold: float, higher_is_better: bool,
    runs: Sequence[tuple[float, float]], model: str, slice_: str, metric: str,
) -> ThresholdTime:
    """How long the series was strictly worse than `threshold`, and the part of it before a
    run was launched during that stretch (a run launched before it, for an earlier blip, does
    not count); `runs` are (launched, ended) times."""
    spans = _coverage(points)
    worse_total = unattended = 0.0
    stretches = 0
    stretch: list[float] | None = None  # [start, end]

    def close(stretch_: list[float]) -> float:
        start, end = stretch_
        attention = end
        for launched, _ in runs:
            if start <= launched <= end:
                attention = min(attention, launched)
        return attention - start

    for point, (start, end) in zip(points, spans, strict=True):
        bad = point.value < threshold if higher_is_better else point.value > threshold
        if bad:
            worse_total += end - start
            if stretch is None:
                stretch = [start, end]
                stretches += 1
            else:
                stretch[1] = end
        elif stretch is not None:
            unattended += close(stretch)
            stretch = None
    if stretch is not None:
        unattended += close(stretch)
    return ThresholdTime(model, slice_, metric, threshold,
                         "higher_is_better" if higher_is_better else "lower_is_better",
                         worse_total, unattended, stretches)


def _episodes(times: Sequence[float], breached: Sequence[bool],
              tolerance: int) -> list[tuple[float, float]]:
    """(start, end) of each episode: breaching points, until `tolerance` points in a row
    did not breach (end: the time of the point that closed it, or +inf if still open)."""
    episodes: list[tuple[float, float]] = []
    start: float | None = None
    healthy = 0
    for time_, bad in zip(times, breached, strict=True):
        if bad:
            if start is None:
                start = time_
            healthy = 0
        elif start is not None:
            healthy += 1
            if healthy >= tolerance:
                episodes.append((start, time_))
                start, healthy = None, 0
    if start is not None:
        episodes.append((start, math.inf))
    return episodes


def _event_time(decision: Decision) -> float:
    """The event time a decision is about (when it was made, for one about no point)."""
    return decision.event_time if decision.event_time is not None else decision.at


def build_report(
    replay: Replay, policy_file: str, history: str, skipped: Sequence[RowError], elapsed: float
) -> BacktestReport:
    """What the replay decided, with detection delays and time spent worse than thresholds."""
    store = replay.store
    decisions = sorted(store.all_decisions(), key=lambda d: (_event_time(d), d.at))
    runs = store.runs(limit=1_000_000)
    models = sorted(replay.models)
    triggers: list[TriggerRecord] = []
    suppressed: list[SuppressedRecord] = []
    summaries: list[PolicySummary] = []
    for model_name in models:
        model = replay.config.models[model_name]
        fired_at: dict[str, list[float]] = {}
        for d in decisions:
            if d.model == model_name and d.kind in FIRED_KINDS and d.policy:
                fired_at.setdefault(d.policy, []).append(_event_time(d))
        for policy in model.policies:
            series = [p for p in replay.champion_points(model_name, policy.spec.slice,
                                                        policy.metric)
                      if p.examples is None or p.examples >= policy.spec.min_examples]
            times = [p.window_end for p in series]
            threshold = threshold_of(policy)
            if threshold is not None:
                breached = [policy.is_worse(p.value, threshold) for p in series]
                tolerance = policy.spec.evaluation_points if policy.spec.absolute else 1
            else:
                fired = set(fired_at.get(policy.name, ()))
                breached = [t in fired for t in times]
                tolerance = 1
            episodes = _episodes(times, breached, tolerance)
            starts = [start for start, _ in episodes]
            delays: list[float] = []
            count = 0
            for d in decisions:
                if d.model != model_name or d.policy != policy.name:
                    continue
                when = _event_time(d)
                if d.kind == "suppressed":
                    suppressed.append(SuppressedRecord(when, model_name, policy.name, d.reason))
                    continue
                if d.kind not in ("fired", "launch_failed"):
                    continue
                count += 1
                index = bisect_right(starts, when) - 1
                delay = lead = None
                if index >= 0 and when <= episodes[index][1]:
                    delay = when - episodes[index][0]
                    delays.append(delay)
                elif (index + 1 < len(episodes) and policy.spec.forecast is not None
                      and episodes[index + 1][0] - when
                      <= policy.spec.forecast.horizon.total_seconds()):
                    lead = episodes[index + 1][0] - when  # a breach it saw coming
                triggers.append(TriggerRecord(
                    when, model_name, policy.name, policy.metric, d.kind, d.reason, d.run_id,
                    delay, lead, replay.is_simulated(model_name, policy.metric, when)))
            worse = None
            if threshold is not None:
                worse = time_worse_than(series, threshold, policy.higher_is_better,
                                        replay.run_spans(model_name), model_name,
                                        policy.spec.slice, policy.metric)
            summaries.append(PolicySummary(
                model_name, policy.name, policy.spec.kind, policy.metric, threshold, count,
                sum(1 for s in suppressed if s.model == model_name and s.policy == policy.name),
                statistics.median(delays) if delays else None,
                max(delays) if delays else None, worse))
    triggers.sort(key=lambda t: (t.time, t.model, t.policy))
    suppressed.sort(key=lambda s: (s.time, s.model, s.policy))
    run_rows = sorted(
        (RunSummary(r.run_id, r.model, r.policy, r.created_at, r.ended_at, r.state)
         for r in runs), key=lambda r: r.launched)
    settings = replay.settings
    return BacktestReport(
        policy_file=policy_file, history=history, models=models, events=replay.events,
        points=replay.points, first_time=replay.first_time, last_time=replay.last_time,
        run_duration=settings.run_duration,
        recovery=dict(settings.recovery) if settings.recovery is not None else None,
        runs=run_rows, triggers=triggers, suppressed=suppressed, policies=summaries,
        skipped_rows=list(skipped), fast_events=replay.fast_events, elapsed=elapsed,
        notes=what_is_counted(settings),
        ignored_events=sum(1 for d in decisions if d.kind == "ignored"),
    )


def _recovered_metrics(recovery: Mapping[str, float]) -> str:
    said = [f"{metric} reads {value:g}" for metric, value in recovery.items()
            if metric != TRIGGERING_METRIC]
    if TRIGGERING_METRIC in recovery:
        said.append(f"{'other ' if said else ''}metric watched by the triggering policy reads "
                    f"{recovery[TRIGGERING_METRIC]:g}")
    return ", ".join(said)


def what_is_counted(settings: BacktestSettings) -> list[str]:
    """The plain statement of what a backtest counts (and cannot know)."""
    duration = format_duration(timedelta(seconds=settings.run_duration))
    notes = [
        "Decisions are the service's own (policies, M of N, cooldown, budget, one run in "
        "flight, disarmed until a run ends), made on an in-memory store with `now` = the event "
        "time of the point being replayed.",
    ]
    if settings.recovery is None:
        notes.append(
            f"Every run is assumed to take {duration} and to end rejected: the metrics stay as "
            "recorded, so the policies re-arm after the cooldown. A backtest cannot know how a "
            "retrained model would have scored; the runs counted are those these policies "
            "would have launched on this history.")
    else:
        notes.append(
            f"SIMULATED: every run is assumed to take {duration} and to promote a model whose "
            f"{_recovered_metrics(settings.recovery)} from the run's end on; those values "
            "replace the recorded ones (marked simulated), other metrics keep their recorded "
            "values. A backtest cannot know how a retrained model would really have scored.")
    notes.append(
        "Time worse than a threshold adds up each point's window (window_start to window_end, "
        "clipped where the previous point ended, else the time since the previous point), "
        "over points with at least the policy's min_examples; 'before a run' is the part of "
        "each stretch before a run was launched during it.")
    notes.append(
        "Detection delay: from the first point of the episode that breached the policy's "
        "threshold (absolute, forecast; an episode ends after evaluation_points points in a "
        "row within it) or on which the policy fired (trend, baseline), to the trigger; a "
        "forecast's trigger ahead of a breach within its horizon shows its lead time instead "
        "(as a negative delay).")
    return notes


# ----------------------------------------------------------------------------- running
def backtest(
    config: ServiceConfig, events: Sequence[tuple[int, MetricEvent]],
    settings: BacktestSettings | None = None, *, policy_file: str = "", history: str = "",
    skipped: Sequence[RowError] = (), progress: Callable[[int], None] | None = None,
) -> tuple[Replay, BacktestReport]:
    """Replay `events` through the service configured by `config`; the replay and its report."""
    started = time.perf_counter()
    replay = Replay(config, settings)
    replay.run(events, progress)
    report = build_report(replay, policy_file, history, skipped,
                          time.perf_counter() - started)
    return replay, report


# ----------------------------------------------------------------------------- output
def _when(ts: float | None) -> str:
    text = iso(ts) or "-"
    return text[:16].replace("T", " ") if ts is not None else text


def span(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 0:
        return "-" + span(-seconds)
    if seconds >= 86400:
        return f"{seconds / 86400:.1f}d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 60:.0f}m"


def format_report(report: BacktestReport, limit: int = 50) -> str:
    """The report as a table for people."""
    out = io.StringIO()
    w = out.write
    w(f"Backtest of {report.policy_file} on {report.history}: {', '.join(report.models)}; "
      f"{report.events:,} events, {report.points:,} points "
      f"({_when(report.first_time)} → {_when(report.last_time)})\n")
    outcomes: dict[str, int] = {}
    for run in report.runs:
        state = "still in flight" if run.state in IN_FLIGHT else run.state
        outcomes[state] = outcomes.get(state, 0) + 1
    ended = ", ".join(f"{n} {state}" for state, n in sorted(outcomes.items()))
    w(f"Retraining runs: {len(report.runs)}" + (f" ({ended})" if ended else "")
      + f"; suppressed triggers: {len(report.suppressed)}\n")
    if report.ignored_events:
        w(f"Not evaluated: {report.ignored_events:,} event(s) of a model_version other than the "
          "champion's. A backtest learns of promotions only from its own simulated runs "
          "(--assume-recovery): replay one version's history, or one without versions.\n")
    w("\n")
    w(f"Triggers: {len(report.triggers)} fired verdict(s) (policies firing on one point share "
      "a run; delay: since the episode's first breach, negative: ahead of it)\n")
    if report.triggers:
        w(f"  {'time':<16}  {'model':<16} {'policy':<20} {'delay':>7}  reason\n")
    for trigger in report.triggers[:limit]:
        delay = (span(trigger.detection_delay) if trigger.detection_delay is not None
                 else f"-{span(trigger.lead_time)}" if trigger.lead_time is not None else "-")
        mark = " [simulated]" if trigger.simulated else ""
        failed = " [launch refused]" if trigger.kind == "launch_failed" else ""
        w(f"  {_when(trigger.time):<16}  {trigger.model:<16} {trigger.policy:<20} "
          f"{delay:>7}  {trigger.reason[:100]}{failed}{mark}\n")
    if len(report.triggers) > limit:
        w(f"  … {len(report.triggers) - limit} more (all of them with --output)\n")
    w("\nPer policy\n")
    w(f"  {'model':<16} {'policy':<20} {'kind':<9} {'triggers':>8} {'suppr.':>7} "
      f"{'delay med/max':>14}  {'worse than threshold':>21} {'before a run':>13}\n")
    for p in report.policies:
        delay = f"{span(p.median_delay)}/{span(p.max_delay)}"
        worse = before = "-"
        if p.time_worse is not None:
            worse = f"{span(p.time_worse.worse)} < {p.threshold:g}" if (
                p.time_worse.direction == "higher_is_better") else (
                f"{span(p.time_worse.worse)} > {p.threshold:g}")
            before = span(p.time_worse.before_a_run)
        w(f"  {p.model:<16} {p.policy:<20} {p.kind:<9} {p.triggers:>8} {p.suppressed:>7} "
          f"{delay:>14}  {worse:>21} {before:>13}\n")
    if report.skipped_rows:
        w(f"\nSkipped {len(report.skipped_rows)} malformed line(s):\n")
        for row in report.skipped_rows[:limit]:
            w(f"  {row}\n")
    w("\nWhat is counted\n")
    for note in report.notes:
        w(f"  - {note}\n")
    return out.getvalue()

