"""Metric events: the envelopes they arrive in (CloudEvent, Pub/Sub push, bare JSON) and the
event itself; every failure is an `InvalidEventError` naming the field.

A well-formed event passes a fast, strict check; anything else goes to the pydantic schema in
`triggers.event_schema`, which decides and names the field (a test keeps the two agreeing).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from thresholds.records import record
from triggers.errors import InvalidEventError

MAX_EVENT_BYTES = 64 * 1024
"""Largest metric event accepted; a real one is a few hundred bytes."""

MAX_METRICS = 100
MAX_MESSAGE_ID = 512
"""Longest message id kept (Pub/Sub's are about 17 digits); a longer one is no id."""
MAX_MAGNITUDE = 1e300
"""Metric values beyond this are refused: sums and slopes over them would overflow."""
MAX_EXAMPLES = 2**63 - 1
_SURROGATE_ESCAPE = re.compile(rb"\\[uU][dD][89a-fA-F]")
NAME = r"^[^\x00-\x1f\x7f/\\]{1,128}$"
_NAME = re.compile(NAME)
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)
FIELDS = ("model", "metrics", "window_end", "model_version", "window_start", "examples", "slice")


def parse_timestamp(value: str) -> datetime | None:
    """An RFC 3339 timestamp with an offset as an aware UTC datetime; None if it is not one."""
    if not _RFC3339.fullmatch(value):
        return None
    text = value.replace("z", "Z").replace("Z", "+00:00").replace("t", "T").replace(" ", "T")
    if "." in text:  # Python parses at most 6 fractional digits
        head, rest = text.split(".", 1)
        digits = re.match(r"\d+", rest)
        assert digits is not None
        text = f"{head}.{digits.group()[:6].ljust(6, '0')}{rest[digits.end():]}"
    try:
        return datetime.fromisoformat(text).astimezone(UTC)
    except (ValueError, OverflowError):  # e.g. year 1 shifted before the epoch of datetime
        return None


@record
class MetricEvent:
    """One evaluation of one model over one window; its `metrics` become points."""

    model: str
    metrics: Mapping[str, float]
    window_end: datetime
    model_version: str | None = None
    window_start: datetime | None = None
    examples: int | None = None
    slice: str = "overall"


def fast_event(data: Mapping[str, Any]) -> MetricEvent | None:
    """The event when `data` is plainly well formed; None means: ask the schema."""
    if not data.keys() <= set(FIELDS):
        return None
    model, metrics = data.get("model"), data.get("metrics")
    end, start = data.get("window_end"), data.get("window_start")
    version, examples = data.get("model_version"), data.get("examples")
    slice_ = data.get("slice", "overall")
    if not (isinstance(model, str) and _NAME.fullmatch(model) and isinstance(slice_, str)
            and _NAME.fullmatch(slice_) and isinstance(metrics, dict)
            and 0 < len(metrics) <= MAX_METRICS and isinstance(end, str)):
        return None
    for name, value in metrics.items():
        if not (isinstance(name, str) and _NAME.fullmatch(name) and type(value) in (int, float)
                and abs(value) < MAX_MAGNITUDE):
            return None
    if version is not None and not (isinstance(version, str) and _NAME.fullmatch(version)):
        return None
    if examples is not None and not (type(examples) is int and 0 <= examples <= MAX_EXAMPLES):
        return None
    window_end = parse_timestamp(end)
    window_start = parse_timestamp(start) if isinstance(start, str) else None
    if window_end is None or (start is not None and (window_start is None
                                                     or window_start > window_end)):
        return None
    return MetricEvent(
        model=model,
        metrics={name: float(value) for name, value in metrics.items()},
        window_end=window_end,
        model_version=version,
        window_start=window_start,
        examples=examples,
        slice=slice_,
    )


@record
class Delivery:
    """One message as it arrived: its id (for deduplication), its raw payload, where from."""

    message_id: str
    payload: bytes
    source: str


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
    if has_surrogate_escape(payload):  # an escaped surrogate must be one of a pair
        where = lone_surrogate_paths(data)
        if where:
            raise InvalidEventError(where[0], LONE_SURROGATE)
    event = fast_event(data)
    if event is not None:
        return event
    from triggers.event_schema import validate_event

    return validate_event(data)


LONE_SURROGATE = ("contains a lone UTF-16 surrogate (a \\ud800-\\udfff escape that is not "
                  "half of a pair): valid JSON, but not Unicode text any store can hold")


def has_surrogate_escape(payload: bytes) -> bool:
    """Whether JSON text holds a surrogate escape at all (the cheap test before the walk)."""
    return _SURROGATE_ESCAPE.search(payload) is not None


_SURROGATE = re.compile("[\ud800-\udfff]")  # in a str, any surrogate is a lone one


def _storable(text: str) -> bool:
    return _SURROGATE.search(text) is None


def _replaced(text: str) -> str:
    return _SURROGATE.sub("\ufffd", text)


def lone_surrogate_paths(data: Any, limit: int = 20) -> list[str]:
    """Dotted paths (`metrics.acc`, `report.notes.0`) of the strings in parsed JSON — keys or
    values — that hold a lone surrogate; at most `limit` of them."""
    found: list[str] = []
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack and len(found) < limit:
        item, where = stack.pop()
        if isinstance(item, str):
            if not _storable(item):
                found.append(where or "data")
        elif isinstance(item, dict):
            for key, value in item.items():
                name = clip(_replaced(key), 32)  # a path names the field, short
                path = clip(f"{where}.{name}" if where else name, 128)
                if not _storable(key):
                    found.append(path)
                stack.append((value, path))
        elif isinstance(item, list):
            stack.extend((value, clip(f"{where}.{i}" if where else str(i), 128))
                         for i, value in enumerate(item))
    return sorted(found)


def replace_lone_surrogates(data: Any) -> Any:
    """Parsed JSON with every lone surrogate (in keys and values) replaced by U+FFFD."""
    if isinstance(data, str):
        return _replaced(data)
    if isinstance(data, dict):
        return {replace_lone_surrogates(k): replace_lone_surrogates(v) for k, v in data.items()}
    if isinstance(data, list):
        return [replace_lone_surrogates(v) for v in data]
    return data


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
    if storable_id(message_id) is None:
        raise InvalidEventError(
            "message.messageId",
            f"not an id: longer than {MAX_MESSAGE_ID} characters, or not valid Unicode text",
        )
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
    return Delivery(
        message_id=message_id,
        payload=payload,
        source="pubsub",
    )


def storable_id(value: object) -> str | None:
    """`value` when it can key a message in any store: a non-empty string of at most
    `MAX_MESSAGE_ID` characters that UTF-8 can encode (JSON escapes can carry lone
    surrogates, which no store accepts); else None."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_MESSAGE_ID:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return value


def delivery_from_https(body: bytes) -> Delivery:
    """A Delivery for a bare JSON event posted over HTTPS; its id is the body's digest."""
    digest = hashlib.sha256(body).hexdigest()[:32]
    return Delivery(message_id=f"https-{digest}", payload=body, source="https")


def clip(text: str, limit: int = 64) -> str:
    """`text` cut to `limit` characters for an error message: errors name a field or a metric,
    they never carry a payload's text into the logs."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def truncated(payload: bytes, limit: int = 1024) -> str:
    """The payload as text for logs and rejected records, cut at `limit` characters."""
    text = payload[:limit].decode("utf-8", errors="replace")
    return text + ("…" if len(payload) > limit else "")
