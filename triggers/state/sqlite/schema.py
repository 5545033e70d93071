"""The SQLite store's tables (created if missing) and the migrations that bring a file from an
earlier release up to date.
"""

from __future__ import annotations

import contextlib
import sqlite3

SCHEMA = """
CREATE TABLE IF NOT EXISTS points (
    model TEXT NOT NULL, slice TEXT NOT NULL, metric TEXT NOT NULL, window_end REAL NOT NULL,
    value REAL NOT NULL, examples INTEGER, model_version TEXT, message_id TEXT,
    recorded_at REAL NOT NULL, window_start REAL,
    PRIMARY KEY (model, slice, metric, window_end)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS points_by_model_time ON points (model, window_end);
CREATE TABLE IF NOT EXISTS series_marks (
    model TEXT NOT NULL, slice TEXT NOT NULL, metric TEXT NOT NULL, writes INTEGER NOT NULL,
    token INTEGER NOT NULL, PRIMARY KEY (model, slice, metric)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS processed (
    message_id TEXT PRIMARY KEY, at REAL NOT NULL, ignored_metrics INTEGER
);
CREATE TABLE IF NOT EXISTS rejected (
    message_id TEXT PRIMARY KEY, at REAL NOT NULL, source TEXT NOT NULL, field TEXT NOT NULL,
    reason TEXT NOT NULL, payload TEXT NOT NULL, model TEXT
);
CREATE INDEX IF NOT EXISTS rejected_by_time ON rejected (at);
CREATE TABLE IF NOT EXISTS decisions (
    decision_id TEXT PRIMARY KEY, model TEXT NOT NULL, kind TEXT NOT NULL, at REAL NOT NULL,
    reason TEXT NOT NULL, policy TEXT, event_time REAL, statistic REAL, limit_value REAL,
    run_id TEXT, trigger_id TEXT, message_id TEXT, details TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_by_time ON decisions (at);
CREATE INDEX IF NOT EXISTS decisions_by_model_time ON decisions (model, at);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, model TEXT NOT NULL, policy TEXT NOT NULL, trigger_id TEXT NOT NULL,
    state TEXT NOT NULL, reason TEXT NOT NULL, created_at REAL NOT NULL, request TEXT NOT NULL,
    forced INTEGER NOT NULL, claimed_by TEXT NOT NULL, launched_at REAL, ended_at REAL,
    checked_at REAL, resource_name TEXT, outcome TEXT, message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_model_time ON runs (model, created_at);
CREATE INDEX IF NOT EXISTS runs_by_state ON runs (state);
CREATE TABLE IF NOT EXISTS outbox (
    decision_id TEXT PRIMARY KEY, at REAL NOT NULL, body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_by_time ON outbox (at);
CREATE TABLE IF NOT EXISTS incidents (
    model TEXT NOT NULL, incident_id TEXT NOT NULL, open INTEGER NOT NULL,
    policy_name TEXT NOT NULL, condition_name TEXT NOT NULL, summary TEXT NOT NULL,
    at REAL NOT NULL, PRIMARY KEY (model, incident_id)
);
CREATE TABLE IF NOT EXISTS models (
    model TEXT PRIMARY KEY, champion_version TEXT, history_start REAL, updated_at REAL
);
"""


def apply_schema(conn: sqlite3.Connection) -> None:
    """Create the tables a file lacks and add the columns a file from an earlier release lacks
    (safe when another process does the same at once)."""
    conn.executescript(SCHEMA)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(processed)")}
    if "ignored_metrics" not in columns:  # a file from before the column
        with contextlib.suppress(sqlite3.OperationalError):  # another process did
            conn.execute("ALTER TABLE processed ADD COLUMN ignored_metrics INTEGER")
