"""The `publish` command's logic: reading JSONL/CSV events (with line-numbered errors), posting
them to a local HTTP server, and publishing them to a topic on the real Pub/Sub emulator.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DESIGN_EVENT as EVENT
from tests.support.emulators import PubSubEmulator, free_port
from tests.support.recorder import RecordedRequest, RecordingServer
from triggers.tools.publish import (
    LineError,
    PublishReport,
    publish_to_topic,
    publish_to_url,
    read_events,
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# -- read_events: JSONL ----------------------------------------------------------------------


def test_jsonl_yields_line_numbers_and_skips_blank_lines(tmp_path: Path) -> None:
    second = {"model": "churn", "metrics": {"logloss": 0.31}, "window_end": "2026-11-03T00:00:00Z"}
    path = write(tmp_path, "events.jsonl", f"{json.dumps(EVENT)}\n\n   \n{json.dumps(second)}\n")
    assert list(read_events(path)) == [(1, EVENT), (4, second)]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"model": "m", ', "events.jsonl:2: invalid JSON"),
        ("[1, 2]", r"events.jsonl:2: expected a JSON object \(one event per line\), got list"),
        ('{"model": "m", "metrics": {"a": NaN}}', "events.jsonl:2: NaN is not valid JSON"),
        ('"just a string"', "got str"),
    ],
)
def test_jsonl_malformed_line_names_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = write(tmp_path, "events.jsonl", f"{json.dumps(EVENT)}\n{line}\n{json.dumps(EVENT)}\n")
    events = read_events(path)
    assert next(events) == (1, EVENT)  # JSONL streams: earlier lines come out first
    with pytest.raises(ValueError, match=message) as info:
        list(events)
    assert str(info.value).startswith(f"{path}:2: ")


def test_format_is_sniffed_without_a_known_suffix(tmp_path: Path) -> None:
    jsonl = write(tmp_path, "events.txt", json.dumps(EVENT) + "\n")
    csv_file = write(
        tmp_path, "events.data", "model,metric,value,window_end\nm,auc,0.9,2026-11-02T00:00:00Z\n"
    )
    assert list(read_events(jsonl)) == [(1, EVENT)]
    assert [line for line, _ in read_events(csv_file)] == [2]
    assert [line for line, _ in read_events(jsonl, fmt="jsonl")] == [1]


def test_stdin_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("\n" + json.dumps(EVENT) + "\n"))
    assert list(read_events("-")) == [(2, EVENT)]


def test_non_utf8_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"model": "\xff"}\n')
    with pytest.raises(ValueError, match="not UTF-8"):
        list(read_events(path))


# -- read_events: CSV ------------------------------------------------------------------------

CSV = """\
model,metric,value,window_end,examples,slice,model_version,window_start
fraud-detector,accuracy,0.943,2026-11-02T00:00:00Z,12000,,7,2026-11-01T00:00:00Z
fraud-detector,accuracy,0.91,2026-11-02T00:00:00Z,800,eu,7,
churn,logloss,0.31,2026-11-02T00:00:00Z,,,,
fraud-detector,auc,0.971,2026-11-02T00:00:00Z,12000,,7,2026-11-01T00:00:00Z

