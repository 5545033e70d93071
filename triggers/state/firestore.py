"""Firestore implementation of the state store, for `RETRAIN_STATE=firestore://[database]`:
the shared, serverless state of a service that scales out (every instance sees one store).

URL: `firestore://` ("(default)" database) or `firestore://DATABASE`, with optional
`?retention=400d` (how long points, processed markers, decisions and rejected events are
kept: their `expire_at` field, which a Firestore TTL policy deletes; `none` — and only
`none` — keeps them forever, `0` is an error; keep it longer than the oldest point a policy
reads — a baseline's reference points are its champion's first ones, however old) and
`?timeout=10s` (per RPC, transaction begin/commit/rollback included; retries stop within it
too). Processed-message markers are kept at least 31 days whatever `retention` says: Pub/Sub
keeps a message (and may redeliver it, or replay it with seek) for at most 31 days — the
topic retention's maximum — and a marker that expired earlier would let a redelivery launch
again. The project is GOOGLE_CLOUD_PROJECT (or what google.auth finds); FIRESTORE_EMULATOR_HOST
is honoured by the client. `google.cloud.firestore` is imported and the client built on the
first store call, never at import or construction (cold start); a setup that cannot build it
(no credentials, no project, SDK missing) raises ConfigError naming RETRAIN_STATE there.

Document layout (ids are deterministic, so a retried write lands on the same document):

- `retrain_models/{model}`: champion state; also the claim lock (see below).
- `retrain_models/{model}/retrain_series/{slice,metric}/retrain_points/{window_end}`: one
  series per subcollection, so the hot query (latest N points of a series by event time, or a
  window of them) is a range on `window_end` served by the automatic single-field index.
  `latest_points(model)` is a collection-group query (composite index).
- `retrain_runs/{run_id}`, `retrain_decisions/{decision_id}`: top level, queried by `model`
  and time; decisions carry `written_ns` so equal times come back newest write first.
- `retrain_processed/{sha256(message_id)}`, `retrain_rejected/{sha256(message_id)}`: created
  with `create()`, so a second delivery gets AlreadyExists.
Every query and its index is declared in `deploy/firestore.indexes.json` (a test checks it).

The run claim is ONE transaction: it reads the run's document and the model's document,
queries the model's in-flight runs and its runs inside the guard window, checks the guards
and writes the run (`create`) and the model document (`claim_last_*` fields). Every claim of a
model reads and writes that one model document, so two concurrent claims always conflict and
Firestore serialises them (one retries and then sees the other's run) — whether or not the
backend also locks query ranges. Two instances handling breaching events at once launch one run.
A plain read answers first what needs no write (the run exists, a guard blocks), so the
breaching events that follow a launch cost no transaction; a transaction aborted by contention
is retried after a random pause (the emulator aborts every party of a write-write race after
~2 s, and immediate retries would collide again in lockstep), and the retry's BeginTransaction
names the aborted one (`retry_transaction`, as the SDK's own retry does) so it keeps its
priority for the locks (the SDK internals this takes are isolated in `state.firestore_sdk`).
A run the model's run queries already hold (another delivery of the same message claimed it
between our reads) is resumed, never reported as blocked by itself.

The claim also checks the champion: on SQLite the champion read, the evaluation and the claim
see one state (one lock); here a promotion can commit in between. So the claim's reads compare
the model document's `champion_version` and `history_start` with the state the evaluation used
— what `model_state` returned inside the current `atomic()` unit, or else the run request's
`parameters.champion_version` ("" meaning none) — and raise TransientError when they differ
(5xx → redelivery re-evaluates on the new state). A champion the unit adopts (first version
seen) is written by the claim's own transaction when the unit claims a run, so a run is never
committed for a champion that is not committed with it.

What `atomic()` means here. Firestore cannot hold a lock over arbitrary reads and writes the
way SQLite's `BEGIN IMMEDIATE` does, so `atomic()` is a *unit of work*, not a lock:

- Writes that finish something — decisions, model state, run updates, the processed marker —
  are buffered and committed in ONE batch when the outermost `atomic()` exits (discarded if it
  raises). A run update carries a precondition on the run document's update time, and so does
  a champion change after `model_state` was read in the unit (`create` if the model document
  was missing then): the batch is a compare-and-set, and a concurrent change fails it
  (TransientError → 5xx → redelivery, which then sees the winner). An outcome's run end,
  champion, audit and ack are therefore all or nothing, as on SQLite. Reads inside the unit
  see its buffered documents and the model state as first read (repeatable); queries see only
  committed data. A unit is one batch or nothing: more than 500 writes raise
  UnitTooLargeError rather than being split into batches that are not atomic together.
- Points are written through at once, never buffered: a delivery writes its point before it
  reads the series, so of two concurrent deliveries at least one sees both points (what
  SQLite's lock gave us; the service re-evaluates later points after a late one).
- `claim_run` commits its own transaction at once: the claim must be durable before the
  launch it guards, which the service submits after `atomic()`.
Exactly once then rests on: deterministic run ids (a redelivery resumes the same claim and
resubmits the same id; "already exists" is success), the transactional claim, and the
processed marker created last — in the same batch as the message's decisions, so a message is
never marked processed without them. A crash before that batch leaves the message
unprocessed: Pub/Sub redelivers it and it is processed again, idempotently. Two concurrent
deliveries of one message may both get this far: the second batch fails on AlreadyExists and
is dropped when — and only when — its processed marker now exists (the first already wrote
the same decisions); any other AlreadyExists is a TransientError, never acknowledged.

Transient Firestore errors (Unavailable, DeadlineExceeded, Aborted after the transaction's
retries, ResourceExhausted, Internal, timeouts) raise `triggers.errors.TransientError`; the
rest (PermissionDenied, a missing index, ...) propagate as they are, loudly.
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qs, urlsplit

from pipeline_client.errors import ConfigError, TransientError
from thresholds.durations import format_duration, parse_duration
from triggers import ids
from triggers.state import firestore_sdk
from triggers.state.guards import Guards, check_guards, guard_window
from triggers.state.protocol import (
    IN_FLIGHT,
    Claim,
    Decision,
    IncidentRecord,
    ModelState,
    RejectedEvent,
    RunRecord,
    RunUpdate,
    StoredPoint,
    dumps,
    is_told,
    iso,
)

MODELS = "retrain_models"
SERIES = "retrain_series"
POINTS = "retrain_points"
RUNS = "retrain_runs"
DECISIONS = "retrain_decisions"
PROCESSED = "retrain_processed"
REJECTED = "retrain_rejected"
OUTBOX = "retrain_outbox"
INCIDENTS = "retrain_incidents"
COLLECTION_GROUPS = (MODELS, SERIES, POINTS, RUNS, DECISIONS, PROCESSED, REJECTED, OUTBOX,
                     INCIDENTS)
EXPIRING: frozenset[str] = frozenset({POINTS, PROCESSED, DECISIONS, REJECTED})
"""Collection groups whose documents carry `expire_at` (a TTL policy deletes them)."""

DEFAULT_DATABASE = "(default)"
DEFAULT_RETENTION = timedelta(days=400)
DEFAULT_TIMEOUT = 10.0
MAX_BATCH_WRITES = 500
PROCESSED_MIN_RETENTION = timedelta(days=31)
"""Processed markers outlive Pub/Sub's longest message retention (31 days), whatever
`retention` says: an expired marker would let a late redelivery act twice."""
_DATABASE_ID = re.compile(r"^[a-z][a-z0-9-]{2,61}[a-z0-9]$")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
_RUN_FIELDS = tuple(f.name for f in fields(RunRecord))
_CHANGEABLE_RUN_FIELDS = frozenset(_RUN_FIELDS) - {"run_id"}
_URL_OPTIONS = ("retention", "timeout")
_T = TypeVar("_T")


class FirestoreStore:
    """The production store: Firestore (native mode), shared by every instance."""

    def __init__(
        self,
        database: str = DEFAULT_DATABASE,
        project: str | None = None,
        retention: timedelta | None = DEFAULT_RETENTION,
        timeout: float = DEFAULT_TIMEOUT,
        max_attempts: int = 5,
    ) -> None:
        if database != DEFAULT_DATABASE and not _DATABASE_ID.match(database):
            raise ConfigError(
                "RETRAIN_STATE",
                f"{database!r} is not a Firestore database id (4-63 lower-case letters, "
                "digits and hyphens) or (default)")
        if retention is not None and retention.total_seconds() <= 0:
            raise ConfigError(
                "RETRAIN_STATE",
                "firestore:// option retention must be positive (write retention=none to keep "
                "documents forever)")
        self.database = database
        self.project = project
        self.retention = retention
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.executed_queries: list[Any] | None = None
        """Set to a list to collect every query (StructuredQuery protobuf) the store runs."""
        self._client: Any = None
        self._retries: dict[bool, Any] = {}
        self._client_lock = threading.Lock()
        self._local = threading.local()
        _STORES.add(self)

    @classmethod
    def from_url(cls, url: str, environ: Mapping[str, str] | None = None) -> FirestoreStore:
        """The store a `firestore://[database][?retention=400d&timeout=10s]` URL names."""
        environ = os.environ if environ is None else environ
        parts = urlsplit(url)
        if parts.scheme != "firestore":
            raise ConfigError("RETRAIN_STATE", f"{url!r} is not a firestore:// URL")
        if parts.path not in ("", "/") or parts.fragment:
            raise ConfigError(
                "RETRAIN_STATE", f"{url!r}: write firestore://DATABASE (no path after it)")
        options = parse_qs(parts.query, keep_blank_values=True)
        unknown = sorted(set(options) - set(_URL_OPTIONS))
        if unknown:
            raise ConfigError(
                "RETRAIN_STATE",
                f"unknown option {unknown[0]!r} in {url!r} (known: {', '.join(_URL_OPTIONS)})")
        retention: timedelta | None = DEFAULT_RETENTION
        timeout = DEFAULT_TIMEOUT
        if "retention" in options:
            text = options["retention"][-1]
            retention = None if text.lower() == "none" else _duration(text, "retention")
        if "timeout" in options:
            timeout = _duration(options["timeout"][-1], "timeout").total_seconds()
        return cls(
            database=parts.netloc or DEFAULT_DATABASE,
            project=environ.get("GOOGLE_CLOUD_PROJECT") or None,
            retention=retention,
            timeout=timeout,
        )

    def __repr__(self) -> str:
        kept = format_duration(self.retention) if self.retention else "forever"
        return (f"FirestoreStore(project={self.project!r}, database={self.database!r}, "
                f"retention={kept})")

    # ------------------------------------------------------------------ plumbing
    @property
    def client(self) -> Any:
        """The google.cloud.firestore Client, created (and the SDK imported) on first use."""
        client = self._client
        if client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = self._build_client()
                client = self._client
        return client

    def _build_client(self) -> Any:
        """A bad setup fails here, clearly and not cached (the next call tries again): no SDK,
        no project, no credentials → ConfigError naming RETRAIN_STATE; a transport error while
        finding credentials → TransientError."""
        where = (f"Firestore database {self.database!r} of project "
                 f"{self.project or '(from google.auth)'}")
        try:
            from google.auth import exceptions as auth_exceptions
            from google.cloud import firestore
        except ImportError as exc:
            raise ConfigError(
                "RETRAIN_STATE",
                f"firestore:// needs google-cloud-firestore (requirements.txt): {exc}") from exc
        try:
            return firestore.Client(project=self.project, database=self.database)
        except auth_exceptions.TransportError as exc:
            raise TransientError(f"{where}: credentials unavailable: {exc}") from exc
        except (auth_exceptions.GoogleAuthError, OSError, ValueError) as exc:
            raise ConfigError(
                "RETRAIN_STATE",
                f"cannot build a client for {where}: {exc} (set GOOGLE_CLOUD_PROJECT and "
                "credentials, or FIRESTORE_EMULATOR_HOST for the emulator)") from exc

    def _forget_client(self) -> None:
        """After a fork: the parent's gRPC channel must never be used by the child."""
        self._client = None
        self._local = threading.local()

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _scope(self) -> _UnitOfWork | None:
        unit: _UnitOfWork | None = getattr(self._local, "unit", None)
        return unit

    def atomic(self) -> _Atomic:
        """A unit of work: finishing writes inside are committed in one batch at the end (see
        the module docstring for what that does and does not cover)."""
        return _Atomic(self)

    def _write(self, writes: Sequence[_Write], operation: str) -> None:
        """Buffer `writes` in the open unit of work, or commit them now (one batch)."""
        unit = self._scope()
        if unit is not None:
            for write in writes:
                unit.add(write)
            return
        try:
            self._commit(writes, operation)
        except _Exists as exists:
            if not self._finished_elsewhere(writes):
                raise TransientError(
                    f"Firestore {operation}: a document it creates exists already ({exists}); "
                    "retry") from exists
            # a concurrent delivery created the processed marker first: its batch stands
            self._keep_decisions(writes)

    def _keep_decisions(self, writes: Sequence[_Write]) -> None:
        """The audit entries of a delivery whose message a concurrent delivery finished first:
        each delivery's decisions are kept (as SQLite keeps both), so a run this one launched
        is never explained only by the other's "suppressed"."""
        decisions = [w for w in writes if w.path.startswith(DECISIONS + "/")]
        self._commit(decisions, "finish_message")  # sets: no _Exists or _Conflict

    def _finished_elsewhere(self, writes: Sequence[_Write]) -> bool:
        """After AlreadyExists: whether the batch's processed marker exists now (a concurrent
        delivery of the message finished it) — the one conflict that means "done"."""
        markers = [w.path for w in writes
                   if w.kind == "create" and w.path.startswith(PROCESSED + "/")]
        return bool(markers) and all(
            self._get(path, "finish_message")[0] is not None for path in markers)

    def _rebased(self, writes: Sequence[_Write], unit: _UnitOfWork) -> list[_Write] | None:
        """After a unit's commit failed, its conditional champion writes checked against the
        model document as committed now: one the document already matches (another instance
        adopted the same version, same history) is dropped; one whose document changed only
        outside the champion fields (a claim wrote `claim_last_*`) is conditioned on the
        new version. The writes to commit again, or None when a champion really changed (or
        nothing could be rebased): then the unit must be retried."""
        rebased, changed = [], False
        for write in writes:
            if write.kind in ("create", "update") and write.path.startswith(MODELS + "/"):
                current, update_time = self._get(write.path, "atomic")
                read = unit.read.get(write.path, (None, None))[0]
                if current is None:
                    return None
                if _champion_fields(current) == _champion_fields(write.data):
                    changed = True
                    continue
                if _champion_fields(current) != _champion_fields(read):
                    return None
                if update_time != write.update_time:
                    write = _Write("update", write.path, write.data, update_time, True)
                    changed = True
            rebased.append(write)
        return rebased if changed else None

    def _commit(self, writes: Sequence[_Write], operation: str, split: bool = False) -> None:
        """Commit `writes` in one batch (atomic). Only with `split` (independent, idempotent
        writes: points) are more than 500 committed in several batches; otherwise that many
        raise UnitTooLargeError.

        Raises _Exists (a `create` met an existing document), _Conflict (a document changed
        since it was read) or TransientError.
        """
        if not writes:
            return
        if len(writes) > MAX_BATCH_WRITES and not split:
            raise UnitTooLargeError(
                f"Firestore {operation}: {len(writes)} writes in one unit of work, more than "
                f"the {MAX_BATCH_WRITES} one commit takes; refusing to split it into batches "
                "that would not be atomic together")
        client = self.client
        ordered = sorted(writes, key=lambda w: w.finishing)
        for start in range(0, len(ordered), MAX_BATCH_WRITES):
            batch = client.batch()
            for write in ordered[start : start + MAX_BATCH_WRITES]:
                ref = client.document(write.path)
                if write.kind == "set":
                    batch.set(ref, write.data)
                elif write.kind == "merge":
                    batch.set(ref, write.data, merge=True)
                elif write.kind == "create":
                    batch.create(ref, write.data)
                else:
                    option = client.write_option(last_update_time=write.update_time)
                    batch.update(ref, write.data, option=option)
            with _Errors(operation, commit=True):
                batch.commit(retry=self._retry(commit=True), timeout=self.timeout)

    def _retry(self, commit: bool = False) -> Any:
        """Short retries (bounded by `timeout`): a Cloud Function must answer, and a 5xx makes
        Pub/Sub redeliver anyway. Commits retry only Unavailable and ResourceExhausted; a
        repeated create or conditional update that had applied fails cleanly and is handled."""
        cached = self._retries.get(commit)
        if cached is None:
            from google.api_core import exceptions, retry

            retryable: tuple[type[Exception], ...] = (
                exceptions.ServiceUnavailable, exceptions.ResourceExhausted)
            if not commit:
                retryable += (exceptions.DeadlineExceeded, exceptions.InternalServerError)
            cached = retry.Retry(predicate=retry.if_exception_type(*retryable), initial=0.05,
                                 maximum=1.0, multiplier=2.0, timeout=self.timeout)
            self._retries[commit] = cached
        return cached

    def _get(self, path: str, operation: str) -> tuple[dict[str, Any] | None, Any]:
        """A document's data (None if missing) and update time; the unit of work first."""
        unit = self._scope()
        if unit is not None and path in unit.overlay:
            return unit.overlay[path]
        with _Errors(operation):
            snapshot = self.client.document(path).get(retry=self._retry(), timeout=self.timeout)
        if not snapshot.exists:
            return None, None
        return snapshot.to_dict(), snapshot.update_time

    def _query(self, query: Any, operation: str, transaction: Any = None) -> list[dict[str, Any]]:
        if self.executed_queries is not None:
            self.executed_queries.append(firestore_sdk.query_protobuf(query))
        with _Errors(operation):
            stream = query.stream(transaction=transaction, retry=self._retry(),
                                  timeout=self.timeout)
            return [snapshot.to_dict() for snapshot in stream]

    def _expire_at(self, at: float, minimum: timedelta | None = None) -> dict[str, datetime]:
        if self.retention is None:
            return {}
        kept = max(self.retention, minimum) if minimum is not None else self.retention
        return {"expire_at": datetime.fromtimestamp(at, UTC) + kept}

    # ------------------------------------------------------------------ processed messages
    def is_processed(self, message_id: str) -> bool:
        data, _ = self._get(_processed_path(message_id), "is_processed")
        return data is not None

    def finish_message(self, message_id: str, at: float, decisions: Sequence[Decision],
                       ignored_metrics: int = 0) -> None:
        ignored = {"ignored_metrics": ignored_metrics} if ignored_metrics else {}
        marker = _Write("create", _processed_path(message_id),
                        {"message_id": message_id, "at": float(at), **ignored,
                         **self._expire_at(at, PROCESSED_MIN_RETENTION)},
                        finishing=True)
        self._write([*self._decision_writes(decisions), marker], "finish_message")

    def ignored_metrics(self, message_id: str) -> int | None:
        data, _ = self._get(_processed_path(message_id), "ignored_metrics")
        return None if data is None else int(data.get("ignored_metrics") or 0)

    # ------------------------------------------------------------------ points
    def record_points(self, points: Sequence[StoredPoint]) -> None:
        """Written through at once, even inside `atomic()` (see the module docstring)."""
        writes = [_Write("set", _point_path(p.model, p.slice, p.metric, p.window_end),
                         {**_point_doc(p), **self._expire_at(p.recorded_at)}) for p in points]
        try:
            self._commit(writes, "record_points", split=True)
        except (_Exists, _Conflict) as exc:  # pragma: no cover - sets never do
            raise TransientError(f"Firestore record_points: {exc}") from exc

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
        if limit is not None and limit <= 0:
            return []
        query = self.client.collection(f"{_series_path(model, slice_, metric)}/{POINTS}")
        if since is not None:
            query = query.where(filter=_field("window_end", ">", float(since)))
        if until is not None:
            query = query.where(filter=_field("window_end", "<=", float(until)))
        query = query.order_by("window_end", direction=_ASC if oldest else _DESC)
        if limit is not None:
            query = query.limit(limit)
        found = [_point(doc) for doc in self._query(query, "points")]
        return found if oldest else found[::-1]

    def latest_points(self, model: str, limit: int) -> list[StoredPoint]:
        if limit <= 0:
            return []
        query = (self.client.collection_group(POINTS)
                 .where(filter=_field("model", "==", model))
                 .order_by("window_end", direction=_DESC)
                 .order_by("metric", direction=_ASC)
                 .limit(limit))
        return [_point(doc) for doc in self._query(query, "latest_points")]

    # ------------------------------------------------------------------ rejected events
    def record_rejected(self, event: RejectedEvent) -> None:
        data = {f.name: getattr(event, f.name) for f in fields(RejectedEvent)}
        data["at"] = float(event.at)
        write = _Write("create", _rejected_path(event.message_id),
                       {**data, **self._expire_at(event.at)})
        try:
            self._commit([write], "record_rejected")
        except _Exists:
            pass  # rejected before: the first record stands

    def rejected_events(self, limit: int = 100) -> list[RejectedEvent]:
        if limit <= 0:
            return []
        query = self.client.collection(REJECTED).order_by("at", direction=_DESC).limit(limit)
        return [RejectedEvent(doc["message_id"], doc["at"], doc["source"], doc["field"],
                              doc["reason"], doc["payload"], doc.get("model"))
                for doc in self._query(query, "rejected_events")]

    # ------------------------------------------------------------------ decisions
    def _decision_writes(self, decisions: Sequence[Decision]) -> list[_Write]:
        """Each decision, and (in the same batch) its outbox entry if it is told."""
        written = time.time_ns()
        return [
            _Write("set", f"{DECISIONS}/{_doc_id(d.decision_id)}",
                   {**_decision_doc(d), "written_ns": written + i, **self._expire_at(d.at)})
            for i, d in enumerate(decisions)
        ] + [
            _Write("set", f"{OUTBOX}/{_doc_id(d.decision_id)}",
                   {"decision_id": d.decision_id, "at": float(d.at), "body": dumps(d.to_json())})
            for d in decisions if is_told(d)
        ]

    def record_decisions(self, decisions: Sequence[Decision]) -> None:
        self._write(self._decision_writes(decisions), "record_decisions")

    def decisions(self, model: str | None = None, limit: int = 50) -> list[Decision]:
        if limit <= 0:
            return []
        query = self.client.collection(DECISIONS)
        if model is not None:
            query = query.where(filter=_field("model", "==", model))
        query = (query.order_by("at", direction=_DESC)
                 .order_by("written_ns", direction=_DESC).limit(limit))
        return [_decision(doc) for doc in self._query(query, "decisions")]

    # ------------------------------------------------------------------ models
    def model_state(self, model: str) -> ModelState:
        """Inside `atomic()` the first read is remembered (with the document's update time):
        later reads in the unit return it, a champion change in the unit is written on
        condition that the document is still as read, and a claim checks it."""
        path = _model_path(model)
        unit = self._scope()
        fresh = unit is not None and path not in unit.overlay
        data, update_time = self._get(path, "model_state")
        if fresh:
            assert unit is not None
            unit.read[path] = (data, update_time)
            unit.overlay[path] = (data, update_time)
        if data is None:
            return ModelState(model)
        return ModelState(model, data.get("champion_version"), data.get("history_start"),
                          data.get("updated_at"))

    def set_model_state(self, state: ModelState) -> None:
        """Outside `atomic()`, or in a unit that did not read the model state first: a plain
        merge (last write wins: an operator's rollback). After `model_state` in the unit: a
        compare-and-set against what it read — `create` if the document was missing, else
        an update conditioned on its update time — so two first champions, or an adoption
        and a promotion, cannot overwrite each other (the loser's unit → TransientError)."""
        data = {"model": state.model, "champion_version": state.champion_version,
                "history_start": _float(state.history_start),
                "updated_at": _float(state.updated_at)}
        path = _model_path(state.model)
        unit = self._scope()
        if unit is None:
            self._write([_Write("merge", path, data, finishing=True)], "set_model_state")
            return
        current, update_time = unit.overlay.get(path, (None, None))
        unit.overlay[path] = ({**(current or {}), **data}, update_time)
        read = unit.read.get(path)
        if read is None:
            unit.add(_Write("merge", path, data, finishing=True))
        elif read[0] is None:
            unit.add(_Write("create", path, data, finishing=True))
        else:
            unit.add(_Write("update", path, data, update_time=read[1], finishing=True))

    # ------------------------------------------------------------------ runs
    def claim_run(self, run: RunRecord, guards: Guards, now: float, force: bool) -> Claim:
        """Guards checked against the model's runs and the run written: one transaction.

        A plain (strongly consistent) read first answers what needs no write — the run
        exists, or the guards block — as it would at that instant; only a claim that looks
        possible runs the transaction, which checks everything again. A transaction aborted by
        contention is retried after a random pause, so contenders do not collide in lockstep.
        Both reads check that the champion is still the one the evaluation used (TransientError
        if not; see the module docstring).
        """
        client = self.client
        run_ref = client.document(_run_path(run.run_id))
        model_path = _model_path(run.model)
        model_ref = client.document(model_path)
        in_flight = self._in_flight_query(run.model)
        recent = (client.collection(RUNS)
                  .where(filter=_field("model", "==", run.model))
                  .where(filter=_field("created_at", ">", float(now - guard_window(guards))))
                  .order_by("created_at", direction=_DESC))
        unit = self._scope()
        read = unit.read.get(model_path) if unit is not None else None
        # a champion this unit adopts or changes: committed with the claim, never after it
        pending = unit.writes.get(model_path) if unit is not None and read is not None else None
        evaluated = _evaluated_state(
            run, unit.overlay.get(model_path) if unit is not None and read is not None else None)
        # what the model document may hold: the evaluated state, or (before the claim
        # commits this unit's own pending change) the state the unit read
        allowed = [evaluated]
        if pending is not None and read is not None:
            allowed.append(_champion_fields(read[0]))
        claim_fields = {"model": run.model, "claim_last_run": run.run_id,
                        "claim_last_at": float(now)}

        def judge(transaction: Any) -> Claim:
            """The answer as of these reads ("claimed" meaning: it may be claimed)."""
            with _Errors("claim_run"):
                reader = transaction if transaction is not None else client
                snapshots = {s.reference.path: s for s in reader.get_all(
                    [run_ref, model_ref], retry=self._retry(), timeout=self.timeout)}
            model_doc = snapshots[model_ref.path]
            current = (model_doc.to_dict() or {}) if model_doc.exists else {}
            if evaluated and not any(
                    all(current.get(k) == v for k, v in state.items()) for state in allowed):
                found = {k: current.get(k) for k in evaluated}
                raise TransientError(
                    f"Firestore claim_run for model {run.model!r}: the champion state changed "
                    f"after the evaluation read it (evaluated with {evaluated}, now {found}); "
                    "retry the message to evaluate it on the new state")
            existing = snapshots[run_ref.path]
            if existing.exists:
                return _existing_claim(_run(existing.to_dict()))
            runs = {doc["run_id"]: _run(doc) for query in (in_flight, recent)
                    for doc in self._query(query, "claim_run", transaction)}
            mine = runs.get(run.run_id)
            if mine is not None:  # claimed by another delivery between our reads
                return _existing_claim(mine)
            blocked = check_guards(runs.values(), guards, now, force)
            if blocked is not None:
                return Claim("blocked", run, blocked)
            return Claim("claimed", run)

        def attempt(transaction: Any) -> Claim:
            claim = judge(transaction)
            if claim.status == "claimed":
                transaction.create(run_ref, _run_doc(run))
                model_data = {**(pending.data if pending is not None else {}), **claim_fields}
                transaction.set(model_ref, model_data, merge=True)
            return claim

        seen = judge(None)
        if seen.status != "claimed":
            return seen
        claim, results = self._transact(attempt, "claim_run", f"model {run.model!r}")
        if claim.status == "claimed" and unit is not None and read is not None:
            # The unit's view of the model document is now what the claim committed (its
            # champion checked, any pending champion change included): later writes of the
            # unit are conditioned on this version, not on one the claim itself replaced.
            unit.writes.pop(model_path, None)
            base = unit.overlay[model_path][0] if pending is not None else read[0]
            committed = {**(base or {}), **claim_fields}
            unit.read[model_path] = (committed, results[1].update_time)
            unit.overlay[model_path] = (committed, results[1].update_time)
        return claim

    def _transact(self, attempt: Callable[[Any], _T], operation: str,
                  what: str) -> tuple[_T, list[Any]]:
        """Run `attempt(transaction)` in a read-write transaction and commit what it wrote: its
        result and the commit's write results. Every RPC (begin, reads, commit, rollback) is
        bounded by `timeout` with the store's short retries. Contention (Aborted, or a create
        that met a document created meanwhile) runs it again after a random pause, up to
        `max_attempts` times; any other commit error is a TransientError (whether it applied
        is unknown: the redelivery re-reads and finds the claim if it did)."""
        from google.api_core import exceptions

        client = self.client
        contention: BaseException | None = None
        retry_transaction: bytes | None = None
        for round_ in range(self.max_attempts):
            if round_:
                time.sleep(random.uniform(0.0, min(1.0, 0.1 * 2**round_)))
            transaction = firestore_sdk.bounded_transaction(
                client, self._retry(), self._retry(commit=True), self.timeout)
            with _Errors(operation):
                # a retry names the attempt that lost: it keeps that one's place in the
                # lock queue (what the SDK's own retry does), so it is not starved
                retry_transaction = transaction.begin_bounded(retry_transaction)
            try:
                result = attempt(transaction)
            except BaseException as exc:
                transaction.rollback_quietly()
                if not _aborted(exc):
                    raise
                contention = exc
                continue
            if not transaction.has_writes:
                transaction.rollback_quietly()  # read only: release what it read
                return result, []
            try:
                results: list[Any] = transaction.commit_bounded()
            except (exceptions.Aborted, exceptions.AlreadyExists) as exc:
                transaction.rollback_quietly()  # a failed commit may still hold its locks
                contention = exc
                continue
            except Exception as exc:
                transaction.rollback_quietly()
                raise TransientError(
                    f"Firestore {operation} for {what}: commit failed ({exc}); whether it "
                    "applied is unknown, a retry re-reads") from exc
            return result, results
        raise TransientError(
            f"Firestore {operation} for {what}: contention did not clear in "
            f"{self.max_attempts} attempts ({contention})")

    def update_run(
        self, run_id: str, from_states: frozenset[str], update: RunUpdate
    ) -> RunRecord | None:
        """Change a run if it is in one of `from_states` (a compare-and-set on the document's
        update time; inside `atomic()` it is committed with the unit)."""
        changes = update.changes()
        values = _run_values(changes)
        path = _run_path(run_id)
        for _ in range(self.max_attempts):
            data, update_time = self._get(path, "update_run")
            if data is None or data["state"] not in from_states:
                return None
            updated = {**data, **values}
            write = _Write("update", path, values, update_time=update_time, finishing=True)
            unit = self._scope()
            if unit is not None:
                unit.add(write)
                unit.overlay[path] = (updated, update_time)
                return _run(updated)
            try:
                self._commit([write], "update_run")
            except _Conflict:
                current, _ = self._get(path, "update_run")
                if current is not None and all(current.get(k) == v for k, v in values.items()):
                    return _run(current)  # a retried commit that had applied: it is ours
                continue  # changed since we read it: check the states again
            return _run(updated)
        raise TransientError(
            f"Firestore update_run {run_id}: the run kept changing ({self.max_attempts} tries)")

    def get_run(self, run_id: str) -> RunRecord | None:
        data, _ = self._get(_run_path(run_id), "get_run")
        return _run(data) if data is not None else None

    def runs(self, model: str | None = None, limit: int = 50) -> list[RunRecord]:
        if limit <= 0:
            return []
        query = self.client.collection(RUNS)
        if model is not None:
            query = query.where(filter=_field("model", "==", model))
        query = query.order_by("created_at", direction=_DESC).limit(limit)
        return [_run(doc) for doc in self._query(query, "runs")]

    def in_flight_runs(self, model: str | None = None) -> list[RunRecord]:
        found = [_run(doc) for doc in self._query(self._in_flight_query(model), "in_flight")]
        return sorted(found, key=lambda r: (r.created_at, r.run_id))

    # ------------------------------------------------------------------ decisions outbox
    def outbox(self, limit: int = 100) -> list[Decision]:
        if limit <= 0:
            return []
        query = self.client.collection(OUTBOX).order_by("at", direction=_ASC).limit(limit)
        return [Decision.from_json(json.loads(doc["body"]))
                for doc in self._query(query, "outbox")]

    def clear_outbox(self, decision_ids: Sequence[str]) -> None:
        client = self.client
        for start in range(0, len(decision_ids), MAX_BATCH_WRITES):
            batch = client.batch()
            for decision_id in decision_ids[start : start + MAX_BATCH_WRITES]:
                batch.delete(client.document(f"{OUTBOX}/{_doc_id(decision_id)}"))
            with _Errors("clear_outbox", commit=True):
                batch.commit(retry=self._retry(commit=True), timeout=self.timeout)

    # ------------------------------------------------------------------ incidents
    def record_incident(self, incident: IncidentRecord) -> None:
        """Compare-and-set on the incident's document (a closed one is never reopened)."""
        path = f"{INCIDENTS}/{_key(incident.model + '|' + incident.incident_id)}"
        data = {f.name: getattr(incident, f.name) for f in fields(IncidentRecord)}
        for _ in range(5):
            current, update_time = self._get(path, "record_incident")
            try:
                if current is None:
                    self._commit([_Write("create", path, data)], "record_incident")
                else:
                    merged = {**data, "open": bool(current.get("open")) and incident.open,
                              "at": max(float(current.get("at") or 0.0), incident.at)}
                    self._commit([_Write("update", path, merged, update_time)],
                                 "record_incident")
                return
            except (_Exists, _Conflict):
                continue  # changed meanwhile: read it again
        raise TransientError("Firestore record_incident: the incident kept changing; retry")

    def open_incidents(self, model: str) -> list[IncidentRecord]:
        query = (self.client.collection(INCIDENTS)
                 .where(filter=_field("model", "==", model))
                 .where(filter=_field("open", "==", True)))
        found = [IncidentRecord(doc["model"], doc["incident_id"], bool(doc["open"]),
                                doc.get("policy_name", ""), doc.get("condition_name", ""),
                                doc.get("summary", ""), float(doc.get("at") or 0.0))
                 for doc in self._query(query, "open_incidents")]
        return sorted(found, key=lambda i: i.at)

    def _in_flight_query(self, model: str | None) -> Any:
        query = self.client.collection(RUNS)
        if model is not None:
            query = query.where(filter=_field("model", "==", model))
        return query.where(filter=_field("state", "in", sorted(IN_FLIGHT)))


