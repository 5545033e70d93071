"""A run's life after its claim: refresh in-flight runs (resubmit, poll, time out) and apply
the outcome that ends a run, a promotion starting the new champion's history.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pipeline_client.launching.protocol import TERMINAL_STATES
from triggers.config import ModelConfig
from triggers.errors import (
    InvalidEventError,
    TransientError,
)
from triggers.events import Delivery
from triggers.logs import log_event
from triggers.service.results import EventResult
from triggers.state.protocol import (
    IN_FLIGHT,
    Decision,
    DecisionKind,
    ModelState,
    RunRecord,
    RunState,
    RunUpdate,
)

if TYPE_CHECKING:
    from triggers.service.event_path import RetrainService


logger = logging.getLogger("retrain.service")

INFERRED_ENDS: frozenset[str] = frozenset({"completed", "timed_out"})
"""Ends the service inferred without the pipeline's report; a real outcome replaces them."""


HISTORY_EPSILON = 0.001
# How many of a model's latest points are scanned for the old champion's last one.
HISTORY_SCAN = 200

_OUTCOME_DECISION: dict[str, DecisionKind] = {
    "promoted": "promoted",
    "rejected": "rejected_challenger",
    "failed": "failed",
    "completed": "completed",
}



def refresh_runs(service: RetrainService, model: ModelConfig, now: float) -> list[Decision]:
    """Bring the model's in-flight runs up to date: resubmit stale claims, ask the launcher
    for runs whose outcome never arrived, time out runs past `run_timeout`.

    Each change is recorded as it is made. A launcher that misbehaves is logged, never
    allowed to stop the model's events from being processed.
    """
    decisions: list[Decision] = []
    timeout = model.guards.run_timeout.total_seconds()
    for run in service.store.in_flight_runs(model.name):
        labels = {"model": run.model, "run_id": run.run_id, "trigger_id": run.trigger_id}
        try:
            if run.state == "launching":
                if now - run.created_at > timeout:
                    decisions += _end_run(
                        service, run, "failed", now, "launch_failed",
                        f"run {run.run_id} was never submitted within run_timeout")
                elif now - run.created_at >= service.launch_grace:
                    error = service._submit(run, now)
                    if error is not None:
                        decisions += _record(service, [service._decision(
                            "launch_failed", run.model, now, None,
                            f"resubmitting run {run.run_id} was refused: {error}",
                            run_id=run.run_id, trigger_id=run.trigger_id,
                            policy=run.policy)])
                continue
            started = run.launched_at or run.created_at
            timed_out = now - started > timeout
            due = run.checked_at is None or now - run.checked_at >= service.status_interval
            if due or timed_out:
                ended = _check_status(service, run, now)
                if ended is not None:
                    decisions += ended
                    continue
            if timed_out:
                decisions += _end_run(
                    service, run, "timed_out", now, "timed_out",
                    f"run {run.run_id} still in flight after run_timeout; policies re-armed")
        except TransientError:
            continue  # the run stays as it is; the next event tries again
        except Exception:  # noqa: BLE001 - a launcher's surprise must not wedge the model
            log_event(logger, logging.ERROR, f"could not refresh run {run.run_id}",
                      labels=labels, exc_info=True)
    return decisions


def _end_run(
    service: RetrainService, run: RunRecord, state: RunState, now: float, kind: DecisionKind,
    reason: str,
) -> list[Decision]:
    """End an in-flight run with `state` and record why (one transaction)."""
    with service.store.atomic():
        if not service.store.update_run(run.run_id, IN_FLIGHT, RunUpdate(
                state=state, ended_at=now, message=reason)):
            return []
        return _record(service, [service._decision(
            kind, run.model, now, None, reason, run_id=run.run_id,
            trigger_id=run.trigger_id, policy=run.policy)])


def _record(service: RetrainService, decisions: list[Decision]) -> list[Decision]:
    service.store.record_decisions(decisions)
    return decisions


def _check_status(service: RetrainService, run: RunRecord, now: float) -> list[Decision] | None:
    """Ask the launcher about a run; its decisions if it has ended, else None."""
    status = service.launcher.get_status(run.run_id)
    if status.state not in TERMINAL_STATES:
        service.store.update_run(run.run_id, IN_FLIGHT, RunUpdate(
            checked_at=now, state="running" if status.state == "running" else run.state))
        return None
    report = {"launcher_state": status.state, "message": status.message}
    outcome: dict[str, Any] = {"model": run.model, "run_id": run.run_id,
                               "decision": "completed" if status.state == "succeeded"
                               else "failed", "report": report}
    if status.outcome:
        outcome.update(status.outcome, model=run.model, run_id=run.run_id)
    try:
        return service.apply_outcome(outcome, now, via="launcher status")
    except InvalidEventError as exc:
        report["invalid_outcome"] = f"{exc.field}: {exc.reason}"
        return service.apply_outcome({"model": run.model, "run_id": run.run_id,
                                   "decision": "failed", "report": report},
                                  now, via="launcher status")


