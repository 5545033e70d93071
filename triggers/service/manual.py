"""The manual paths: a retrain asked for by a person (dry run, forced) and the record of a
rollback the registry already made.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

from thresholds.base import Verdict
from triggers.errors import (
    ModelNotConfiguredError,
)
from triggers.guards import check_guards, guard_window
from triggers.logs import log_event
from triggers.service.results import RetrainResult
from triggers.service.runs import fresh_history_start
from triggers.state.protocol import (
    Claim,
    Decision,
    ModelState,
)

if TYPE_CHECKING:
    from triggers.service.event_path import RetrainService


logger = logging.getLogger("retrain.service")


def request_retrain(
    service: RetrainService, model_name: str, reason: str, dry_run: bool = False,
    force: bool = False,
    caller: str | None = None,
) -> RetrainResult:
    """The manual trigger: report what policies and guards say; launch unless dry_run.
    `caller`: who asked (the verified invoker), recorded in the decision's details."""
    model = service.config.models.get(model_name)
    if model is None:
        raise ModelNotConfiguredError(model_name)
    now = service.clock()
    decisions = [] if dry_run else service.refresh_runs(model, now)
    state = service.store.model_state(model.name)
    verdicts = [service._verdict_now(model, policy, state, now) for policy in model.policies]
    recent = [
        r for r in service.store.runs(model.name, limit=1000)
        if r.in_flight or r.created_at > now - guard_window(model.guards)
    ]
    blocked = check_guards(recent, model.guards, now, force)
    answer = RetrainResult(
        model=model.name,
        dry_run=dry_run,
        force=force,
        policies=[_verdict_json(v) for v in verdicts],
        policies_fired=[v.policy for v in verdicts if v.fired],
        guard=blocked,
        would_launch=blocked is None,
    )
    if dry_run:
        return answer
    latest = service.store.latest_points(model.name, 1)
    point_key = latest[0].key if latest else "no-points"
    policy = "manual"
    full_reason = f"manual: {reason}" + (" (forced)" if force else "")
    request = service._launch_request(
        model, state, policy, f"{point_key}|{reason}|{force}", full_reason)
    claim = service._claim(model, request, full_reason, now, force,
                        f"manual:{request.trigger_id}")
    error = (service._submit(claim.run, now) if claim.status in ("claimed", "resume")
             else None)
    if claim.status == "exists" and not claim.run.in_flight:
        claim = Claim("blocked", claim.run,
                      f"this request (same reason, no new points) already triggered run "
                      f"{claim.run.run_id}, which ended {claim.run.state}; give a new "
                      "reason to retrain again")
    kind: Literal["suppressed", "launch_failed", "fired"]
    if claim.status in ("blocked", "duplicate"):
        kind, why = "suppressed", f"{full_reason} — blocked: {claim.reason}"
    elif error is not None:
        kind, why = "launch_failed", f"{full_reason} — launch refused: {error}"
    else:
        kind, why = "fired", full_reason
    decisions.append(service._decision(
        kind, model.name, now, None, why, policy=policy,
        run_id=None if claim.status == "blocked" else request.run_id,
        trigger_id=request.trigger_id,
        details={"policies_fired": answer.policies_fired, "forced": force,
                 **({"caller": caller} if caller else {}),
                 **({"inhibited_by": claim.inhibited_by} if claim.inhibited_by else {})}))
    service.store.record_decisions(decisions)
    return replace(
        answer,
        status=kind,
        run_id=None if claim.status == "blocked" else request.run_id,
        reason=why,
        already_existed=claim.status == "exists",
    )


def record_rollback(
    service: RetrainService, model_name: str, restored: str, demoted: str | None, reason: str
) -> Decision:
    """After the registry moved `champion` back: the restored version is the champion the
    policies watch, its history starts fresh, and the rollback is in the audit trail."""
    if model_name not in service.config.models:
        raise ModelNotConfiguredError(model_name)
    now = service.clock()
    moved = (f"champion rolled back from {demoted} to {restored}" if demoted else
             f"champion set to {restored} (the registry already held it)")
    decision = service._decision(
        "rollback", model_name, now, None,
        f"{moved}: {reason}; history and baseline start fresh",
        details={"champion_version": restored, "demoted_version": demoted})
    with service.store.atomic():
        service.store.set_model_state(ModelState(
            model_name, restored, fresh_history_start(service, model_name, restored, now),
            now))
        service.store.record_decisions([decision])
    log_event(logger, logging.WARNING, decision.reason, labels={"model": model_name})
    return decision



def _verdict_json(verdict: Verdict) -> dict[str, Any]:
    return {
        "policy": verdict.policy,
        "metric": verdict.metric,
        "status": verdict.status,
        "reason": verdict.reason,
        "statistic": verdict.statistic,
        "limit": verdict.limit,
        "details": dict(verdict.details),
    }
