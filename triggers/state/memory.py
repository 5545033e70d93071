"""A pure-Python, in-process state store: sorted lists and dicts behind one re-entrant lock.

For backtests and tests: nothing is persisted, nothing is shared across processes.
"""

from __future__ import annotations

import threading
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta

from thresholds.records import fields
from triggers.guards import Guards, check_guards, guard_window
from triggers.state.protocol import (
    IN_FLIGHT,
    Claim,
    Decision,
    IncidentRecord,
    ModelState,
    OutboxSwitch,
    RejectedEvent,
    RunRecord,
    RunUpdate,
    StoredPoint,
)

DEFAULT_RETENTION = timedelta(days=400)
"""How long rejected events are kept by default (as SQLite and Firestore keep them)."""
EXPIRE_BATCH = 100
"""Most expired rejected events one write drops (bounded work per event)."""

_RUN_FIELDS = frozenset(f.name for f in fields(RunRecord)) - {"run_id"}

PointRow = tuple[str, str, str, float, float, "int | None", "str | None", "str | None", float,
                 "float | None"]
"""A point as a tuple of `StoredPoint`'s fields, in order (how the store keeps points)."""


class _Series:
    """One (model, slice, metric): event times sorted, and in the same order each point as a
    row, replaced by its `StoredPoint` once read (built once, shared: it is immutable); and
    its mark, the store's write count at its last write."""

    __slots__ = ("times", "rows", "mark")

    def __init__(self) -> None:
        self.times: list[float] = []
        self.rows: list[PointRow | StoredPoint] = []
        self.mark = 0

    def read(self, low: int, high: int) -> list[StoredPoint]:
        rows = self.rows
        points = []
        for index in range(low, high):
            row = rows[index]
            if not isinstance(row, StoredPoint):
                row = rows[index] = StoredPoint(*row)
            points.append(row)
        return points

    def put(self, row: PointRow) -> None:
        times, t = self.times, row[3]
        if not times or t > times[-1]:  # in order: the common case
            times.append(t)
            self.rows.append(row)
            return
        index = bisect_right(times, t)
        if index and times[index - 1] == t:  # the same key again replaces the value
            self.rows[index - 1] = row
            return
        times.insert(index, t)
        self.rows.insert(index, row)