# ---------------------------------------------------------------------- unit of work
@dataclass
class _Write:
    """One buffered write; `finishing` writes go in the last batch of a commit."""

    kind: Literal["set", "merge", "create", "update"]
    path: str
    data: dict[str, Any]
    update_time: Any = None  # "update": the precondition
    finishing: bool = False


class _UnitOfWork:
    """The writes of one `atomic()` block (per thread), the documents they leave (`overlay`)
    and the model documents as first read in it (`read`: data or None, update time)."""

    def __init__(self) -> None:
        self.depth = 0
        self.writes: dict[str, _Write] = {}
        self.overlay: dict[str, tuple[dict[str, Any] | None, Any]] = {}
        self.read: dict[str, tuple[dict[str, Any] | None, Any]] = {}

    def add(self, write: _Write) -> None:
        """Later writes of one document replace earlier ones; writes of the same kind merge
        (the first one's precondition stays); a second create of one processed marker is the
        same create (the first stands)."""
        old = self.writes.get(write.path)
        marker = write.path.startswith(PROCESSED + "/")
        if old is not None and old.kind == write.kind and write.kind != "set":
            if write.kind == "create" and marker:
                return
            write = _Write(write.kind, write.path, {**old.data, **write.data}, old.update_time,
                           old.finishing or write.finishing)
        if write.kind == "create" and marker:
            self.overlay[write.path] = (write.data, None)
        self.writes[write.path] = write