fraud-detector,accuracy,0.95,2026-11-03T00:00:00Z,12500,,7,
"""


def test_csv_merges_rows_of_one_evaluation_into_one_event(tmp_path: Path) -> None:
    path = write(tmp_path, "events.csv", CSV)
    assert list(read_events(path)) == [
        (
            2,
            {
                "model": "fraud-detector",
                "metrics": {"accuracy": 0.943, "auc": 0.971},  # rows 2 and 5, not adjacent
                "model_version": "7",
                "window_start": "2026-11-01T00:00:00Z",
                "window_end": "2026-11-02T00:00:00Z",
                "examples": 12000,
            },
        ),
        (
            3,
            {
                "model": "fraud-detector",
                "metrics": {"accuracy": 0.91},
                "model_version": "7",
                "window_end": "2026-11-02T00:00:00Z",
                "examples": 800,
                "slice": "eu",
            },
        ),
        (4, {"model": "churn", "metrics": {"logloss": 0.31}, "window_end": "2026-11-02T00:00:00Z"}),
        (
            7,
            {
                "model": "fraud-detector",
                "metrics": {"accuracy": 0.95},
                "model_version": "7",
                "window_end": "2026-11-03T00:00:00Z",
                "examples": 12500,
            },
        ),
    ]


def test_csv_minimal_columns_in_any_order_with_bom(tmp_path: Path) -> None:
    text = "\ufeffwindow_end,value,metric,model\r\n2026-11-02T00:00:00Z,1,auc,m\r\n"
    path = write(tmp_path, "events.csv", text)
    event = {"model": "m", "metrics": {"auc": 1}, "window_end": "2026-11-02T00:00:00Z"}
    assert list(read_events(path)) == [(2, event)]


HEADER = "model,metric,value,window_end,examples,window_start\n"


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("m,auc,high,2026-11-02T00:00:00Z,,\n", r"events.csv:2: value 'high' is not a number"),
        ("m,auc,nan,2026-11-02T00:00:00Z,,\n", r"events.csv:2: value 'nan' is not a finite"),
        ("m,auc,inf,2026-11-02T00:00:00Z,,\n", r"events.csv:2: value 'inf' is not a finite"),
        ("m,auc,0.9,,,\n", r"events.csv:2: empty 'window_end'"),
        (",auc,0.9,2026-11-02T00:00:00Z,,\n", r"events.csv:2: empty 'model'"),
        ("m,auc,0.9,2026-11-02T00:00:00Z\n", r"events.csv:2: expected 6 columns"),
        ("m,auc,0.9,2026-11-02T00:00:00Z,12.5,\n", r"events.csv:2: examples '12.5' is not a whole"),
        ("m,auc,0.9,2026-11-02T00:00:00Z,-1,\n", r"events.csv:2: examples -1 is negative"),
        (
            "m,auc,0.9,2026-11-02T00:00:00Z,,\nm,acc,0.8,2026-11-02T00:00:00Z,,\n"
            "m,auc,0.7,2026-11-02T00:00:00Z,,\n",
            r"events.csv:4: metric 'auc' repeats line 2",
        ),
        (
            "m,auc,0.9,2026-11-02T00:00:00Z,100,\nm,acc,0.8,2026-11-02T00:00:00Z,200,\n",
            r"events.csv:3: examples 200 disagrees with 100 on line 2",
        ),
        (
            "m,auc,0.9,2026-11-02T00:00:00Z,,2026-11-01T00:00:00Z\n"
            "m,acc,0.8,2026-11-02T00:00:00Z,,2026-10-01T00:00:00Z\n",
            r"events.csv:3: window_start '2026-10-01T00:00:00Z' disagrees",
        ),
    ],
)
def test_csv_malformed_rows_name_file_and_line(tmp_path: Path, rows: str, message: str) -> None:
    path = write(tmp_path, "events.csv", HEADER + rows)
    with pytest.raises(ValueError, match=message):
        list(read_events(path))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"events.csv:1: empty CSV"),
        ("model,metric,value\n", r"events.csv:1: CSV header lacks column\(s\) window_end"),
        ("model,metric,value,window_end,colour\n", r"unknown CSV column\(s\) 'colour'"),
        ("model,metric,value,window_end,model\n", r"duplicate CSV column\(s\) model"),
        ("\n\nmodel,metric\n", r"events.csv:3: CSV header lacks"),
    ],
)
def test_csv_bad_header(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        list(read_events(write(tmp_path, "events.csv", text)))


def test_csv_quoted_multiline_cell_reports_the_record_end(tmp_path: Path) -> None:
    text = 'model,metric,value,window_end\n"m",auc,0.9,2026-11-02T00:00:00Z\n"m\nx",auc,bad,e\n'
    with pytest.raises(ValueError, match=r"events.csv:4: value 'bad'"):
        list(read_events(write(tmp_path, "events.csv", text)))


# -- publish_to_url --------------------------------------------------------------------------


def fake_service(request: RecordedRequest, seen: list[RecordedRequest]) -> tuple[int, Any]:
    """Answers like the manual trigger's POST /events."""
    if request.path != "/events":
        return 404, {"error": "no route", "field": "path"}
    if request.headers.get("Authorization") != "Bearer s3cret":
        return 401, {"error": "missing or wrong bearer token", "field": "Authorization"}
    event = request.json()
    if event.get("model") == "unknown":
        return 400, {"status": "rejected", "error": "model 'unknown' is not configured",
                     "field": "model"}  # fmt: skip
    if event.get("model") == "flaky" and sum(r.body == request.body for r in seen) == 1:
        return 503, {"error": "store unavailable"}
    if event.get("model") == "down":
        return 500, {"error": "always down"}
    launched = ["fraud-detector-accuracy-floor-1a2b"] if event.get("launch") else []
    return 200, {"status": "recorded", "launched": launched}


