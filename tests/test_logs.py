"""Logs are one JSON object per line in Cloud Logging's structured format, with labels, and
never carry a token or a whole payload."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from tests.conftest import Harness
from tests.test_service import DEGRADING, FIRST_FIRE, feed
from triggers.cloud.logs import LABELS_KEY, CloudLoggingFormatter


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(CloudLoggingFormatter())
    logger = logging.getLogger("retrain")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(old)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_launch_is_logged_with_labels(harness: Harness, captured: io.StringIO) -> None:
    feed(harness, DEGRADING[: FIRST_FIRE + 1])
    entries = lines(captured)
    launched = [e for e in entries if str(e["message"]).startswith("launched run")]
    assert len(launched) == 1
    entry = launched[0]
    assert entry["severity"] == "INFO"
    labels = entry[LABELS_KEY]
    assert isinstance(labels, dict)
    assert labels["model"] == "fraud-detector" and labels["policy"] == "accuracy-floor"
    assert labels["run_id"].startswith("rt-fraud-detector-accuracy-floor-")
    assert labels["trigger_id"] in labels["run_id"]
    assert entry["launcher"] == "fake"


def test_rejected_event_is_logged_at_error_without_its_payload(
    harness: Harness, captured: io.StringIO
) -> None:
    """The payload may carry secrets: the log names the message, the field, the payload's size
    and digest; the payload itself is kept only in the store's rejected record."""
    body = json.dumps({"model": "fraud-detector", "metrics": {"accuracy": 1},
                       "window_end": "bad", "note": "s3cr3t-marker"}).encode()
    harness.send(body, message_id="m-9")
    (entry,) = [e for e in lines(captured) if e["severity"] == "ERROR"]
    assert entry["message_id"] == "m-9" and entry["field"] == "window_end"
    assert entry["payload_bytes"] == len(body) and "payload" not in entry
    assert "s3cr3t-marker" not in captured.getvalue()
    assert "s3cr3t-marker" in harness.store.rejected_events()[0].payload