class _Atomic:
    """`FirestoreStore.atomic()`: nested blocks join the outermost (a class: it is hot)."""

    def __init__(self, store: FirestoreStore) -> None:
        self.store = store

    def __enter__(self) -> _UnitOfWork:
        unit = self.store._scope()
        if unit is None:
            unit = _UnitOfWork()
            self.store._local.unit = unit
        unit.depth += 1
        return unit

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        unit = self.store._scope()
        assert unit is not None
        unit.depth -= 1
        if unit.depth:
            return
        self.store._local.unit = None
        if exc is not None:
            return  # discarded: nothing of the unit was committed (a claim commits itself)
        writes = list(unit.writes.values())
        for round_ in range(2):
            try:
                self.store._commit(writes, "atomic")
                return
            except _Exists as exists:
                if self.store._finished_elsewhere(writes):
                    # a concurrent delivery of the message finished it: its unit stands
                    self.store._keep_decisions(writes)
                    return
                error: Exception = exists
                why = "a document this unit of work creates was created meanwhile"
            except _Conflict as conflict:
                error = conflict
                why = ("a document this unit of work read (a run, or the model's champion "
                       "state) changed before it committed")
            remaining = self.store._rebased(writes, unit) if not round_ else None
            if remaining is None:
                raise TransientError(f"Firestore: {why} ({error}); retry the message") from error
            writes = remaining


