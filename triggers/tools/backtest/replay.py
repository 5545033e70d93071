"""A metric history replayed through the service's own decision code (policies, M-of-N, guards,
run lifecycle) on an in-memory store, a simulated clock and a simulated launcher.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta

from pipeline_client.launching.protocol import LaunchRequest, LaunchResult, RunStatus
from thresholds.base import Point, Policy
from triggers.config import ModelConfig, ServiceConfig
from triggers.events import MetricEvent
from triggers.series import earlier_champion_heads, is_champion_version
from triggers.service import RetrainService
from triggers.state.memory import MemoryStore
from triggers.state.protocol import Decision, ModelState, StoredPoint
from triggers.tools.backtest.io import BacktestInputError

DEFAULT_RUN_DURATION = timedelta(hours=6)
FIRED_KINDS = frozenset({"fired", "suppressed", "launch_failed"})
"""Decision kinds of a verdict that fired (whether or not a run followed)."""


_PROGRESS_EVERY = 1024


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

    __slots__ = ("policies", "count_based", "lookback", "points", "times", "last_end",
                 "earlier")

    def __init__(self, policies: Sequence[Policy]) -> None:
        self.count_based = tuple(p for p in policies if p.lookback is None)
        self.lookback = tuple(p for p in policies if p.lookback is not None)
        self.policies = tuple(policies)
        self.points: list[Point] = []
        self.times: list[float] = []
        self.last_end: float | None = None
        self.earlier: dict[Policy, list[Point]] = {}
        """Per `cost` policy, the earlier champions' first points it reads before the
        champion's (`earlier_champion_heads`, as the service's series reads them)."""


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
        track.earlier = {}
        start = state.history_start
        for policy in track.lookback:
            rule = policy.spec.cost
            if rule is None or start is None:
                continue

            def read(limit: int, start: float = start) -> list[StoredPoint]:
                return self.store.points(model, slice_, metric, until=start, limit=limit)

            def usable(p: StoredPoint, least: int = policy.spec.min_examples) -> bool:
                return p.examples is None or p.examples >= least

            heads = earlier_champion_heads(read, state.champion_version, rule.reference_points,
                                           rule.champions - 1, usable)
            if heads:
                track.earlier[policy] = [Point(p.window_end, p.value, p.examples,
                                               p.model_version) for p in heads]

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
    earlier = track.earlier
    for policy in track.lookback:  # the policy walks back its own window from the end
        if policy.fires(earlier[policy] + points if policy in earlier else points):
            return True
    return False

