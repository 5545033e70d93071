"""The Pub/Sub emulator harness, and the emulator behaviour the service relies on: the push
envelope, redelivery of a 5xx with the same messageId, and what functions-framework makes of it.

Set UPDATE_FIXTURES=1 to re-record tests/fixtures/pubsub_push_{body,headers}.json.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DESIGN_EVENT
from tests.support.emulators import PubSubEmulator, _group_members, free_port
from tests.support.recorder import RecordedRequest, RecordingServer

FIXTURES = Path(__file__).parent / "fixtures"
UPDATE = os.environ.get("UPDATE_FIXTURES") == "1"



def _fail_first_delivery(request: RecordedRequest, seen: list[RecordedRequest]) -> tuple[int, Any]:
    """500 for the first delivery of each messageId, 204 for every later one."""
    message_id = request.json()["message"]["messageId"]
    earlier = [r for r in seen[:-1] if r.json()["message"]["messageId"] == message_id]
    return (500, {"error": "transient"}) if not earlier else (204, None)


def _by_message(requests: list[RecordedRequest]) -> dict[str, list[RecordedRequest]]:
    grouped: dict[str, list[RecordedRequest]] = {}
    for request in requests:
        grouped.setdefault(request.json()["message"]["messageId"], []).append(request)
    return grouped


def _shape(value: Any) -> Any:
    """The JSON structure with leaves replaced by type names (for comparing envelopes)."""
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in sorted(value.items())}
    return type(value).__name__


def test_harness_basics(pubsub_emulator: PubSubEmulator) -> None:
    emulator = pubsub_emulator
    assert emulator.host.startswith("127.0.0.1:")
    assert emulator.env() == {
        "PUBSUB_EMULATOR_HOST": emulator.host,
        "PUBSUB_PROJECT_ID": "test-project",
    }
    assert "PUBSUB_EMULATOR_HOST" not in os.environ or os.environ["PUBSUB_EMULATOR_HOST"] != (
        emulator.host
    ), "the session fixture must not leak env"
    with emulator.environ():
        assert os.environ["PUBSUB_EMULATOR_HOST"] == emulator.host
    with urllib.request.urlopen(f"http://{emulator.host}/", timeout=5) as response:
        assert response.read().strip() == b"Ok"
    assert emulator.startup_seconds is not None and emulator.startup_seconds < 60


def test_pull_round_trip(
    pubsub_emulator: PubSubEmulator, unique_name: Callable[[str], str]
) -> None:
    topic = pubsub_emulator.create_topic(unique_name("pull-topic"))
    assert topic.startswith("projects/test-project/topics/pull-topic-")
    subscription = pubsub_emulator.create_pull_subscription(unique_name("pull-sub"), topic)
    pubsub_emulator.publisher.publish(topic, b'{"x":1}', model="m").result(timeout=10)
    messages = pubsub_emulator.pull(subscription, max_messages=1, timeout=10)
    assert [(m.data, dict(m.attributes)) for m in messages] == [(b'{"x":1}', {"model": "m"})]
    assert pubsub_emulator.pull(subscription, max_messages=1, timeout=0.5) == []  # acked


def test_push_redelivers_5xx_with_same_message_id(
    pubsub_emulator: PubSubEmulator, unique_name: Callable[[str], str]
) -> None:
    emulator = pubsub_emulator
    with RecordingServer(_fail_first_delivery) as server:
        topic = emulator.create_topic(unique_name("push-topic"))
        subscription = emulator.create_push_subscription(
            unique_name("push-sub"), topic, f"{server.url}/push"
        )
        events = [DESIGN_EVENT, {**DESIGN_EVENT, "slice": "eu"}, {**DESIGN_EVENT, "slice": "us"}]
        published = {
            emulator.publisher.publish(
                topic, json.dumps(event).encode(), model=event["model"]
            ).result(timeout=10): event
            for event in events
        }

        def all_acked(requests: list[RecordedRequest]) -> bool:
            grouped = _by_message(requests)
            return set(grouped) == set(published) and all(
                any(r.status == 204 for r in deliveries) for deliveries in grouped.values()
            )

        assert server.wait_for(all_acked, timeout=20), server.snapshot()
        time.sleep(1.5)  # the emulator redelivers after ~1 s: a 204 must stop that
        grouped = _by_message(server.snapshot())

    assert set(grouped) == set(published)
    for message_id, deliveries in grouped.items():
        assert [r.status for r in deliveries] == [500, 204], message_id
        first, second = (r.json() for r in deliveries)
        assert first == second  # same messageId, data, attributes, publishTime
        assert json.loads(base64.b64decode(first["message"]["data"])) == published[message_id]
        assert first["message"]["attributes"] == {"model": "fraud-detector"}
        assert first["subscription"] == subscription
        assert deliveries[0].path == "/push"

    request = grouped[next(iter(published))][0]
    body = request.json()
    # The plain Pub/Sub push envelope: no CloudEvent headers, no auth, camelCase + snake_case.
    assert not any(name.lower().startswith("ce-") for name in request.headers)
    assert "Authorization" not in request.headers
    assert request.headers["Content-Type"] == "application/json"
    assert set(body) == {"message", "subscription"}
    assert set(body["message"]) == {
        "data", "messageId", "message_id", "publishTime", "publish_time", "attributes"
    }  # fmt: skip
    assert body["message"]["messageId"] == body["message"]["message_id"]
    assert body["message"]["publishTime"] == body["message"]["publish_time"]

    headers = {k: v for k, v in request.headers.items() if k not in ("Host", "Content-Length")}
    body_path, headers_path = (
        FIXTURES / "pubsub_push_body.json",
        FIXTURES / "pubsub_push_headers.json",
    )
    if UPDATE:
        body_path.write_text(json.dumps(body, indent=2) + "\n")
        headers_path.write_text(json.dumps(headers, indent=2, sort_keys=True) + "\n")
    recorded = json.loads(body_path.read_text())
    assert _shape(recorded) == _shape(body), "emulator push body changed: UPDATE_FIXTURES=1"
    assert json.loads(base64.b64decode(recorded["message"]["data"])) == DESIGN_EVENT
    # Header names only: values such as the Java version in User-Agent vary by machine.
    assert sorted(json.loads(headers_path.read_text())) == sorted(headers)


def test_push_redelivers_4xx_too(
    pubsub_emulator: PubSubEmulator, unique_name: Callable[[str], str]
) -> None:
    """A 4xx is a nack like a 5xx: the service must answer permanent errors with a 2xx."""

    def respond(request: RecordedRequest, seen: list[RecordedRequest]) -> tuple[int, Any]:
        return (400, {"error": "bad"}) if len(seen) == 1 else (204, None)

    with RecordingServer(respond) as server:
        topic = pubsub_emulator.create_topic(unique_name("nack-topic"))
        pubsub_emulator.create_push_subscription(unique_name("nack-sub"), topic, server.url)
        pubsub_emulator.publisher.publish(topic, b"{}").result(timeout=10)
        assert server.wait_for(lambda requests: any(r.status == 204 for r in requests), 10)
    statuses = [(r.json()["message"]["messageId"], r.status) for r in server.snapshot()]
    assert len(statuses) == 2 and statuses[0][0] == statuses[1][0]
    assert [status for _, status in statuses] == [400, 204]


def test_message_without_attributes_has_empty_attributes(
    pubsub_emulator: PubSubEmulator, unique_name: Callable[[str], str]
) -> None:
    with RecordingServer() as server:
        topic = pubsub_emulator.create_topic(unique_name("bare-topic"))
        pubsub_emulator.create_push_subscription(unique_name("bare-sub"), topic, server.url)
        pubsub_emulator.publisher.publish(topic, b"{}").result(timeout=10)
        assert server.wait_for(lambda requests: len(requests) >= 1, timeout=10)
    message = server.requests[0].json()["message"]
    assert message["attributes"] == {}
    assert server.requests[0].path == "/"


FUNCTION_SOURCE = """
import json, os
import functions_framework

