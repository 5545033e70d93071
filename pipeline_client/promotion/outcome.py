"""Publishes a run's outcome message where `on_run_outcome` listens: a Pub/Sub topic in the
cloud, or a running local service's `/pubsub/outcomes` URL (as a Pub/Sub push would)."""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from pipeline_client.errors import ConfigError, TransientError

OUTCOME_TARGET = "outcome_topic"


def outcome_message_id(message: Mapping[str, Any]) -> str:
    """A message id stable for one run's outcome, so a retried publish is deduplicated."""
    key = f"{message.get('model')}|{message.get('trigger_id')}|{message.get('decision')}"
    return "outcome-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:24]


def publish_outcome(message: Mapping[str, Any], target: str, timeout: float = 30.0) -> str:
    """Sends `message` to `target` ("projects/P/topics/T" or an http(s):// URL); returns the
    message id. Network failures raise TransientError (the step fails and can be retried)."""
    payload = json.dumps(dict(message), sort_keys=True).encode("utf-8")
    if target.startswith(("http://", "https://")):
        return _push(payload, outcome_message_id(message), target, timeout)
    if target.startswith("projects/") and "/topics/" in target:
        return _publish(payload, target, timeout)
    raise ConfigError(OUTCOME_TARGET, f"{target!r} is neither projects/P/topics/T nor a URL")


def _push(payload: bytes, message_id: str, url: str, timeout: float) -> str:
    body = {
        "message": {"data": base64.b64encode(payload).decode("ascii"), "messageId": message_id,
                    "attributes": {"source": "pipeline"}},
        "subscription": "projects/local/subscriptions/outcomes",
    }
    request = urllib.request.Request(
        url, data=json.dumps(body).encode("utf-8"), method="POST",
        headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        raise TransientError(f"outcome push to {url} answered {exc.code}") from exc
    except OSError as exc:
        raise TransientError(f"outcome push to {url} failed: {exc}") from exc
    return message_id


def _publish(payload: bytes, topic: str, timeout: float) -> str:
    from google.api_core import exceptions
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

    publisher = pubsub_v1.PublisherClient()
    try:
        return str(publisher.publish(topic, payload, source="pipeline").result(timeout=timeout))
    except (exceptions.ServiceUnavailable, exceptions.DeadlineExceeded, TimeoutError) as exc:
        raise TransientError(f"publishing the outcome to {topic} failed: {exc}") from exc
