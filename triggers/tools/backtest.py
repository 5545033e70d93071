"""Backtests: a metric history replayed through the service's own decision code (policies,
M-of-N, guards, run lifecycle) on an in-memory store and a simulated clock; threshold sweeps.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import statistics
import sys
import time
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pipeline_client.launching.protocol import LaunchRequest, LaunchResult, RunStatus
from thresholds.base import Point, Policy
from thresholds.durations import format_duration, parse_duration
from thresholds.forecast import ForecastPolicy
from thresholds.registry import build_policy
from thresholds.spec import PolicySpec
from thresholds.trend import FitMemo, TrendPolicy
from triggers.config import ModelConfig, ServiceConfig
from triggers.errors import InvalidEventError, RetrainError
from triggers.events import MetricEvent, fast_event
from triggers.service import RetrainService, is_champion_version
from triggers.state.memory import MemoryStore
from triggers.state.protocol import IN_FLIGHT, Decision, ModelState, StoredPoint, iso

DEFAULT_RUN_DURATION = timedelta(hours=6)
FIRED_KINDS = frozenset({"fired", "suppressed", "launch_failed"})
"""Decision kinds of a verdict that fired (whether or not a run followed)."""
_PROGRESS_EVERY = 1024


class BacktestInputError(RetrainError):
    """The history, the policy file or an option cannot be used; `source` names which."""

    def __init__(self, source: str, reason: str, rows: Sequence[RowError] = ()) -> None:
        self.source = source
        self.reason = reason
        self.rows = list(rows)
        super().__init__(f"{source}: {reason}")


# ----------------------------------------------------------------------------- history
@dataclass(frozen=True)
class RowError:
    """A history line that was left out, and why."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass
class History:
    """The events of a history file (with their first line), and the lines left out."""

    events: list[tuple[int, MetricEvent]]
    errors: list[RowError]
    other_models: int = 0


def read_history(path: str | Path, config: ServiceConfig, model: str | None = None) -> History:
    """Every well-formed event of a JSONL or CSV history (the formats `publish` reads) of the
    configured models (or of `model` only); malformed lines are listed in `errors`."""
    from triggers.tools.publish import read_events

    errors: list[RowError] = []
    events: list[tuple[int, MetricEvent]] = []
    other = 0
    try:
        rows = list(read_events(path, skip=lambda line, why: errors.append(RowError(line, why))))
    except (OSError, ValueError) as exc:
        raise BacktestInputError(str(path), str(exc)) from None
    for line, data in rows:
        try:
            event = fast_event(data) or _validated_event(data)
        except InvalidEventError as exc:
            errors.append(RowError(line, f"{exc.field}: {exc.reason}"))
            continue
        if model is not None and event.model != model:
            other += 1
        elif event.model not in config.models:
            errors.append(RowError(line, f"model: {event.model!r} is not configured in the "
                                         "policy file"))
        else:
            events.append((line, event))
    errors.sort(key=lambda error: error.line)
    return History(events, errors, other)


def _validated_event(data: Mapping[str, Any]) -> MetricEvent:
    from triggers.event_schema import validate_event

    return validate_event(data)


# ----------------------------------------------------------------------------- simulation
class SimulatedClock:
    """`now` for the service: the event time of the point being replayed."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class SimulatedRun:
    """A run the backtest launched: when, and when its simulated end comes."""

    request: LaunchRequest
    launched_at: float
    ends_at: float
    champion_version: str | None


class SimulatedLauncher:
    """A `PipelineLauncher` whose runs end `run_duration` after their launch: rejected (the
    model stays as it was), or promoted when `promote` (a simulated champion version)."""

    name = "backtest"

    def __init__(self, clock: Callable[[], float], run_duration: float, promote: bool) -> None:
        self.clock = clock
        self.run_duration = run_duration
        self.promote = promote
        self.runs: dict[str, SimulatedRun] = {}

    def submit(self, request: LaunchRequest) -> LaunchResult:
        existed = request.run_id in self.runs
        if not existed:
            now = self.clock()
            version = f"simulated-{len(self.runs) + 1}" if self.promote else None
            self.runs[request.run_id] = SimulatedRun(request, now, now + self.run_duration,
                                                     version)
        return LaunchResult(request.run_id, f"backtest/{request.run_id}", existed)

    def get_status(self, run_id: str) -> RunStatus:
        run = self.runs.get(run_id)
        if run is None:
            return RunStatus("unknown")
        if self.clock() < run.ends_at:
            return RunStatus("running")
        if run.champion_version is not None:
            return RunStatus("succeeded", {
                "decision": "promoted", "champion_version": run.champion_version,
                "report": {"summary": "simulated promotion (--assume-recovery)"}})
        return RunStatus("succeeded", {
            "decision": "rejected",
            "report": {"summary": "simulated: the backtest assumes every run is rejected"}})


TRIGGERING_METRIC = "*"
"""The key of `BacktestSettings.recovery` that stands for the triggering policy's metric."""


