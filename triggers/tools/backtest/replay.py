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
from thresholds.base import Policy
from triggers.config import ModelConfig, ServiceConfig
from triggers.events import MetricEvent
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


class Replay:
    """One backtest: a `RetrainService` on a `MemoryStore`, a simulated clock and launcher.

    Every event goes to `RetrainService.handle_event` (the live path after parsing) except
    those on which no policy fires: for these the replay records the points and asks each
    policy itself (`Policy.fires`) on the window the service would judge, read through the
    service's own `ChampionSeries` (its version, its history start, each policy's window).
    Any fired verdict goes to the service, which decides, claims, guards, launches and
    records. Runs go to a `SimulatedLauncher`; the service learns of their end as of a real
    run's, asking the launcher at the next event.
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
        self._policies: dict[tuple[str, str, str], tuple[Policy, ...]] = {}
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
        self._absorb(model, result.decisions)

    def _fast(self, model: ModelConfig, event: MetricEvent, now: float, line: int) -> bool:
        """Record the event and return True when, as the service would judge it, no policy
        fires on it; False when the service must handle it (it records the points again:
        the same key replaces them with themselves)."""
        state = self._states.get(model.name) or self._state(model.name)
        version = event.model_version
        if version is not None and version != state.champion_version:
            return False  # a first champion to adopt, or a version the service ignores
        if state.history_start is not None and now <= state.history_start:
            return False
        store, slice_, name = self.store, event.slice, model.name
        metrics = event.metrics  # all of them, as the backtest always kept them
        for metric in metrics:
            latest = store.points(name, slice_, metric, limit=1)
            if latest and now <= latest[0].window_end:
                return False  # a late point or a correction: the service re-evaluates
        message_id = f"line-{line}"
        window_start = event.window_start.timestamp() if event.window_start else None
        series = self.service.series
        series.record([StoredPoint(name, slice_, metric, now, float(value), event.examples,
                                   version, message_id, now, window_start)
                       for metric, value in metrics.items()])
        try:
            for metric in metrics:
                for policy in self._policies_on(model, slice_, metric):
                    window, _ = series.window(name, policy, state, now)
                    if policy.fires(series.as_points(name, policy, window,
                                                     state.champion_version)):
                        return False
        except (ArithmeticError, ValueError):  # the service logs it and judges without
            return False
        return True

    def _policies_on(self, model: ModelConfig, slice_: str, metric: str) -> tuple[Policy, ...]:
        key = (model.name, slice_, metric)
        policies = self._policies.get(key)
        if policies is None:
            policies = self._policies[key] = tuple(
                p for p in model.policies if p.metric == metric and p.spec.slice == slice_)
        return policies

    def _state(self, model: str) -> ModelState:
        state = self._states.get(model)
        if state is None:
            state = self._states[model] = self.store.model_state(model)
        return state

    def _absorb(self, model: ModelConfig, decisions: Sequence[Decision]) -> bool:
        """Note promotions (to simulate recovery) and follow the model's state (a new
        champion's history); True when the state changed."""
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
        return True

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