def test_publish_to_url_posts_bare_json_with_bearer_token() -> None:
    ticks: list[int] = []
    events = [(1, EVENT), (3, {**EVENT, "launch": True})]
    with RecordingServer(fake_service) as server:
        report = publish_to_url(events, server.url + "/", token="s3cret", progress=ticks.append)
    assert report == PublishReport(
        sent=2, accepted=2, launched=["fraud-detector-accuracy-floor-1a2b"]
    )
    assert report.ok and ticks == [1, 1]
    first = server.requests[0]
    assert (first.method, first.path) == ("POST", "/events")
    assert first.headers["Authorization"] == "Bearer s3cret"
    assert first.headers["Content-Type"] == "application/json"
    assert first.json() == EVENT
    assert first.body == json.dumps(EVENT, separators=(",", ":")).encode()


def test_publish_to_url_counts_rejected_and_failed_per_line() -> None:
    events = [
        (1, EVENT),
        (2, {**EVENT, "model": "unknown"}),
        (5, {**EVENT, "model": "flaky"}),  # 503 once, then accepted on the retry
        (7, {**EVENT, "model": "down"}),
        (9, {**EVENT, "metrics": {"auc": float("nan")}}),  # cannot be sent as JSON
    ]
    with RecordingServer(fake_service) as server:
        report = publish_to_url(events, server.url, token="s3cret", retries=1, backoff=0.01)
    assert (report.sent, report.accepted, report.rejected, report.failed) == (5, 2, 2, 1)
    assert report.errors == [
        LineError(2, "model: model 'unknown' is not configured", 400),
        LineError(7, "always down", 500),
        LineError(9, "cannot encode as JSON: Out of range float values are not JSON compliant"),
    ]
    assert not report.ok and report.aborted is None
    assert [r.status for r in server.requests] == [200, 400, 503, 200, 500, 500]
    assert "sent 5: 2 accepted, 2 rejected, 1 failed" in report.summary()


def test_publish_to_url_aborts_on_bad_token() -> None:
    with RecordingServer(fake_service) as server:
        report = publish_to_url([(1, EVENT), (2, EVENT)], server.url, token="wrong")
    assert (report.sent, report.rejected) == (1, 1)
    assert report.aborted is not None and "HTTP 401" in report.aborted
    assert report.errors == [LineError(1, "Authorization: missing or wrong bearer token", 401)]
    assert "Authorization" in server.requests[0].headers
    assert len(server.requests) == 1


def test_publish_to_url_without_token_sends_no_authorization() -> None:
    with RecordingServer(fake_service) as server:
        publish_to_url([EVENT], server.url)  # bare dicts are numbered 1, 2, ...
    assert "Authorization" not in server.requests[0].headers


def test_publish_to_url_unreachable_server_aborts() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    report = publish_to_url([(1, EVENT), (2, EVENT)], url, retries=1, backoff=0.01)
    assert (report.sent, report.failed) == (1, 1)
    assert report.aborted is not None and report.aborted.startswith(f"cannot reach {url}/events")
    assert report.errors[0].line == 1 and report.errors[0].status is None


def test_publish_to_url_timeout_is_a_failure() -> None:
    def slow(request: RecordedRequest, seen: list[RecordedRequest]) -> tuple[int, Any]:
        time.sleep(0.5)
        return 200, {}

    with RecordingServer(slow) as server:
        report = publish_to_url([(1, EVENT)], server.url, timeout=0.1, retries=0)
    assert (report.failed, report.aborted) == (1, None)
    assert report.errors == [LineError(1, "timed out after 0.1s")]