@dataclass(frozen=True)
class BacktestSettings:
    """How runs are simulated: their duration, and what a promotion is assumed to bring:
    metric -> value from the run's end on (`TRIGGERING_METRIC`: the metric of the policy that
    triggered the run). None: every run ends rejected."""

    run_duration: float = DEFAULT_RUN_DURATION.total_seconds()
    recovery: Mapping[str, float] | None = None


def parse_recovery(texts: Sequence[str]) -> dict[str, float]:
    """`--assume-recovery` values: `VALUE` (the triggering policy's metric) or `METRIC=VALUE`."""
    recovery: dict[str, float] = {}
    for text in texts:
        metric, sep, number = text.rpartition("=")
        key = metric.strip() if sep else TRIGGERING_METRIC
        try:
            value = float(number)
        except ValueError:
            value = math.nan
        if not key or not math.isfinite(value):
            raise BacktestInputError("--assume-recovery",
                                     f"{text!r} is not VALUE or METRIC=VALUE (a finite number)")
        recovery[key] = value
    return recovery


@dataclass(frozen=True)
class _Recovery:
    """After a simulated promotion: from `after` on, the evaluations of the champion it
    replaced (`replaced`; None: events that name no version) read these values and are the
    simulated champion `version`'s; other versions' evaluations (challengers) are left alone."""

    values: Mapping[str, float]
    after: float
    version: str
    replaced: str | None = None


class _Track:
    """One (slice, metric) of a model as its policies see it: the champion's points since its
    history started (oldest first), and the latest event time recorded, of any version."""

    __slots__ = ("policies", "count_based", "lookback", "points", "times", "last_end")

    def __init__(self, policies: Sequence[Policy]) -> None:
        self.count_based = tuple(p for p in policies if p.lookback is None)
        self.lookback = tuple(p for p in policies if p.lookback is not None)
        self.policies = tuple(policies)
        self.points: list[Point] = []
        self.times: list[float] = []
        self.last_end: float | None = None


