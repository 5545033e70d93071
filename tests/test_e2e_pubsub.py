"""End to end on Google's Pub/Sub emulator: events published with google-cloud-pubsub, pushed
to a real `retrain-trigger serve` process using the Vertex launcher against a fake Vertex REST
server; the first create fails (503 → 5xx → redelivery) and exactly one run is created."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import vertex_ready_template
from tests.fakes.vertex_server import FakeVertexServer
from tests.support.emulators import PubSubEmulator
from tests.support.serve import serve_process
from triggers.tools.quickstart import call

TOKEN = "e2e-token"
POLICIES = """
models:
  fraud-detector:
    pipeline:
      template: %(template)s
      parameters: {training_days: 30}
      pipeline_root: gs://retrain-test/root
      service_account: retrain@test-project.iam.gserviceaccount.com
    policies:
      - {name: accuracy-floor, metric: accuracy, direction: higher_is_better,
         absolute: {threshold: 0.95}, breaches_to_trigger: 3, evaluation_points: 5}
"""


@pytest.fixture
def vertex() -> Iterator[FakeVertexServer]:
    with FakeVertexServer() as server:
        yield server


@pytest.fixture
def served(tmp_path: Path, vertex: FakeVertexServer) -> Iterator[tuple[str, dict[str, str]]]:
    policy = tmp_path / "policies.yaml"
    policy.write_text(POLICIES % {"template": vertex_ready_template(tmp_path)})
    env = dict(
        RETRAIN_POLICY_FILE=str(policy), RETRAIN_STATE=f"sqlite:///{tmp_path}/state.db",
        RETRAIN_LAUNCHER="vertex", RETRAIN_VERTEX_ENDPOINT=vertex.endpoint,
        GOOGLE_CLOUD_PROJECT="test-project", RETRAIN_LOCATION="us-central1",
        RETRAIN_MANUAL_TOKEN=TOKEN,
    )
    with serve_process(tmp_path, env, workers=2) as base:
        yield base, env


def wait_for(predicate: Any, timeout: float = 60, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_one_run_per_degradation_through_pubsub(
    pubsub_emulator: PubSubEmulator, unique_name: Any, vertex: FakeVertexServer,
    served: tuple[str, dict[str, str]],
) -> None:
    from tests.test_service import DEGRADING, FIRST_FIRE

    base, _ = served
    topic = pubsub_emulator.create_topic(unique_name("metrics"))
    pubsub_emulator.create_push_subscription(
        unique_name("push"), topic, f"{base}/pubsub/metrics")
    vertex.fail_next(1, 503)  # the first create fails: the service answers 5xx, Pub/Sub retries

    def evaluated(window_end: str) -> bool:
        """True once the event's verdicts are recorded (the last step before the ack)."""
        _, trail = call(base, TOKEN, "GET", "/decisions?model=fraud-detector&limit=100")
        return any(d["event_time"] == window_end for d in trail["decisions"])

    for day, value in enumerate(DEGRADING):
        event = {"model": "fraud-detector", "model_version": "7",
                 "metrics": {"accuracy": value},
                 "window_end": f"2026-11-{day + 1:02d}T00:00:00Z", "examples": 1000}
        pubsub_emulator.publisher.publish(topic, json.dumps(event).encode(),
                                          model="fraud-detector").result(timeout=30)
        wait_for(lambda e=event: evaluated(e["window_end"]), what=f"point {day}")
        if day == FIRST_FIRE:
            wait_for(lambda: vertex.created, what="the run on the fake Vertex server")

    # every event processed; 10 deliveries, one of them redelivered after the 503
    _, trail = call(base, TOKEN, "GET", "/decisions?model=fraud-detector&limit=100")
    kinds = [d["kind"] for d in trail["decisions"]]
    assert kinds.count("fired") == 1, trail
    assert kinds.count("suppressed") == len(DEGRADING) - FIRST_FIRE - 1, [
        (d["kind"], d["event_time"], d["reason"][:80]) for d in trail["decisions"]]
    assert len(vertex.created) == 1
    assert len(vertex.create_requests) == 2  # the failed attempt and its redelivery
    run_id = next(iter(vertex.created))
    request = vertex.create_requests[-1]
    assert request.query["pipelineJobId"] == run_id
    body = request.body
    assert body["labels"]["model"] == "fraud-detector"
    assert body["labels"]["policy"] == "accuracy-floor"
    assert body["serviceAccount"] == "retrain@test-project.iam.gserviceaccount.com"
    params = body["runtimeConfig"]["parameterValues"]
    assert params["model"] == "fraud-detector" and params["champion_version"] == "7"
    assert params["trigger_id"] == body["labels"]["trigger-id"]
    assert body["runtimeConfig"]["gcsOutputDirectory"] == "gs://retrain-test/root"