@pytest.mark.parametrize("url", ["ftp://host", "file:///etc/passwd", "localhost:8080", "http://"])
def test_publish_to_url_rejects_bad_urls(url: str) -> None:
    with pytest.raises(ValueError, match="url must be http"):
        publish_to_url([(1, EVENT)], url)


# -- publish_to_topic (real emulator) --------------------------------------------------------


def test_publish_to_topic_data_and_attributes(
    pubsub_env: PubSubEmulator, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    topic = pubsub_env.create_topic(unique_name("publish-topic"))
    subscription = pubsub_env.create_pull_subscription(unique_name("publish-sub"), topic)
    path = write(tmp_path, "events.csv", CSV)
    events = list(read_events(path))
    ticks: list[int] = []
    report = publish_to_topic(events, topic, progress=ticks.append)
    assert (report.sent, report.accepted, report.rejected, report.failed) == (4, 4, 0, 0)
    assert report.ok and ticks == [1, 1, 1, 1]
    assert sorted(report.message_ids) == [2, 3, 4, 7]

    messages = pubsub_env.pull(subscription, max_messages=4, timeout=10)
    received = {m.message_id: m for m in messages}
    assert set(received) == set(report.message_ids.values())
    for line, event in events:
        message = received[report.message_ids[line]]
        assert message.data == json.dumps(event, separators=(",", ":")).encode("utf-8")
        assert json.loads(message.data) == event
        assert dict(message.attributes) == {"model": event["model"]}
        assert message.ordering_key == ""


def test_publish_to_topic_with_ordering_keys(
    pubsub_env: PubSubEmulator, unique_name: Callable[[str], str]
) -> None:
    topic = pubsub_env.create_topic(unique_name("ordered-topic"))
    subscription = pubsub_env.create_pull_subscription(unique_name("ordered-sub"), topic)
    events = [{**EVENT, "model": "é-model", "window_end": f"2026-11-0{day}T00:00:00Z"}
              for day in range(1, 4)]  # fmt: skip
    report = publish_to_topic(events, topic, ordering=True)
    assert report.ok and report.accepted == 3
    messages = pubsub_env.pull(subscription, max_messages=3, timeout=10)
    assert {m.ordering_key for m in messages} == {"é-model"}
    assert sorted(json.loads(m.data)["window_end"] for m in messages) == [
        e["window_end"] for e in events
    ]
    assert "é-model".encode() in messages[0].data  # UTF-8, not \\u escapes


def test_publish_to_topic_missing_topic_fails_each_event(
    pubsub_env: PubSubEmulator, unique_name: Callable[[str], str]
) -> None:
    topic = pubsub_env.topic_path(unique_name("never-created"))
    report = publish_to_topic([(1, EVENT), (2, EVENT)], topic, timeout=30)
    assert (report.sent, report.accepted, report.failed) == (2, 0, 2)
    assert [e.line for e in report.errors] == [1, 2]
    assert "NotFound" in report.errors[0].error


def test_publish_to_topic_rejects_a_bad_topic_path() -> None:
    with pytest.raises(ValueError, match="projects/PROJECT/topics/TOPIC"):
        publish_to_topic([(1, EVENT)], "events")


def test_publish_to_topic_uses_a_given_publisher(
    pubsub_emulator: PubSubEmulator, unique_name: Callable[[str], str]
) -> None:
    """A caller-owned client is used (env untouched) and left running."""
    topic = pubsub_emulator.create_topic(unique_name("given-topic"))
    subscription = pubsub_emulator.create_pull_subscription(unique_name("given-sub"), topic)
    report = publish_to_topic([(1, EVENT)], topic, publisher=pubsub_emulator.publisher)
    assert report.ok
    assert [json.loads(m.data) for m in pubsub_emulator.pull(subscription, 1, 10)] == [EVENT]
    pubsub_emulator.publisher.publish(topic, b"{}").result(timeout=10)  # still usable
