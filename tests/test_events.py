"""Event parsing: the fast check and the pydantic schema agree on every input (property-based),
and the envelopes decode or fail naming the field."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline_client.launching.protocol import FakeLauncher
from tests.conftest import DESIGN_EVENT, policy_config
from triggers.errors import InvalidEventError
from triggers.event_schema import validate_event
from triggers.events import Delivery, delivery_from_pubsub, fast_event, parse_event
from triggers.service import RetrainService
from triggers.state.sqlite import SQLiteStore

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
VALID: dict[str, Any] = DESIGN_EVENT


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


# --- hostile input through the whole decision path ------------------------------------------

HOSTILE = {
    "model": st.one_of(names, numbers, st.just("fraud-detector\ud800"), st.just("x" * 200)),
    "metrics": st.one_of(
        st.dictionaries(st.one_of(names, st.just("\udfff")), st.one_of(
            numbers, st.just(10**400), st.just(1e308), st.just(-(2**1100))), max_size=3),
        numbers),
    "window_end": st.one_of(timestamps, st.sampled_from([
        "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "2026-11-02T00:00:00Z\n"])),
    "examples": st.one_of(numbers, st.just(10**20), st.just(2**63)),
    "slice": st.one_of(names, st.just("\ud800")),
}


@st.composite
def hostile_events(draw: st.DrawFn) -> dict[str, Any]:
    data = dict(VALID)
    for key in draw(st.lists(st.sampled_from(sorted(HOSTILE)), min_size=1, max_size=3,
                             unique=True)):
        data[key] = draw(HOSTILE[key])
    return data


_SERVICE: list[RetrainService] = []


def service() -> RetrainService:
    if not _SERVICE:
        _SERVICE.append(RetrainService(policy_config(), SQLiteStore(":memory:"),
                                       FakeLauncher()))
    return _SERVICE[0]


@settings(max_examples=400, deadline=None)
@given(hostile_events(), st.integers(0, 10**9))
def test_no_input_makes_the_service_fail(data: dict[str, Any], n: int) -> None:
    """Whatever the JSON says, the answer is recorded or rejected, never an exception (which
    Pub/Sub would redeliver forever)."""
    payload = json.dumps(data).encode()
    result = service().handle_delivery(Delivery(f"h-{n}-{len(payload)}", payload, "pubsub"))
    assert result.status in ("recorded", "rejected", "duplicate")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"metrics": {"accuracy": 10**400}}, "metrics"),
        ({"metrics": {"accuracy": 1e301}}, "metrics"),
        ({"examples": 2**63}, "examples"),
        ({"window_end": "0001-01-01T00:00:00+01:00"}, "window_end"),
        ({"window_end": "9999-12-31T23:59:59-01:00"}, "window_end"),
        ({"slice": "\ud800"}, "slice"),
        ({"model": "fraud-detector\ud800"}, "model"),
    ],
    ids=["huge-int", "huge-float", "examples-int64", "year-1", "year-9999", "surrogate-slice",
         "surrogate-model"],
)
def test_extreme_values_are_rejected_naming_the_field(
    change: dict[str, Any], field: str
) -> None:
    payload = json.dumps({**VALID, **change}).encode()
    result = service().handle_delivery(Delivery(f"x-{change!r}", payload, "pubsub"))
    assert result.status == "rejected" and result.error.field == field


def test_escaped_surrogate_pairs_are_text() -> None:
    event = parse_event(json.dumps({**VALID, "slice": "\U0001f600"}).encode())
    assert event.slice == "\U0001f600"
