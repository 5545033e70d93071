"""Structured logs in Cloud Logging's JSON format, one object per line, through `logging`.

The records come from `triggers.logs.log_event` (labels and fields on the record).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

LABELS_KEY = "logging.googleapis.com/labels"
_SEVERITY = {
    logging.DEBUG: "DEBUG",
    logging.INFO: "INFO",
    logging.WARNING: "WARNING",
    logging.ERROR: "ERROR",
    logging.CRITICAL: "CRITICAL",
}


class CloudLoggingFormatter(logging.Formatter):
    """Formats a record as Cloud Logging structured JSON (severity, message, labels, fields)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": _SEVERITY.get(record.levelno, "DEFAULT"),
            "message": record.getMessage(),
            "time": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
            "logger": record.name,
        }
        labels = getattr(record, "labels", None)
        if labels:
            entry[LABELS_KEY] = {k: str(v) for k, v in labels.items() if v is not None}
        fields = getattr(record, "fields", None)
        if fields:
            for key, value in fields.items():
                entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(level: int = logging.INFO, stream: Any = None) -> None:
    """Send the service's logs to stderr as structured JSON (idempotent)."""
    root = logging.getLogger("retrain")
    if any(isinstance(h.formatter, CloudLoggingFormatter) for h in root.handlers):
        return
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(CloudLoggingFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