class UnitTooLargeError(RuntimeError):
    """A unit of work holds more writes than one atomic commit takes (a bug or a policy file
    far beyond what one message should decide): never split, never half-applied."""


class _Exists(Exception):
    """A `create` met an existing document (processed marker, rejected event, model)."""


class _Conflict(Exception):
    """A conditional update met a document changed since it was read."""


def _aborted(exc: BaseException) -> bool:
    """True when `exc` (or what caused it) is Firestore aborting a transaction for contention."""
    from google.api_core import exceptions

    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, exceptions.Aborted):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class _Errors:
    """Maps google-cloud errors to the store's: transient ones to TransientError (a class:
    it is hot; the SDK's exception classes are imported only once an error happens)."""

    def __init__(self, operation: str, commit: bool = False) -> None:
        self.operation = operation
        self.commit = commit

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None or isinstance(exc, (TransientError, ConfigError, _Exists, _Conflict)):
            return
        from google.api_core import exceptions
        from google.auth import exceptions as auth_exceptions

        if self.commit and isinstance(exc, exceptions.AlreadyExists):
            raise _Exists(str(exc)) from exc
        if self.commit and isinstance(exc, exceptions.FailedPrecondition):
            raise _Conflict(str(exc)) from exc
        transient = (
            exceptions.ServiceUnavailable, exceptions.DeadlineExceeded, exceptions.Aborted,
            exceptions.InternalServerError, exceptions.ResourceExhausted, exceptions.Unknown,
            exceptions.GatewayTimeout, exceptions.Cancelled, exceptions.RetryError,
            auth_exceptions.TransportError,
        )
        if isinstance(exc, transient):
            raise TransientError(f"Firestore {self.operation} unavailable: {exc}") from exc


