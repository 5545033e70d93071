"""Evaluation files in Cloud Storage (`on_evaluation_file`, Eventarc
`google.cloud.storage.object.v1.finalized`): each line of the object is one metric event.

The object holds JSON Lines or CSV with the fields `retrain-trigger publish` reads (its parser).
Each line's message id derives from (bucket, object, generation, line), so a redelivered
notification, or the same generation read again, changes nothing. A bad line is rejected with
its line number; an object over MAX_OBJECT_BYTES is refused whole with one rejected record.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from triggers import ids
from triggers.errors import InvalidEventError
from triggers.event_files import JSONL_SUFFIXES, read_events_text
from triggers.events import Delivery
from triggers.logs import log_event
from triggers.service import EventResult, RetrainService

logger = logging.getLogger("retrain.files")

FINALIZED = "google.cloud.storage.object.v1.finalized"
MAX_OBJECT_BYTES = 10 * 1024 * 1024
"""The largest evaluation file read (10 MiB); split bigger ones into several objects."""
SOURCE = "gcs"


class ObjectReader(Protocol):
    """Reads one generation of a Cloud Storage object, at most `limit` bytes."""

    def read(self, bucket: str, name: str, generation: str | None, limit: int) -> bytes: ...


class StorageReader:
    """google-cloud-storage, imported on first read (honours STORAGE_EMULATOR_HOST)."""

    def __init__(self) -> None:
        self._client: Any = None

    def read(self, bucket: str, name: str, generation: str | None, limit: int) -> bytes:
        if self._client is None:
            from google.cloud import storage  # type: ignore[attr-defined]

            self._client = storage.Client()
        blob = self._client.bucket(bucket).blob(
            name, generation=int(generation) if generation else None)
        data: bytes = blob.download_as_bytes(start=0, end=limit)  # `end` is inclusive
        return data


@dataclass
class FileResult:
    """What one object did: per line, what handling it did."""

    file: str
    lines: list[EventResult] = field(default_factory=list)
    refused: EventResult | None = None

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "refused": self.refused.to_json() if self.refused else None,
                "lines": [r.to_json() for r in self.lines]}


def line_message_id(bucket: str, name: str, generation: str | None, line: int) -> str:
    """The message id of one line of one generation of an object."""
    return "gcs-" + ids.digest(bucket, name, generation or "", line, length=32)


def handle_object_event(service: RetrainService, data: Any,
                        reader: ObjectReader) -> FileResult:
    """Handle a finalized-object notification's data (`bucket`, `name`, `generation`, `size`).
    Store or launcher trouble raises TransientError (→ redelivery; done lines are dedupe'd)."""
    if not isinstance(data, dict) or not isinstance(data.get("bucket"), str) \
            or not isinstance(data.get("name"), str):
        raw = json.dumps(data, default=str)[:4096].encode()
        delivery = Delivery("gcs-envelope-" + ids.digest(raw.decode(), length=32), raw, SOURCE)
        return FileResult("?", refused=service.reject(delivery, InvalidEventError(
            "data", "a storage object notification names its bucket and name")))
    bucket, name = data["bucket"], data["name"]
    generation = str(data["generation"]) if data.get("generation") is not None else None
    file = f"gs://{bucket}/{name}" + (f"#{generation}" if generation else "")
    whole = Delivery(line_message_id(bucket, name, generation, 0),
                     json.dumps({"file": file, "size": data.get("size")}).encode(), SOURCE)
    try:
        size = int(data.get("size") or 0)
    except (TypeError, ValueError):
        size = 0
    if size > MAX_OBJECT_BYTES:
        return FileResult(file, refused=_too_large(service, whole, file, size))
    content = reader.read(bucket, name, generation, MAX_OBJECT_BYTES)
    if len(content) > MAX_OBJECT_BYTES:
        return FileResult(file, refused=_too_large(service, whole, file, len(content)))
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return FileResult(file, refused=service.reject(whole, InvalidEventError(
            "data", f"{file} is not UTF-8 text ({exc.reason} at byte {exc.start})")))
    lines = text.splitlines()
    fmt = "csv" if name.lower().endswith(".csv") else (
        "jsonl" if name.lower().endswith(JSONL_SUFFIXES) else None)
    result = FileResult(file)
    bad: list[tuple[int, str]] = []
    try:
        events = list(read_events_text(text, file, fmt,
                                       lambda line, reason: bad.append((line, reason))))
    except ValueError as exc:  # a CSV header no row can be read with
        return FileResult(file, refused=service.reject(whole, InvalidEventError("data", str(exc))))
    for line, reason in bad:
        text_line = lines[line - 1] if 0 < line <= len(lines) else ""
        delivery = Delivery(line_message_id(bucket, name, generation, line),
                            text_line.encode("utf-8", "replace"), SOURCE)
        result.lines.append(service.reject(delivery, InvalidEventError(
            f"line {line}", f"{file} line {line}: {reason}")))
    for line, event in events:
        delivery = Delivery(line_message_id(bucket, name, generation, line),
                            json.dumps(event).encode(), SOURCE)
        result.lines.append(service.handle_delivery(delivery))
    log_event(logger, logging.INFO, f"{file}: {len(events)} events, {len(bad)} bad lines")
    return result


def _too_large(service: RetrainService, whole: Delivery, file: str, size: int) -> EventResult:
    return service.reject(whole, InvalidEventError(
        "size", f"{file} is {size} bytes, over the {MAX_OBJECT_BYTES} bytes (10 MiB) an "
        "evaluation file may hold: split it into several objects"))
