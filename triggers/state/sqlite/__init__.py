"""SQLite implementation of the state store: one WAL file, safe across processes and threads.

`store` (SQLiteStore), `schema` (tables and migrations), `rows` (rows <-> records).
"""

from __future__ import annotations

from triggers.state.sqlite.rows import POINT_COLUMNS
from triggers.state.sqlite.schema import SCHEMA, apply_schema
from triggers.state.sqlite.store import DEFAULT_RETENTION, EXPIRE_BATCH, SQLiteStore, path_from_url

__all__ = [
    "DEFAULT_RETENTION",
    "EXPIRE_BATCH",
    "POINT_COLUMNS",
    "SCHEMA",
    "SQLiteStore",
    "apply_schema",
    "path_from_url",
]