_CHAMPION_FIELDS = ("champion_version", "history_start")


def _champion_fields(data: Mapping[str, Any] | None) -> dict[str, Any]:
    return {key: (data or {}).get(key) for key in _CHAMPION_FIELDS}


def _evaluated_state(run: RunRecord,
                     seen: tuple[dict[str, Any] | None, Any] | None) -> dict[str, Any]:
    """The champion fields a claim must still find: the model state the unit's evaluation
    used (as read, with the unit's own change), else the champion the run's request was
    built for; nothing to check for a request that names none (a run built elsewhere)."""
    if seen is not None:
        return _champion_fields(seen[0])
    parameters = run.request.get("parameters")
    if isinstance(parameters, Mapping) and "champion_version" in parameters:
        return {"champion_version": parameters["champion_version"] or None}
    return {}


def _existing_claim(record: RunRecord) -> Claim:
    if record.state == "launching":
        return Claim("resume", record, "run claimed earlier but not yet submitted")
    return Claim("exists", record, f"run already {record.state}")


_STORES: weakref.WeakSet[FirestoreStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_STORES):
        store._forget_client()


os.register_at_fork(after_in_child=_after_fork_in_child)

_ASC = "ASCENDING"
_DESC = "DESCENDING"


def _field(path: str, op: str, value: Any) -> Any:
    from google.cloud.firestore_v1.base_query import FieldFilter

    return FieldFilter(path, op, value)


