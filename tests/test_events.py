"""Event parsing: the fast check and the pydantic schema agree on every input (property-based),
and the envelopes decode or fail naming the field."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from triggers.errors import InvalidEventError
from triggers.event_schema import validate_event
from triggers.events import delivery_from_pubsub, fast_event, parse_event

names = st.one_of(
    st.sampled_from(["fraud-detector", "accuracy", "auc", "overall", "mobile", "7", "v8"]),
    st.text(max_size=6),
    st.text(alphabet="a/\\\x00\x7f é", min_size=1, max_size=3),
)
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 10**20), st.booleans(),
    st.text(max_size=3), st.none(),
)
timestamps = st.one_of(
    st.sampled_from([
        "2026-11-02T00:00:00Z", "2026-11-01T00:00:00+01:00", "2026-11-02t00:00:00z",
        "2026-11-02 00:00:00Z", "2026-11-02T00:00:00.123456789Z", "2026-11-02T00:00:00",
        "2026-11-02", "2026-13-02T00:00:00Z", "2026-11-02T25:00:00Z", "",
    ]),
    st.integers(0, 2_000_000_000), st.none(), st.text(max_size=5),
)
VALUES: dict[str, Any] = {
    "model": st.one_of(names, numbers),
    "metrics": st.one_of(
        st.dictionaries(names, numbers, max_size=3),
        st.dictionaries(names, st.floats(0, 1), min_size=1, max_size=3),
        numbers, st.lists(st.floats(), max_size=2)),
    "window_end": timestamps,
    "window_start": timestamps,
    "model_version": st.one_of(names, numbers),
    "examples": numbers,
    "slice": st.one_of(names, st.none()),
    "colour": st.just("red"),
}
VALID: dict[str, Any] = {
    "model": "fraud-detector", "metrics": {"accuracy": 0.9}, "window_end": "2026-11-02T00:00:00Z",
    "window_start": "2026-11-01T00:00:00Z", "model_version": "7", "examples": 10,
    "slice": "overall",
}


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event with a few fields replaced by arbitrary values, or removed."""
    data = dict(VALID)
    for key in draw(st.lists(st.sampled_from(sorted(VALUES)), max_size=3, unique=True)):
        if draw(st.booleans()) and key in data:
            del data[key]
        else:
            data[key] = draw(VALUES[key])
    return data


def slow(data: dict[str, Any]) -> Any:
    try:
        return validate_event(data)
    except InvalidEventError as exc:
        return exc


@settings(max_examples=600, deadline=None)
@given(events())
def test_fast_check_only_accepts_what_the_schema_accepts(data: dict[str, Any]) -> None:
    fast = fast_event(data)
    if fast is not None:
        assert slow(data) == fast


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(names, st.floats(0, 1), min_size=1, max_size=5), st.booleans(),
       st.one_of(st.none(), st.integers(0, 10**6)))
def test_well_formed_events_take_the_fast_path(
    metrics: dict[str, float], with_version: bool, examples: int | None
) -> None:
    data: dict[str, Any] = {"model": "fraud-detector", "metrics": metrics,
                            "window_end": "2026-11-02T00:00:00Z",
                            "window_start": "2026-11-01T00:00:00Z"}
    if with_version:
        data["model_version"] = "7"
    if examples is not None:
        data["examples"] = examples
    result = slow(data)
    if isinstance(result, InvalidEventError):  # e.g. a metric name with "/"
        assert fast_event(data) is None
    else:
        assert fast_event(data) == result


def test_schema_converts_what_the_fast_check_declines() -> None:
    event = parse_event(json.dumps({"model": "m", "metrics": {"a": 1},
                                    "window_end": "2026-11-02T00:00:00Z",
                                    "model_version": 7}).encode())
    assert event.model_version == "7" and event.metrics == {"a": 1.0}


@pytest.mark.parametrize(
    ("envelope", "field"),
    [
        ({}, "message"),
        ({"message": {"data": base64.b64encode(b"{}").decode()}}, "message.messageId"),
        ({"message": {"messageId": "1"}}, "message.data"),
        ({"message": {"messageId": "1", "data": "@@@"}}, "message.data"),
    ],
)
def test_envelope_errors_name_the_field(envelope: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidEventError) as info:
        delivery_from_pubsub(envelope)
    assert info.value.field == field


def test_deeply_nested_json_is_rejected_not_crashed() -> None:
    with pytest.raises(InvalidEventError) as info:
        parse_event(b"[" * 20_000 + b"]" * 20_000)
    assert info.value.field == "data"
