"""The Firestore run claim: one read-write transaction that checks the guards and the champion
and writes the run, retried after a random pause when contention aborts it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from pipeline_client.errors import TransientError
from triggers.guards import Guards, check_guards, guard_window
from triggers.state import firestore_sdk
from triggers.state.firestore.documents import (
    DESC,
    RUNS,
    champion_fields,
    doc_of_run,
    model_doc_path,
    run_of_doc,
    run_path,
    where_field,
)
from triggers.state.firestore.unit import Errors, is_aborted
from triggers.state.protocol import Claim, RunRecord

if TYPE_CHECKING:
    from triggers.state.firestore.store import FirestoreStore

_T = TypeVar("_T")


def claim_run(
    store: FirestoreStore, run: RunRecord, guards: Guards, now: float, force: bool
) -> Claim:
    """Guards checked against the model's runs and the run written: one transaction.

    A plain (strongly consistent) read first answers what needs no write — the run
    exists, or the guards block — as it would at that instant; only a claim that looks
    possible runs the transaction, which checks everything again. A transaction aborted by
    contention is retried after a random pause, so contenders do not collide in lockstep.
    Both reads check that the champion is still the one the evaluation used (TransientError
    if not; see the package docstring).
    """
    client = store.client
    run_ref = client.document(run_path(run.run_id))
    model_path = model_doc_path(run.model)
    model_ref = client.document(model_path)
    in_flight = store._in_flight_query(run.model)
    recent = (client.collection(RUNS)
              .where(filter=where_field("model", "==", run.model))
              .where(filter=where_field("created_at", ">", float(now - guard_window(guards))))
              .order_by("created_at", direction=DESC))
    unit = store._scope()
    read = unit.read.get(model_path) if unit is not None else None
    # a champion this unit adopts or changes: committed with the claim, never after it
    pending = unit.writes.get(model_path) if unit is not None and read is not None else None
    evaluated = _evaluated_state(
        run, unit.overlay.get(model_path) if unit is not None and read is not None else None)
    # what the model document may hold: the evaluated state, or (before the claim
    # commits this unit's own pending change) the state the unit read
    allowed = [evaluated]
    if pending is not None and read is not None:
        allowed.append(champion_fields(read[0]))
    claim_fields = {"model": run.model, "claim_last_run": run.run_id,
                    "claim_last_at": float(now)}

    def judge(transaction: Any) -> Claim:
        """The answer as of these reads ("claimed" meaning: it may be claimed)."""
        with Errors("claim_run"):
            reader = transaction if transaction is not None else client
            snapshots = {s.reference.path: s for s in reader.get_all(
                [run_ref, model_ref], retry=store._retry(), timeout=store.timeout)}
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
            return _existing_claim(run_of_doc(existing.to_dict()))
        runs = {doc["run_id"]: run_of_doc(doc) for query in (in_flight, recent)
                for doc in store._query(query, "claim_run", transaction)}
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
            transaction.create(run_ref, doc_of_run(run))
            model_data = {**(pending.data if pending is not None else {}), **claim_fields}
            transaction.set(model_ref, model_data, merge=True)
        return claim

    seen = judge(None)
    if seen.status != "claimed":
        return seen
    claim, results = transact(store, attempt, "claim_run", f"model {run.model!r}")
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

def transact(store: FirestoreStore, attempt: Callable[[Any], _T], operation: str,
              what: str) -> tuple[_T, list[Any]]:
    """Run `attempt(transaction)` in a read-write transaction and commit what it wrote: its
    result and the commit's write results. Every RPC (begin, reads, commit, rollback) is
    bounded by `timeout` with the store's short retries. Contention (Aborted, or a create
    that met a document created meanwhile) runs it again after a random pause, up to
    `max_attempts` times, in a transaction that names the first attempt as the one it
    retries; any other commit error is a TransientError (whether it applied is unknown: the
    redelivery re-reads and finds the claim if it did)."""
    from google.api_core import exceptions

    client = store.client
    contention: BaseException | None = None
    first_attempt: bytes | None = None
    for round_ in range(store.max_attempts):
        if round_:
            time.sleep(random.uniform(0.0, min(1.0, 0.1 * 2**round_)))
        transaction = firestore_sdk.bounded_transaction(
            client, store._retry(), store._retry(commit=True), store.timeout)
        with Errors(operation):
            # Every retry names the FIRST attempt (`retry_transaction`), as the SDK's own
            # retry does (`_Transactional.retry_id`): the operation keeps the place in the
            # lock queue it took when it began, however often it lost since.
            began = transaction.begin_bounded(first_attempt)
        if first_attempt is None:
            first_attempt = began
        try:
            result = attempt(transaction)
        except BaseException as exc:
            transaction.rollback_quietly()
            if not is_aborted(exc):
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
        f"{store.max_attempts} attempts ({contention})")


def _evaluated_state(run: RunRecord,
                     seen: tuple[dict[str, Any] | None, Any] | None) -> dict[str, Any]:
    """The champion fields a claim must still find: the model state the unit's evaluation
    used (as read, with the unit's own change), else the champion the run's request was
    built for; nothing to check for a request that names none (a run built elsewhere)."""
    if seen is not None:
        return champion_fields(seen[0])
    parameters = run.request.get("parameters")
    if isinstance(parameters, Mapping) and "champion_version" in parameters:
        return {"champion_version": parameters["champion_version"] or None}
    return {}


def _existing_claim(record: RunRecord) -> Claim:
    if record.state == "launching":
        return Claim("resume", record, "run claimed earlier but not yet submitted")
    return Claim("exists", record, f"run already {record.state}")