# ---------------------------------------------------------------------- ids and paths
def _key(text: str) -> str:
    """A document id for any text: readable prefix, sha256 suffix (no '/', never '__x__')."""
    prefix = ids.slug(text, 40)
    digest = ids.digest(text, length=20)
    return f"{prefix}-{digest}" if prefix else digest


def _doc_id(text: str) -> str:
    """`text` itself when it is a plain id (run and decision ids are), else `_key(text)`."""
    return text if _SAFE_ID.match(text) else _key(text)


def _model_path(model: str) -> str:
    return f"{MODELS}/{_key(model)}"


def _series_path(model: str, slice_: str, metric: str) -> str:
    return f"{_model_path(model)}/{SERIES}/{_key(ids.digest(slice_, metric, length=32))}"


def _point_path(model: str, slice_: str, metric: str, window_end: float) -> str:
    return f"{_series_path(model, slice_, metric)}/{POINTS}/{iso(window_end)}"


def _run_path(run_id: str) -> str:
    return f"{RUNS}/{_doc_id(run_id)}"


def _processed_path(message_id: str) -> str:
    return f"{PROCESSED}/{ids.digest(message_id, length=40)}"


def _rejected_path(message_id: str) -> str:
    return f"{REJECTED}/{ids.digest(message_id, length=40)}"