class Replay:
    """One backtest: a `RetrainService` on a `MemoryStore`, a simulated clock and launcher.

    Every event goes to `RetrainService.handle_event` (the live path after parsing) except
    those on which no policy fires: for these the replay records the points and asks each
    policy itself, with the same `Policy.fires`/`evaluate` on the same champion series the
    service would read (`_series`: its version, its history start, a lookback policy's
    window back from the newest point). Any fired verdict goes to the service, which
    decides, claims, guards, launches and records. Runs go to a `SimulatedLauncher`; the
    service learns of their end as of a real run's, asking the launcher at the next event.
    """

    def __init__(self, config: ServiceConfig, settings: BacktestSettings | None = None) -> None:
        self.config = config
        self.settings = settings or BacktestSettings()
        self.clock = SimulatedClock()
        self.store = MemoryStore()
        self.launcher = SimulatedLauncher(self.clock, self.settings.run_duration,
                                          promote=self.settings.recovery is not None)
        self.service = RetrainService(config, self.store, self.launcher, clock=self.clock)
        self.models: set[str] = set()
        self.events = 0
        self.points = 0
        self.fast_events = 0
        self.first_time: float | None = None
        self.last_time: float | None = None
        self._tracks: dict[str, dict[tuple[str, str], _Track]] = {}
        self._states: dict[str, ModelState] = {}
        self.champions: dict[str, set[str]] = {}
        """Every version that was a model's champion during the replay."""
        self.recoveries: dict[str, list[_Recovery]] = {}

    def run(
        self, events: Sequence[tuple[int, MetricEvent]],
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Replay `events` (line, event) in event-time order (file order among equal times)."""
        # (time, line) pairs are unique, so the events themselves are never compared
        ordered = sorted((event.window_end.timestamp(), line, event) for line, event in events)
        service_logger = logging.getLogger("retrain")
        level = service_logger.level
        service_logger.setLevel(logging.ERROR)  # simulated launches are not log news
        try:
            for index, (now, line, event) in enumerate(ordered):
                self._replay(now, line, event)
                if progress is not None and index % _PROGRESS_EVERY == 0:
                    progress(index)
        finally:
            service_logger.setLevel(level)
        if progress is not None:
            progress(len(ordered))
        if ordered:
            self.first_time, self.last_time = ordered[0][0], ordered[-1][0]

    def _replay(self, now: float, line: int, event: MetricEvent) -> None:
        model = self.config.models[event.model]
        self.clock.now = now
        self.models.add(model.name)
        self.events += 1
        self.points += len(event.metrics)
        if self.store.in_flight_runs(model.name):
            self._absorb(model, self.service.refresh_runs(model, now))
        recoveries = self.recoveries.get(model.name)
        if recoveries:
            event = self._recovered(event, now, recoveries)
        if self._fast(model, event, now, line):
            self.fast_events += 1
            return
        result = self.service.handle_event(model, event, f"line-{line}")
        if self._absorb(model, result.decisions):
            return  # a new champion: every track was read again from the store
        state = self._state(model.name)
        tracks = self._model_tracks(model)
        for metric in event.metrics:
            track = tracks.get((event.slice, metric))
            if track is None:
                self._track(model, event.slice, metric)  # read from the store, point included
                continue
            if track.last_end is not None and now <= track.last_end:
                self._rebuild(model.name, event.slice, metric, track, state)  # a correction
                continue
            track.last_end = now
            if (is_champion_version(state, event.model_version)
                    and (state.history_start is None or now > state.history_start)):
                track.points.append(Point(now, event.metrics[metric], event.examples))
                track.times.append(now)

    def _fast(self, model: ModelConfig, event: MetricEvent, now: float, line: int) -> bool:
        """Record the event and return True when, as the service would judge it, no policy
        fires on it; False (nothing recorded) when the service must handle it."""
        state = self._states.get(model.name) or self._state(model.name)
        version = event.model_version
        if version is not None and version != state.champion_version:
            return False  # a first champion to adopt, or a version the service ignores
        if state.history_start is not None and now <= state.history_start:
            return False
        tracks = self._tracks.get(model.name) or self._model_tracks(model)
        slice_, examples = event.slice, event.examples
        chosen: list[tuple[_Track, str, float]] = []
        for metric, value in event.metrics.items():
            track = tracks.get((slice_, metric)) or self._track(model, slice_, metric)
            last_end = track.last_end
            if last_end is not None and now <= last_end:
                return False  # a late point or a correction: the service re-evaluates
            chosen.append((track, metric, value))
        fired = False
        for track, _, value in chosen:
            track.points.append(Point(now, value, examples))
            track.times.append(now)
        try:
            for track, _, _ in chosen:
                if track.policies and _any_fires(track):
                    fired = True
                    break
        except (ArithmeticError, ValueError):  # the service logs it and judges without
            fired = True
        if fired:
            for track, _, _ in chosen:
                track.points.pop()
                track.times.pop()
            return False
        window_start = event.window_start.timestamp() if event.window_start else None
        message_id = f"line-{line}"
        for track, metric, value in chosen:
            self.store.record_point_row((model.name, slice_, metric, now, value, examples,
                                         version, message_id, now, window_start))
            track.last_end = now
        return True

    def _state(self, model: str) -> ModelState:
        state = self._states.get(model)
        if state is None:
            state = self._states[model] = self.store.model_state(model)
        return state

    def _model_tracks(self, model: ModelConfig) -> dict[tuple[str, str], _Track]:
        tracks = self._tracks.get(model.name)
        if tracks is None:
            tracks = self._tracks[model.name] = {}
        return tracks

    def _track(self, model: ModelConfig, slice_: str, metric: str) -> _Track:
        """A new track of the model's policies on (slice, metric), read from the store."""
        track = _Track([p for p in model.policies
                        if p.metric == metric and p.spec.slice == slice_])
        self._rebuild(model.name, slice_, metric, track, self._state(model.name))
        self._model_tracks(model)[(slice_, metric)] = track
        return track

    def _absorb(self, model: ModelConfig, decisions: Sequence[Decision]) -> bool:
        """Note promotions (to simulate recovery) and follow a new champion's history;
        True when the champion changed (every track of the model read again)."""
        recovery = self.settings.recovery or {}
        for decision in decisions:
            if decision.kind == "promoted" and decision.run_id in self.launcher.runs:
                run = self.launcher.runs[decision.run_id]
                values = {m: v for m, v in recovery.items() if m != TRIGGERING_METRIC}
                metric = next((p.metric for p in model.policies
                               if p.name == run.request.policy), None)
                if metric is not None and TRIGGERING_METRIC in recovery:
                    values.setdefault(metric, recovery[TRIGGERING_METRIC])
                if run.champion_version is not None:
                    replaced = run.request.parameters.get("champion_version") or None
                    self.recoveries.setdefault(model.name, []).append(
                        _Recovery(values, run.ends_at, run.champion_version, replaced))
        state = self.store.model_state(model.name)
        if state == self._states.get(model.name):
            return False
        self._states[model.name] = state
        if state.champion_version is not None:
            self.champions.setdefault(model.name, set()).add(state.champion_version)
        for (slice_, metric), track in self._model_tracks(model).items():
            self._rebuild(model.name, slice_, metric, track, state)
        return True

    def _rebuild(
        self, model: str, slice_: str, metric: str, track: _Track, state: ModelState
    ) -> None:
        """The track again from the store (after a new champion, or a corrected point)."""
        stored = self.store.points(model, slice_, metric, since=state.history_start)
        kept = [p for p in stored if is_champion_version(state, p.model_version)]
        track.points = [Point(p.window_end, p.value, p.examples) for p in kept]
        track.times = [p.window_end for p in kept]
        latest = self.store.points(model, slice_, metric, limit=1)
        track.last_end = latest[0].window_end if latest else None

    def _recovered(self, event: MetricEvent, now: float,
                   recoveries: Sequence[_Recovery]) -> MetricEvent:
        """The event as the simulated champion would have produced it."""
        metrics, version = dict(event.metrics), event.model_version
        for recovery in recoveries:  # in promotion order: v7 → simulated-1 → simulated-2 …
            if now < recovery.after:
                continue
            if version is not None and version != recovery.replaced:
                continue  # a challenger's evaluation, not the replaced champion's
            for metric, value in recovery.values.items():
                if metric in metrics:
                    metrics[metric] = value
            if version is not None:
                version = recovery.version
        if metrics == event.metrics and version == event.model_version:
            return event
        return replace(event, metrics=metrics, model_version=version)

    def run_spans(self, model: str) -> list[tuple[float, float]]:
        """(launched, ended) of the model's runs: the simulated end, or the service's end of
        the run when it came first (a timeout); +inf for a run that never ended."""
        spans = []
        for run in self.store.runs(model, limit=1_000_000):
            simulated = self.launcher.runs.get(run.run_id)
            end = run.ended_at if run.ended_at is not None else math.inf
            if simulated is not None:
                end = min(end, simulated.ends_at)
            spans.append((run.created_at, end))
        return sorted(spans)

    def champion_points(self, model: str, slice_: str, metric: str) -> list[StoredPoint]:
        """The replayed points of a metric of any version that was champion at some point
        (or of no stated version): a challenger's evaluations are left out."""
        champions = self.champions.get(model, set())
        return [p for p in self.store.points(model, slice_, metric)
                if p.model_version is None or p.model_version in champions]

    def is_simulated(self, model: str, metric: str, time_: float) -> bool:
        """Whether the value of `metric` at `time_` was replaced by the recovery value."""
        return any(metric in r.values and time_ >= r.after
                   for r in self.recoveries.get(model, ()))


def _any_fires(track: _Track) -> bool:
    """Whether any policy of `track` fires on its points as the service would read them."""
    points = track.points
    for policy in track.count_based:
        if policy.fires(points):
            return True
    for policy in track.lookback:  # the policy walks back its own window from the end
        if policy.fires(points):
            return True
    return False


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


# ----------------------------------------------------------------------------- sweeps
@dataclass(frozen=True)
class SweepSpec:
    """`POLICY[.RULE].FIELD=START:STOP:STEP`: the values (STOP included when on the grid);
    `rule` (absolute, baseline, trend, forecast) when the field was named with its rule."""

    policy: str
    field: str
    values: tuple[float, ...]
    text: str
    rule: str | None = None


_TOP_FIELDS = ("breaches_to_trigger", "evaluation_points", "min_examples")
_DURATION_FIELDS = ("lookback", "horizon")


_RULES = ("absolute", "baseline", "trend", "forecast")


def parse_sweep(text: str) -> SweepSpec:
    """Parse `POLICY[.RULE].FIELD=START:STOP:STEP`, e.g. `accuracy-floor.threshold=…` or
    `accuracy-floor.absolute.threshold=…` (durations allowed for lookback and horizon)."""
    target, sep, bounds = text.partition("=")
    policy, dot, name = target.rpartition(".")
    rule = None
    for kind in _RULES:
        if policy.endswith("." + kind) and name not in _TOP_FIELDS:
            policy, rule = policy[: -len(kind) - 1], kind
    parts = bounds.split(":")
    if not sep or not dot or not policy or not name or len(parts) != 3:
        raise BacktestInputError("--sweep", f"{text!r} is not POLICY.FIELD=START:STOP:STEP")
    try:
        if name in _DURATION_FIELDS:
            start, stop, step = (parse_duration(p).total_seconds() for p in parts)
        else:
            start, stop, step = (float(p) for p in parts)
    except ValueError as exc:
        raise BacktestInputError("--sweep", f"{text!r}: {exc}") from None
    if not (math.isfinite(start) and math.isfinite(stop) and math.isfinite(step)) or step <= 0:
        raise BacktestInputError("--sweep", f"{text!r}: STEP must be a positive number")
    if stop < start:
        raise BacktestInputError("--sweep", f"{text!r}: STOP is below START")
    count = int(math.floor((stop - start) / step + 1e-9)) + 1
    if count > 1000:
        raise BacktestInputError("--sweep", f"{text!r} gives {count} values; at most 1000")
    values = tuple(float(f"{start + i * step:.12g}") for i in range(count))
    return SweepSpec(policy, name, values, text, rule)


def with_value(spec: PolicySpec, field_name: str, value: float) -> PolicySpec:
    """`spec` with one field (top-level or of its rule) set to `value`, validated again."""
    data = spec.to_dict()
    rule = data[spec.kind]
    if field_name in _TOP_FIELDS:
        target: dict[str, Any] = data
    elif field_name in PolicySpec.__dataclass_fields__ or field_name not in _rule_fields(spec):
        raise BacktestInputError(
            "--sweep", f"policy {spec.name!r} ({spec.kind}) has no numeric field "
            f"{field_name!r}; sweepable: {', '.join(_TOP_FIELDS + _rule_fields(spec))}")
    else:
        target = rule
    current = getattr(spec, field_name) if target is data else getattr(
        getattr(spec, spec.kind), field_name)
    if isinstance(current, int) and not isinstance(current, bool):
        if value != int(value):
            raise BacktestInputError("--sweep", f"{spec.name}.{field_name} takes whole "
                                                f"numbers, not {value:g}")
        target[field_name] = int(value)
    else:
        target[field_name] = value
    from pydantic import ValidationError

    try:
        return PolicySpec.parse(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise BacktestInputError(
            "--sweep", f"{spec.name}.{field_name}={value:g}: {where}: {error['msg']}") from None


def _rule_fields(spec: PolicySpec) -> tuple[str, ...]:
    rule = getattr(spec, spec.kind)
    return tuple(name for name in rule.__dataclass_fields__
                 if isinstance(getattr(rule, name), (int, float, timedelta))
                 or name in ("max_relative_drop", "max_absolute_drop"))


def with_policy(config: ServiceConfig, model: str, spec: PolicySpec) -> ServiceConfig:
    """`config` with `model`'s policy of the same name built from `spec`."""
    current = config.models[model]
    policies = tuple(build_policy(spec) if p.name == spec.name else p for p in current.policies)
    models = dict(config.models)
    models[model] = replace(current, policies=policies)
    return replace(config, models=models)


@dataclass(frozen=True)
class Slo:
    """What "degraded" means for a sweep: the metric strictly worse than `threshold`."""

    model: str
    slice: str
    metric: str
    threshold: float
    higher_is_better: bool


@dataclass(frozen=True)
class SweepPoint:
    value: float
    runs: int
    triggers: int
    suppressed: int
    degraded: float
    before_a_run: float
    elapsed: float


@dataclass(frozen=True)
class SweepResult:
    spec: SweepSpec
    model: str
    slo: Slo
    points: tuple[SweepPoint, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "sweep": self.spec.text, "policy": self.spec.policy, "field": self.spec.field,
            "model": self.model, "slo": asdict(self.slo),
            "values": [asdict(point) for point in self.points],
        }


@dataclass(frozen=True)
class _SweepJob:
    """What a worker needs to run every value of every sweep (sent once per worker)."""

    config: ServiceConfig
    events: list[tuple[int, MetricEvent]]
    settings: BacktestSettings
    sweeps: list[_PreparedSweep]


_JOB: _SweepJob | None = None
_FITS = FitMemo(capacity=50_000)
"""A sweep worker's fits: every value of a sweep over a limit replays the same windows."""


def _init_worker(job: _SweepJob) -> None:
    global _JOB
    _JOB = job


def _run_value(task: tuple[int, int]) -> SweepPoint:
    assert _JOB is not None, "worker not initialised"
    sweep, index = task
    prepared = _JOB.sweeps[sweep]
    model, slo = prepared.model, prepared.slo
    started = time.perf_counter()
    config = with_policy(_JOB.config, model, prepared.specs[index])
    for policy in config.models[model].policies:
        if isinstance(policy, TrendPolicy | ForecastPolicy):
            policy.fit_memo = _FITS
    replay = Replay(config, _JOB.settings)
    replay.run(_JOB.events)
    runs = replay.store.runs(model, limit=1_000_000)
    series = replay.champion_points(model, slo.slice, slo.metric)
    degraded = time_worse_than(series, slo.threshold, slo.higher_is_better,
                               replay.run_spans(model), model, slo.slice, slo.metric)
    kinds: dict[str, int] = {}
    for decision in replay.store.all_decisions():  # the swept policy's own verdicts
        if decision.model == model and decision.policy == prepared.sweep.policy:
            kinds[decision.kind] = kinds.get(decision.kind, 0) + 1
    return SweepPoint(prepared.sweep.values[index], len(runs), kinds.get("fired", 0),
                      kinds.get("suppressed", 0), degraded.worse, degraded.before_a_run,
                      time.perf_counter() - started)


@dataclass(frozen=True)
class _PreparedSweep:
    """A sweep checked against the policy file: its model, a validated spec per value, and
    what counts as degraded."""

    sweep: SweepSpec
    model: str
    specs: list[PolicySpec]
    slo: Slo


def prepare_sweep(
    config: ServiceConfig, models: Sequence[str], sweep: SweepSpec, slo_value: float | None
) -> _PreparedSweep:
    """The model holding the swept policy, its validated spec per value, and the SLO."""
    owners = [m for m in models if any(p.name == sweep.policy for p in config.models[m].policies)]
    if not owners:
        raise BacktestInputError("--sweep", f"no policy {sweep.policy!r} in the replayed "
                                            f"models ({', '.join(models) or 'none'})")
    if len(owners) > 1:
        raise BacktestInputError("--sweep", f"policy {sweep.policy!r} is in models "
                                            f"{', '.join(owners)}: choose one with --model")
    model = config.models[owners[0]]
    policy = next(p for p in model.policies if p.name == sweep.policy)
    if sweep.rule is not None and sweep.rule != policy.spec.kind:
        raise BacktestInputError("--sweep", f"policy {sweep.policy!r} has a {policy.spec.kind} "
                                            f"rule, not {sweep.rule}")
    specs = [with_value(policy.spec, sweep.field, value) for value in sweep.values]
    threshold = slo_value
    if threshold is None:
        threshold = threshold_of(policy)
    if threshold is None:
        floors = [threshold_of(p) for p in model.policies
                  if p.spec.absolute is not None and p.metric == policy.metric
                  and p.spec.slice == policy.spec.slice]
        threshold = floors[0] if floors else None
    if threshold is None:
        raise BacktestInputError(
            "--slo", f"{sweep.policy} has no threshold and model {model.name} no absolute "
            f"policy on {policy.metric}: give the value that counts as degraded with --slo")
    slo = Slo(model.name, policy.spec.slice, policy.metric, threshold, policy.higher_is_better)
    return _PreparedSweep(sweep, model.name, specs, slo)


def run_sweeps(
    config: ServiceConfig, events: list[tuple[int, MetricEvent]], settings: BacktestSettings,
    sweeps: Sequence[SweepSpec], models: Sequence[str], slo_value: float | None = None,
    workers: int | None = None, progress: Callable[[int], None] | None = None,
) -> list[SweepResult]:
    """Run a backtest per value of every sweep, on `workers` processes (default: every core
    this process may use)."""
    prepared = [prepare_sweep(config, models, sweep, slo_value) for sweep in sweeps]
    job = _SweepJob(config, events, settings, prepared)
    tasks = [(s, i) for s, sweep in enumerate(prepared) for i in range(len(sweep.specs))]
    workers = min(workers or available_cores(), len(tasks))
    results: list[SweepPoint] = []
    if workers <= 1:
        _init_worker(job)
        try:
            for task in tasks:
                results.append(_run_value(task))
                if progress is not None:
                    progress(len(results))
        finally:
            _init_worker_reset()
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else None)
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                 initargs=(job,)) as pool:
            for point in pool.map(_run_value, tasks):
                results.append(point)
                if progress is not None:
                    progress(len(results))
    return [
        SweepResult(sweep.sweep, sweep.model, sweep.slo,
                    tuple(point for (s, _), point in zip(tasks, results, strict=True)
                          if s == index))
        for index, sweep in enumerate(prepared)
    ]


