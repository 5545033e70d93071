"""Fuzz of every HTTP entry point of the combined app (random paths, methods, headers, bodies;
fixed, derandomized budget): no 5xx, JSON errors, every metric delivery accounted for."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import DESIGN_EVENT, FIXTURES
from tests.support.combined import TOKEN, App, combined_app
from triggers.policy_file import SERVICE_PARAMETERS

EXAMPLES = int(os.environ.get("RETRAIN_FUZZ_EXAMPLES", "500"))
"""Requests per fuzz test; the default runs this file in about 10 s on 2 cores."""

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same requests on every run: a CI failure reproduces locally
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much],
)

METRICS, OUTCOMES = "/pubsub/metrics", "/pubsub/outcomes"
MANUAL_ROUTES = ["/events", "/retrain", "/models/churn", "/models/fraud-detector", "/decisions",
                 "/healthz"]
POLICY_PARAMETERS = {"fraud-detector": {"training_days": 30}, "churn": {}}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    with combined_app(tmp_path_factory.mktemp("fuzz")) as running:
        yield running


# --- strategies ------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\x7f"),
                      max_size=40)
MODELS = ["churn", "fraud-detector", "ghost", "é-model", "..", "../x", "a/../../b", "x\\y"]


@st.composite
def metric_events(draw: st.DrawFn) -> Any:
    """A metric event: usually valid (breaching, on new windows), a third of the time with
    fields replaced or added: injection attempts, wrong types, hostile model names."""
    model = draw(st.sampled_from(["churn", "fraud-detector", "churn", *MODELS]))
    metric = {"churn": "logloss"}.get(model, "accuracy")
    event: dict[str, Any] = {
        "model": model,
        "metrics": {draw(st.sampled_from([metric, metric, "auc"])):
                    draw(st.sampled_from([0.9, 0.5, 0.1]) | st.floats(0, 1)
                         | st.sampled_from([1e299, -1e299, 5e-324]))},
        "window_end": f"2026-{draw(st.integers(1, 12)):02d}-{draw(st.integers(1, 28)):02d}"
                      f"T{draw(st.integers(0, 23)):02d}:00:00Z",
    }
    if draw(st.integers(0, 2)) == 0:
        for key in draw(st.lists(st.sampled_from(
                ["model_version", "examples", "slice", "window_start", "parameters", "template",
                 "pipeline_root", "metrics", "window_end", "model"]), max_size=3, unique=True)):
            event[key] = draw(st.sampled_from(
                ["7", '","pipeline_root":"gs://evil', "2026-01-01T00:00:00Z", 1000]) | json_values)
    return event


def encoded(data: Any) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.b64encode(raw).decode()


@st.composite
def message_data(draw: st.DrawFn) -> str:
    """The base64 data of a Pub/Sub message: an event, a run's outcome, random JSON or bytes,
    or no base64 at all."""
    outcomes = st.fixed_dictionaries(
        {"model": st.sampled_from(MODELS), "run_id": st.text(max_size=12),
         "decision": st.sampled_from(["promoted", "rejected", "failed", "completed", "won"])},
        optional={"champion_version": json_values, "trigger_id": json_values,
                  "report": json_values})
    return draw(st.one_of(
        metric_events().map(encoded), metric_events().map(encoded), outcomes.map(encoded),
        json_values.map(encoded), st.binary(max_size=40).map(encoded),
        st.text(max_size=20),
    ))


def mutate(draw: st.DrawFn, value: Any, depth: int = 0) -> Any:
    """`value` with one random change somewhere: a key dropped, added or replaced."""
    if not isinstance(value, dict) or not value or depth > 3:
        return draw(json_values) if draw(st.booleans()) else value
    value = dict(value)
    key = draw(st.sampled_from(sorted(value)))
    action = draw(st.sampled_from(["drop", "replace", "add", "descend", "descend"]))
    if action == "drop":
        del value[key]
    elif action == "replace":
        value[key] = draw(json_values)
    elif action == "add":
        value[draw(st.text(max_size=8))] = draw(json_values)
    else:
        value[key] = mutate(draw, value[key], depth + 1)
    return value


DEEP = [b"[" * n + b"]" * n for n in (65, 2_000, 30_000)] + [b'{"a":' * 3_000 + b"1" + b"}" * 3_000]


@st.composite
def envelopes(draw: st.DrawFn) -> tuple[dict[str, str], bytes]:
    """(headers, body) of a Pub/Sub delivery: structured or binary CloudEvent, or a raw push
    body; each carries an event, and is often mutated; or the body is replaced by one no
    envelope parser should choke on (deep, not UTF-8, not an object)."""
    ident = str(draw(st.integers(0, 10**9)))
    message = {"data": draw(message_data()), "messageId": ident,
               "publishTime": "2026-11-02T00:05:12.345Z", "attributes": {"model": "churn"}}
    data = {"message": message, "subscription": "projects/p/subscriptions/s"}
    if draw(st.booleans()):
        data = mutate(draw, data)
    structured = json.loads((FIXTURES / "cloudevent_metric.json").read_text())
    structured.update(id=ident, data=data)
    binary = {"ce-id": ident, "ce-source": "//pubsub.googleapis.com/x",
              "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
              "ce-specversion": "1.0", "Content-Type": "application/json"}
    forms = {
        "structured": ({"Content-Type": "application/cloudevents+json"}, structured),
        "binary": (binary, data),
        "push": ({"Content-Type": "application/json"}, data),
    }
    headers, envelope = forms[draw(st.sampled_from(sorted(forms)))]
    if envelope is structured and draw(st.booleans()):  # an attribute of the wrong type
        key = draw(st.sampled_from(["id", "source", "type", "specversion", "data_base64",
                                    "time", "data"]))
        envelope = {**structured, key: draw(st.none() | st.sampled_from([[], 5, "x"]))}
    if headers is binary:
        headers = dict(binary)
        for name in draw(st.lists(st.sampled_from(sorted(binary)), max_size=2, unique=True)):
            if draw(st.booleans()):
                del headers[name]
            else:
                headers[name] = draw(header_text)
    body = json.dumps(envelope).encode()
    if draw(st.integers(0, 3)) == 0:
        body = draw(st.sampled_from(DEEP + [b"\x80" + body, b"[" + body + b"]", b"null",
                                            body.replace(b'"', b"'")]))
    return headers, body


bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    metric_events().map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"model": st.sampled_from(MODELS + [""]), "reason": st.text(max_size=8)},
                          optional={"dry_run": json_values, "force": json_values,
                                    "parameters": json_values})
    .map(lambda v: json.dumps(v).encode()),
    st.sampled_from(DEEP + [json.dumps(DESIGN_EVENT).encode() + b" " * 70_000]),
)
paths = st.one_of(
    st.sampled_from([METRICS, OUTCOMES, *MANUAL_ROUTES]),
    st.sampled_from([METRICS, OUTCOMES, *MANUAL_ROUTES]),
    st.text(max_size=16).map(lambda s: "/models/" + quote(s, safe="")),
    st.text(max_size=16).map(lambda s: "/" + quote(s, safe="")),  # "//x" would be a host
    st.sampled_from(["/pubsub/metrics/x", "/events/", "/a//events", "/models/", "/models/%2e%2e",
                     "/models/..%2fx", "/decisions?limit=abc", "/decisions?limit=1_0",
                     "/decisions?model=%ED%A0%80&limit=5", "/healthz/../events"]),
)
methods = st.sampled_from(["GET", "POST", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])
authorizations = st.one_of(
    st.just(f"Bearer {TOKEN}"), st.just(f"Bearer {TOKEN}"), st.none(),
    st.sampled_from(["Bearer", "Bearer   ", "Basic dXNlcjpwdw==", f"bearer {TOKEN}",
                     f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}x"]),
    header_text,
)
content_types = st.one_of(
    st.none(), header_text,
    st.sampled_from(["application/json", "application/cloudevents+json", "text/plain",
                     "application/octet-stream", "application/json; charset=latin-1",
                     "multipart/form-data; boundary=x", "application/x-www-form-urlencoded"]),
)


# --- checks ----------------------------------------------------------------------------------

def check_answer(path: str, method: str, status: int, body: bytes, headers: Any) -> Any:
    """No 5xx but an explicit, retryable 503; manual-trigger errors are JSON naming a field."""
    assert status < 500 or (status == 503 and headers.get("Retry-After")), (status, body[:300])
    if path.startswith("/pubsub/") or method == "HEAD":
        return None
    answer = json.loads(body)
    if status >= 400:
        assert set(answer) >= {"error", "field"} and answer["error"], answer
    return answer


def check_launches(app: App) -> None:
    """Whatever the requests said, each launch request is the policy file's pipeline with its
    fixed parameters plus only the service's own."""
    for request in app.launcher.submitted:
        assert request.template.endswith("pipelines/example.yaml")
        assert request.pipeline_root == "gs://test-bucket/root"
        fixed = POLICY_PARAMETERS[request.model]
        assert set(request.parameters) == set(fixed) | set(SERVICE_PARAMETERS)
        assert all(request.parameters[k] == v for k, v in fixed.items())