# ---------------------------------------------------------------------- records ⇄ documents
def _float(value: float | None) -> float | None:
    return None if value is None else float(value)


def _duration(text: str, option: str) -> timedelta:
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise ConfigError("RETRAIN_STATE", f"firestore:// option {option}: {exc}") from exc
    if value.total_seconds() <= 0:
        raise ConfigError("RETRAIN_STATE", f"firestore:// option {option} must be positive")
    return value


def _point_doc(p: StoredPoint) -> dict[str, Any]:
    return {
        "model": p.model, "slice": p.slice, "metric": p.metric,
        "window_end": float(p.window_end), "value": float(p.value), "examples": p.examples,
        "model_version": p.model_version, "message_id": p.message_id,
        "recorded_at": float(p.recorded_at), "window_start": _float(p.window_start),
    }


def _point(doc: Mapping[str, Any]) -> StoredPoint:
    return StoredPoint(
        model=doc["model"], slice=doc["slice"], metric=doc["metric"],
        window_end=doc["window_end"], value=doc["value"], examples=doc.get("examples"),
        model_version=doc.get("model_version"), message_id=doc.get("message_id"),
        recorded_at=doc.get("recorded_at") or 0.0, window_start=doc.get("window_start"),
    )


def _decision_doc(d: Decision) -> dict[str, Any]:
    return {
        "decision_id": d.decision_id, "model": d.model, "kind": d.kind, "at": float(d.at),
        "reason": d.reason, "policy": d.policy, "event_time": _float(d.event_time),
        "statistic": _float(d.statistic), "limit": _float(d.limit), "run_id": d.run_id,
        "trigger_id": d.trigger_id, "message_id": d.message_id, "details": dumps(d.details),
    }