def _init_worker_reset() -> None:
    global _JOB
    _JOB = None


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def plot_sweeps(results: Sequence[SweepResult], path: str | Path) -> Path:
    """A PNG with one panel per sweep: value vs retraining runs and hours degraded before a
    run (staleness). matplotlib (Agg) is imported here only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(results), figsize=(6.4 * len(results), 4.2),
                                squeeze=False)
    for axis, result in zip(axes[0], results, strict=True):
        values = [_display_value(result.spec, p.value) for p in result.points]
        axis.plot(values, [p.runs for p in result.points], "o-", color="tab:blue",
                  label="retraining runs")
        axis.set_xlabel(f"{result.spec.policy}.{result.spec.field}"
                        + (" (hours)" if result.spec.field in _DURATION_FIELDS else ""))
        axis.set_ylabel("retraining runs", color="tab:blue")
        stale = axis.twinx()
        stale.plot(values, [p.before_a_run / 3600 for p in result.points], "s--",
                   color="tab:red", label="staleness")
        stale.set_ylabel(f"hours {result.slo.metric} worse than {result.slo.threshold:g} "
                         "before a run", color="tab:red")
        axis.set_title(f"{result.model}: sweep of {result.spec.policy}.{result.spec.field}")
        axis.grid(True, alpha=0.3)
    figure.tight_layout()
    target = Path(path)
    figure.savefig(target, dpi=100)
    plt.close(figure)
    return target


def _display_value(spec: SweepSpec, value: float) -> float:
    return value / 3600 if spec.field in _DURATION_FIELDS else value


# ----------------------------------------------------------------------------- output
def _when(ts: float | None) -> str:
    text = iso(ts) or "-"
    return text[:16].replace("T", " ") if ts is not None else text


def _span(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 0:
        return "-" + _span(-seconds)
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
        delay = (_span(trigger.detection_delay) if trigger.detection_delay is not None
                 else f"-{_span(trigger.lead_time)}" if trigger.lead_time is not None else "-")
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
        delay = f"{_span(p.median_delay)}/{_span(p.max_delay)}"
        worse = before = "-"
        if p.time_worse is not None:
            worse = f"{_span(p.time_worse.worse)} < {p.threshold:g}" if (
                p.time_worse.direction == "higher_is_better") else (
                f"{_span(p.time_worse.worse)} > {p.threshold:g}")
            before = _span(p.time_worse.before_a_run)
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


def format_sweeps(results: Sequence[SweepResult]) -> str:
    out = io.StringIO()
    for result in results:
        slo = result.slo
        side = "below" if slo.higher_is_better else "above"
        out.write(f"Sweep {result.spec.text} ({result.model}; degraded = {slo.metric} {side} "
                  f"{slo.threshold:g})\n")
        out.write(f"  {'value':>10} {'runs':>6} {'triggers':>9} {'suppressed':>11} "
                  f"{'degraded':>10} {'before a run (staleness)':>25}\n")
        for p in result.points:
            value = (format_duration(timedelta(seconds=p.value))
                     if result.spec.field in _DURATION_FIELDS else f"{p.value:g}")
            out.write(f"  {value:>10} {p.runs:>6} {p.triggers:>9} {p.suppressed:>11} "
                      f"{_span(p.degraded):>10} {_span(p.before_a_run):>25}\n")
        out.write("\n")
    return out.getvalue()


TRIGGER_COLUMNS = ("kind", "time", "model", "policy", "metric", "run_id",
                   "detection_delay_seconds", "lead_time_seconds", "simulated", "reason")
SWEEP_COLUMNS = ("sweep", "model", "policy", "field", "value", "runs", "triggers",
                 "suppressed", "degraded_seconds", "before_a_run_seconds", "slo_metric",
                 "slo_threshold")


def write_output(path: str | Path, report: BacktestReport | None,
                 sweeps: Sequence[SweepResult] = ()) -> Path:
    """Write the report (and sweeps) as JSON or CSV, chosen by the file's extension."""
    target = Path(path)
    kind: Literal["json", "csv"] = "csv" if target.suffix.lower() == ".csv" else "json"
    if kind == "json":
        data: dict[str, Any] = {}
        if report is not None:
            data["backtest"] = report.to_json()
        if sweeps:
            data["sweeps"] = [result.to_json() for result in sweeps]
        target.write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
        return target
    with open(target, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        if sweeps:
            writer.writerow(SWEEP_COLUMNS)
            for result in sweeps:
                for p in result.points:
                    writer.writerow([result.spec.text, result.model, result.spec.policy,
                                     result.spec.field, p.value, p.runs, p.triggers,
                                     p.suppressed, p.degraded, p.before_a_run,
                                     result.slo.metric, result.slo.threshold])
        elif report is not None:
            writer.writerow(TRIGGER_COLUMNS)
            rows: list[tuple[float, list[Any]]] = [
                (t.time, [t.kind, iso(t.time), t.model, t.policy, t.metric, t.run_id or "",
                          t.detection_delay, t.lead_time, t.simulated, t.reason])
                for t in report.triggers]
            rows += [(s.time, ["suppressed", iso(s.time), s.model, s.policy, "", "", "", "",
                               "", s.reason]) for s in report.suppressed]
            for _, row in sorted(rows, key=lambda item: item[0]):
                writer.writerow(["" if v is None else v for v in row])
    return target


class ProgressBar:
    """A one-line progress bar on stderr, drawn only when it is a terminal or when asked."""

    def __init__(self, total: int, label: str, enabled: bool | None = None) -> None:
        self.total = total
        self.label = label
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._drawn = 0.0

    def __call__(self, done: int) -> None:
        if not self.enabled or not self.total:
            return
        now = time.monotonic()
        if done < self.total and now - self._drawn < 0.1:
            return
        self._drawn = now
        width = 30
        filled = min(width, int(width * done / self.total))
        sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] "
                         f"{done:,}/{self.total:,}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.total:
            sys.stderr.write("\n")
            sys.stderr.flush()