def check_delivery(app: App, before: set[str], answer: Any, ids: set[str]) -> None:
    """A metric delivery that was answered left exactly one processed message behind:
    recorded, or rejected with its field and reason — or it repeated a message processed
    before (`answer`: what /events said; `ids`: the ids a Pub/Sub delivery carries)."""
    new = app.processed() - before
    assert len(new) <= 1, new
    if new:
        (message_id,) = new
        rejected = app.rejected()
        if message_id in rejected:
            field, reason = rejected[message_id]
            assert field and reason
        else:
            assert message_id in app.recorded(), message_id
    elif answer is not None:  # /events says what it did
        assert answer["status"] == "duplicate" and answer["message_id"] in before, answer
    else:  # no id it carries is new (an envelope without one is known by its digest)
        assert ids & before or any(m.startswith("envelope-") for m in before), ids


def carried_ids(headers: dict[str, str], body: bytes) -> set[str]:
    """The ids a Pub/Sub delivery names: CloudEvent id (header or field), message id."""
    ids: list[Any] = [headers.get("ce-id")]
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    for envelope in (data, data.get("data") if isinstance(data, dict) else None):
        if isinstance(envelope, dict):
            ids.append(envelope.get("id"))
            message = envelope.get("message")
            if isinstance(message, dict):
                ids += [message.get("messageId"), message.get("message_id")]
    return {str(i) for i in ids if i}


