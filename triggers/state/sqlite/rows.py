"""The SQLite store's rows <-> records: the column lists, decoding a row into a point, decision
or run, and inserting decisions.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from thresholds.records import fields
from triggers.state.protocol import (
    Decision,
    RunRecord,
    StoredPoint,
    dumps,
)

POINT_COLUMNS = ", ".join(f.name for f in fields(StoredPoint))
RUN_COLUMNS = (
    "run_id model policy trigger_id state reason created_at request forced claimed_by launched_at "
    "ended_at checked_at resource_name outcome message"
).split()

def insert_decisions(conn: sqlite3.Connection, decisions: Sequence[Decision],
                     told: Sequence[Decision]) -> None:
    """Each decision, and the `told` ones in the outbox too."""
    conn.executemany(
        "INSERT OR REPLACE INTO decisions (decision_id, model, kind, at, reason, policy,"
        " event_time, statistic, limit_value, run_id, trigger_id, message_id, details)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                d.decision_id,
                d.model,
                d.kind,
                d.at,
                d.reason,
                d.policy,
                d.event_time,
                d.statistic,
                d.limit,
                d.run_id,
                d.trigger_id,
                d.message_id,
                dumps(d.details),
            )
            for d in decisions
        ],
    )
    conn.executemany(
        "INSERT OR REPLACE INTO outbox (decision_id, at, body) VALUES (?, ?, ?)",
        [(d.decision_id, d.at, dumps(d.to_json())) for d in told])

def point_of_row(row: sqlite3.Row) -> StoredPoint:
    return StoredPoint(*row)  # POINT_COLUMNS are StoredPoint's fields, in order


def decision_of_row(row: sqlite3.Row) -> Decision:
    return Decision(
        decision_id=row["decision_id"],
        model=row["model"],
        kind=row["kind"],
        at=row["at"],
        reason=row["reason"],
        policy=row["policy"],
        event_time=row["event_time"],
        statistic=row["statistic"],
        limit=row["limit_value"],
        run_id=row["run_id"],
        trigger_id=row["trigger_id"],
        message_id=row["message_id"],
        details=json.loads(row["details"]),
    )


def run_of_row(row: sqlite3.Row) -> RunRecord:
    return RunRecord(
        run_id=row["run_id"],
        model=row["model"],
        policy=row["policy"],
        trigger_id=row["trigger_id"],
        state=row["state"],
        reason=row["reason"],
        created_at=row["created_at"],
        request=json.loads(row["request"]),
        forced=bool(row["forced"]),
        claimed_by=row["claimed_by"],
        launched_at=row["launched_at"],
        ended_at=row["ended_at"],
        checked_at=row["checked_at"],
        resource_name=row["resource_name"],
        outcome=json.loads(row["outcome"]) if row["outcome"] else None,
        message=row["message"],
    )


def row_of_run(run: RunRecord) -> tuple[Any, ...]:
    return (
        run.run_id,
        run.model,
        run.policy,
        run.trigger_id,
        run.state,
        run.reason,
        run.created_at,
        dumps(dict(run.request)),
        int(run.forced),
        run.claimed_by,
        run.launched_at,
        run.ended_at,
        run.checked_at,
        run.resource_name,
        dumps(dict(run.outcome)) if run.outcome is not None else None,
        run.message,
    )
