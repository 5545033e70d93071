"""What the page shows, gathered from the service for one model and a bounded period.

Every read is bounded: points of the period (at most `MAX_WINDOW` long), the latest
`MAX_DECISIONS` decisions and `MAX_RUNS` runs, each policy's own window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from thresholds.spec import INCIDENT_METRIC
from triggers.cloud.page.next_fire import Outlook, outlook
from triggers.config import ModelConfig
from triggers.errors import RequestError
from triggers.service import RetrainService
from triggers.state.protocol import Decision, RunRecord, StoredPoint

MAX_WINDOW = timedelta(days=400)
"""The longest period one page shows (a year of hourly points fits)."""
DEFAULT_WINDOW = timedelta(days=30)
MAX_DECISIONS = 5000
"""The latest decisions read for a page; of these, the period's marked ones are drawn."""
MAX_RUNS = 500
MARKED_KINDS = frozenset({"fired", "suppressed", "launch_failed", "promoted",
                          "rejected_challenger", "failed", "timed_out", "completed", "rollback"})
"""Decision kinds the page draws (verdicts that fired nothing are not marks)."""


@dataclass(frozen=True)
class Period:
    """Event times start < t <= end (epoch seconds)."""

    start: float
    end: float


@dataclass(frozen=True)
class PolicyView:
    name: str
    kind: str
    slice: str
    metric: str
    rule: str
    outlook: Outlook | None


@dataclass(frozen=True)
class Mark:
    """One decision drawn on the chart at event time `time` (see `place_decisions`)."""

    decision: Decision
    time: float


@dataclass(frozen=True)
class ModelPage:
    model: str
    champion_version: str | None
    history_start: float | None
    period: Period
    series: dict[tuple[str, str], list[StoredPoint]]
    policies: list[PolicyView]
    marks: list[Mark]
    runs: list[RunRecord]
    guards: dict[str, str]


@dataclass(frozen=True)
class ModelSummary:
    model: str
    champion_version: str | None
    run_in_flight: RunRecord | None
    guards: dict[str, str]
    last_decision: Decision | None

    def to_json(self) -> dict[str, Any]:
        """What `GET /` answers a client that does not ask for HTML, per model."""
        return {"model": self.model, "champion_version": self.champion_version,
                "run_in_flight": self.run_in_flight.to_json() if self.run_in_flight else None,
                "guards": dict(self.guards),
                "last_decision": self.last_decision.to_json() if self.last_decision else None}