SEEN = os.environ["EVENTS_OUT"]

@functions_framework.cloud_event
def on_event(cloud_event):
    attributes = dict(cloud_event.get_attributes())
    first = not os.path.exists(SEEN + "." + cloud_event["id"])
    with open(SEEN, "a") as out:
        out.write(json.dumps({"attributes": attributes, "data": cloud_event.data}) + "\\n")
    if first:
        open(SEEN + "." + cloud_event["id"], "w").close()
        raise RuntimeError("transient: fail the first delivery")
"""


@pytest.fixture
def cloud_event_function(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real functions-framework server (subprocess) running a CloudEvent function."""
    source = tmp_path / "main.py"
    source.write_text(FUNCTION_SOURCE)
    out = tmp_path / "events.jsonl"
    port = free_port()
    env = {**os.environ, "EVENTS_OUT": str(out)}
    log = open(tmp_path / "ff.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "functions_framework", "--source", str(source),
         "--target", "on_event", "--signature-type", "cloudevent",
         "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).close()
            except urllib.error.HTTPError:
                break  # answering (400: a GET is not a CloudEvent)
            except OSError:
                assert proc.poll() is None, (tmp_path / "ff.log").read_text()
                assert time.monotonic() < deadline, "functions-framework did not start"
                time.sleep(0.1)
            else:
                break
        yield f"http://127.0.0.1:{port}", out
    finally:
        os.kill(proc.pid, signal.SIGTERM)  # the master stops its workers
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_functions_framework_turns_push_into_cloud_event(
    pubsub_emulator: PubSubEmulator,
    unique_name: Callable[[str], str],
    cloud_event_function: tuple[str, Path],
) -> None:
    """What a `@functions_framework.cloud_event` function receives from a push subscription."""
    url, out = cloud_event_function
    topic = pubsub_emulator.create_topic(unique_name("ff-topic"))
    # Pushing to /projects/P/topics/T lets functions-framework fill the CloudEvent source.
    pubsub_emulator.create_push_subscription(unique_name("ff-sub"), topic, f"{url}/{topic}")
    message_id = pubsub_emulator.publisher.publish(
        topic, json.dumps(DESIGN_EVENT).encode(), model="fraud-detector"
    ).result(timeout=10)

    deadline = time.monotonic() + 20
    lines: list[dict[str, Any]] = []
    while len(lines) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
        lines = [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []
    assert len(lines) >= 2, "the raised first delivery (HTTP 500) was not redelivered"
    first, second = lines[0], lines[1]
    assert first == second  # the redelivery is the same CloudEvent (same id)

    attributes, data = first["attributes"], first["data"]
    assert attributes["type"] == "google.cloud.pubsub.topic.v1.messagePublished"
    assert attributes["id"] == message_id
    assert attributes["source"] == f"//pubsub.googleapis.com/{topic}"
    assert attributes["specversion"] == "1.0"
    assert set(data) == {"message"}  # the subscription name is dropped
    message = data["message"]
    assert message["@type"] == "type.googleapis.com/google.pubsub.v1.PubsubMessage"
    assert message["messageId"] == message_id
    assert message["attributes"] == {"model": "fraud-detector"}
    assert "publishTime" in message
    assert json.loads(base64.b64decode(message["data"])) == DESIGN_EVENT


def test_missing_gcloud_fails_clearly() -> None:
    emulator = PubSubEmulator(gcloud="/nonexistent/gcloud")
    with pytest.raises(Exception, match="gcloud Pub/Sub emulator not found"):
        emulator.start()


def test_stop_leaves_no_process() -> None:
    """Stopping kills the gcloud launcher and its java child (the whole process group)."""
    with PubSubEmulator() as emulator:
        pgid = emulator.pid
        assert pgid is not None
        commands = {Path(f"/proc/{pid}/comm").read_text().strip() for pid in _group_members(pgid)}
        assert "java" in commands, commands
    assert _group_members(pgid) == []
    ps = subprocess.run(["ps", "-eo", "pgid=,stat=,comm="], capture_output=True, text=True)
    survivors = [
        line for line in ps.stdout.splitlines()
        if line.split()[0] == str(pgid) and not line.split()[1].startswith("Z")
    ]  # fmt: skip
    assert survivors == []
