"""The Firestore state store (`RETRAIN_STATE=firestore://[database]`): the StateStore methods,
the lazily built client and the batch commits (the design is in the package docstring).
"""

from __future__ import annotations

import json
import os
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pipeline_client.errors import ConfigError, TransientError
from thresholds.durations import format_duration
from thresholds.records import fields
from triggers.guards import Guards
from triggers.state import firestore_sdk
from triggers.state.firestore import claim
from triggers.state.firestore.documents import (
    ASC,
    DECISIONS,
    DEFAULT_RETENTION,
    DESC,
    INCIDENTS,
    MODELS,
    OUTBOX,
    POINTS,
    PROCESSED,
    PROCESSED_MIN_RETENTION,
    REJECTED,
    RUNS,
    champion_fields,
    decision_of_doc,
    doc_id_of,
    doc_of_decision,
    doc_of_point,
    float_or_none,
    key_of,
    model_doc_path,
    point_of_doc,
    point_path,
    processed_path,
    rejected_path,
    run_of_doc,
    run_path,
    run_values,
    series_path,
    where_field,
)
from triggers.state.firestore.settings import (
    DEFAULT_DATABASE,
    DEFAULT_TIMEOUT,
    FirestoreSettings,
)
from triggers.state.firestore.unit import (
    Atomic,
    Conflict,
    Errors,
    Exists,
    UnitOfWork,
    UnitTooLargeError,
    Write,
)
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

