"""Adapters from what Cloud Functions hands us (CloudEvents, Flask requests) to the service.

`main.py` calls these; they hold no decision logic.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from triggers import ids
from triggers.cloud import outbox, wiring
from triggers.cloud.routes import handle, json_response
from triggers.errors import InvalidEventError
from triggers.events import Delivery, delivery_from_pubsub, storable_id
from triggers.service import EventResult, RetrainService


def delivery_from_cloudevent(cloud_event: Any) -> tuple[Delivery, InvalidEventError | None]:
    """The Pub/Sub message inside an Eventarc CloudEvent (or a converted push body)."""
    data = cloud_event.data
    event_id = str(cloud_event["id"]) if cloud_event.get("id") else None
    raw: bytes | None = None
    if isinstance(data, (bytes, bytearray)):
        raw = bytes(data)  # kept as it came for the rejected record
        try:
            data = json.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError):
            data = None
    try:
        return delivery_from_pubsub(data, fallback_id=event_id), None
    except InvalidEventError as exc:
        if raw is None:
            try:
                raw = json.dumps(data, default=str).encode("utf-8")
            except (RecursionError, ValueError):
                raw = b'"(an envelope nested too deeply to store)"'
        digest = ids.digest(raw.decode("utf-8", errors="replace"), length=32)
        message_id = storable_id(event_id) or f"envelope-{digest}"
        return Delivery(message_id=message_id, payload=raw, source="pubsub"), exc


def metric_cloud_event(cloud_event: Any, service: RetrainService | None = None) -> EventResult:
    """on_metric_event: permanent errors are stored and acknowledged; transient ones raise."""
    service = service or wiring.service()
    return _dispatch(cloud_event, service, service.handle_delivery)


def outcome_cloud_event(cloud_event: Any, service: RetrainService | None = None) -> EventResult:
    """on_run_outcome: a pipeline run's end re-arms the model's policies."""
    service = service or wiring.service()
    return _dispatch(cloud_event, service, service.handle_outcome_delivery)


def _dispatch(
    cloud_event: Any, service: RetrainService, handler: Callable[[Delivery], EventResult]
) -> EventResult:
    delivery, error = delivery_from_cloudevent(cloud_event)
    result = service.reject(delivery, error) if error is not None else handler(delivery)
    tell_decisions(service)
    return result


def evaluation_file_cloud_event(cloud_event: Any, service: RetrainService | None = None,
                                reader: Any = None) -> Any:
    """on_evaluation_file: every line of a finalized Cloud Storage object as a metric event."""
    from triggers.cloud.evaluation_files import StorageReader, handle_object_event

    global _storage_reader
    service = service or wiring.service()
    if reader is None:
        _storage_reader = _storage_reader or StorageReader()
        reader = _storage_reader
    result = handle_object_event(service, cloud_event.data, reader)
    tell_decisions(service)
    return result


_storage_reader: Any = None


def tell_decisions(service: RetrainService,
                   teller: outbox.Teller | None = None) -> outbox.DrainReport | None:
    """After an answer's work: publish the outbox to RETRAIN_DECISIONS_TOPIC when due (see
    `outbox.Teller`; never raises: what fails stays for the next delivery). Default: the
    process's own teller (None without a topic: nothing is kept, nothing to tell)."""
    teller = teller or wiring.decision_teller()
    return teller.tell(service.store) if teller is not None else None


def manual_request(request: Any, service: RetrainService | None = None) -> Any:
    """manual_trigger: authenticate, route, answer JSON."""
    service = service or wiring.service()
    body, status, headers = handle(request, service, wiring.environment(),
                                   wiring.id_token_verifier())
    if request.method == "POST":
        tell_decisions(service)
    return json_response(body, status, headers)