# ----------------------------------------------------------------------------- command
def run_command(args: argparse.Namespace) -> int:
    """`retrain-trigger backtest`: 0 when done, 2 when an input or option cannot be used."""
    from triggers.config import load_policy_file

    try:
        config = load_policy_file(args.policies)
        if args.model is not None and args.model not in config.models:
            raise BacktestInputError("--model", f"model {args.model!r} is not configured in "
                                                f"{args.policies}")
        run_duration = parse_duration(args.run_duration).total_seconds()
        if run_duration <= 0:
            raise BacktestInputError("--run-duration", "must be longer than 0s")
        sweeps = [parse_sweep(text) for text in args.sweep or ()]
        _check_writable("--output", args.output)
        if sweeps:
            _check_writable("--plot", str(args.plot or _default_plot(args.output)))
            try:
                import matplotlib  # noqa: F401 - checked before hours of sweeping
            except ImportError:
                raise BacktestInputError(
                    "--sweep", "the sweep's plot needs matplotlib: pip install -r "
                    "requirements-pipeline.txt") from None
        elif args.plot is not None or args.slo is not None:
            raise BacktestInputError("--plot" if args.plot is not None else "--slo",
                                     "applies to --sweep only")
        recovery = parse_recovery(args.assume_recovery) if args.assume_recovery else None
        history = read_history(args.history, config, args.model)
        if history.errors and args.strict:
            raise BacktestInputError(args.history, f"{len(history.errors)} malformed line(s) "
                                                   "(--strict)", history.errors)
        if not history.events:
            raise BacktestInputError(args.history, "no event of a configured model to replay")
    except BacktestInputError as exc:
        print(f"retrain-trigger backtest: {exc}", file=sys.stderr)
        for row in exc.rows[:50]:
            print(f"  {row}", file=sys.stderr)
        return 2
    except (RetrainError, ValueError) as exc:
        print(f"retrain-trigger backtest: {exc}", file=sys.stderr)
        return 2
    for row in history.errors[:50]:
        print(f"skipped {row}", file=sys.stderr)
    if len(history.errors) > 50:
        print(f"skipped {len(history.errors) - 50} more malformed line(s)", file=sys.stderr)
    settings = BacktestSettings(run_duration, recovery)
    models = sorted({event.model for _, event in history.events})
    progress_on = True if args.progress else None
    if sweeps:
        try:
            for sweep in sweeps:
                prepare_sweep(config, models, sweep, args.slo)
        except BacktestInputError as exc:
            print(f"retrain-trigger backtest: {exc}", file=sys.stderr)
            return 2
        total = sum(len(s.values) for s in sweeps)
        bar = ProgressBar(total, "sweep values", progress_on)
        results = run_sweeps(config, history.events, settings, sweeps, models, args.slo,
                             progress=bar)
        bar.close()
        sys.stdout.write(format_sweeps(results))
        plot = plot_sweeps(results, args.plot or _default_plot(args.output))
        print(f"plot: {plot}")
        if args.output:
            print(f"written: {write_output(args.output, None, results)}")
        return 0
    bar = ProgressBar(len(history.events), "replaying events", progress_on)
    _, report = backtest(config, history.events, settings, policy_file=args.policies,
                         history=args.history, skipped=history.errors, progress=bar)
    bar.close()
    sys.stdout.write(format_report(report))
    if args.output:
        print(f"written: {write_output(args.output, report)}")
    return 0


def _check_writable(option: str, path: str | None) -> None:
    """Refuse, before any work, an output whose directory does not exist."""
    if path is not None and not Path(path).resolve().parent.is_dir():
        raise BacktestInputError(option, f"{path}: its directory does not exist")


def _default_plot(output: str | None) -> Path:
    if output:
        return Path(output).with_suffix(".png")
    return Path("backtest-sweep.png")

