"""The real functions-framework apps of main.py, driven with saved CloudEvent JSON fixtures
(structured and binary mode, and the raw push body) and HTTP requests to the manual trigger."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from functions_framework import create_app

from tests.conftest import (
    EXAMPLE_TEMPLATE,
    FIXTURES,
    POLICY_YAML,
    ROOT,
    vertex_ready_template,
)
from tests.fakes.vertex_server import FakeVertexServer
from triggers.cloud import wiring
from triggers.state.sqlite import SQLiteStore

TOKEN = "s3cret-token-for-tests"
MAIN = str(ROOT / "main.py")


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    policy = tmp_path / "policies.yaml"
    policy.write_text(POLICY_YAML % {"template": EXAMPLE_TEMPLATE})
    db = tmp_path / "state.db"
    monkeypatch.setenv("RETRAIN_POLICY_FILE", str(policy))
    monkeypatch.setenv("RETRAIN_STATE", f"sqlite:///{db}")
    monkeypatch.setenv("RETRAIN_LAUNCHER", "local")
    monkeypatch.setenv("RETRAIN_MANUAL_TOKEN", TOKEN)
    monkeypatch.delenv("RETRAIN_TRUST_IAM", raising=False)
    monkeypatch.chdir(tmp_path)
    wiring.reset()
    yield db
    wiring.reset()


def client(target: str, signature: str) -> Any:
    return create_app(target, MAIN, signature).test_client()


def load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def with_event(cloud_event: dict[str, Any], event: Any, message_id: str) -> dict[str, Any]:
    ce = copy.deepcopy(cloud_event)
    raw = event if isinstance(event, str) else json.dumps(event)
    ce["data"]["message"]["data"] = base64.b64encode(raw.encode()).decode()
    ce["data"]["message"]["messageId"] = message_id
    ce["id"] = message_id
    return ce


def post_structured(c: Any, ce: dict[str, Any]) -> Any:
    return c.post("/", data=json.dumps(ce),
                  headers={"Content-Type": "application/cloudevents+json"})


def post_binary(c: Any, ce: dict[str, Any]) -> Any:
    headers = {f"ce-{k}": v for k, v in ce.items() if k not in ("data", "datacontenttype")}
    headers["Content-Type"] = "application/json"
    return c.post("/", data=json.dumps(ce["data"]), headers=headers)


def test_structured_cloudevent_records_points(env: Path) -> None:
    c = client("on_metric_event", "cloudevent")
    response = post_structured(c, load("cloudevent_metric.json"))
    assert response.status_code == 200
    store = SQLiteStore(env)
    points = store.latest_points("fraud-detector", 10)
    # only what a policy watches is stored (accuracy); auc is counted on the processed marker
    assert sorted((p.metric, p.value) for p in points) == [("accuracy", 0.943)]
    assert {p.message_id for p in points} == {"11827323372542631"}
    assert store.is_processed("11827323372542631")
    assert store.ignored_metrics("11827323372542631") == 1


def test_binary_cloudevent_and_redelivery(env: Path) -> None:
    c = client("on_metric_event", "cloudevent")
    ce = load("cloudevent_metric.json")
    for _ in range(3):
        assert post_binary(c, ce).status_code == 200
    store = SQLiteStore(env)
    assert len(store.latest_points("fraud-detector", 10)) == 1  # accuracy (auc: unwatched)
    # one set of verdicts: the repeats were recognised as duplicates
    assert len(store.decisions("fraud-detector")) == 2  # champion adopted + insufficient data


def test_raw_push_body_is_converted_by_the_framework(env: Path) -> None:
    c = client("on_metric_event", "cloudevent")
    body = load("pubsub_push_body.json")
    response = c.post("/", data=json.dumps(body), headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    store = SQLiteStore(env)
    assert store.is_processed(body["message"]["messageId"])
    assert len(store.latest_points("fraud-detector", 10)) == 1  # accuracy (auc: unwatched)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ("{not json", "data"),
        (json.dumps({"model": "fraud-detector", "metrics": {"accuracy": 0.9},
                     "window_end": "2026-11-02"}), "window_end"),
        (json.dumps({"model": "ghost", "metrics": {"accuracy": 0.9},
                     "window_end": "2026-11-02T00:00:00Z"}), "model"),
    ],
    ids=["malformed-json", "date-without-time", "unknown-model"],
)
def test_permanent_errors_are_acknowledged_and_stored(
    env: Path, payload: str, field: str
) -> None:
    c = client("on_metric_event", "cloudevent")
    ce = with_event(load("cloudevent_metric.json"), payload, "bad-1")
    response = post_structured(c, ce)
    assert response.status_code == 200  # acked: redelivery cannot fix it
    rejected = SQLiteStore(env).rejected_events()
    assert [(r.message_id, r.field) for r in rejected] == [("bad-1", field)]


def test_bad_base64_is_rejected_naming_message_data(env: Path) -> None:
    c = client("on_metric_event", "cloudevent")
    ce = load("cloudevent_metric.json")
    ce["data"]["message"]["data"] = "%%% not base64 %%%"
    assert post_structured(c, ce).status_code == 200
    rejected = SQLiteStore(env).rejected_events()
    assert [(r.message_id, r.field) for r in rejected] == [("11827323372542631", "message.data")]


def test_transient_store_failure_answers_5xx(env: Path) -> None:
    c = client("on_metric_event", "cloudevent")
    store = SQLiteStore(env)
    conn = store._conn()
    conn.execute("BEGIN EXCLUSIVE")  # another writer holds the database
    try:
        service_store = wiring.service().store
        service_store._local.conn.execute("PRAGMA busy_timeout = 100")  # type: ignore[attr-defined]
        response = post_structured(c, load("cloudevent_metric.json"))
        assert response.status_code == 503  # Pub/Sub will redeliver
        assert response.get_json()["retry"] is True
    finally:
        conn.execute("ROLLBACK")
    assert post_structured(c, load("cloudevent_metric.json")).status_code == 200
    assert store.is_processed("11827323372542631")


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_manual_trigger_routes(env: Path) -> None:
    c = client("manual_trigger", "http")
    event = {"model": "churn", "metrics": {"logloss": 0.25},
             "window_end": "2026-11-02T00:00:00+01:00"}
    r = c.post("/events", json=event, headers=auth())
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["status"] == "recorded"
    assert c.post("/events", json=event, headers=auth()).get_json()["status"] == "duplicate"

    r = c.get("/models/churn", headers=auth())
    body = r.get_json()
    assert r.status_code == 200 and body["armed"] is True
    assert body["latest_points"][0]["window_end"] == "2026-11-01T23:00:00Z"

    r = c.post("/retrain", json={"model": "churn", "reason": "try", "dry_run": True},
               headers=auth())
    assert r.status_code == 200 and r.get_json()["would_launch"] is True

    r = c.get("/decisions?model=churn&limit=5", headers=auth())
    assert r.status_code == 200
    assert [d["kind"] for d in r.get_json()["decisions"]] == ["ok"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "field"),
    [
        ("post", "/retrain", {"model": "churn"}, 400, "reason"),
        ("post", "/retrain", {"model": "churn", "reason": "x", "force": "yes"}, 400, "force"),
        ("post", "/retrain", {"model": "nope", "reason": "x"}, 404, "model"),
        ("post", "/retrain", {"model": "churn", "reason": "x", "extra": 1}, 400, "extra"),
        ("get", "/decisions?limit=0", None, 400, "limit"),
        ("get", "/models/nope", None, 404, "model"),
        ("get", "/events", None, 405, "method"),
        ("get", "/nowhere", None, 404, "path"),
        ("post", "/events", {"model": "churn", "metrics": {"logloss": "x"},
                             "window_end": "2026-11-02T00:00:00Z"}, 400, "metrics"),
    ],
)
def test_manual_trigger_errors_name_the_field(
    env: Path, method: str, path: str, body: Any, status: int, field: str
) -> None:
    c = client("manual_trigger", "http")
    r = getattr(c, method)(path, json=body, headers=auth())
    assert r.status_code == status
    assert r.get_json()["field"] == field
    assert r.get_json()["error"]


def test_oversize_body_is_413(env: Path) -> None:
    c = client("manual_trigger", "http")
    r = c.post("/events", data=b"{" + b" " * (1024 * 1024) + b"}", headers=auth())
    assert r.status_code == 413 and r.get_json()["field"] == "body"


@pytest.mark.parametrize(
    ("header", "status"),
    [(None, 401), ("Basic abc", 401), ("Bearer ", 401), ("Bearer wrong", 403),
     (f"Bearer {TOKEN}x", 403)],
    ids=["missing", "basic", "empty", "wrong", "longer"],
)
def test_manual_trigger_rejects_bad_tokens(env: Path, header: str | None, status: int) -> None:
    c = client("manual_trigger", "http")
    headers = {"Authorization": header} if header is not None else {}
    r = c.get("/decisions", headers=headers)
    assert r.status_code == status
    assert r.get_json()["field"] == "Authorization"


def test_manual_trigger_refuses_everything_without_an_auth_mode(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RETRAIN_MANUAL_TOKEN")
    wiring.reset()
    c = client("manual_trigger", "http")
    for token in (None, TOKEN):
        r = c.get("/decisions", headers=auth(token) if token else {})
        assert r.status_code == 403
        assert "RETRAIN_MANUAL_TOKEN" in r.get_json()["error"]
    monkeypatch.setenv("RETRAIN_TRUST_IAM", "true")
    monkeypatch.setenv("RETRAIN_AUDIENCE", "https://manual-trigger.example.test")
    monkeypatch.setenv("RETRAIN_INVOKERS", "user:ops@example.com")
    wiring.reset()
    c = client("manual_trigger", "http")
    r = c.get("/decisions")  # trusting IAM, the app still wants the caller's ID token
    assert r.status_code == 401 and r.get_json()["field"] == "Authorization"


def test_outcome_cloudevent_re_arms_the_model(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeVertexServer() as vertex:
        policy = env.parent / "policies.yaml"
        policy.write_text(POLICY_YAML % {"template": vertex_ready_template(env.parent)})
        monkeypatch.setenv("RETRAIN_LAUNCHER", "vertex")
        monkeypatch.setenv("RETRAIN_VERTEX_ENDPOINT", vertex.endpoint)
        monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "test-project")
        wiring.reset()
        run_id = _retrain_then_reject(env)
        assert list(vertex.created) == [run_id]


def _retrain_then_reject(env: Path) -> str:
    c = client("manual_trigger", "http")
    r = c.post("/retrain", json={"model": "churn", "reason": "first"}, headers=auth())
    assert r.status_code == 202, r.get_json()
    run_id = r.get_json()["run_id"]
    outcome = {"model": "churn", "run_id": run_id, "decision": "rejected",
               "champion_version": None, "report": {"summary": "challenger lost"}}
    ce = with_event(load("cloudevent_outcome.json"), json.dumps(outcome), "outcome-7")
    oc = client("on_run_outcome", "cloudevent")
    assert post_structured(oc, ce).status_code == 200
    store = SQLiteStore(env)
    run = store.get_run(run_id)
    assert run is not None and run.state == "rejected"
    assert run.outcome is not None and run.outcome["report"] == {"summary": "challenger lost"}
    assert store.in_flight_runs("churn") == []
    kinds = [d.kind for d in store.decisions("churn")]
    assert kinds == ["rejected_challenger", "fired"]
    # the same outcome message again changes nothing
    assert post_structured(oc, ce).status_code == 200
    assert [d.kind for d in store.decisions("churn")] == kinds
    return run_id


def test_bad_policy_file_fails_at_cold_start_naming_the_field(
    env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(POLICY_YAML.replace("direction: lower_is_better", "direction: down")
                   % {"template": EXAMPLE_TEMPLATE})
    monkeypatch.setenv("RETRAIN_POLICY_FILE", str(bad))
    wiring.reset()
    with pytest.raises(Exception) as info:
        create_app("on_metric_event", MAIN, "cloudevent")
    assert "models.churn.policies.0.direction" in str(info.value)
