"""Decisions others can subscribe to: the store's outbox drained to RETRAIN_DECISIONS_TOPIC.

With a topic set, a decision worth telling (`triggers.state.protocol.is_told`) is written to
the outbox with the decision itself; after an entry point's work that wrote one, the outbox is
published (the same JSON `GET /decisions` returns, attributes `model`, `kind`, `decision_id`)
and cleared (`Teller`). A failure only logs: the entries stay and the next delivery tries
again. Delivery is at least once: dedupe on `decision_id`.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from thresholds.records import record
from triggers.errors import ConfigError
from triggers.logs import log_event
from triggers.state.protocol import Decision, StateStore

logger = logging.getLogger("retrain.outbox")

DRAIN_BATCH = 100
"""Most decisions one drain publishes (the rest wait for the next delivery)."""
DRAIN_INTERVAL = 60.0
"""Seconds after which a delivery that wrote nothing told reads the outbox all the same
(entries another instance left: it crashed, or its publish failed)."""
PUBLISH_TIMEOUT = 10.0
"""Seconds a drain waits for Pub/Sub to acknowledge its batch."""

_TOPIC = re.compile(r"^projects/[a-z][a-z0-9-]{4,28}[a-z0-9]/topics/[A-Za-z][\w.~+%-]{2,254}$")
_TOPIC_ID = re.compile(r"^[A-Za-z][\w.~+%-]{2,254}$")


class DecisionPublisher(Protocol):
    """Where told decisions go. `publish` raises on failure; the entries then stay."""

    def publish(self, messages: Sequence[tuple[bytes, Mapping[str, str]]]) -> list[bool]:
        """Publish each (data, attributes); whether each one was accepted, in order."""
        ...


@dataclass
class RecordingPublisher:
    """The shipped fake: keeps what it was given (and can be told to fail)."""

    messages: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)
    failing: bool = False

    def publish(self, messages: Sequence[tuple[bytes, Mapping[str, str]]]) -> list[bool]:
        if self.failing:
            raise ConnectionError("the recording publisher was told to fail")
        self.messages.extend((data, dict(attributes)) for data, attributes in messages)
        return [True] * len(messages)


class PubSubPublisher:
    """google-cloud-pubsub, imported and connected on the first drain (honours
    PUBSUB_EMULATOR_HOST)."""

    def __init__(self, topic: str, timeout: float = PUBLISH_TIMEOUT) -> None:
        self.topic = topic
        self.timeout = timeout
        self._client: Any = None
        self._lock = threading.Lock()

    def _publisher(self) -> Any:
        with self._lock:
            if self._client is None:
                from google.cloud import pubsub_v1  # type: ignore[attr-defined]

                self._client = pubsub_v1.PublisherClient()
            return self._client

    def publish(self, messages: Sequence[tuple[bytes, Mapping[str, str]]]) -> list[bool]:
        client = self._publisher()
        futures = [client.publish(self.topic, data, **dict(attributes))
                   for data, attributes in messages]
        accepted = []
        for future in futures:
            try:
                future.result(timeout=self.timeout)
                accepted.append(True)
            except Exception as exc:  # noqa: BLE001 - any failure leaves the entry queued
                log_event(logger, logging.WARNING, f"publishing a decision failed: {exc}")
                accepted.append(False)
        return accepted


def topic_path(value: str, project: str | None) -> str:
    """RETRAIN_DECISIONS_TOPIC as a full topic name (`projects/P/topics/T`, or `T` with
    GOOGLE_CLOUD_PROJECT set)."""
    if _TOPIC.match(value):
        return value
    if _TOPIC_ID.match(value):
        if not project:
            raise ConfigError("RETRAIN_DECISIONS_TOPIC",
                              f"{value!r} is a topic id: set GOOGLE_CLOUD_PROJECT too, or write "
                              "projects/PROJECT/topics/TOPIC")
        return f"projects/{project}/topics/{value}"
    raise ConfigError("RETRAIN_DECISIONS_TOPIC",
                      f"{value!r} is not a topic: write projects/PROJECT/topics/TOPIC")


def message_of(decision: Decision) -> tuple[bytes, dict[str, str]]:
    """The Pub/Sub message of a decision: its `GET /decisions` JSON and filterable attributes."""
    data = json.dumps(decision.to_json(), sort_keys=True, separators=(",", ":")).encode()
    return data, {"model": decision.model, "kind": decision.kind,
                  "decision_id": decision.decision_id}


@record
class DrainReport:
    """What one drain did: decisions published, and those left for the next one."""

    published: int = 0
    left: int = 0
    error: str | None = None


def drain(store: StateStore, publisher: DecisionPublisher | None,
          limit: int = DRAIN_BATCH) -> DrainReport:
    """Publish the outbox's oldest decisions and clear those accepted. Never raises: a
    decision is already recorded, and telling it must not fail or repeat its delivery."""
    if publisher is None:
        return DrainReport()
    try:
        waiting = store.outbox(limit)
        if not waiting:
            return DrainReport()
        accepted = publisher.publish([message_of(d) for d in waiting])
        done = [d.decision_id for d, ok in zip(waiting, accepted, strict=True) if ok]
        if done:
            store.clear_outbox(done)
        return DrainReport(len(done), len(waiting) - len(done))
    except Exception as exc:  # noqa: BLE001 - publishing never fails a decision
        log_event(logger, logging.WARNING,
                  f"decisions outbox not drained (will retry on the next delivery): {exc}")
        return DrainReport(error=str(exc))


class Teller:
    """When a process reads its outbox: after a delivery whose own work wrote a told decision
    (the store counts them per thread, so none escapes: that thread drains after its commit),
    after a drain that left entries or failed, and at most every `interval` seconds otherwise.
    A delivery that decided nothing worth telling reads nothing (the hot path)."""

    def __init__(self, publisher: DecisionPublisher, interval: float = DRAIN_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.publisher = publisher
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        self._last_read = -math.inf  # a new instance reads once: what others left
        self._left = False

    def tell(self, store: StateStore) -> DrainReport | None:
        """Drain `store`'s outbox if due (see the class); None when not. Never raises."""
        wrote = store.outbox_switch.take_written()
        now = self.clock()
        with self._lock:
            if not (wrote or self._left or now - self._last_read >= self.interval):
                return None
            self._last_read = now
        report = drain(store, self.publisher)
        with self._lock:
            self._left = report.left > 0 or report.error is not None
        return report
