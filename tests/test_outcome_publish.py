"""The pipeline's outcome step: publish to a Pub/Sub topic (the emulator) or push to a local
service, and the service ends the right run — even when the pipeline names its own job id."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import pytest

from pipeline_client.promotion.outcome import outcome_message_id, publish_outcome
from tests.conftest import Harness
from tests.support.emulators import PubSubEmulator
from tests.support.recorder import RecordingServer
from triggers.errors import ConfigError, TransientError
from triggers.events import Delivery


def fire(harness: Harness) -> str:
    """Three breaching days of fraud-detector: one run launched; its id."""
    for day in range(5):
        result = harness.send(harness.event(day, 0.90, model_version="7"))
    launched = [r for r in harness.store.runs("fraud-detector") if r.state == "launched"]
    assert len(launched) == 1, result
    return launched[0].run_id


def outcome(harness: Harness, run_id: str, **changes: object) -> dict[str, object]:
    run = harness.store.get_run(run_id)
    assert run is not None
    message = {"model": "fraud-detector", "trigger_id": run.trigger_id,
               "run_id": "retrain-reference-20261126-local", "decision": "promoted",
               "champion_version": "8", "report": {"summary": "challenger wins"}}
    message.update(changes)
    return message


def test_an_outcome_published_to_pubsub_ends_the_run_it_names_by_trigger(
    harness: Harness, pubsub_env: PubSubEmulator, unique_name: Callable[[str], str]
) -> None:
    run_id = fire(harness)
    topic = pubsub_env.create_topic(unique_name("outcomes"))
    subscription = pubsub_env.create_pull_subscription(unique_name("outcomes-sub"), topic)
    message = outcome(harness, run_id)

    publish_outcome(message, topic)
    [received] = pubsub_env.pull(subscription, max_messages=1, timeout=10)
    assert json.loads(received.data) == message
    assert received.attributes["source"] == "pipeline"

    delivery = Delivery(received.message_id, received.data, "pubsub")
    result = harness.service.handle_outcome_delivery(delivery)
    assert result.status == "recorded"
    run = harness.store.get_run(run_id)
    assert run is not None and run.state == "promoted"
    assert harness.store.model_state("fraud-detector").champion_version == "8"
    # The same message again changes nothing.
    assert harness.service.handle_outcome_delivery(delivery).status == "duplicate"


def test_an_outcome_for_no_known_run_or_trigger_is_rejected(harness: Harness) -> None:
    run_id = fire(harness)
    message = outcome(harness, run_id, trigger_id="rt-someone-else")
    result = harness.service.handle_outcome_delivery(
        Delivery("m-1", json.dumps(message).encode(), "pubsub"))
    assert result.status == "rejected" and result.error is not None
    assert result.error.field == "run_id"
    assert harness.store.get_run(run_id).state == "launched"  # type: ignore[union-attr]


def test_push_to_a_local_service_sends_a_pubsub_push_body() -> None:
    message = {"model": "m", "trigger_id": "t", "run_id": "r", "decision": "rejected",
               "champion_version": "3", "report": {}}
    with RecordingServer(lambda request, seen: (204, None)) as server:
        assert publish_outcome(message, server.url + "/pubsub/outcomes") == (
            outcome_message_id(message))
        [request] = server.requests
    assert request.path == "/pubsub/outcomes"
    body = request.json()
    assert json.loads(base64.b64decode(body["message"]["data"])) == message
    assert body["message"]["messageId"] == outcome_message_id(message)


def test_push_failures_are_transient_and_bad_targets_name_the_parameter() -> None:
    with RecordingServer(lambda request, seen: (503, {"error": "busy"})) as server:
        with pytest.raises(TransientError):
            publish_outcome({"model": "m"}, server.url)
    with pytest.raises(ConfigError) as caught:
        publish_outcome({"model": "m"}, "outcomes")
    assert caught.value.variable == "outcome_topic"
