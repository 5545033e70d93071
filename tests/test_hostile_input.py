"""Hostile input: event parsing, policy files and policy evaluation under random and extreme
input (property-based), and the HTTP entry points' answers to oversize, deep and escaping input."""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import io
import json
import math
import tempfile
import textwrap
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from cloudevents.http import CloudEvent
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from werkzeug.test import EnvironBuilder, run_wsgi_app

from pipeline_client.promotion.registries import InvalidModelNameError, LocalModelRegistry
from tests.conftest import DESIGN_EVENT, FIXTURES, POLICY_YAML
from tests.support.combined import TOKEN, App, combined_app
from tests.support.serve import serve_process
from thresholds.base import Point
from thresholds.durations import format_duration, parse_duration
from thresholds.registry import build_policy
from thresholds.spec import PolicySpec
from triggers.cloud.entry import delivery_from_cloudevent
from triggers.cloud.serve import DRAIN_BYTES, MAX_PUSH_BYTES
from triggers.config import ServiceConfig, compile_policy_file, compiled_path, load_policy_file
from triggers.errors import ConfigError, InvalidEventError, PolicyConfigError
from triggers.events import (
    FIELDS,
    MAX_MESSAGE_ID,
    delivery_from_https,
    delivery_from_pubsub,
    parse_event,
)
from triggers.policy_file import SERVICE_PARAMETERS

PROPERTY = settings(deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ESCAPES = ["..", "../x", "a/../../b", "%2e%2e", "..\\x", "a\\b", "a\x00b", "/etc/passwd", "."]
"""Model names that try to leave a directory (or smuggle a NUL)."""


def storable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return 0 < len(text) <= MAX_MESSAGE_ID


# --- event parsing -----------------------------------------------------------------------------

long_keys = st.text(min_size=100, max_size=400)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**80), 2**80) | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.sampled_from(["\ud800", "x" * 300, "2026-11-02T00:00:00Z"]),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=6) | long_keys, children, max_size=3),
    max_leaves=10,
)