def handle_outcome_delivery(service: RetrainService, delivery: Delivery) -> EventResult:
    """An outcome message from Pub/Sub (or the local launcher) ends a run."""
    if service.store.is_processed(delivery.message_id):
        return EventResult("duplicate", delivery.message_id)
    from triggers.outcomes import validate_outcome

    try:
        data = json.loads(delivery.payload.decode("utf-8"))
        outcome = validate_outcome(data)
    except InvalidEventError as error:
        return service.reject(delivery, error)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        return service.reject(delivery, InvalidEventError("data", f"not valid JSON: {exc}"))
    run = service.store.get_run(outcome.run_id) or _run_of_trigger(service, outcome)
    if run is None:
        return service.reject(delivery, InvalidEventError(
            "run_id", f"no run {outcome.run_id!r} is known to this service"))
    if run.run_id != outcome.run_id:  # a pipeline that knows its trigger, not our run id
        outcome = outcome.model_copy(update={"run_id": run.run_id})
    now = service.clock()
    with service.store.atomic():  # the run's end, the champion and the ack: all or nothing
        decisions = service.apply_outcome(outcome.model_dump(), now, via="outcome message",
                                       message_id=delivery.message_id)
        service.store.finish_message(delivery.message_id, now, ())
    return EventResult("recorded", delivery.message_id, outcome.model, decisions)


def _run_of_trigger(service: RetrainService, outcome: Any) -> RunRecord | None:
    """The run an outcome names by its trigger id (run ids derive from trigger ids)."""
    if not outcome.trigger_id:
        return None
    for run in service.store.runs(outcome.model, limit=200):
        if run.trigger_id == outcome.trigger_id:
            return run
    return None


def apply_outcome(
    service: RetrainService, data: Mapping[str, Any], now: float, via: str,
    message_id: str | None = None,
) -> list[Decision]:
    """End a run with its outcome; a promotion starts the new champion's history.

    An outcome message also overrides an end the service only inferred (`completed` from
    the launcher's status, `timed_out`): the pipeline's own report is the truth.
    """
    from triggers.outcomes import validate_outcome

    outcome = validate_outcome(dict(data))
    state = outcome.decision
    ends = IN_FLIGHT if via == "launcher status" else IN_FLIGHT | INFERRED_ENDS
    with service.store.atomic():
        run = service.store.update_run(outcome.run_id, ends, RunUpdate(
            state=state, ended_at=now, outcome=outcome.model_dump()))
        if run is None:
            return []  # unknown or already ended: a duplicate outcome changes nothing
        decisions = _outcome_decisions(service, outcome, run, now, via, message_id)
        service.store.record_decisions(decisions)
    log_event(logger, logging.INFO, decisions[0].reason,
              labels={"model": run.model, "run_id": run.run_id, "trigger_id": run.trigger_id})
    return decisions


def _outcome_decisions(
    service: RetrainService, outcome: Any, run: RunRecord, now: float, via: str,
    message_id: str | None,
) -> list[Decision]:
    state = outcome.decision
    reason = f"run {run.run_id} ended: {state} (via {via})"
    if outcome.report.get("summary"):
        reason += f" — {outcome.report['summary']}"
    details: dict[str, Any] = {"champion_version": outcome.champion_version,
                               "report": outcome.report}
    if outcome.sanitised:
        reason += (" (report sanitised: lone UTF-16 surrogates replaced by U+FFFD at "
                   f"{', '.join(outcome.sanitised)})")
        details["sanitised"] = list(outcome.sanitised)
    decisions = [service._decision(
        _OUTCOME_DECISION[state], run.model, now, message_id, reason, run_id=run.run_id,
        trigger_id=run.trigger_id, policy=run.policy, details=details)]
    if state == "promoted":
        previous = service.store.model_state(run.model).champion_version
        service.store.set_model_state(
            ModelState(run.model, outcome.champion_version,
                       fresh_history_start(service, run.model, outcome.champion_version, now),
                       now))
        decisions.append(service._decision(
            "champion", run.model, now, message_id,
            f"version {outcome.champion_version} promoted over {previous}; history and "
            "baseline start fresh", run_id=run.run_id))
    return decisions


def fresh_history_start(
    service: RetrainService, model: str, champion: str | None, now: float
) -> float | None:
    """Where a new champion's history starts, in event time: just after the latest point
    recorded for any other version (the old champion's) — points the new champion was
    already evaluated on stay in. None (from the start) when there is no such point.
    Event time, not the wall clock, so replays and simulations of past windows behave as
    live traffic does; but never after `now` (the promotion's or rollback's time): a
    history that starts in the future would judge no point until then."""
    scanned = service.store.latest_points(model, HISTORY_SCAN)
    for point in scanned:
        if champion is None or point.model_version != champion:
            return min(point.window_end + HISTORY_EPSILON, now)
    if len(scanned) == HISTORY_SCAN:  # all the new champion's: start before the oldest
        return min(scanned[-1].window_end - HISTORY_EPSILON, now)
    return None
