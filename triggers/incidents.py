"""Cloud Monitoring incident notifications (JSON schema version 1.2) on the metric subscription:
recognised by shape, judged by `alert` policies, and kept as `inhibit_when` state.

A Pub/Sub notification channel publishes `{"version": "1.2", "incident": {"incident_id",
"policy_name", "condition_name", "state": "open"|"closed", "started_at", "ended_at",
"summary", "policy_user_labels", ...}}`. An open incident of an `alert` policy launches one run
per (model, policy, incident id): the same incident delivered again, or reopened, launches
nothing more. An incident an `inhibit_when` rule names holds the model's retraining back while
it is open. An incident no model's rules name is stored as rejected, saying how to map it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from thresholds.alert import Incident, inhibits
from triggers import ids
from triggers.errors import InvalidEventError
from triggers.events import Delivery
from triggers.logs import log_event
from triggers.state.protocol import Decision, IncidentRecord

if TYPE_CHECKING:
    from triggers.service import EventResult, RetrainService

logger = logging.getLogger("retrain.incidents")

SCHEMA_VERSIONS = frozenset({"1.2"})
STATES = frozenset({"open", "closed"})
MAX_TEXT = 2048


def looks_like_incident(payload: bytes) -> bool:
    """Whether a message is an incident notification (`{"version", "incident": {...}}`) rather
    than a metric event; cheap on metric events (a byte search first)."""
    if b'"incident"' not in payload:
        return False
    try:
        data = json.loads(payload.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False
    return isinstance(data, dict) and isinstance(data.get("incident"), dict) \
        and "version" in data and "model" not in data


def parse_incident(payload: bytes) -> Incident:
    """The incident of a 1.2 notification; InvalidEventError names the field otherwise."""
    try:
        data = json.loads(payload.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidEventError("data", f"not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("incident"), dict):
        raise InvalidEventError("incident", "an incident notification has an incident object")
    version = data.get("version")
    if version not in SCHEMA_VERSIONS:
        raise InvalidEventError("version", f"incident schema version {version!r} is not "
                                f"supported (supported: {', '.join(sorted(SCHEMA_VERSIONS))})")
    body: Mapping[str, Any] = data["incident"]
    incident_id = body.get("incident_id")
    if not isinstance(incident_id, str) or not incident_id.strip() or len(incident_id) > 256:
        raise InvalidEventError("incident.incident_id", "must be a non-empty string")
    state = body.get("state")
    if not isinstance(state, str) or state.lower() not in STATES:
        raise InvalidEventError("incident.state", f"{state!r} is not open or closed")
    labels = body.get("policy_user_labels") or {}
    if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise InvalidEventError("incident.policy_user_labels", "must map strings to strings")
    return Incident(
        incident_id=incident_id,
        open=state.lower() == "open",
        policy_name=_text(body, "policy_name"),
        condition_name=_text(body, "condition_name"),
        summary=_text(body, "summary"),
        started_at=_epoch(body, "started_at"),
        ended_at=_epoch(body, "ended_at"),
        policy_user_labels=labels,
    )


def _text(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidEventError(f"incident.{key}", "must be a string")
    return value[:MAX_TEXT].encode("utf-8", "replace").decode("utf-8")


def _epoch(body: Mapping[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise InvalidEventError(f"incident.{key}", "must be seconds since the epoch")
    return float(value)


def handle_incident(service: RetrainService, delivery: Delivery,
                    caller: str | None = None) -> EventResult:
    """Judge one incident notification: inhibitions first, then every matching alert policy.
    Raises TransientError (→ redelivery) as the metric path does."""
    from thresholds.alert import AlertPolicy
    from triggers.service import EventResult, PendingLaunch

    store = service.store
    if store.is_processed(delivery.message_id):
        return EventResult("duplicate", delivery.message_id)
    try:
        incident = parse_incident(delivery.payload)
    except InvalidEventError as exc:
        return service.reject(delivery, exc, caller)
    now = service.clock()
    message_id = delivery.message_id
    decisions: list[Decision] = []
    launched: list[str] = []
    names = " / ".join(n for n in (incident.policy_name, incident.condition_name) if n)
    matched: list[str] = []
    for model in service.config.models.values():
        if any(inhibits(rule, incident) for rule in model.inhibit_when):
            matched.append(model.name)
            at = (incident.ended_at if not incident.open else incident.started_at) or now
            store.record_incident(IncidentRecord(
                model.name, incident.incident_id, incident.open, incident.policy_name,
                incident.condition_name, incident.summary, at))
            held = ("holds back every retraining while open" if incident.open
                    else "closed: no longer holds retraining back")
            decisions.append(Decision(
                decision_id=ids.digest("incident", model.name, incident.incident_id,
                                       incident.open, length=24),
                model=model.name, kind="incident", at=now, message_id=message_id,
                reason=f"incident {incident.incident_id} ({names}) {held}: {incident.summary}",
                event_time=at,
                details={"incident_id": incident.incident_id, "open": incident.open,
                         "policy_name": incident.policy_name,
                         "condition_name": incident.condition_name}))
    pending: list[PendingLaunch] = []
    for model in service.config.models.values():
        for policy in model.policies:
            if not isinstance(policy, AlertPolicy) or not policy.is_about(incident, model.name):
                continue
            matched.append(model.name)
            verdict = policy.judge_incident(incident)
            as_of = incident.started_at or now
            if not verdict.fired:
                decisions.append(service._verdict_decision(
                    model.name, policy, verdict, verdict.status, now, message_id, as_of, as_of))
                continue
            state = store.model_state(model.name)
            request = service._launch_request(
                model, state, policy.name, f"incident|{incident.incident_id}", verdict.reason)
            claim = service._claim(model, request, verdict.reason, now, False, message_id)
            pending.append(PendingLaunch(model.name, ((policy, verdict),), as_of, as_of,
                                         request, claim))
    if not matched:
        return service.reject(delivery, InvalidEventError(
            "incident.policy_name",
            f"no model's alert policy or inhibit_when matches alerting policy "
            f"{incident.policy_name!r} (condition {incident.condition_name!r}); label the "
            "alerting policy retrain_model: <model>, or name it in the policy file"), caller)
    for launch in pending:
        error = service._submit(launch.claim.run, now) if launch.needs_submit else None
        decisions += service._fired_decisions(launch, error, now, message_id)
        if launch.needs_submit and error is None:
            launched.append(launch.request.run_id)
    if caller:
        decisions = [replace(d, details={**d.details, "caller": caller})
                     for d in decisions]
    store.finish_message(message_id, now, decisions)
    log_event(logger, logging.INFO,
              f"incident {incident.incident_id} ({'open' if incident.open else 'closed'}) for "
              f"{', '.join(sorted(set(matched)))}", message_id=message_id)
    return EventResult("recorded", message_id, matched[0] if len(set(matched)) == 1 else None,
                       decisions, launched)
