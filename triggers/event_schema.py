"""The metric event's schema as a pydantic model: the authority on what an event may be, and
the source of its field-naming errors. Loaded only for events the fast check does not pass."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from triggers.errors import InvalidEventError
from triggers.events import (
    MAX_EXAMPLES,
    MAX_MAGNITUDE,
    MAX_METRICS,
    NAME,
    MetricEvent,
    clip,
    parse_timestamp,
)


def _rfc3339(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 string with an offset, e.g. 2026-11-02T00:00:00Z")
    parsed = parse_timestamp(value)
    if parsed is None:
        raise ValueError(
            "must be RFC 3339 with an offset (Z or +hh:mm), e.g. 2026-11-02T00:00:00Z"
        )
    return parsed


Timestamp = Annotated[datetime, BeforeValidator(_rfc3339)]


def _version(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a string")
    if isinstance(value, int):
        return str(value)
    return value


class MetricEventSchema(BaseModel):
    """One evaluation of one model over one window; its `metrics` become points."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(pattern=NAME)
    metrics: dict[Annotated[str, Field(pattern=NAME)], float]
    window_end: Timestamp
    model_version: Annotated[str | None, BeforeValidator(_version)] = Field(
        default=None, pattern=NAME
    )
    window_start: Timestamp | None = None
    examples: int | None = Field(default=None, ge=0, le=MAX_EXAMPLES, strict=True)
    slice: str = Field(default="overall", pattern=NAME)

    @field_validator("metrics", mode="before")
    @classmethod
    def _finite_numbers(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            raise ValueError("must be an object mapping metric names to numbers")
        if not value:
            raise ValueError("must name at least one metric")
        if len(value) > MAX_METRICS:
            raise ValueError(f"at most {MAX_METRICS} metrics per event")
        for key, number in value.items():
            name = clip(str(key))  # an error names the metric, never quotes a long payload
            if isinstance(number, bool) or not isinstance(number, (int, float)):
                raise ValueError(f"metric {name!r} must be a number, got {type(number).__name__}")
            if isinstance(number, float) and not math.isfinite(number):
                raise ValueError(f"metric {name!r} must be finite, got {number}")
            if not abs(number) < MAX_MAGNITUDE:
                raise ValueError(f"metric {name!r} must be smaller than {MAX_MAGNITUDE:g} "
                                 "in magnitude")
        return value

    @field_validator("window_start")
    @classmethod
    def _start_before_end(cls, value: datetime | None, info: Any) -> datetime | None:
        end = info.data.get("window_end")
        if value is not None and end is not None and value > end:
            raise ValueError("must not be after window_end")
        return value


def validate_event(data: Any) -> MetricEvent:
    """The event in `data`, or an InvalidEventError naming the first bad field."""
    try:
        model = MetricEventSchema.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(clip(str(part)) for part in error["loc"]) or "data"
        reason = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            reason = "unknown field (allowed: " + ", ".join(MetricEventSchema.model_fields) + ")"
        raise InvalidEventError(field, reason, error.get("input")) from None
    return MetricEvent(
        model=model.model,
        metrics={name: float(value) for name, value in model.metrics.items()},
        window_end=model.window_end,
        model_version=model.model_version,
        window_start=model.window_start,
        examples=model.examples,
        slice=model.slice,
    )
