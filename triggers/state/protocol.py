"""The state store contract: points, processed messages, decisions, runs, champions.

Records are plain dataclasses; times are seconds since the epoch (floats, UTC).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

from thresholds.records import record

if TYPE_CHECKING:
    from triggers.guards import Guards


RunState = Literal[
    "launching", "launched", "running",  # in flight
    "completed", "failed", "timed_out", "promoted", "rejected",  # ended
]
"""Where a run is: claimed and launching, launched, running, or how it ended."""
DecisionKind = Literal[
    "fired", "suppressed", "ok", "insufficient_data", "ignored", "rejected", "champion",
    "promoted", "rejected_challenger", "failed", "completed", "timed_out", "launch_failed",
    "rollback", "incident",
]
"""What a decision of the audit trail records (see `Decision`)."""
IN_FLIGHT: frozenset[str] = frozenset({"launching", "launched", "running"})
"""Run states during which the model's policies are disarmed."""

def iso(ts: float | None) -> str | None:
    """RFC 3339 text (UTC, Z) of an epoch time."""
    if ts is None:
        return None
    text = datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds")
    return text.replace(".000000", "").replace("+00:00", "Z")


@record
class StoredPoint:
    """One metric value, keyed by (model, slice, metric, window_end)."""

    model: str
    slice: str
    metric: str
    window_end: float
    value: float
    examples: int | None = None
    model_version: str | None = None
    message_id: str | None = None
    recorded_at: float = 0.0
    window_start: float | None = None

    @property
    def key(self) -> str:
        return f"{self.model}|{self.slice}|{self.metric}|{iso(self.window_end)}"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["window_end"] = iso(self.window_end)
        data["window_start"] = iso(self.window_start)
        data["recorded_at"] = iso(self.recorded_at)
        return data


@record
class Decision:
    """One entry of the audit trail: what was decided, about what, and why.

    `kind`: fired, suppressed, ok, insufficient_data, ignored, rejected, champion, promoted,
    rejected_challenger, failed, completed, timed_out, launch_failed or rollback.
    """

    decision_id: str
    model: str
    kind: DecisionKind
    at: float
    reason: str
    policy: str | None = None
    event_time: float | None = None
    statistic: float | None = None
    limit: float | None = None
    run_id: str | None = None
    trigger_id: str | None = None
    message_id: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["at"] = iso(self.at)
        data["event_time"] = iso(self.event_time)
        data["details"] = dict(self.details)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Decision:
        """The decision `to_json` wrote (as the outbox keeps it)."""
        values = dict(data)
        for key in ("at", "event_time"):
            if values.get(key) is not None:
                values[key] = datetime.fromisoformat(values[key]).timestamp()
        return cls(**values)


@record
class RejectedEvent:
    """A message that can never be processed, kept with its reason."""

    message_id: str
    at: float
    source: str
    field: str
    reason: str
    payload: str
    model: str | None = None


@record
class RunRecord:
    """A pipeline run from its claim to its end."""

    run_id: str
    model: str
    policy: str
    trigger_id: str
    state: RunState
    reason: str
    created_at: float
    request: Mapping[str, Any]
    forced: bool = False
    claimed_by: str = ""
    launched_at: float | None = None
    ended_at: float | None = None
    checked_at: float | None = None
    resource_name: str | None = None
    outcome: Mapping[str, Any] | None = None
    message: str = ""

    @property
    def in_flight(self) -> bool:
        return self.state in IN_FLIGHT

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("created_at", "launched_at", "ended_at", "checked_at"):
            data[key] = iso(data[key])
        data["request"] = dict(self.request)
        data["outcome"] = dict(self.outcome) if self.outcome is not None else None
        return data


