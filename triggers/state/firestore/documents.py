"""How the Firestore store lays out its documents: collection names, deterministic ids and
paths, records <-> documents, query filters and the retention (TTL) settings.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from thresholds.records import fields
from triggers import ids
from triggers.state.protocol import Decision, RunRecord, StoredPoint, dumps, iso

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

DEFAULT_RETENTION = timedelta(days=400)
PROCESSED_MIN_RETENTION = timedelta(days=31)
"""Processed markers outlive Pub/Sub's longest message retention (31 days), whatever
`retention` says: an expired marker would let a late redelivery act twice."""
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
_RUN_FIELDS = tuple(f.name for f in fields(RunRecord))
_CHANGEABLE_RUN_FIELDS = frozenset(_RUN_FIELDS) - {"run_id"}
_CHAMPION_FIELDS = ("champion_version", "history_start")


def champion_fields(data: Mapping[str, Any] | None) -> dict[str, Any]:
    return {key: (data or {}).get(key) for key in _CHAMPION_FIELDS}

ASC = "ASCENDING"
DESC = "DESCENDING"


def where_field(path: str, op: str, value: Any) -> Any:
    from google.cloud.firestore_v1.base_query import FieldFilter

    return FieldFilter(path, op, value)


# ---------------------------------------------------------------------- ids and paths
def key_of(text: str) -> str:
    """A document id for any text: readable prefix, sha256 suffix (no '/', never '__x__')."""
    prefix = ids.slug(text, 40)
    digest = ids.digest(text, length=20)
    return f"{prefix}-{digest}" if prefix else digest


def doc_id_of(text: str) -> str:
    """`text` itself when it is a plain id (run and decision ids are), else `key_of(text)`."""
    return text if _SAFE_ID.match(text) else key_of(text)


def model_doc_path(model: str) -> str:
    return f"{MODELS}/{key_of(model)}"


def series_path(model: str, slice_: str, metric: str) -> str:
    return f"{model_doc_path(model)}/{SERIES}/{key_of(ids.digest(slice_, metric, length=32))}"


def point_path(model: str, slice_: str, metric: str, window_end: float) -> str:
    return f"{series_path(model, slice_, metric)}/{POINTS}/{iso(window_end)}"


def run_path(run_id: str) -> str:
    return f"{RUNS}/{doc_id_of(run_id)}"


def processed_path(message_id: str) -> str:
    return f"{PROCESSED}/{ids.digest(message_id, length=40)}"


def rejected_path(message_id: str) -> str:
    return f"{REJECTED}/{ids.digest(message_id, length=40)}"


# ---------------------------------------------------------------------- records ⇄ documents
def float_or_none(value: float | None) -> float | None:
    return None if value is None else float(value)


def doc_of_point(p: StoredPoint) -> dict[str, Any]:
    return {
        "model": p.model, "slice": p.slice, "metric": p.metric,
        "window_end": float(p.window_end), "value": float(p.value), "examples": p.examples,
        "model_version": p.model_version, "message_id": p.message_id,
        "recorded_at": float(p.recorded_at), "window_start": float_or_none(p.window_start),
    }


def point_of_doc(doc: Mapping[str, Any]) -> StoredPoint:
    return StoredPoint(
        model=doc["model"], slice=doc["slice"], metric=doc["metric"],
        window_end=doc["window_end"], value=doc["value"], examples=doc.get("examples"),
        model_version=doc.get("model_version"), message_id=doc.get("message_id"),
        recorded_at=doc.get("recorded_at") or 0.0, window_start=doc.get("window_start"),
    )


def doc_of_decision(d: Decision) -> dict[str, Any]:
    return {
        "decision_id": d.decision_id, "model": d.model, "kind": d.kind, "at": float(d.at),
        "reason": d.reason, "policy": d.policy, "event_time": float_or_none(d.event_time),
        "statistic": float_or_none(d.statistic), "limit": float_or_none(d.limit),
        "run_id": d.run_id, "trigger_id": d.trigger_id, "message_id": d.message_id,
        "details": dumps(d.details),
    }


def decision_of_doc(doc: Mapping[str, Any]) -> Decision:
    return Decision(
        decision_id=doc["decision_id"], model=doc["model"], kind=doc["kind"], at=doc["at"],
        reason=doc["reason"], policy=doc.get("policy"), event_time=doc.get("event_time"),
        statistic=doc.get("statistic"), limit=doc.get("limit"), run_id=doc.get("run_id"),
        trigger_id=doc.get("trigger_id"), message_id=doc.get("message_id"),
        details=json.loads(doc.get("details") or "{}"),
    )


def run_values(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Run fields as stored: JSON text for `request`/`outcome`, floats for times."""
    values: dict[str, Any] = {}
    for key, value in changes.items():
        if key in ("request", "outcome"):
            values[key] = dumps(dict(value)) if value is not None else None
        elif key in ("created_at", "launched_at", "ended_at", "checked_at"):
            values[key] = float_or_none(value)
        elif key == "forced":
            values[key] = bool(value)
        else:
            values[key] = value
    return values


def doc_of_run(run: RunRecord) -> dict[str, Any]:
    return {"run_id": run.run_id,
            **run_values({name: getattr(run, name) for name in _CHANGEABLE_RUN_FIELDS})}


def run_of_doc(doc: Mapping[str, Any]) -> RunRecord:
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