class MemoryStore:
    """The `StateStore` contract in memory. Every method is atomic; `atomic()` groups calls."""

    def __init__(self, retention: timedelta | None = DEFAULT_RETENTION) -> None:
        self.retention = retention
        """How long rejected events are kept (None: forever)."""
        self._lock = threading.RLock()
        self._series: dict[tuple[str, str, str], _Series] = {}
        self._series_of_model: dict[str, list[_Series]] = {}
        self._writes = 0  # points written so far: a series' mark is the count at its last
        self._processed: dict[str, float] = {}
        self._ignored: dict[str, int] = {}
        self._rejected: dict[str, RejectedEvent] = {}
        # decision_id -> (sequence, decision): a replaced decision moves to the end, as a
        # REPLACE does in SQLite (a new rowid), so ties on `at` order by last write
        self._decisions: dict[str, tuple[int, Decision]] = {}
        self._sequence = 0
        self._models: dict[str, ModelState] = {}
        self._runs: dict[str, RunRecord] = {}
        self._runs_of_model: dict[str, list[str]] = {}
        self._in_flight: dict[str, None] = {}  # run ids, in claim order
        self._outbox: dict[str, Decision] = {}  # decision id -> decision, in write order
        self.outbox_switch = OutboxSwitch()
        self._incidents: dict[tuple[str, str], IncidentRecord] = {}

    def atomic(self) -> threading.RLock:
        return self._lock

    def close(self) -> None:
        """Nothing to release; here so callers can treat every store alike."""

    # processed messages
    def is_processed(self, message_id: str) -> bool:
        return message_id in self._processed

    def finish_message(self, message_id: str, at: float, decisions: Sequence[Decision],
                       ignored_metrics: int = 0) -> None:
        with self._lock:
            self.record_decisions(decisions)
            if message_id not in self._processed:
                self._processed[message_id] = at
                if ignored_metrics:
                    self._ignored[message_id] = ignored_metrics

    def ignored_metrics(self, message_id: str) -> int | None:
        if message_id not in self._processed:
            return None
        return self._ignored.get(message_id, 0)

    # points
    def record_points(self, points: Sequence[StoredPoint]) -> None:
        self.record_points_marked(points)

    def record_points_marked(
        self, points: Sequence[StoredPoint]
    ) -> dict[tuple[str, str, str], int]:
        """`record_points`, answering the mark each written series has now."""
        with self._lock:
            for p in points:
                self.record_point_row((p.model, p.slice, p.metric, p.window_end, p.value,
                                       p.examples, p.model_version, p.message_id,
                                       p.recorded_at, p.window_start))
            return {key: self._series[key].mark
                    for key in dict.fromkeys((p.model, p.slice, p.metric) for p in points)}

    def record_point_row(self, row: PointRow) -> None:
        """`record_points` for one point given as a row: no `StoredPoint` is built until the
        point is read (the backtest writes every point; the service reads a few)."""
        with self._lock:
            key = (row[0], row[1], row[2])
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = _Series()
                self._series_of_model.setdefault(row[0], []).append(series)
            series.put(row)
            self._writes += 1
            series.mark = self._writes

    def series_mark(self, model: str, slice_: str, metric: str) -> int | None:
        """A mark that every write of a point of the series replaces (`SeriesMarks`: a
        `ChampionSeries` on this store keeps what it read); None before the first write."""
        series = self._series.get((model, slice_, metric))
        return None if series is None else series.mark

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
        series = self._series.get((model, slice_, metric))
        if series is None:
            return []
        times = series.times
        low = 0 if since is None else bisect_right(times, since)
        high = len(times) if until is None else bisect_right(times, until)
        if limit is not None:
            if oldest:
                high = min(high, low + limit)
            else:
                low = max(low, high - limit)
        with self._lock:
            return series.read(low, high)

    def series_keys(self) -> list[tuple[str, str, str]]:
        """Every (model, slice, metric) with points."""
        return list(self._series)

    def latest_points(self, model: str, limit: int) -> list[StoredPoint]:
        with self._lock:
            tails = [p for s in self._series_of_model.get(model, ())
                     for p in s.read(max(0, len(s.rows) - limit), len(s.rows))]
        tails.sort(key=lambda p: p.metric)
        tails.sort(key=lambda p: p.window_end, reverse=True)
        return tails[:limit]

    # rejected events
    def record_rejected(self, event: RejectedEvent) -> None:
        with self._lock:
            self._rejected.setdefault(event.message_id, event)
            self.expire_rejected(event.at)

    def expire_rejected(self, now: float) -> int:
        """Drop up to `EXPIRE_BATCH` of the earliest recorded rejected events that are older
        than `retention` (as SQLite and Firestore do); how many."""
        if self.retention is None:
            return 0
        cutoff = now - self.retention.total_seconds()
        dropped = 0
        with self._lock:
            while self._rejected and dropped < EXPIRE_BATCH:
                first = next(iter(self._rejected.values()))
                if first.at >= cutoff:
                    break
                del self._rejected[first.message_id]
                dropped += 1
        return dropped

    def rejected_events(self, limit: int = 100) -> list[RejectedEvent]:
        events = list(self._rejected.values())
        events.reverse()  # ties on `at`: the newest insert first
        events.sort(key=lambda e: e.at, reverse=True)
        return events[:limit]

    # decisions
    def record_decisions(self, decisions: Sequence[Decision]) -> None:
        with self._lock:
            for decision in decisions:
                self._sequence += 1
                self._decisions.pop(decision.decision_id, None)
                self._decisions[decision.decision_id] = (self._sequence, decision)
            for decision in self.outbox_switch.told(decisions):
                self._outbox[decision.decision_id] = decision

    def decisions(self, model: str | None = None, limit: int = 50) -> list[Decision]:
        with self._lock:
            rows = [row for row in self._decisions.values()
                    if model is None or row[1].model == model]
        rows.sort(key=lambda row: (row[1].at, row[0]), reverse=True)
        return [decision for _, decision in rows[:limit]]

    def outbox(self, limit: int = 100) -> list[Decision]:
        with self._lock:
            waiting = sorted(self._outbox.values(), key=lambda d: d.at)
        return waiting[:limit]

    def clear_outbox(self, decision_ids: Sequence[str]) -> None:
        with self._lock:
            for decision_id in decision_ids:
                self._outbox.pop(decision_id, None)

    # inhibiting incidents
    def record_incident(self, incident: IncidentRecord) -> None:
        key = (incident.model, incident.incident_id)
        with self._lock:
            known = self._incidents.get(key)
            if known is not None:
                incident = replace(incident, open=known.open and incident.open,
                                   at=max(known.at, incident.at))
            self._incidents[key] = incident

    def open_incidents(self, model: str) -> list[IncidentRecord]:
        with self._lock:
            found = [i for (m, _), i in self._incidents.items() if m == model and i.open]
        return sorted(found, key=lambda i: i.at)

    def all_decisions(self) -> list[Decision]:
        """Every decision, in the order they were last written (oldest first)."""
        with self._lock:
            return [decision for _, decision in self._decisions.values()]

    # models
    def model_state(self, model: str) -> ModelState:
        return self._models.get(model) or ModelState(model)

    def set_model_state(self, state: ModelState) -> None:
        with self._lock:
            self._models[state.model] = state

    # runs
    def claim_run(self, run: RunRecord, guards: Guards, now: float, force: bool) -> Claim:
        with self._lock:
            existing = self._runs.get(run.run_id)
            if existing is not None:
                if existing.state == "launching":
                    return Claim("resume", existing, "run claimed earlier but not yet submitted")
                return Claim("exists", existing, f"run already {existing.state}")
            since = now - guard_window(guards)
            relevant = [
                record for record in map(self._runs.__getitem__,
                                         self._runs_of_model.get(run.model, ()))
                if record.created_at > since or record.state in IN_FLIGHT
            ]
            blocked = check_guards(relevant, guards, now, force)
            if blocked is not None:
                return Claim("blocked", run, blocked)
            self._runs[run.run_id] = run
            self._runs_of_model.setdefault(run.model, []).append(run.run_id)
            if run.state in IN_FLIGHT:
                self._in_flight[run.run_id] = None
            return Claim("claimed", run)

    def update_run(
        self, run_id: str, from_states: frozenset[str], update: RunUpdate
    ) -> RunRecord | None:
        changes = update.changes()
        with self._lock:
            record = self._runs.get(run_id)
            if record is None or record.state not in from_states:
                return None
            updated = replace(record, **changes)
            self._runs[run_id] = updated
            if updated.state in IN_FLIGHT:
                self._in_flight[run_id] = None
            else:
                self._in_flight.pop(run_id, None)
            return updated

    def get_run(self, run_id: str) -> RunRecord | None:
        return self._runs.get(run_id)

    def runs(self, model: str | None = None, limit: int = 50) -> list[RunRecord]:
        with self._lock:
            ids = self._runs_of_model.get(model, []) if model is not None else list(self._runs)
            records = [self._runs[run_id] for run_id in ids]
        records.reverse()  # ties on created_at: the newest claim first
        records.sort(key=lambda r: r.created_at, reverse=True)
        return records[:limit]

    def in_flight_runs(self, model: str | None = None) -> list[RunRecord]:
        if not self._in_flight:  # the common case, and a dict's size is read atomically
            return []
        with self._lock:
            records = [r for r in map(self._runs.__getitem__, self._in_flight)
                       if model is None or r.model == model]
        records.sort(key=lambda r: r.created_at)
        return records
