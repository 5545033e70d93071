"""SQLite implementation of the state store: one WAL file, safe across processes and threads.

The run claim is a `BEGIN IMMEDIATE` transaction; a locked database is a transient error.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from pipeline_client.errors import ConfigError, TransientError
from thresholds.durations import parse_duration
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
    dumps,
)
from triggers.state.sqlite.rows import (
    POINT_COLUMNS,
    RUN_COLUMNS,
    decision_of_row,
    insert_decisions,
    point_of_row,
    row_of_run,
    run_of_row,
)
from triggers.state.sqlite.schema import apply_schema

DEFAULT_RETENTION = timedelta(days=400)
"""How long rejected events are kept by default (Firestore's default `retention`)."""
EXPIRE_BATCH = 100
"""Most expired rejected events one write deletes (bounded work per event)."""
def path_from_url(url: str) -> str:
    """The file path of a `sqlite:///relative` or `sqlite:////absolute` URL (':memory:' too)."""
    if not url.startswith("sqlite:///"):
        raise ConfigError("RETRAIN_STATE", f"{url!r} is not a sqlite:/// URL")
    path = url[len("sqlite:///") :]
    if not path:
        raise ConfigError("RETRAIN_STATE", "the sqlite URL names no file")
    return path


def _retention(text: str) -> timedelta | None:
    if text.lower() == "none":
        return None
    try:
        retention = parse_duration(text)
    except ValueError as exc:
        raise ConfigError("RETRAIN_STATE", f"retention: {exc}") from None
    if retention.total_seconds() <= 0:
        raise ConfigError("RETRAIN_STATE", f"retention={text!r} must be positive, e.g. "
                          "'400d' (or 'none' to keep rejected events forever)")
    return retention


class SQLiteStore:
    """The embedded default store. Use `SQLiteStore(":memory:")` for a private, fast one."""

    def __init__(self, path: str | Path, busy_timeout: float = 10.0,
                 retention: timedelta | None = DEFAULT_RETENTION) -> None:
        if retention is not None and retention.total_seconds() <= 0:
            raise ConfigError("RETRAIN_STATE", "sqlite option retention must be positive "
                              "(write retention=none to keep rejected events forever)")
        self.path = str(path)
        self.busy_timeout = busy_timeout
        self.retention = retention
        self.outbox_switch = OutboxSwitch()
        self._local = threading.local()
        self._memory_lock = threading.RLock()
        self._shared: sqlite3.Connection | None = None
        # Writers of this process queue here rather than in SQLite's busy handler, which
        # sleeps 1–100 ms between tries: handing the write lock over at once under load.
        self._writer_lock = threading.RLock()
        _STORES.add(self)
        if self.path == ":memory:":
            self._shared = self._connect()
        else:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._conn()
        with contextlib.suppress(TransientError):  # a busy file: the next rejection expires
            self.expire_rejected(time.time())

    @classmethod
    def from_url(cls, url: str) -> SQLiteStore:
        """`sqlite:///path[?timeout=10s&retention=400d]`: `timeout` is how long a write waits
        for a lock before the event is answered as transient (5xx, redelivered); `retention`
        how long rejected events are kept (as on Firestore; `none` keeps them forever)."""
        path, _, query = url.partition("?")
        timeout = 10.0
        retention: timedelta | None = DEFAULT_RETENTION
        for key, values in parse_qs(query, keep_blank_values=True).items():
            if key == "retention":
                retention = _retention(values[-1])
                continue
            if key != "timeout":
                raise ConfigError("RETRAIN_STATE", f"unknown option {key!r} in {url!r} "
                                  "(known: timeout, retention)")
            try:
                seconds = parse_duration(values[-1]).total_seconds()
            except ValueError as exc:
                raise ConfigError("RETRAIN_STATE", f"timeout: {exc}") from None
            if seconds <= 0:
                raise ConfigError("RETRAIN_STATE", f"timeout={values[-1]!r} must be positive, "
                                  "e.g. '2s' or '1m'")
            timeout = seconds
        return cls(path_from_url(path), busy_timeout=timeout, retention=retention)

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=self.path != ":memory:",
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            if self.path != ":memory:":
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.row_factory = sqlite3.Row
            with _translate:
                apply_schema(conn)
        except sqlite3.OperationalError as exc:
            raise TransientError(f"SQLite store {self.path} unavailable: {exc}") from exc
        return conn

    def _conn(self) -> sqlite3.Connection:
        if self._shared is not None:
            return self._shared
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    def _forget_connections(self) -> None:
        """After a fork: the parent's connections must never be used by the child."""
        self._local = threading.local()
        self._writer_lock = threading.RLock()  # it may have been held by a parent's thread

    def atomic(self) -> _Transaction:
        """One IMMEDIATE transaction for everything inside (nested calls join it)."""
        return _Transaction(self)

    def _tx(self) -> _Transaction:
        """A write transaction; IMMEDIATE so writers queue on busy_timeout, never deadlock.
        Inside `atomic`, it joins the open transaction."""
        return _Transaction(self)

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._memory_lock if self._shared is not None else _NO_LOCK:
            conn = self._conn()
            with _translate:
                cursor = conn.execute(sql, tuple(args))
                return list(cursor.fetchall())

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # processed messages
    def is_processed(self, message_id: str) -> bool:
        return bool(self._query("SELECT 1 FROM processed WHERE message_id = ?", (message_id,)))

    def finish_message(self, message_id: str, at: float, decisions: Sequence[Decision],
                       ignored_metrics: int = 0) -> None:
        with self._tx() as conn:
            insert_decisions(conn, decisions, self.outbox_switch.told(decisions))
            conn.execute(
                "INSERT OR IGNORE INTO processed (message_id, at, ignored_metrics)"
                " VALUES (?, ?, ?)", (message_id, at, ignored_metrics or None)
            )

    def ignored_metrics(self, message_id: str) -> int | None:
        rows = self._query("SELECT ignored_metrics FROM processed WHERE message_id = ?",
                           (message_id,))
        return (rows[0][0] or 0) if rows else None

    # points
    def record_points(self, points: Sequence[StoredPoint]) -> None:
        self.record_points_marked(points)

    def record_points_marked(
        self, points: Sequence[StoredPoint]
    ) -> dict[tuple[str, str, str], tuple[int, int]]:
        """`record_points`, answering the mark each written series has now (no second read)."""
        with self._tx() as conn:
            conn.executemany(
                "INSERT INTO points (model, slice, metric, window_end, value, examples,"
                " model_version, message_id, recorded_at, window_start)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (model, slice, metric, window_end) DO UPDATE SET"
                " value = excluded.value, examples = excluded.examples,"
                " model_version = excluded.model_version, message_id = excluded.message_id,"
                " recorded_at = excluded.recorded_at, window_start = excluded.window_start",
                [
                    (
                        p.model,
                        p.slice,
                        p.metric,
                        p.window_end,
                        p.value,
                        p.examples,
                        p.model_version,
                        p.message_id,
                        p.recorded_at,
                        p.window_start,
                    )
                    for p in points
                ],
            )
            # every write replaces its series' mark (ChampionSeries checks it), once per series
            marks: dict[tuple[str, str, str], tuple[int, int]] = {}
            for key in dict.fromkeys((p.model, p.slice, p.metric) for p in points):
                row = conn.execute(
                    "INSERT INTO series_marks (model, slice, metric, writes, token)"
                    " VALUES (?, ?, ?, 1, random())"
                    " ON CONFLICT (model, slice, metric) DO UPDATE SET"
                    " writes = writes + 1, token = random() RETURNING writes, token", key,
                ).fetchall()[0]  # (stepped to its end: no statement left open at COMMIT)
                marks[key] = (int(row[0]), int(row[1]))
            return marks

    def series_mark(self, model: str, slice_: str, metric: str) -> tuple[int, int] | None:
        """A mark that every write of a point of the series replaces: (write count, random
        token); None before the first. Read it in the transaction of the reads it vouches for."""
        rows = self._query("SELECT writes, token FROM series_marks WHERE model = ? AND"
                           " slice = ? AND metric = ?", (model, slice_, metric))
        return (int(rows[0][0]), int(rows[0][1])) if rows else None

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
        sql = f"SELECT {POINT_COLUMNS} FROM points WHERE model = ? AND slice = ? AND metric = ?"
        args: list[Any] = [model, slice_, metric]
        if since is not None:
            sql += " AND window_end > ?"
            args.append(since)
        if until is not None:
            sql += " AND window_end <= ?"
            args.append(until)
        sql += " ORDER BY window_end" + ("" if oldest else " DESC")
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        rows = self._query(sql, args)
        return [point_of_row(row) for row in (rows if oldest else reversed(rows))]

    def latest_points(self, model: str, limit: int) -> list[StoredPoint]:
        rows = self._query(
            f"SELECT {POINT_COLUMNS} FROM points WHERE model = ?"
            " ORDER BY window_end DESC, metric LIMIT ?",
            (model, limit),
        )
        return [point_of_row(row) for row in rows]

    # rejected events
    def record_rejected(self, event: RejectedEvent) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO rejected (message_id, at, source, field, reason, payload,"
                " model) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    event.message_id,
                    event.at,
                    event.source,
                    event.field,
                    event.reason,
                    event.payload,
                    event.model,
                ),
            )
            self._expire_rejected(conn, event.at)

    def expire_rejected(self, now: float) -> int:
        """Delete up to `EXPIRE_BATCH` rejected events older than `retention`; how many.
        Every rejection does this (and every cold start), so the table stays within
        `retention` at a bounded cost per event, as Firestore's TTL keeps it there."""
        if self.retention is None:
            return 0
        with self._tx() as conn:
            return self._expire_rejected(conn, now)

    def _expire_rejected(self, conn: sqlite3.Connection, now: float) -> int:
        if self.retention is None:
            return 0
        cursor = conn.execute(
            "DELETE FROM rejected WHERE message_id IN (SELECT message_id FROM rejected"
            " WHERE at < ? ORDER BY at LIMIT ?)",
            (now - self.retention.total_seconds(), EXPIRE_BATCH))
        return cursor.rowcount

    def rejected_events(self, limit: int = 100) -> list[RejectedEvent]:
        rows = self._query("SELECT * FROM rejected ORDER BY at DESC LIMIT ?", (limit,))
        return [RejectedEvent(**{k: row[k] for k in row.keys()}) for row in rows]

    # decisions
    def record_decisions(self, decisions: Sequence[Decision]) -> None:
        with self._tx() as conn:
            insert_decisions(conn, decisions, self.outbox_switch.told(decisions))

    def decisions(self, model: str | None = None, limit: int = 50) -> list[Decision]:
        if model is None:
            rows = self._query(
                "SELECT * FROM decisions ORDER BY at DESC, rowid DESC LIMIT ?", (limit,)
            )
        else:
            rows = self._query(
                "SELECT * FROM decisions WHERE model = ? ORDER BY at DESC, rowid DESC LIMIT ?",
                (model, limit),
            )
        return [decision_of_row(row) for row in rows]

    # models
    def model_state(self, model: str) -> ModelState:
        rows = self._query("SELECT * FROM models WHERE model = ?", (model,))
        if not rows:
            return ModelState(model)
        row = rows[0]
        return ModelState(model, row["champion_version"], row["history_start"], row["updated_at"])

    def set_model_state(self, state: ModelState) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO models (model, champion_version, history_start, updated_at)"
                " VALUES (?, ?, ?, ?)",
                (state.model, state.champion_version, state.history_start, state.updated_at),
            )

    # runs
    def claim_run(self, run: RunRecord, guards: Guards, now: float, force: bool) -> Claim:
        with self._tx() as conn:
            existing = conn.execute("SELECT * FROM runs WHERE run_id = ?", (run.run_id,)).fetchone()
            if existing is not None:
                record = run_of_row(existing)
                if record.state == "launching":
                    return Claim("resume", record, "run claimed earlier but not yet submitted")
                return Claim("exists", record, f"run already {record.state}")
            placeholders = ",".join("?" for _ in IN_FLIGHT)
            rows = conn.execute(
                "SELECT * FROM runs WHERE model = ?"
                f" AND (created_at > ? OR state IN ({placeholders}))",
                (run.model, now - guard_window(guards), *sorted(IN_FLIGHT)),
            ).fetchall()
            blocked = check_guards((run_of_row(r) for r in rows), guards, now, force)
            if blocked is not None:
                return Claim("blocked", run, blocked)
            conn.execute(
                f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}) VALUES"
                f" ({', '.join('?' for _ in RUN_COLUMNS)})",
                row_of_run(run),
            )
            return Claim("claimed", run)

    def update_run(
        self, run_id: str, from_states: frozenset[str], update: RunUpdate
    ) -> RunRecord | None:
        changes = update.changes()
        with self._tx() as conn:
            row = conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None or row["state"] not in from_states:
                return None
            values = {
                key: dumps(value) if key in ("request", "outcome") and value is not None else value
                for key, value in changes.items()
            }
            conn.execute(
                f"UPDATE runs SET {', '.join(f'{k} = ?' for k in values)} WHERE run_id = ?",
                (*values.values(), run_id),
            )
            updated = conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            return run_of_row(updated)

    def get_run(self, run_id: str) -> RunRecord | None:
        rows = self._query("SELECT * FROM runs WHERE run_id = ?", (run_id,))
        return run_of_row(rows[0]) if rows else None

    def runs(self, model: str | None = None, limit: int = 50) -> list[RunRecord]:
        if model is None:
            rows = self._query("SELECT * FROM runs ORDER BY created_at DESC LIMIT ?", (limit,))
        else:
            rows = self._query(
                "SELECT * FROM runs WHERE model = ? ORDER BY created_at DESC LIMIT ?",
                (model, limit),
            )
        return [run_of_row(row) for row in rows]

    def in_flight_runs(self, model: str | None = None) -> list[RunRecord]:
        placeholders = ",".join("?" for _ in IN_FLIGHT)
        sql = f"SELECT * FROM runs WHERE state IN ({placeholders})"
        args: list[Any] = sorted(IN_FLIGHT)
        if model is not None:
            sql += " AND model = ?"
            args.append(model)
        return [run_of_row(row) for row in self._query(sql + " ORDER BY created_at", args)]


    # decisions outbox
    def outbox(self, limit: int = 100) -> list[Decision]:
        rows = self._query("SELECT body FROM outbox ORDER BY at, rowid LIMIT ?", (limit,))
        return [Decision.from_json(json.loads(row[0])) for row in rows]

    def clear_outbox(self, decision_ids: Sequence[str]) -> None:
        with self._tx() as conn:
            conn.executemany("DELETE FROM outbox WHERE decision_id = ?",
                             [(i,) for i in decision_ids])

    # inhibiting incidents
    def record_incident(self, incident: IncidentRecord) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO incidents (model, incident_id, open, policy_name, condition_name,"
                " summary, at) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (model, incident_id) DO UPDATE SET"
                " open = MIN(incidents.open, excluded.open), summary = excluded.summary,"
                " at = MAX(incidents.at, excluded.at)",
                (incident.model, incident.incident_id, int(incident.open), incident.policy_name,
                 incident.condition_name, incident.summary, incident.at))

    def open_incidents(self, model: str) -> list[IncidentRecord]:
        rows = self._query("SELECT * FROM incidents WHERE model = ? AND open = 1 ORDER BY at",
                           (model,))
        return [IncidentRecord(row["model"], row["incident_id"], bool(row["open"]),
                               row["policy_name"], row["condition_name"], row["summary"],
                               row["at"]) for row in rows]