@record
class RunUpdate:
    """What `update_run` changes in a run; a field left None stays as it is."""

    state: RunState | None = None
    launched_at: float | None = None
    ended_at: float | None = None
    checked_at: float | None = None
    resource_name: str | None = None
    outcome: Mapping[str, Any] | None = None
    message: str | None = None

    def changes(self) -> dict[str, Any]:
        """The fields this update sets, by name."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@record
class ModelState:
    """The current champion and where its history window starts (event time)."""

    model: str
    champion_version: str | None = None
    history_start: float | None = None
    updated_at: float | None = None


@record
class IncidentRecord:
    """A Cloud Monitoring incident that holds a model's retraining back while it is open
    (its `inhibit_when`). Once closed it stays closed: a late "open" changes nothing."""

    model: str
    incident_id: str
    open: bool
    policy_name: str = ""
    condition_name: str = ""
    summary: str = ""
    at: float = 0.0


OUTBOX_KINDS: frozenset[str] = frozenset(
    {"fired", "launch_failed", "promoted", "rejected_challenger", "failed", "timed_out",
     "rollback"})
"""Decision kinds published to RETRAIN_DECISIONS_TOPIC (and a suppression by an incident)."""


def is_told(decision: Decision) -> bool:
    """Whether `decision` goes to the decisions outbox (written with the decision itself)."""
    return decision.kind in OUTBOX_KINDS or (
        decision.kind == "suppressed" and "inhibited_by" in decision.details)


class OutboxSwitch:
    """Whether a store puts told decisions in its outbox (`on`: only when a decisions topic
    drains it; off, nothing would ever read them), and how many each thread put there since
    it last asked: the drain after a delivery reads the outbox when its own work wrote to it."""

    def __init__(self, on: bool = False) -> None:
        self.on = on
        self._local = threading.local()

    def told(self, decisions: Sequence[Decision]) -> list[Decision]:
        """The decisions of `decisions` to write to the outbox (none while off), counted."""
        if not self.on:
            return []
        told = [d for d in decisions if is_told(d)]
        if told:
            self._local.count = getattr(self._local, "count", 0) + len(told)
        return told

    def take_written(self) -> int:
        """How many told decisions this thread wrote since it last asked (then 0)."""
        count: int = getattr(self._local, "count", 0)
        self._local.count = 0
        return count


ClaimStatus = Literal["claimed", "resume", "exists", "blocked", "duplicate"]


@record
class Claim:
    """The answer of `claim_run`: a new claim, a claim to resume, a finished one, or a block."""

    status: ClaimStatus
    run: RunRecord
    reason: str = ""
    inhibited_by: str | None = None
    """The open incident that blocked it (a block by `inhibit_when`), if any."""


class StateStore(Protocol):
    """Where the service keeps everything. Implementations: SQLite, Firestore, memory (SQLite).

    `claim_run` is the one operation that must be atomic across processes: it checks the
    guards against the model's runs and writes the new run in one transaction.
    Unavailable backends raise `triggers.errors.TransientError`.
    """

    outbox_switch: OutboxSwitch
    """Off (the default): told decisions are not kept for publishing (no decisions topic)."""

    def atomic(self) -> AbstractContextManager[object]:
        """Group the calls made inside into one transaction where the backend can (SQLite:
        one write lock, so concurrent deliveries see each other's points). Never wrap a
        network call in it. A backend that cannot may make it a no-op: `claim_run` is atomic
        on its own either way."""
        ...

    def is_processed(self, message_id: str) -> bool: ...

    def finish_message(self, message_id: str, at: float, decisions: Sequence[Decision],
                       ignored_metrics: int = 0) -> None:
        """Record a message's decisions and mark it processed, in one transaction;
        `ignored_metrics` (kept on the processed marker) counts the metric values of the
        event that no policy watches, which were not stored as points."""
        ...

    def ignored_metrics(self, message_id: str) -> int | None:
        """The count `finish_message` kept for a processed message (None: not processed)."""
        ...

    def record_points(self, points: Sequence[StoredPoint]) -> None: ...

    def points(
        self,
        model: str,
        slice_: str,
        metric: str,
        *,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = None,
        oldest: bool = False,
    ) -> list[StoredPoint]:
        """Points with since < window_end <= until, oldest first; with `limit`, the latest
        `limit` of them (the earliest with `oldest=True`)."""
        ...

    def latest_points(self, model: str, limit: int) -> list[StoredPoint]: ...

    def record_rejected(self, event: RejectedEvent) -> None:
        """Keep a rejected event (the first record of a message id stands). Rejected events
        older than the store's `retention` (400 days by default) are deleted, a bounded
        number per call (SQLite, memory) or by Firestore's TTL policy."""
        ...

    def rejected_events(self, limit: int = 100) -> list[RejectedEvent]: ...

    def record_decisions(self, decisions: Sequence[Decision]) -> None: ...

    def decisions(self, model: str | None = None, limit: int = 50) -> list[Decision]: ...

    def model_state(self, model: str) -> ModelState: ...

    def set_model_state(self, state: ModelState) -> None: ...

    def claim_run(self, run: RunRecord, guards: Guards, now: float, force: bool) -> Claim: ...

    def update_run(
        self, run_id: str, from_states: frozenset[str], update: RunUpdate
    ) -> RunRecord | None: ...

    def get_run(self, run_id: str) -> RunRecord | None: ...

    def runs(self, model: str | None = None, limit: int = 50) -> list[RunRecord]: ...

    def in_flight_runs(self, model: str | None = None) -> list[RunRecord]: ...

    def outbox(self, limit: int = 100) -> list[Decision]:
        """Decisions waiting to be published, oldest first. While `outbox_switch` is on,
        `record_decisions` and `finish_message` put every decision `is_told` there in the
        same write as the decision; the same decision id written again is one entry."""
        ...

    def clear_outbox(self, decision_ids: Sequence[str]) -> None:
        """Remove published decisions from the outbox (unknown ids are ignored)."""
        ...

    def record_incident(self, incident: IncidentRecord) -> None:
        """Upsert by (model, incident_id); a closed record is never reopened."""
        ...

    def open_incidents(self, model: str) -> list[IncidentRecord]:
        """The model's inhibiting incidents that are open, oldest first."""
        ...


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