MAX_BATCH_WRITES = 500


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
        settings = FirestoreSettings(database, project, retention, timeout)  # checks them
        self.database = settings.database
        self.project = settings.project
        self.retention = settings.retention
        self.timeout = settings.timeout
        self.max_attempts = max_attempts
        self.outbox_switch = OutboxSwitch()
        self.executed_queries: list[Any] | None = None
        """Set to a list to collect every query (StructuredQuery protobuf) the store runs."""
        self._client: Any = None
        self._retries: dict[bool, Any] = {}
        self._client_lock = threading.Lock()
        self._local = threading.local()
        self._claim_locks: dict[str, threading.Lock] = {}
        """One per model: this instance's threads claim a model one at a time (see claim_run)."""
        _STORES.add(self)

    @classmethod
    def from_url(cls, url: str, environ: Mapping[str, str] | None = None) -> FirestoreStore:
        """The store a `firestore://[database][?retention=400d&timeout=10s]` URL names."""
        settings = FirestoreSettings.from_url(url, os.environ if environ is None else environ)
        return cls(settings.database, settings.project, settings.retention, settings.timeout)

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
        self._claim_locks = {}  # (a parent's thread may have held one at the fork)

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _scope(self) -> UnitOfWork | None:
        unit: UnitOfWork | None = getattr(self._local, "unit", None)
        return unit

    def atomic(self) -> Atomic:
        """A unit of work: finishing writes inside are committed in one batch at the end (see
        the package docstring for what that does and does not cover)."""
        return Atomic(self)

    def _write(self, writes: Sequence[Write], operation: str) -> None:
        """Buffer `writes` in the open unit of work, or commit them now (one batch)."""
        unit = self._scope()
        if unit is not None:
            for write in writes:
                unit.add(write)
            return
        try:
            self._commit(writes, operation)
        except Exists as exists:
            if not self._finished_elsewhere(writes):
                raise TransientError(
                    f"Firestore {operation}: a document it creates exists already ({exists}); "
                    "retry") from exists
            # a concurrent delivery created the processed marker first: its batch stands
            self._keep_decisions(writes)

    def _keep_decisions(self, writes: Sequence[Write]) -> None:
        """The audit entries of a delivery whose message a concurrent delivery finished first:
        each delivery's decisions are kept (as SQLite keeps both), so a run this one launched
        is never explained only by the other's "suppressed"."""
        decisions = [w for w in writes if w.path.startswith(DECISIONS + "/")]
        self._commit(decisions, "finish_message")  # sets: no Exists or Conflict

    def _finished_elsewhere(self, writes: Sequence[Write]) -> bool:
        """After AlreadyExists: whether the batch's processed marker exists now (a concurrent
        delivery of the message finished it) — the one conflict that means "done"."""
        markers = [w.path for w in writes
                   if w.kind == "create" and w.path.startswith(PROCESSED + "/")]
        return bool(markers) and all(
            self._get(path, "finish_message")[0] is not None for path in markers)

    def _rebased(self, writes: Sequence[Write], unit: UnitOfWork) -> list[Write] | None:
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
                if champion_fields(current) == champion_fields(write.data):
                    changed = True
                    continue
                if champion_fields(current) != champion_fields(read):
                    return None
                if update_time != write.update_time:
                    write = Write("update", write.path, write.data, update_time, True)
                    changed = True
            rebased.append(write)
        return rebased if changed else None

    def _commit(self, writes: Sequence[Write], operation: str, split: bool = False) -> None:
        """Commit `writes` in one batch (atomic). Only with `split` (independent, idempotent
        writes: points) are more than 500 committed in several batches; otherwise that many
        raise UnitTooLargeError.

        Raises Exists (a `create` met an existing document), Conflict (a document changed
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
            with Errors(operation, commit=True):
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
        with Errors(operation):
            snapshot = self.client.document(path).get(retry=self._retry(), timeout=self.timeout)
        if not snapshot.exists:
            return None, None
        return snapshot.to_dict(), snapshot.update_time

    def _query(self, query: Any, operation: str, transaction: Any = None) -> list[dict[str, Any]]:
        if self.executed_queries is not None:
            self.executed_queries.append(firestore_sdk.query_protobuf(query))
        with Errors(operation):
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
        data, _ = self._get(processed_path(message_id), "is_processed")
        return data is not None

    def finish_message(self, message_id: str, at: float, decisions: Sequence[Decision],
                       ignored_metrics: int = 0) -> None:
        ignored = {"ignored_metrics": ignored_metrics} if ignored_metrics else {}
        marker = Write("create", processed_path(message_id),
                        {"message_id": message_id, "at": float(at), **ignored,
                         **self._expire_at(at, PROCESSED_MIN_RETENTION)},
                        finishing=True)
        self._write([*self._decision_writes(decisions), marker], "finish_message")

    def ignored_metrics(self, message_id: str) -> int | None:
        data, _ = self._get(processed_path(message_id), "ignored_metrics")
        return None if data is None else int(data.get("ignored_metrics") or 0)

    # ------------------------------------------------------------------ points
    def record_points(self, points: Sequence[StoredPoint]) -> None:
        """Written through at once, even inside `atomic()` (see the package docstring)."""
        writes = [Write("set", point_path(p.model, p.slice, p.metric, p.window_end),
                         {**doc_of_point(p), **self._expire_at(p.recorded_at)}) for p in points]
        try:
            self._commit(writes, "record_points", split=True)
        except (Exists, Conflict) as exc:  # pragma: no cover - sets never do
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
        query = self.client.collection(f"{series_path(model, slice_, metric)}/{POINTS}")
        if since is not None:
            query = query.where(filter=where_field("window_end", ">", float(since)))
        if until is not None:
            query = query.where(filter=where_field("window_end", "<=", float(until)))
        query = query.order_by("window_end", direction=ASC if oldest else DESC)
        if limit is not None:
            query = query.limit(limit)
        found = [point_of_doc(doc) for doc in self._query(query, "points")]
        return found if oldest else found[::-1]

    def latest_points(self, model: str, limit: int) -> list[StoredPoint]:
        if limit <= 0:
            return []
        query = (self.client.collection_group(POINTS)
                 .where(filter=where_field("model", "==", model))
                 .order_by("window_end", direction=DESC)
                 .order_by("metric", direction=ASC)
                 .limit(limit))
        return [point_of_doc(doc) for doc in self._query(query, "latest_points")]

    # ------------------------------------------------------------------ rejected events
    def record_rejected(self, event: RejectedEvent) -> None:
        data = {f.name: getattr(event, f.name) for f in fields(RejectedEvent)}
        data["at"] = float(event.at)
        write = Write("create", rejected_path(event.message_id),
                       {**data, **self._expire_at(event.at)})
        try:
            self._commit([write], "record_rejected")
        except Exists:
            pass  # rejected before: the first record stands

    def rejected_events(self, limit: int = 100) -> list[RejectedEvent]:
        if limit <= 0:
            return []
        query = self.client.collection(REJECTED).order_by("at", direction=DESC).limit(limit)
        return [RejectedEvent(doc["message_id"], doc["at"], doc["source"], doc["field"],
                              doc["reason"], doc["payload"], doc.get("model"))
                for doc in self._query(query, "rejected_events")]

    # ------------------------------------------------------------------ decisions
    def _decision_writes(self, decisions: Sequence[Decision]) -> list[Write]:
        """Each decision, and (in the same batch) its outbox entry if it is told."""
        written = time.time_ns()
        return [
            Write("set", f"{DECISIONS}/{doc_id_of(d.decision_id)}",
                   {**doc_of_decision(d), "written_ns": written + i, **self._expire_at(d.at)})
            for i, d in enumerate(decisions)
        ] + [
            Write("set", f"{OUTBOX}/{doc_id_of(d.decision_id)}",
                   {"decision_id": d.decision_id, "at": float(d.at), "body": dumps(d.to_json())})
            for d in self.outbox_switch.told(decisions)
        ]

    def record_decisions(self, decisions: Sequence[Decision]) -> None:
        self._write(self._decision_writes(decisions), "record_decisions")

    def decisions(self, model: str | None = None, limit: int = 50) -> list[Decision]:
        if limit <= 0:
            return []
        query = self.client.collection(DECISIONS)
        if model is not None:
            query = query.where(filter=where_field("model", "==", model))
        query = (query.order_by("at", direction=DESC)
                 .order_by("written_ns", direction=DESC).limit(limit))
        return [decision_of_doc(doc) for doc in self._query(query, "decisions")]

    # ------------------------------------------------------------------ models
    def model_state(self, model: str) -> ModelState:
        """Inside `atomic()` the first read is remembered (with the document's update time):
        later reads in the unit return it, a champion change in the unit is written on
        condition that the document is still as read, and a claim checks it."""
        path = model_doc_path(model)
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
                "history_start": float_or_none(state.history_start),
                "updated_at": float_or_none(state.updated_at)}
        path = model_doc_path(state.model)
        unit = self._scope()
        if unit is None:
            self._write([Write("merge", path, data, finishing=True)], "set_model_state")
            return
        current, update_time = unit.overlay.get(path, (None, None))
        unit.overlay[path] = ({**(current or {}), **data}, update_time)
        read = unit.read.get(path)
        if read is None:
            unit.add(Write("merge", path, data, finishing=True))
        elif read[0] is None:
            unit.add(Write("create", path, data, finishing=True))
        else:
            unit.add(Write("update", path, data, update_time=read[1], finishing=True))

    # ------------------------------------------------------------------ runs
    def claim_run(self, run: RunRecord, guards: Guards, now: float, force: bool) -> Claim:
        """Guards checked against the model's runs and the run written: one transaction (see
        `claim.claim_run`). This instance's threads claim one model one at a time: their
        transactions would only lock each other out (Firestore aborts one of two that touch
        the model's documents), so they queue here and each reads what the previous wrote."""
        with self._client_lock:
            lock = self._claim_locks.setdefault(run.model, threading.Lock())
        with lock:
            return claim.claim_run(self, run, guards, now, force)

    def update_run(
        self, run_id: str, from_states: frozenset[str], update: RunUpdate
    ) -> RunRecord | None:
        """Change a run if it is in one of `from_states` (a compare-and-set on the document's
        update time; inside `atomic()` it is committed with the unit)."""
        changes = update.changes()
        values = run_values(changes)
        path = run_path(run_id)
        for _ in range(self.max_attempts):
            data, update_time = self._get(path, "update_run")
            if data is None or data["state"] not in from_states:
                return None
            updated = {**data, **values}
            write = Write("update", path, values, update_time=update_time, finishing=True)
            unit = self._scope()
            if unit is not None:
                unit.add(write)
                unit.overlay[path] = (updated, update_time)
                return run_of_doc(updated)
            try:
                self._commit([write], "update_run")
            except Conflict:
                current, _ = self._get(path, "update_run")
                if current is not None and all(current.get(k) == v for k, v in values.items()):
                    return run_of_doc(current)  # a retried commit that had applied: it is ours
                continue  # changed since we read it: check the states again
            return run_of_doc(updated)
        raise TransientError(
            f"Firestore update_run {run_id}: the run kept changing ({self.max_attempts} tries)")

    def get_run(self, run_id: str) -> RunRecord | None:
        data, _ = self._get(run_path(run_id), "get_run")
        return run_of_doc(data) if data is not None else None

    def runs(self, model: str | None = None, limit: int = 50) -> list[RunRecord]:
        if limit <= 0:
            return []
        query = self.client.collection(RUNS)
        if model is not None:
            query = query.where(filter=where_field("model", "==", model))
        query = query.order_by("created_at", direction=DESC).limit(limit)
        return [run_of_doc(doc) for doc in self._query(query, "runs")]

    def in_flight_runs(self, model: str | None = None) -> list[RunRecord]:
        found = [run_of_doc(doc) for doc in self._query(self._in_flight_query(model), "in_flight")]
        return sorted(found, key=lambda r: (r.created_at, r.run_id))

    # ------------------------------------------------------------------ decisions outbox
    def outbox(self, limit: int = 100) -> list[Decision]:
        if limit <= 0:
            return []
        query = self.client.collection(OUTBOX).order_by("at", direction=ASC).limit(limit)
        return [Decision.from_json(json.loads(doc["body"]))
                for doc in self._query(query, "outbox")]

    def clear_outbox(self, decision_ids: Sequence[str]) -> None:
        client = self.client
        for start in range(0, len(decision_ids), MAX_BATCH_WRITES):
            batch = client.batch()
            for decision_id in decision_ids[start : start + MAX_BATCH_WRITES]:
                batch.delete(client.document(f"{OUTBOX}/{doc_id_of(decision_id)}"))
            with Errors("clear_outbox", commit=True):
                batch.commit(retry=self._retry(commit=True), timeout=self.timeout)

    # ------------------------------------------------------------------ incidents
    def record_incident(self, incident: IncidentRecord) -> None:
        """Compare-and-set on the incident's document (a closed one is never reopened)."""
        path = f"{INCIDENTS}/{key_of(incident.model + '|' + incident.incident_id)}"
        data = {f.name: getattr(incident, f.name) for f in fields(IncidentRecord)}
        for _ in range(5):
            current, update_time = self._get(path, "record_incident")
            try:
                if current is None:
                    self._commit([Write("create", path, data)], "record_incident")
                else:
                    merged = {**data, "open": bool(current.get("open")) and incident.open,
                              "at": max(float(current.get("at") or 0.0), incident.at)}
                    self._commit([Write("update", path, merged, update_time)],
                                 "record_incident")
                return
            except (Exists, Conflict):
                continue  # changed meanwhile: read it again
        raise TransientError("Firestore record_incident: the incident kept changing; retry")

    def open_incidents(self, model: str) -> list[IncidentRecord]:
        query = (self.client.collection(INCIDENTS)
                 .where(filter=where_field("model", "==", model))
                 .where(filter=where_field("open", "==", True)))
        found = [IncidentRecord(doc["model"], doc["incident_id"], bool(doc["open"]),
                                doc.get("policy_name", ""), doc.get("condition_name", ""),
                                doc.get("summary", ""), float(doc.get("at") or 0.0))
                 for doc in self._query(query, "open_incidents")]
        return sorted(found, key=lambda i: i.at)

    def _in_flight_query(self, model: str | None) -> Any:
        query = self.client.collection(RUNS)
        if model is not None:
            query = query.where(filter=where_field("model", "==", model))
        return query.where(filter=where_field("state", "in", sorted(IN_FLIGHT)))

_STORES: weakref.WeakSet[FirestoreStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_STORES):
        store._forget_client()


os.register_at_fork(after_in_child=_after_fork_in_child)