def _decision(doc: Mapping[str, Any]) -> Decision:
    return Decision(
        decision_id=doc["decision_id"], model=doc["model"], kind=doc["kind"], at=doc["at"],
        reason=doc["reason"], policy=doc.get("policy"), event_time=doc.get("event_time"),
        statistic=doc.get("statistic"), limit=doc.get("limit"), run_id=doc.get("run_id"),
        trigger_id=doc.get("trigger_id"), message_id=doc.get("message_id"),
        details=json.loads(doc.get("details") or "{}"),
    )


def _run_values(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Run fields as stored: JSON text for `request`/`outcome`, floats for times."""
    values: dict[str, Any] = {}
    for key, value in changes.items():
        if key in ("request", "outcome"):
            values[key] = dumps(dict(value)) if value is not None else None
        elif key in ("created_at", "launched_at", "ended_at", "checked_at"):
            values[key] = _float(value)
        elif key == "forced":
            values[key] = bool(value)
        else:
            values[key] = value
    return values


def _run_doc(run: RunRecord) -> dict[str, Any]:
    return {"run_id": run.run_id,
            **_run_values({name: getattr(run, name) for name in _CHANGEABLE_RUN_FIELDS})}


def _run(doc: Mapping[str, Any]) -> RunRecord:
    outcome = doc.get("outcome")
    return RunRecord(
        run_id=doc["run_id"], model=doc["model"], policy=doc["policy"],
        trigger_id=doc["trigger_id"], state=doc["state"], reason=doc["reason"],
        created_at=doc["created_at"], request=json.loads(doc["request"]),
        forced=bool(doc.get("forced")), claimed_by=doc.get("claimed_by") or "",
        launched_at=doc.get("launched_at"), ended_at=doc.get("ended_at"),
        checked_at=doc.get("checked_at"), resource_name=doc.get("resource_name"),
        outcome=json.loads(outcome) if outcome else None, message=doc.get("message") or "",
    )
