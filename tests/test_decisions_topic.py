"""Decisions others can subscribe to, end to end on Google's Pub/Sub emulator: an incident
notification pushed to a real `serve` process (Vertex launcher on the fake Vertex server) whose
first launch fails (5xx → redelivery); the decision reaches RETRAIN_DECISIONS_TOPIC once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import vertex_ready_template
from tests.fakes.vertex_server import FakeVertexServer
from tests.support.emulators import PubSubEmulator
from tests.support.serve import serve_process
from tests.test_e2e_pubsub import wait_for
from triggers.tools.quickstart import call

TOKEN = "topic-token"
FIXTURES = Path(__file__).parent / "fixtures"
POLICIES = """
models:
  fraud-detector:
    pipeline:
      template: %(template)s
      pipeline_root: gs://retrain-test/root
    policies:
      - {name: drift-alert, alert: {}}
"""


@pytest.fixture
def vertex() -> Iterator[FakeVertexServer]:
    with FakeVertexServer() as server:
        yield server


def test_redelivered_incident_launches_and_publishes_its_decision_once(
    tmp_path: Path, pubsub_emulator: PubSubEmulator, unique_name: Any, vertex: FakeVertexServer,
) -> None:
    decisions_topic = pubsub_emulator.create_topic(unique_name("decisions"))
    fired_only = pubsub_emulator.create_pull_subscription(unique_name("told"), decisions_topic)
    policy = tmp_path / "policies.yaml"
    policy.write_text(POLICIES % {"template": vertex_ready_template(tmp_path)})
    env = dict(
        RETRAIN_POLICY_FILE=str(policy), RETRAIN_STATE=f"sqlite:///{tmp_path}/state.db",
        RETRAIN_LAUNCHER="vertex", RETRAIN_VERTEX_ENDPOINT=vertex.endpoint,
        GOOGLE_CLOUD_PROJECT=pubsub_emulator.project, RETRAIN_LOCATION="us-central1",
        RETRAIN_MANUAL_TOKEN=TOKEN, PUBSUB_EMULATOR_HOST=pubsub_emulator.host,
        RETRAIN_DECISIONS_TOPIC=pubsub_emulator.topic_path(decisions_topic),
    )
    with serve_process(tmp_path, env) as base:
        metrics = pubsub_emulator.create_topic(unique_name("metrics"))
        pubsub_emulator.create_push_subscription(
            unique_name("push"), metrics, f"{base}/pubsub/metrics")
        vertex.fail_next(1, 503)  # the first create fails: 5xx, Pub/Sub redelivers
        pubsub_emulator.publisher.publish(
            pubsub_emulator.topic_path(metrics),
            (FIXTURES / "incident_open.json").read_bytes()).result(timeout=30)

        def recorded() -> list[dict[str, Any]]:
            _, trail = call(base, TOKEN, "GET", "/decisions?model=fraud-detector&limit=50")
            return [d for d in trail["decisions"] if d["kind"] == "fired"]

        (fired,) = wait_for(recorded, what="the fired decision")
        told = pubsub_emulator.pull(fired_only, max_messages=5, timeout=8)
    assert len(vertex.created) == 1 and len(vertex.create_requests) == 2
    assert len(told) == 1, [m.attributes for m in told]
    message = told[0]
    assert dict(message.attributes) == {"model": "fraud-detector", "kind": "fired",
                                        "decision_id": fired["decision_id"]}
    assert json.loads(message.data) == fired  # the same JSON as GET /decisions
    assert fired["reason"].startswith("Prediction drift for fraud-detector")
