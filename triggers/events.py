"""Metric events: the envelopes they arrive in (CloudEvent, Pub/Sub push, bare JSON) and the
schema they must follow; every failure is an `InvalidEventError` naming the field."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from triggers.errors import InvalidEventError

MAX_EVENT_BYTES = 64 * 1024
"""Largest metric event accepted; a real one is a few hundred bytes."""

MAX_METRICS = 100
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)
_NAME = r"^[^\x00-\x1f\x7f/\\]{1,128}$"


def _rfc3339(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 string with an offset, e.g. 2026-11-02T00:00:00Z")
    if not _RFC3339.match(value):
        raise ValueError(
            "must be RFC 3339 with an offset (Z or +hh:mm), e.g. 2026-11-02T00:00:00Z"
        )
    text = value.replace("z", "Z").replace("Z", "+00:00").replace("t", "T").replace(" ", "T")
    if "." in text:  # Python parses at most 6 fractional digits
        head, rest = text.split(".", 1)
        digits = re.match(r"\d+", rest)
        assert digits is not None
        text = f"{head}.{digits.group()[:6].ljust(6, '0')}{rest[digits.end():]}"
    return datetime.fromisoformat(text).astimezone(UTC)


Timestamp = Annotated[datetime, BeforeValidator(_rfc3339)]


def _version(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a string")
    if isinstance(value, int):
        return str(value)
    return value


class MetricEvent(BaseModel):
    """One evaluation of one model over one window; its `metrics` become points."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(pattern=_NAME)
    metrics: dict[Annotated[str, Field(pattern=_NAME)], float]
    window_end: Timestamp
    model_version: Annotated[str | None, BeforeValidator(_version)] = Field(
        default=None, pattern=_NAME
    )
    window_start: Timestamp | None = None
    examples: int | None = Field(default=None, ge=0, strict=True)
    slice: str = Field(default="overall", pattern=_NAME)

    @field_validator("metrics", mode="before")
    @classmethod
    def _finite_numbers(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            raise ValueError("must be an object mapping metric names to numbers")
        if not value:
            raise ValueError("must name at least one metric")
        if len(value) > MAX_METRICS:
            raise ValueError(f"at most {MAX_METRICS} metrics per event")
        for name, number in value.items():
            if isinstance(number, bool) or not isinstance(number, (int, float)):
                raise ValueError(f"metric {name!r} must be a number, got {type(number).__name__}")
            if not math.isfinite(number):
                raise ValueError(f"metric {name!r} must be finite, got {number}")
        return value

    @field_validator("window_start")
    @classmethod
    def _start_before_end(cls, value: datetime | None, info: Any) -> datetime | None:
        end = info.data.get("window_end")
        if value is not None and end is not None and value > end:
            raise ValueError("must not be after window_end")
        return value


@dataclass(frozen=True)
class Delivery:
    """One message as it arrived: its id (for deduplication), its raw payload, where from."""

    message_id: str
    payload: bytes
    source: str
    publish_time: str | None = None
    attributes: Mapping[str, str] | None = None


def parse_event(payload: bytes) -> MetricEvent:
    """Validate `payload` (UTF-8 JSON) as a metric event, or raise naming the first bad field."""
    if len(payload) > MAX_EVENT_BYTES:
        raise InvalidEventError(
            "data", f"event is {len(payload)} bytes; the limit is {MAX_EVENT_BYTES}"
        )
    try:
        data = json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise InvalidEventError("data", f"not UTF-8 ({exc.reason})") from None
    except RecursionError:
        raise InvalidEventError("data", "JSON nested too deeply") from None
    except ValueError as exc:
        raise InvalidEventError("data", f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidEventError("data", f"must be a JSON object, got {type(data).__name__}")
    try:
        return MetricEvent.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"]) or "data"
        reason = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            reason = "unknown field (allowed: " + ", ".join(MetricEvent.model_fields) + ")"
        raise InvalidEventError(field, reason, error.get("input")) from None


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a finite number")


def delivery_from_pubsub(data: Any, fallback_id: str | None = None) -> Delivery:
    """A Delivery from a Pub/Sub envelope: `{"message": {"data", "messageId", ...}}`."""
    if not isinstance(data, Mapping) or not isinstance(data.get("message"), Mapping):
        raise InvalidEventError("message", "the Pub/Sub envelope has no message object")
    message = data["message"]
    message_id = message.get("messageId") or message.get("message_id") or fallback_id
    if not isinstance(message_id, str) or not message_id:
        raise InvalidEventError("message.messageId", "missing")
    encoded = message.get("data")
    if not isinstance(encoded, str):
        raise InvalidEventError("message.data", "missing: the message carries no data")
    if len(encoded) > MAX_EVENT_BYTES * 4 // 3 + 4:
        raise InvalidEventError(
            "message.data", f"event is larger than the {MAX_EVENT_BYTES}-byte limit"
        )
    try:
        payload = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidEventError("message.data", "not valid base64") from None
    attributes = message.get("attributes")
    return Delivery(
        message_id=message_id,
        payload=payload,
        source="pubsub",
        publish_time=message.get("publishTime") or message.get("publish_time"),
        attributes=dict(attributes) if isinstance(attributes, Mapping) else None,
    )


def delivery_from_https(body: bytes) -> Delivery:
    """A Delivery for a bare JSON event posted over HTTPS; its id is the body's digest."""
    digest = hashlib.sha256(body).hexdigest()[:32]
    return Delivery(message_id=f"https-{digest}", payload=body, source="https")


def truncated(payload: bytes, limit: int = 1024) -> str:
    """The payload as text for logs and rejected records, cut at `limit` characters."""
    text = payload[:limit].decode("utf-8", errors="replace")
    return text + ("…" if len(payload) > limit else "")