@st.composite
def event_payloads(draw: st.DrawFn) -> bytes:
    """Bytes that are, or are near, a metric event: fields replaced, long keys, escapes."""
    kind = draw(st.sampled_from(["event", "event", "json", "bytes", "deep", "escape"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "deep":
        depth = draw(st.sampled_from([100, 5_000, 30_000]))
        return b'{"model": ' * depth + b"1" + b"}" * depth
    data: dict[str, Any] = dict(DESIGN_EVENT)
    for key in draw(st.lists(st.sampled_from([*FIELDS, "parameters"]) | long_keys, max_size=3)):
        data[key] = draw(json_values)
    if draw(st.booleans()):
        data["metrics"] = {draw(long_keys): draw(json_values)}
    text = json.dumps(data)
    if kind == "escape":
        text = text.replace("overall", "\\ud800over\\u0000all")
    return text.encode()


@settings(PROPERTY, max_examples=300)
@given(event_payloads())
def test_any_payload_parses_or_fails_naming_a_short_field(payload: bytes) -> None:
    """Only InvalidEventError escapes, and its field and reason are short: an error names
    what is wrong, it never carries (and logs) the payload's text."""
    try:
        event = parse_event(payload)
    except InvalidEventError as exc:
        assert exc.field and exc.reason
        assert len(exc.field) <= 200 and len(str(exc)) <= 400, str(exc)[:500]
    else:
        assert event.model and event.metrics
        assert all(math.isfinite(v) for v in event.metrics.values())


message_ids = st.one_of(st.text(max_size=20), st.sampled_from(
    ["x\ud800", "\udfff", "1" * (MAX_MESSAGE_ID + 1), "1" * MAX_MESSAGE_ID, "", "0"]), json_values)


@settings(PROPERTY, max_examples=300)
@given(st.fixed_dictionaries({}, optional={
    "messageId": message_ids, "message_id": message_ids,
    "data": st.one_of(st.text(max_size=30), json_values,
                      event_payloads().map(lambda p: base64.b64encode(p).decode())),
    "attributes": json_values}), st.one_of(st.none(), message_ids.filter(
        lambda i: isinstance(i, str))), st.booleans())
@example({"messageId": "x\ud800", "data": "e30="}, None, True)
@example({"data": "e30="}, "1" * (MAX_MESSAGE_ID + 1), True)
def test_any_pubsub_envelope_gives_a_storable_delivery_or_a_named_error(
    message: dict[str, Any], fallback: str | None, wrapped: bool
) -> None:
    envelope = {"message": message} if wrapped else message
    try:
        delivery = delivery_from_pubsub(envelope, fallback_id=fallback)
    except InvalidEventError as exc:
        assert exc.field in ("message", "message.messageId", "message.data")
    else:
        assert storable(delivery.message_id)  # every store keys messages by it
        assert isinstance(delivery.payload, bytes)


@settings(PROPERTY, max_examples=100)
@given(st.binary(max_size=300))
def test_https_deliveries_are_named_by_their_body(body: bytes) -> None:
    delivery = delivery_from_https(body)
    assert delivery == delivery_from_https(bytes(body))
    assert delivery.payload == body and delivery.source == "https"
    assert delivery.message_id.startswith("https-") and len(delivery.message_id) == 38


@settings(PROPERTY, max_examples=300)
@given(event_id=st.one_of(st.none(), message_ids),
       data=st.one_of(json_values, st.binary(max_size=100),
                      st.sampled_from([b"[" * 50_000, b'"\\ud800"', b"\xff\xfe"]),
                      st.builds(lambda i, d: {"message": {"messageId": i, "data": d}},
                                message_ids, st.text(max_size=12))))
@example(event_id="x\ud800", data={"message": {"messageId": "\ud800", "data": "e30="}})
@example(event_id="1", data=b"[" * 50_000)
def test_any_cloudevent_gives_a_storable_delivery(event_id: Any, data: Any) -> None:
    """entry.delivery_from_cloudevent never raises: a delivery to process, or one to store as
    rejected with the error; either way keyed by an id every store accepts."""
    attributes = {"source": "//pubsub", "type": "google.cloud.pubsub.topic.v1.messagePublished"}
    cloud_event = CloudEvent({**attributes, "id": event_id}, data)
    delivery, error = delivery_from_cloudevent(cloud_event)
    assert storable(delivery.message_id), delivery.message_id
    assert isinstance(delivery.payload, bytes)
    assert error is None or (error.field and error.reason)


# --- policy files ------------------------------------------------------------------------------

FULL_POLICY = """
defaults:
  guards: {cooldown: 24h, max_runs: {count: 3, per: 7d}, skip_if_running: true, run_timeout: 24h}
  lateness: 1h
models:
  fraud-detector:
    pipeline: {template: t.yaml, parameters: {training_days: 30, tags: [a, b]},
               pipeline_root: gs://b/root}
    policies:
      - {name: floor, metric: accuracy, direction: higher_is_better,
         absolute: {threshold: 0.95}, breaches_to_trigger: 3, evaluation_points: 5,
         min_examples: 500}
      - {name: trend, metric: accuracy, direction: higher_is_better,
         trend: {lookback: 14d, min_points: 8, max_decline_per_day: 0.002, confidence: 0.95}}
      - {name: drop, metric: auc, direction: higher_is_better, baseline: {max_relative_drop: 0.02}}
      - {name: forecast, metric: accuracy, direction: higher_is_better,
         forecast: {threshold: 0.95, horizon: 7d, lookback: 14d, min_points: 8}}
    guards: {cooldown: 72h}
    promotion:
      primary: {metric: accuracy, min_improvement: 0.0, confidence: 0.95}
      guardrails: [{metric: auc, max_regression: 0.005}]
      floors: {accuracy: 0.90}
"""


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


HOSTILE_VALUES = st.one_of(
    st.sampled_from([10**30, -1, 0, 1e-6, 1000001, 12345678901.5, 1e308, -1e308, math.inf,
                     -math.inf, math.nan, "99999999999d", "1e-6", "٣d", "", "é", [], {}, None,
                     True, b"\xff\xfe", dt.date(2026, 1, 1), "x" * 300]),
    st.sampled_from([0, 1, 33, 200]).map(_nested),
    json_values,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, (*prefix, index))
    return found


@st.composite
def policy_documents(draw: st.DrawFn) -> str:
    """The full example policy file with one to three parts replaced by hostile values."""
    data = yaml.safe_load(FULL_POLICY)
    for _ in range(draw(st.integers(1, 3))):
        if not isinstance(data, dict) or not data:
            break
        path = draw(st.sampled_from(_paths(data)[1:]))
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        if draw(st.integers(0, 4)) == 0 and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(HOSTILE_VALUES)
    return str(yaml.safe_dump(data, allow_unicode=True))


def summary(config: ServiceConfig) -> dict[str, Any]:
    """What a loaded policy file means, comparable across loads."""
    return {name: (m.pipeline, [p.spec for p in m.policies], m.guards, m.lateness,
                   json.dumps(m.promotion, sort_keys=True))
            for name, m in config.models.items()}


@settings(PROPERTY, max_examples=250)
@given(st.one_of(policy_documents(), policy_documents(), st.text(max_size=80),
                 json_values.map(lambda v: yaml.safe_dump({"models": v}))))
@example("models: " + "[" * 5000 + "]" * 5000)
@example(FULL_POLICY.replace("lookback: 14d, min_points: 8, max", "lookback: 1000001, "
                             "min_points: 8, max"))
@example(FULL_POLICY.replace("cooldown: 72h", "cooldown: 99999999999d"))
@example(FULL_POLICY.replace("tags: [a, b]", "tags: [!!binary /w==]"))
def test_policy_files_load_or_fail_naming_a_field(text: str) -> None:
    """Only PolicyConfigError (naming a field) escapes loading; a file that loads compiles to
    a file that loads to the same configuration."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "policies.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            config = load_policy_file(path)
        except PolicyConfigError as exc:
            assert exc.field and exc.reason
            return
        compile_policy_file(path)
        assert summary(load_policy_file(path)) == summary(config)


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (("cooldown: 72h", "cooldown: 99999999999d"), "models.fraud-detector.guards.cooldown",
         "too long"),
        (("cooldown: 72h", "cooldown: .inf"), "models.fraud-detector.guards.cooldown",
         "too long"),
        (("tags: [a, b]", "tags: [.nan]"), "models.fraud-detector.pipeline.parameters",
         "tags.0: nan is not a finite number"),
        (("tags: [a, b]", "tags: [!!binary /w==]"), "models.fraud-detector.pipeline.parameters",
         "binary data"),
        (("tags: [a, b]", "tags: " + "[" * 40 + "]" * 40), "<file>", "nests deeper than 32"),
        (("tags: [a, b]", "tags: " + "[" * 5000 + "]" * 5000), "<file>", "nests too deeply"),
        (("  fraud-detector:", "  é-model:"), "models", "letters, digits"),
    ],
    ids=["huge-duration", "infinite-duration", "nan-parameter", "binary-parameter",
         "deep-parameter", "deeper-than-yaml", "unicode-model"],
)
def test_hostile_policy_files_fail_naming_the_field(
    change: tuple[str, str], field: str, words: str
) -> None:
    with pytest.raises(PolicyConfigError) as info:
        ServiceConfig.from_yaml(FULL_POLICY.replace(*change), Path("/"))
    assert info.value.field == field and words in info.value.reason


def test_an_alias_bomb_is_refused_quickly() -> None:
    """Nine nested aliases of ten items expand to 10^9 values: refused, not expanded."""
    anchors = "a0: &a0 [1,1,1,1,1,1,1,1,1,1]"
    for level in range(1, 9):
        anchors += f", a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 10) + "]"
    text = FULL_POLICY.replace("tags: [a, b]", f"tags: {{{anchors}}}")
    started = time.monotonic()
    with pytest.raises(PolicyConfigError) as info:
        ServiceConfig.from_yaml(text, Path("/"))
    assert time.monotonic() - started < 2
    assert "aliases" in info.value.reason and info.value.field == "<file>"


@pytest.mark.parametrize("seconds", [1e-6, 1000001, 12345678901.5, 0.1, 0, 90])
def test_every_duration_formats_to_one_that_parses_back(seconds: float) -> None:
    value = dt.timedelta(seconds=seconds)
    assert parse_duration(format_duration(value)) == value


@pytest.mark.parametrize("damage", [{}, [], {"models": [1]}, {"models": {"m": "x"}}, None])
def test_a_damaged_compiled_policy_file_is_ignored_not_fatal(
    tmp_path: Path, damage: Any
) -> None:
    path = tmp_path / "policies.yaml"
    path.write_text(FULL_POLICY)
    expected = summary(load_policy_file(path))
    compiled = compile_policy_file(path)
    assert compiled == compiled_path(path)
    stored = json.loads(compiled.read_text())  # digest intact, content damaged
    compiled.write_text(json.dumps({**stored, "policy_file": damage}))
    assert summary(load_policy_file(path)) == expected


def test_an_unreadable_policy_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_policy_file(tmp_path / "missing.yaml")
    assert info.value.variable == "RETRAIN_POLICY_FILE"


# --- policy evaluation -------------------------------------------------------------------------

YEAR_1, YEAR_9999 = -62135596800.0, 253402300799.0  # what RFC 3339 event times can be
values = st.floats(-9.99e299, 9.99e299) | st.sampled_from([0.0, -0.0, 5e-324, 9.99e299,
                                                           -9.99e299, 0.5])
limits = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from([0.0, 0.95, 1e-300])
positive = st.floats(1e-300, 1.7e308) | st.sampled_from([1e-300, 0.02, 1.7e308])
durations = st.integers(1, 999_999_999 * 86_400) | st.sampled_from([1, 86_400, 1e-6])


@st.composite
def specs(draw: st.DrawFn) -> PolicySpec:
    """Any valid policy of any class, limits extreme but accepted by the schema."""
    data: dict[str, Any] = {
        "name": "p", "metric": "m",
        "direction": draw(st.sampled_from(["higher_is_better", "lower_is_better"])),
        "min_examples": draw(st.sampled_from([0, 1, 500, 10**30])),
    }
    kind = draw(st.sampled_from(["absolute", "baseline", "trend", "forecast"]))
    if kind == "absolute":
        window = draw(st.integers(1, 12))
        data.update(absolute={"threshold": draw(limits)}, evaluation_points=window,
                    breaches_to_trigger=draw(st.integers(1, window)))
    elif kind == "baseline":
        relative, absolute = draw(st.sampled_from([(1, 1), (1, 0), (0, 1)]))
        data["baseline"] = {"reference_points": draw(st.integers(1, 6)),
                            "max_relative_drop": draw(positive) if relative else None,
                            "max_absolute_drop": draw(positive) if absolute else None}
    elif kind == "trend":
        data["trend"] = {"lookback": draw(durations), "min_points": draw(st.integers(4, 10)),
                         "max_decline_per_day": draw(positive | st.just(0.0)),
                         "confidence": draw(st.floats(0.5001, 0.9999))}
    else:
        data["forecast"] = {"threshold": draw(limits), "horizon": draw(durations | st.just(0)),
                            "lookback": draw(durations), "min_points": draw(st.integers(3, 10))}
    return PolicySpec.parse(data)


@st.composite
def series(draw: st.DrawFn) -> list[Point]:
    """Points sorted by time: any event times RFC 3339 allows (ties and microsecond steps
    included), any value an event may carry, any example count."""
    base = draw(st.floats(YEAR_1, YEAR_9999 - 1e6))
    steps = draw(st.lists(st.sampled_from([0.0, 1e-6, 1.0, 86_400.0]) | st.floats(0, 1e6),
                          max_size=24))
    times, now = [], base
    for step in steps:
        now += step
        times.append(now)
    examples = st.none() | st.integers(0, 2**63 - 1)
    return [Point(t, draw(values), draw(examples)) for t in times]


def well_formed(value: Any) -> bool:
    return value is None or isinstance(value, (str, int)) or (
        isinstance(value, float) and math.isfinite(value))


DAY0 = 1_793_491_200.0  # 2026-11-01


def test_an_overflowing_slope_raises_no_warning() -> None:
    """numpy's overflow warning went to stderr outside the structured logs (and fails runs
    with -W error); the verdict reports the slope as undefined instead."""
    spec = PolicySpec.parse({"name": "p", "metric": "m", "direction": "higher_is_better",
                             "trend": {"lookback": 86400, "max_decline_per_day": 0,
                                       "min_points": 4}})
    points = [Point(DAY0 + i * 1e-6, v) for i, v in enumerate([9e299, 3e299, -3e299, -9e299])]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        verdict = build_policy(spec).evaluate(points)
    assert verdict.fired and verdict.statistic is None


@settings(PROPERTY, max_examples=400)
@given(specs(), series())
@example(  # ties in time and value: the trend's confidence interval is undefined (NaN)
    PolicySpec.parse({"name": "p", "metric": "m", "direction": "higher_is_better",
                      "trend": {"lookback": 1, "max_decline_per_day": 0, "min_points": 4,
                                "confidence": 0.75}}),
    [Point(0.0, 0.0), Point(0.0, 0.0), Point(0.0, 0.0), Point(0.0, 1.0), Point(1.0, 0.0)])
@example(  # a fall of 1.8e300 in three microseconds: the slope overflows to -inf
    PolicySpec.parse({"name": "p", "metric": "m", "direction": "higher_is_better",
                      "trend": {"lookback": 86400, "max_decline_per_day": 0, "min_points": 4}}),
    [Point(DAY0 + i * 1e-6, v) for i, v in enumerate([9e299, 3e299, -3e299, -9e299])])
def test_every_policy_gives_a_well_formed_verdict_on_any_valid_series(
    spec: PolicySpec, points: list[Point]
) -> None:
    """Never raises; the verdict's status is known, its reason is text, its numbers are
    finite or None (they reach JSON), and `fires` agrees with `evaluate`."""
    policy = build_policy(spec)
    verdict = policy.evaluate(points)
    assert verdict.status in ("fired", "ok", "insufficient_data")
    assert verdict.reason and verdict.policy == "p" and verdict.metric == "m"
    numbers = [verdict.statistic, verdict.limit, *verdict.details.values()]
    assert all(well_formed(n) for n in numbers), verdict
    json.dumps({"statistic": verdict.statistic, "details": dict(verdict.details)},
               allow_nan=False)
    assert policy.fires(points) == verdict.fired


# --- the HTTP entry points ---------------------------------------------------------------------

@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    with combined_app(tmp_path) as running:
        yield running


class EndlessBody(io.RawIOBase):
    """A request body that never ends; counts what was read and refuses to go past `cap`."""

    def __init__(self, cap: int = 8 * 1024 * 1024) -> None:
        self.read_bytes = 0
        self.cap = cap

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.read_bytes >= self.cap:
            raise AssertionError(f"the server read more than {self.cap} bytes of a body")
        size = len(buffer)
        buffer[:size] = b"x" * size
        self.read_bytes += size
        return size


def send_endless(app: App, path: str, content_length: int | None) -> tuple[str, bytes, int]:
    """POST a body that never ends (chunked, or claiming `content_length`) straight to the
    WSGI app, as gunicorn hands it over; returns status, answer, bytes the app read."""
    environ = EnvironBuilder(path=path, method="POST", headers={
        **AUTH, "Content-Type": "application/json"}).get_environ()
    body = EndlessBody()
    environ["wsgi.input"] = body
    environ["wsgi.input_terminated"] = True  # gunicorn's promise: it ends the stream
    if content_length is None:
        environ.pop("CONTENT_LENGTH", None)
    else:
        environ["CONTENT_LENGTH"] = str(content_length)
    app_iter, status, _ = run_wsgi_app(app.client.application, environ, buffered=True)
    return status, b"".join(app_iter), body.read_bytes


@pytest.mark.parametrize("path", ["/events", "/retrain", "/models/churn", "/nowhere",
                                  "/pubsub/metrics", "/pubsub/outcomes"])
@pytest.mark.parametrize("content_length", [None, 10**9], ids=["chunked", "content-length"])
def test_oversize_bodies_are_413_and_never_read_whole(
    app: App, path: str, content_length: int | None
) -> None:
    status, answer, read = send_endless(app, path, content_length)
    assert status.startswith("413"), (status, answer[:200])
    assert json.loads(answer)["field"] == "body"
    assert read <= MAX_PUSH_BYTES + DRAIN_BYTES + 64 * 1024


def test_a_body_at_the_limit_is_read_and_judged(app: App) -> None:
    body = json.dumps({**DESIGN_EVENT, "model": "churn", "metrics": {"logloss": 0.1}})
    padded = body.encode() + b" " * (64 * 1024 - len(body))
    response = app.client.post("/events", data=padded, headers=AUTH)
    assert response.status_code == 200 and response.json["status"] == "recorded"
    assert app.client.post("/events", data=padded + b" ", headers=AUTH).status_code == 413


DEEP = b"[" * 30_000 + b"]" * 30_000  # 60,000 bytes: under the 64 KiB limit
DEEPER = b"[" * 100_000 + b"]" * 100_000  # 200,000 bytes


def test_deep_json_event_over_https_is_rejected_and_stored(app: App) -> None:
    response = app.client.post("/events", data=DEEP, headers=AUTH)
    assert response.status_code == 400
    assert response.json["field"] == "data" and "nested" in response.json["error"]
    assert response.json["message_id"] in app.rejected()
    response = app.client.post("/events", data=DEEPER, headers=AUTH)
    assert response.status_code == 413 and response.json["field"] == "body"


def test_deep_json_retrain_request_is_400(app: App) -> None:
    response = app.client.post("/retrain", data=DEEP, headers=AUTH)
    assert response.status_code == 400 and response.json["field"] == "body"


def structured(data: Any, **attributes: Any) -> tuple[dict[str, str], bytes]:
    event = json.loads((FIXTURES / "cloudevent_metric.json").read_text())
    event.update(data=data, **attributes)
    return {"Content-Type": "application/cloudevents+json"}, json.dumps(event).encode()


BINARY = {"ce-id": "b-1", "ce-source": "//pubsub", "ce-specversion": "1.0",
          "ce-type": "google.cloud.pubsub.topic.v1.messagePublished"}


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({"Content-Type": "application/cloudevents+json"}, DEEP),
        ({**BINARY, "Content-Type": "application/json"}, DEEP),
        ({**BINARY, "Content-Type": "application/octet-stream"}, DEEP),
        ({"Content-Type": "application/json"}, DEEP),
        ({"Content-Type": "application/json"}, DEEPER),
        ({"Content-Type": "application/json"}, b"[1, 2]"),
        ({"Content-Type": "application/cloudevents+json"}, b"[{}]"),
        ({"Content-Type": "application/cloudevents+json"}, b'{"a": "\xff"}'),
        ({}, b"\x80"),
        structured({"message": {}}, id=None),
        structured({"message": {}}, specversion=[]),
        structured({"message": {}}, data_base64="not base64"),
    ],
    ids=["structured-deep", "binary-deep", "binary-octets-deep", "push-deep", "push-100k-deep",
         "push-list",
         "structured-list", "structured-latin1", "no-type-bytes", "null-id",
         "list-specversion", "bad-data-base64"],
)
def test_unreadable_pubsub_deliveries_are_4xx_never_500(
    app: App, headers: dict[str, str], body: bytes
) -> None:
    """functions-framework crashed (500, redelivered forever) on each of these."""
    response = app.client.post("/pubsub/metrics", data=body, headers=headers)
    assert 400 <= response.status_code < 500, response.data[:300]


def push(message_id: str, event: Any) -> tuple[dict[str, str], str]:
    data = base64.b64encode(json.dumps(event).encode()).decode()
    return {"Content-Type": "application/json"}, json.dumps(
        {"subscription": "projects/p/subscriptions/s",
         "message": {"messageId": message_id, "data": data}})


@pytest.mark.parametrize("message_id", ["m-\ud800", "1" * (MAX_MESSAGE_ID + 1)],
                         ids=["lone-surrogate", "too-long"])
def test_a_message_id_no_store_can_key_is_rejected_and_stored(
    app: App, message_id: str
) -> None:
    headers, body = push(message_id, {**DESIGN_EVENT, "model": "churn",
                                      "metrics": {"logloss": 0.1}})
    response = app.client.post("/pubsub/metrics", data=body, headers=headers)
    assert response.status_code == 200  # acknowledged: redelivery cannot fix it
    fields = {field for field, _ in app.rejected().values()}
    assert fields == {"message.messageId"}
    assert all(storable(m) for m in app.processed())


def test_binary_cloudevent_with_undecodable_data_is_stored_as_it_came(app: App) -> None:
    headers = {**BINARY, "Content-Type": "application/octet-stream"}
    response = app.client.post("/pubsub/metrics", data=b"\xff[[not json", headers=headers)
    assert response.status_code == 200
    (rejected,) = app.service.store.rejected_events()
    assert (rejected.message_id, rejected.field) == ("b-1", "message")
    assert rejected.payload == "\ufffd[[not json"  # not "null": what arrived, for the audit


def test_framework_refusals_on_manual_routes_are_json(app: App) -> None:
    for path in ("/models/%0A", "/events%0A", "/robots.txt"):
        response = app.client.get(path, headers=AUTH)
        assert response.status_code == 404
        assert response.json["field"] == "path" and response.json["error"]


@pytest.mark.parametrize("limit", ["1_0", "%EF%BC%95", "%205", "5.0"])
def test_decisions_limit_is_plain_digits(app: App, limit: str) -> None:
    response = app.client.get(f"/decisions?limit={limit}", headers=AUTH)
    assert response.status_code == 400 and response.json["field"] == "limit"


def test_answers_are_strict_json_even_when_a_report_holds_nan(app: App) -> None:
    """A pipeline's outcome report may carry NaN (Python's json reads it); the HTTP answers
    must still be JSON a strict parser reads."""
    launched = app.client.post("/retrain", json={"model": "churn", "reason": "r"},
                               headers=AUTH).json
    report = '{"summary": "lost", "p_value": NaN, "lift": -Infinity}'  # not JSON: NaN
    outcome = json.dumps({"model": "churn", "run_id": launched["run_id"],
                          "decision": "rejected", "report": "REPORT"})
    outcome = outcome.replace('"REPORT"', report)
    envelope = {"subscription": "projects/p/subscriptions/s", "message": {
        "messageId": "o-1", "data": base64.b64encode(outcome.encode()).decode()}}
    assert app.client.post("/pubsub/outcomes", json=envelope).status_code == 200

    def strict(text: bytes) -> Any:
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in answer"))

    runs = strict(app.client.get("/models/churn", headers=AUTH).data)["recent_runs"]
    assert runs[0]["outcome"]["report"] == {"summary": "lost", "p_value": None, "lift": None}
    strict(app.client.get("/decisions?model=churn", headers=AUTH).data)


# --- unicode and names that try to escape ------------------------------------------------------

UNICODE_POLICY = """
models:
  churn:
    pipeline: {template: %(template)s}
    policies:
      - {name: delay, metric: "délai-⏱", slice: "mobile-é", direction: lower_is_better,
         absolute: {threshold: 0.5}}
"""


def test_unicode_metric_and_slice_names_are_recorded_and_judged(tmp_path: Path) -> None:
    with combined_app(tmp_path, policy_yaml=UNICODE_POLICY) as running:
        event = {"model": "churn", "metrics": {"délai-⏱": 0.9}, "slice": "mobile-é",
                 "window_end": "2026-11-02T00:00:00Z"}
        answer = running.client.post("/events", json=event, headers=AUTH).json
        assert answer["status"] == "recorded" and answer["launched"]
        assert running.launcher.submitted[0].parameters["model"] == "churn"


@pytest.mark.parametrize("model", ["é-model", "модель", "模型", "\U0001f600"])
def test_unicode_model_names_are_refused_naming_the_field(app: App, model: str) -> None:
    event = {**DESIGN_EVENT, "model": model}
    response = app.client.post("/events", json=event, headers=AUTH)
    assert response.status_code == 400 and response.json["field"] == "model"
    response = app.client.get("/models/" + quote(model), headers=AUTH)
    assert response.status_code == 404 and response.json["field"] == "model"
    with pytest.raises(PolicyConfigError) as info:
        ServiceConfig.from_yaml(policy_naming(model), Path("/"))
    assert info.value.field == "models"


def policy_naming(model: str) -> str:
    """The tests' policy file with its model `churn` renamed (as written in YAML)."""
    return POLICY_YAML.replace("  churn:", f"  {model}:").replace("%(template)s", "t.yaml")


def tree(root: Path) -> set[Path]:
    return {path for path in root.rglob("*")}


@pytest.mark.parametrize("model", ESCAPES)
def test_escaping_model_names_are_refused_and_create_no_file(tmp_path: Path, model: str) -> None:
    workdir = tmp_path / "service"
    workdir.mkdir()
    outside = tree(tmp_path) | tree(tmp_path.parent)
    with combined_app(workdir) as running:
        response = running.client.post("/events", json={**DESIGN_EVENT, "model": model},
                                       headers=AUTH)
        assert response.status_code == 400 and response.json["field"] == "model"
        response = running.client.get("/models/" + quote(model, safe=""), headers=AUTH)
        assert response.status_code == 404, response.data
        response = running.client.post("/retrain", json={"model": model, "reason": "x"},
                                       headers=AUTH)
        assert response.status_code == 404 and response.json["field"] == "model"
        assert running.launcher.submitted == []
    registry = LocalModelRegistry(workdir / "registry")
    artifact = workdir / "model.bin"
    artifact.write_bytes(b"weights")
    if model == "%2e%2e":  # an odd but harmless name: one directory inside the registry
        registry.register(model, artifact, {"accuracy": 0.9})
        assert (workdir / "registry" / "%2e%2e").is_dir()
    else:
        with pytest.raises(InvalidModelNameError):
            registry.register(model, artifact, {"accuracy": 0.9})
    with pytest.raises(PolicyConfigError) as info:
        ServiceConfig.from_yaml(policy_naming(json.dumps(model)), Path("/"))
    assert info.value.field == "models"
    created = (tree(tmp_path) | tree(tmp_path.parent)) - outside
    assert {p for p in created if workdir not in p.parents} == set(), created


# --- injection into the launch request -----------------------------------------------------

INJECTIONS = ['","pipeline_root":"gs:evil-root', "' OR 1=1 --", '{"training_days": 1}',
              "${template}", '"}, "parameters": {"x": 1}']
"""Strings an event may carry (no "/", no control characters) that look like JSON or code."""


@pytest.mark.parametrize("field", ["parameters", "pipeline", "template", "pipeline_root",
                                   "service_account", "training_days", "champion_version"])
def test_an_event_with_launch_fields_is_rejected_and_launches_nothing(
    app: App, field: str
) -> None:
    event = {**DESIGN_EVENT, "model": "churn", "metrics": {"logloss": 0.9},
             field: {"template": "gs://evil/pipeline.yaml", "training_days": 1}}
    response = app.client.post("/events", json=event, headers=AUTH)
    assert response.status_code == 400 and response.json["field"] == field
    assert app.launcher.submitted == []


@pytest.mark.parametrize("hostile", INJECTIONS)
def test_event_text_never_alters_the_launch_request(app: App, hostile: str) -> None:
    """Quotes and JSON in an event's strings end up, at most, as the champion_version the
    service passes on, verbatim: never as a parameter, template or pipeline root."""
    for day, value in enumerate([0.9] * 5):  # 3 of the latest 5 below 0.95: fires at 5
        event = {"model": "fraud-detector", "model_version": hostile,
                 "metrics": {"accuracy": value}, "slice": "overall", "examples": 1000,
                 "window_end": f"2026-11-{day + 2:02d}T00:00:00Z"}
        assert app.client.post("/events", json=event, headers=AUTH).status_code == 200
    (request,) = app.launcher.submitted
    assert request.template.endswith("pipelines/example.yaml")
    assert request.pipeline_root == "gs://test-bucket/root"
    assert request.service_account is None
    assert set(request.parameters) == {"training_days", *SERVICE_PARAMETERS}
    assert request.parameters["training_days"] == 30
    assert request.parameters["champion_version"] == hostile
    assert request.parameters["model"] == "fraud-detector"
    assert all(v.replace("-", "").isalnum() for v in request.labels.values())


def test_a_manual_request_cannot_set_parameters(app: App) -> None:
    body = {"model": "fraud-detector", "reason": INJECTIONS[0], "parameters": {"a": 1}}
    response = app.client.post("/retrain", json=body, headers=AUTH)
    assert response.status_code == 400 and response.json["field"] == "parameters"
    del body["parameters"]
    assert app.client.post("/retrain", json=body, headers=AUTH).status_code == 202
    (request,) = app.launcher.submitted
    assert set(request.parameters) == {"training_days", *SERVICE_PARAMETERS}
    assert request.parameters["reason"] == f"manual: {INJECTIONS[0]}"
    assert request.pipeline_root == "gs://test-bucket/root"


# --- a real serve process ------------------------------------------------------------------

def chunks(total: int, size: int = 16 * 1024) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        part = min(size, total - sent)
        sent += part
        yield b" " * part


def test_serve_answers_oversize_bodies_413_chunked_or_not(tmp_path: Path) -> None:
    policy = tmp_path / "policies.yaml"
    policy.write_text(textwrap.dedent(POLICY_YAML) % {"template": "t.yaml"})
    env = {"RETRAIN_POLICY_FILE": str(policy), "RETRAIN_STATE": f"sqlite:///{tmp_path}/s.db",
           "RETRAIN_MANUAL_TOKEN": TOKEN}
    with serve_process(tmp_path, env, threads=2) as base:
        host, port = base.removeprefix("http://").split(":")
        for path, size in (("/events", 200_000), ("/pubsub/metrics", 1_200_000)):
            for chunked in (True, False):
                conn = http.client.HTTPConnection(host, int(port), timeout=30)
                headers = {**AUTH, "Content-Type": "application/json"}
                if chunked:
                    conn.request("POST", path, body=chunks(size), headers=headers,
                                 encode_chunked=True)
                else:
                    conn.request("POST", path, body=b" " * size, headers=headers)
                response = conn.getresponse()
                assert response.status == 413, (path, chunked, response.read()[:200])
                assert json.loads(response.read())["field"] == "body"
                conn.close()
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        conn.close()
    log = (tmp_path / "server.log").read_text()
    assert "Traceback" not in log, log[-2000:]

