"""Where the Firestore store is and how it is tuned: the `RETRAIN_STATE` URL
(`firestore://[database][?retention=400d&timeout=10s]`), checked field by field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

from pipeline_client.errors import ConfigError
from thresholds.durations import parse_duration
from thresholds.records import record
from triggers.state.firestore.documents import DEFAULT_RETENTION

DEFAULT_DATABASE = "(default)"
DEFAULT_TIMEOUT = 10.0
_DATABASE_ID = re.compile(r"^[a-z][a-z0-9-]{2,61}[a-z0-9]$")
URL_OPTIONS = ("retention", "timeout")


@record
class FirestoreSettings:
    """The store's database (of `project`; None: google.auth's), how long documents are kept
    (None: forever) and the timeout of one call, in seconds."""

    database: str = DEFAULT_DATABASE
    project: str | None = None
    retention: timedelta | None = DEFAULT_RETENTION
    timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        if self.database != DEFAULT_DATABASE and not _DATABASE_ID.match(self.database):
            raise ConfigError(
                "RETRAIN_STATE",
                f"{self.database!r} is not a Firestore database id (4-63 lower-case letters, "
                "digits and hyphens) or (default)")
        if self.retention is not None and self.retention.total_seconds() <= 0:
            raise ConfigError(
                "RETRAIN_STATE",
                "firestore:// option retention must be positive (write retention=none to keep "
                "documents forever)")

    @classmethod
    def from_url(cls, url: str, environ: Mapping[str, str]) -> FirestoreSettings:
        """The settings a `firestore://` URL names (the project from GOOGLE_CLOUD_PROJECT)."""
        parts = urlsplit(url)
        if parts.scheme != "firestore":
            raise ConfigError("RETRAIN_STATE", f"{url!r} is not a firestore:// URL")
        if parts.path not in ("", "/") or parts.fragment:
            raise ConfigError(
                "RETRAIN_STATE", f"{url!r}: write firestore://DATABASE (no path after it)")
        options = parse_qs(parts.query, keep_blank_values=True)
        unknown = sorted(set(options) - set(URL_OPTIONS))
        if unknown:
            raise ConfigError(
                "RETRAIN_STATE",
                f"unknown option {unknown[0]!r} in {url!r} (known: {', '.join(URL_OPTIONS)})")
        retention: timedelta | None = DEFAULT_RETENTION
        timeout = DEFAULT_TIMEOUT
        if "retention" in options:
            text = options["retention"][-1]
            retention = None if text.lower() == "none" else _duration(text, "retention")
        if "timeout" in options:
            timeout = _duration(options["timeout"][-1], "timeout").total_seconds()
        return cls(database=parts.netloc or DEFAULT_DATABASE,
                   project=environ.get("GOOGLE_CLOUD_PROJECT") or None,
                   retention=retention, timeout=timeout)


def _duration(text: str, option: str) -> timedelta:
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise ConfigError("RETRAIN_STATE", f"firestore:// option {option}: {exc}") from exc
    if value.total_seconds() <= 0:
        raise ConfigError("RETRAIN_STATE", f"firestore:// option {option} must be positive")
    return value