def parse_time(text: str, field: str) -> float:
    """An RFC 3339 date or date-time (UTC when it names no offset) as epoch seconds."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise RequestError(400, f"{field} must be a date or date-time such as 2026-11-01 or "
                           "2026-11-01T12:00:00Z", field) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def choose_period(start: str | None, end: str | None, latest: float | None) -> Period:
    """The period asked for (`from`, `to`), by default the `DEFAULT_WINDOW` up to the latest
    point; never longer than `MAX_WINDOW`."""
    if end:  # a date alone means to the end of that day
        stop = parse_time(end, "to") + (86400.0 if len(end.strip()) == 10 else 0.0)
    else:
        stop = latest if latest is not None else 0.0
    if start:
        begin = parse_time(start, "from")
    else:
        begin = stop - DEFAULT_WINDOW.total_seconds()
    if begin >= stop:
        raise RequestError(400, "from must be before to", "from")
    if stop - begin > MAX_WINDOW.total_seconds():
        raise RequestError(400, f"the period is longer than the page shows at once "
                           f"({MAX_WINDOW.days} days): narrow from/to", "from")
    return Period(begin, stop)


def guard_summary(model: ModelConfig, runs: Sequence[RunRecord], now: float) -> dict[str, str]:
    """Cooldown and budget left now, as words."""
    from triggers.guards import format_seconds

    guards = model.guards
    started = sorted((r.created_at for r in runs), reverse=True)
    cooldown = guards.cooldown.total_seconds()
    left = cooldown - (now - started[0]) if started else 0.0
    window = guards.max_runs_per.total_seconds()
    recent = sum(1 for t in started if now - t < window)
    return {
        "cooldown": f"{format_seconds(left)} left" if left > 0 else "passed",
        "budget": f"{max(0, guards.max_runs - recent)} of {guards.max_runs} runs left "
                  f"(per {format_seconds(window)})",
    }


def _model(service: RetrainService, name: str) -> ModelConfig:
    model = service.config.models.get(name)
    if model is None:
        raise RequestError(404, f"model {name!r} is not configured", "model")
    return model


def gather_models(service: RetrainService) -> list[ModelSummary]:
    """The models list: champion, run in flight, guards left, last decision."""
    now = service.clock()
    summaries = []
    for name in sorted(service.config.models):
        model = service.config.models[name]
        state = service.store.model_state(name)
        in_flight = service.store.in_flight_runs(name)
        last = service.store.decisions(name, limit=1)
        summaries.append(ModelSummary(
            name, state.champion_version, in_flight[0] if in_flight else None,
            guard_summary(model, service.store.runs(name, limit=MAX_RUNS), now),
            last[0] if last else None))
    return summaries


def gather_model(service: RetrainService, name: str, start: str | None = None,
                 end: str | None = None) -> ModelPage:
    """Everything the model page draws for the period `start`..`end` (texts as in the URL)."""
    model = _model(service, name)
    store = service.store
    state = store.model_state(name)
    latest = store.latest_points(name, 1)
    period = choose_period(start, end, latest[0].window_end if latest else service.clock())
    series: dict[tuple[str, str], list[StoredPoint]] = {}
    for slice_, metric in sorted(model.watched):
        if metric == INCIDENT_METRIC:
            continue
        series[(slice_, metric)] = store.points(name, slice_, metric, since=period.start,
                                                until=period.end)
    policies = []
    for policy in model.policies:
        spec = policy.spec
        view: Outlook | None = None
        if spec.kind != "alert":
            window, _ = service.series.window(name, policy, state)
            view = outlook(policy, service.series.as_points(name, policy, window,
                                                            state.champion_version),
                           state.history_start)
        policies.append(PolicyView(policy.name, spec.kind, spec.slice, spec.metric,
                                   describe_rule(spec.to_dict()), view))
    runs = store.runs(name, limit=MAX_RUNS)
    decisions = [d for d in store.decisions(name, limit=MAX_DECISIONS) if d.kind in MARKED_KINDS]
    marks = [m for m in place_decisions(decisions, series)
             if period.start < m.time <= period.end]
    return ModelPage(name, state.champion_version, state.history_start, period, series,
                     policies, marks, runs, guard_summary(model, runs, service.clock()))


def place_decisions(decisions: Sequence[Decision],
                    series: dict[tuple[str, str], list[StoredPoint]]) -> list[Mark]:
    """Where on the event-time axis each decision goes: its point's time when it has one; a
    run's end at its trigger's point, moved to the first point of the version it promoted
    when that is later; otherwise when it was decided."""
    trigger_time = {d.run_id: d.event_time for d in decisions
                    if d.kind == "fired" and d.run_id and d.event_time is not None}
    first_seen: dict[str, float] = {}
    for points in series.values():
        for p in points:
            if p.model_version is not None:
                seen = first_seen.get(p.model_version)
                if seen is None or p.window_end < seen:
                    first_seen[p.model_version] = p.window_end
    marks = []
    for d in decisions:
        time = d.event_time
        if time is None and d.run_id in trigger_time:
            time = trigger_time[d.run_id]
            version = d.details.get("champion_version") if d.kind == "promoted" else None
            if isinstance(version, str) and time is not None:
                time = max(time, first_seen.get(version, time))
        marks.append(Mark(d, d.at if time is None else time))
    marks.sort(key=lambda m: m.time)
    return marks


def describe_rule(spec: dict[str, object]) -> str:
    """A policy's rule in one line, as the policy file writes it."""
    skip = {"name", "metric", "direction", "slice"}
    parts = []
    for key, value in spec.items():
        if key in skip or value in (None, 0) or (key in ("breaches_to_trigger",
                                                          "evaluation_points") and value == 1):
            continue
        if isinstance(value, dict):
            inner = ", ".join(f"{k}: {v}" for k, v in value.items())
            parts.append(f"{key}: {{{inner}}}")
        else:
            parts.append(f"{key}: {value}")
    return f"{spec.get('direction')}; " + "; ".join(parts)