RUNS = {"examples": 0}


# --- the fuzz --------------------------------------------------------------------------------

@FUZZ
@given(method=methods, path=paths, authorization=authorizations, content_type=content_types,
       body=bodies, extra=st.dictionaries(st.sampled_from(["ce-id", "ce-specversion", "ce-type",
                                                           "ce-source", "ce-time"]),
                                          header_text, max_size=3))
def test_random_requests_to_every_route(
    app: App, method: str, path: str, authorization: str | None, content_type: str | None,
    body: bytes, extra: dict[str, str],
) -> None:
    headers = dict(extra)
    if authorization is not None:
        headers["Authorization"] = authorization
    if content_type is not None:
        headers["Content-Type"] = content_type
    RUNS["examples"] += 1
    before = app.processed()
    response = app.client.open(path, method=method, headers=headers, data=body)
    answer = check_answer(path, method, response.status_code, response.data, response.headers)
    if "/" + path.split("?")[0].strip("/") == "/events" and answer and "status" in answer:
        check_delivery(app, before, answer, set())
    check_launches(app)


@FUZZ
@given(envelope=envelopes(), method=st.sampled_from(["POST"] * 5 + ["GET", "PUT"]),
       path=st.sampled_from([METRICS, METRICS, METRICS, OUTCOMES]))
def test_mutated_pubsub_deliveries_are_recorded_or_rejected(
    app: App, envelope: tuple[dict[str, str], bytes], method: str, path: str
) -> None:
    RUNS["examples"] += 1
    headers, body = envelope
    before = app.processed()
    response = app.client.open(path, method=method, headers=headers, data=body)
    check_answer(path, method, response.status_code, response.data, response.headers)
    if path == METRICS and response.status_code == 200:
        check_delivery(app, before, None, carried_ids(headers, body))
    check_launches(app)


@FUZZ
@given(event=metric_events(), authorization=authorizations)
def test_random_events_over_https_are_recorded_or_rejected(
    app: App, event: Any, authorization: str | None
) -> None:
    RUNS["examples"] += 1
    headers = {"Authorization": authorization} if authorization is not None else {}
    before = app.processed()
    response = app.client.post("/events", data=json.dumps(event), headers=headers)
    answer = check_answer("/events", "POST", response.status_code, response.data,
                          response.headers)
    if response.status_code in (200, 400) and "status" in answer:
        assert answer["status"] in ("recorded", "duplicate", "rejected")
        assert (response.status_code == 400) == (answer["status"] == "rejected")
        check_delivery(app, before, answer, set())
    else:
        assert response.status_code in (401, 403), answer
        assert app.processed() == before
    check_launches(app)


def test_the_fuzz_reached_the_launcher_and_the_rejections(app: App) -> None:
    """After the fuzz (file order): its budget reached launches, rejections and recorded
    points, or the checks above checked little."""
    if not RUNS["examples"]:
        pytest.skip("meaningful after the fuzz tests of this file only")
    assert app.launcher.submitted, "no fuzzed event ever launched a run"
    assert len(app.rejected()) >= 10
    assert len(app.recorded()) >= 10