class _Translate:
    """sqlite3 errors that a retry can cure become TransientError (a class: it is hot)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: Any) -> None:
        if isinstance(exc, sqlite3.OperationalError):
            raise TransientError(f"SQLite store unavailable: {exc}") from exc


class _Transaction:
    """A re-entrant IMMEDIATE transaction on the thread's connection (a class: it is hot)."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        self.outer = False
        self.lock: Any = (store._memory_lock if store._shared is not None
                          else store._writer_lock)

    def __enter__(self) -> sqlite3.Connection:
        self.lock.__enter__()
        local = self.store._local
        conn = self.store._conn()
        if getattr(local, "depth", 0):
            local.depth += 1
            return conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            self.lock.__exit__(None, None, None)
            raise TransientError(f"SQLite store unavailable: {exc}") from exc
        local.depth = 1
        self.outer = True
        return conn

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: Any) -> None:
        local = self.store._local
        try:
            if not self.outer:
                local.depth -= 1
                return
            local.depth = 0
            conn = self.store._conn()
            if exc is None:
                try:
                    conn.execute("COMMIT")
                    return
                except sqlite3.Error as error:
                    exc = error
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")  # a no-op if COMMIT failed and rolled back
            if isinstance(exc, sqlite3.OperationalError):
                raise TransientError(f"SQLite store unavailable: {exc}") from exc
            if kind is None:
                raise exc
        finally:
            self.lock.__exit__(None, None, None)


_translate = _Translate()
_STORES: weakref.WeakSet[SQLiteStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_STORES):
        store._forget_connections()


os.register_at_fork(after_in_child=_after_fork_in_child)
_NO_LOCK = contextlib.nullcontext()
