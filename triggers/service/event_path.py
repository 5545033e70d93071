"""The decision path: parse ▸ dedupe ▸ record point ▸ evaluate ▸ guard ▸ launch ▸ audit.

`RetrainService` is what every entry point (Pub/Sub, HTTPS, CLI, backtest) calls; its run
lifecycle and manual paths are in `runs` and `manual`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import timedelta
from itertools import islice
from typing import Any

from pipeline_client.launching.protocol import LaunchRequest, PipelineLauncher
from thresholds.base import Policy, Verdict
from thresholds.durations import format_duration
from triggers import ids
from triggers.config import ModelConfig, ServiceConfig
from triggers.errors import (
    InvalidEventError,
    LaunchRejectedError,
    TransientError,
    UnknownModelError,
)
from triggers.events import Delivery, MetricEvent, parse_event, truncated
from triggers.logs import log_event
from triggers.series import MAX_REEVALUATIONS, ChampionSeries
from triggers.service import manual, runs, status
from triggers.service.results import EventResult, PendingLaunch, RetrainResult
from triggers.state.protocol import (
    Claim,
    Decision,
    DecisionKind,
    ModelState,
    RejectedEvent,
    RunRecord,
    RunUpdate,
    StateStore,
    StoredPoint,
    iso,
)

logger = logging.getLogger("retrain.service")


class RetrainService:
    """Turns metric events into guarded, exactly-once pipeline launches, and records why.

    `clock` is injected (wall clock by default) so backtests and tests control time.
    """

    def __init__(
        self,
        config: ServiceConfig,
        store: StateStore,
        launcher: PipelineLauncher,
        clock: Callable[[], float] = time.time,
        launch_grace: float = 60.0,
        status_interval: float = 60.0,
    ) -> None:
        self.config = config
        self.store = store
        self.launcher = launcher
        self.clock = clock
        self.launch_grace = launch_grace
        self.status_interval = status_interval
        self.series = ChampionSeries(store)
        """The champion's points, read (and on a warm instance kept) for the policies."""

    # ------------------------------------------------------------------ events
    def handle_delivery(self, delivery: Delivery, caller: str | None = None) -> EventResult:
        """Process one metric message. Raises TransientError when it must be redelivered.
        `caller`: who posted it over HTTPS (recorded in its decisions' details).

        Recording, evaluating and claiming happen in one store transaction where the store
        can (`atomic`); a launch is submitted after it, and the message is finished last.
        A Cloud Monitoring incident notification goes to `triggers.incidents` instead.
        """
        if b'"incident"' in delivery.payload:  # (the incidents module loads only for these)
            from triggers import incidents

            if incidents.looks_like_incident(delivery.payload):
                return incidents.handle_incident(self, delivery, caller)
        try:
            event = parse_event(delivery.payload)
            model = self.config.models.get(event.model)
            if model is None:
                raise UnknownModelError(event.model)
            self._check_event_time(event, self.clock())
        except InvalidEventError as exc:
            return self.reject(delivery, exc, caller)
        return self.handle_event(model, event, delivery.message_id, caller)

    def _check_event_time(self, event: MetricEvent, now: float) -> None:
        """Refuse an evaluation of a window that has not ended (beyond the clock skew): its
        point would stay the latest one, and every later point would be judged late."""
        skew = self.config.max_clock_skew
        if event.window_end.timestamp() > now + skew.total_seconds():
            raise InvalidEventError(
                "window_end",
                f"{iso(event.window_end.timestamp())} is in the future: later than the "
                f"service's clock ({iso(now)}) plus max_clock_skew ({format_duration(skew)}); "
                "an evaluation window must have ended (defaults.max_clock_skew sets the "
                "allowance)")

    def handle_event(self, model: ModelConfig, event: MetricEvent, message_id: str,
                     caller: str | None = None) -> EventResult:
        """Process one validated metric event of a configured model (what `handle_delivery`
        does after parsing; the backtest calls it with events it built itself)."""
        now = self.clock()
        refreshed = self.refresh_runs(model, now)  # may call the launcher: not in the lock
        decisions: list[Decision] = []
        watched = model.watched
        kept = [(metric, value) for metric, value in event.metrics.items()
                if (event.slice, metric) in watched]
        ignored = len(event.metrics) - len(kept)
        with self.store.atomic(), self.series.one_transaction():
            if self.store.is_processed(message_id):
                return EventResult("duplicate", message_id, event.model, refreshed)
            if kept:  # only what some policy reads is kept; the rest is counted
                self.series.record([
                    StoredPoint(
                        model=event.model,
                        slice=event.slice,
                        metric=metric,
                        window_end=event.window_end.timestamp(),
                        value=float(value),
                        examples=event.examples,
                        model_version=event.model_version,
                        message_id=message_id,
                        recorded_at=now,
                        window_start=(event.window_start.timestamp() if event.window_start
                                      else None),
                    )
                    for metric, value in kept
                ])
            verdicts, pending = self._evaluate_event(model, event, message_id, now)
            decisions += verdicts
            if not any(p.needs_submit for p in pending):
                for launch in pending:
                    decisions += self._fired_decisions(launch, None, now, message_id)
                decisions = _attributed(decisions, caller)
                self.store.finish_message(message_id, now, decisions, ignored)
                return EventResult("recorded", message_id, event.model,
                                   refreshed + decisions, ignored_metrics=ignored)
        launched = []
        for launch in pending:
            error = self._submit(launch.claim.run, now) if launch.needs_submit else None
            decisions += self._fired_decisions(launch, error, now, message_id)
            if launch.needs_submit and error is None:
                launched.append(launch.request.run_id)
        decisions = _attributed(decisions, caller)
        self.store.finish_message(message_id, now, decisions, ignored)
        return EventResult("recorded", message_id, event.model, refreshed + decisions,
                           launched, ignored_metrics=ignored)

    def reject(self, delivery: Delivery, error: InvalidEventError,
               caller: str | None = None) -> EventResult:
        """Store a message that can never be processed, with its reason (and log it)."""
        if self.store.is_processed(delivery.message_id):
            return EventResult("duplicate", delivery.message_id)
        now = self.clock()
        model = _model_name(delivery.payload)
        payload = truncated(delivery.payload)
        error = InvalidEventError(_text(error.field), _text(error.reason))
        log_event(
            logger,
            logging.ERROR,
            f"rejected event: {error}",
            labels={"model": model},
            message_id=delivery.message_id,
            field=error.field,
            payload_bytes=len(delivery.payload),  # the payload itself is kept in the store only:
            payload_sha256=hashlib.sha256(delivery.payload).hexdigest()[:16],  # it may hold secrets
        )
        self.store.record_rejected(
            RejectedEvent(delivery.message_id, now, delivery.source, error.field, error.reason,
                          payload, model)
        )
        decision = Decision(
            decision_id=ids.digest("rejected", delivery.message_id, length=24),
            model=model or "",
            kind="rejected",
            at=now,
            reason=f"{error.field}: {error.reason}",
            message_id=delivery.message_id,
            details={"field": error.field, "source": delivery.source,
                     **({"caller": caller} if caller else {})},
        )
        self.store.finish_message(delivery.message_id, now, [decision])
        return EventResult("rejected", delivery.message_id, model, [decision], error=error)

    def _evaluate_event(
        self, model: ModelConfig, event: MetricEvent, message_id: str, now: float
    ) -> tuple[list[Decision], list[PendingLaunch]]:
        """Verdicts on the new point (and later ones, if it came late); claims for the fired."""
        decisions: list[Decision] = []
        state = self.store.model_state(model.name)
        if state.champion_version is None and event.model_version is not None:
            state = ModelState(model.name, event.model_version, state.history_start, now)
            self.store.set_model_state(state)
            decisions.append(self._decision(
                "champion", model.name, now, message_id,
                f"version {event.model_version} adopted as champion (first version seen)",
            ))
        if (
            event.model_version is not None
            and state.champion_version is not None
            and event.model_version != state.champion_version
        ):
            decisions.append(self._decision(
                "ignored", model.name, now, message_id,
                f"model_version {event.model_version} is not the champion "
                f"({state.champion_version}); its points are kept but not evaluated",
                event_time=event.window_end.timestamp(),
            ))
            return decisions, []

        # Evaluate every policy on this metric and slice, as of the new point and (if it
        # arrived late) as of each later point, so arrival order never changes a decision.
        t_new = event.window_end.timestamp()
        fired_at: dict[float, list[tuple[Policy, Verdict]]] = {}
        for policy in model.policies:
            if policy.metric not in event.metrics or policy.spec.slice != event.slice:
                continue
            series, contiguous = self._series(model.name, policy, state, t_new)
            first = len(series)  # the series is sorted: walk back to the new point only
            while first and series[first - 1].window_end >= t_new:
                first -= 1
            times = [p.window_end for p in series[first:]]
            for as_of in times[: MAX_REEVALUATIONS + 1] or [t_new]:
                prefix = (series if series and series[-1].window_end <= as_of
                          else [p for p in series if p.window_end <= as_of])
                verdict = self._evaluate_as_of(policy, prefix, model.lateness, now, contiguous,
                                               model.name, state.champion_version)
                if verdict.fired:
                    fired_at.setdefault(as_of, []).append((policy, verdict))
                else:
                    decisions.append(self._verdict_decision(
                        model.name, policy, verdict, verdict.status, now, message_id, as_of,
                        t_new))
        pending = []
        for as_of in sorted(fired_at):
            launch = self._claim_for(model, state, fired_at[as_of], as_of, now, message_id, t_new)
            if launch is not None:
                pending.append(launch)
        return decisions, pending

    def _series(
        self, model: str, policy: Policy, state: ModelState, as_of: float | None = None
    ) -> tuple[list[StoredPoint], float]:
        """The champion's points `policy` judges as of `as_of` (see `ChampionSeries.window`)."""
        return self.series.window(model, policy, state, as_of)

    def _verdict_now(
        self, model: ModelConfig, policy: Policy, state: ModelState, now: float
    ) -> Verdict:
        """The policy's verdict as of the champion's latest point."""
        series, contiguous = self._series(model.name, policy, state)
        return self._evaluate_as_of(policy, series, model.lateness, now, contiguous,
                                    model.name, state.champion_version)

    def _evaluate_as_of(
        self,
        policy: Policy,
        prefix: Sequence[StoredPoint],
        lateness: timedelta,
        now: float,
        contiguous: float,
        model: str = "",
        champion: str | None = None,
    ) -> Verdict:
        """The policy's verdict on `prefix`, unless a window it needs is still expected.

        Events with `window_start` tile time; a point whose window starts after its
        predecessor's end leaves a gap. Within `lateness` of that point's arrival the gap is
        a late point on its way, and judging without it could fire on the wrong point.
        """
        gap = unsettled_gap(prefix if not prefix or prefix[0].window_end >= contiguous
                            else [p for p in prefix if p.window_end >= contiguous],
                            lateness.total_seconds(), now)
        if gap is not None:
            return Verdict(
                policy.name, policy.metric, "insufficient_data",
                f"waiting for the {policy.metric} window ending {iso(gap)}: it is late or "
                f"missing (waiting up to {format_duration(lateness)} after the next one)",
                details={"missing_window_end": iso(gap)})
        try:
            return policy.evaluate(self.series.as_points(model, policy, prefix, champion))
        except (ArithmeticError, ValueError) as exc:  # e.g. values near float's limits
            log_event(logger, logging.ERROR, f"{policy.name} could not be evaluated: {exc}",
                      labels={"policy": policy.name})
            return Verdict(policy.name, policy.metric, "insufficient_data",
                           f"could not be evaluated on these values: {exc}")

    def _claim_for(
        self,
        model: ModelConfig,
        state: ModelState,
        fired: Sequence[tuple[Policy, Verdict]],
        as_of: float,
        now: float,
        message_id: str,
        t_new: float,
    ) -> PendingLaunch | None:
        """One degradation (all policies firing as of one point) → at most one run claimed."""
        policy = fired[0][0]
        point_key = f"{model.name}|{policy.spec.slice}|{policy.metric}|{iso(as_of)}"
        reason = "; ".join(f"{p.name}: {v.reason}" for p, v in fired)
        request = self._launch_request(model, state, policy.name, point_key, reason)
        claim = self._claim(model, request, reason, now, False, message_id)
        if claim.status == "duplicate" and as_of != t_new:
            return None  # a re-evaluation reached a point another delivery acted on
        return PendingLaunch(model.name, tuple(fired), as_of, t_new, request, claim)

    def _fired_decisions(
        self, launch: PendingLaunch, error: str | None, now: float, message_id: str
    ) -> list[Decision]:
        """The audit entries of one degradation, once its claim (and launch) is settled."""
        claim, request = launch.claim, launch.request
        decisions = []
        kind: DecisionKind
        for p, v in launch.fired:
            if claim.status == "blocked":
                kind, why = "suppressed", f"{v.reason} — blocked: {claim.reason}"
            elif claim.status == "duplicate":
                kind, why = "suppressed", f"{v.reason} — already triggered: {claim.reason}"
            elif error is not None:
                kind, why = "launch_failed", f"{v.reason} — launch refused: {error}"
            else:
                kind, why = "fired", v.reason
            decision = self._verdict_decision(
                launch.model, p, v, kind, now, message_id, launch.as_of, launch.t_new,
                run_id=None if claim.status == "blocked" else request.run_id,
                trigger_id=request.trigger_id, reason=why)
            if claim.inhibited_by:
                decision = replace(decision, details={**decision.details,
                                                      "inhibited_by": claim.inhibited_by})
            decisions.append(decision)
            level = logging.WARNING if kind == "fired" else logging.INFO
            log_event(logger, level, f"{launch.model}/{p.name} {kind}: {why}",
                      labels={"model": launch.model, "policy": p.name,
                              "trigger_id": request.trigger_id, "run_id": request.run_id})
        return decisions

    def _launch_request(
        self, model: ModelConfig, state: ModelState, policy: str, point_key: str, reason: str
    ) -> LaunchRequest:
        trigger = ids.trigger_id(model.name, policy, point_key)
        pipeline = model.pipeline
        parameters: dict[str, Any] = dict(pipeline.parameters)
        parameters.update(
            model=model.name,
            trigger_id=trigger,
            reason=reason[:1000],
            champion_version=state.champion_version or "",
        )
        if model.promotion is not None:  # the gate's rules travel with the run
            parameters["promotion"] = json.dumps(model.promotion, sort_keys=True)
        return LaunchRequest(
            run_id=ids.run_id(model.name, policy, trigger),
            model=model.name,
            policy=policy,
            trigger_id=trigger,
            template=pipeline.template,
            parameters=parameters,
            labels={
                "model": ids.label_value(model.name),
                "policy": ids.label_value(policy),
                "trigger-id": trigger,
            },
            service_account=pipeline.service_account,
            pipeline_root=pipeline.pipeline_root,
            network=pipeline.network,
            kms_key_name=pipeline.kms_key_name,
            enable_caching=pipeline.enable_caching,
        )

    def _claim(
        self,
        model: ModelConfig,
        request: LaunchRequest,
        reason: str,
        now: float,
        force: bool,
        claimed_by: str,
    ) -> Claim:
        """Claim the run (guards checked in one transaction).

        A run claimed by another delivery is that delivery's to submit ("duplicate"), unless
        its claim is older than `launch_grace` and still unsubmitted: then it is taken over.
        """
        run = RunRecord(
            run_id=request.run_id,
            model=model.name,
            policy=request.policy,
            trigger_id=request.trigger_id,
            state="launching",
            reason=reason,
            created_at=now,
            request=request.to_dict(),
            forced=force,
            claimed_by=claimed_by,
        )
        held = self.store.open_incidents(model.name) if model.inhibit_when else []
        if held:  # inhibit_when: retraining on broken data makes things worse
            incident = held[0]
            names = " / ".join(n for n in (incident.policy_name, incident.condition_name) if n)
            return Claim("blocked", run,
                         f"held back while incident {incident.incident_id} ({names}) is open: "
                         f"{incident.summary}", inhibited_by=incident.incident_id)
        claim = self.store.claim_run(run, model.guards, now, force)
        if claim.status in ("resume", "exists") and claim.run.claimed_by != claimed_by:
            stale = claim.run.state == "launching" and now - claim.run.created_at >= (
                self.launch_grace)
            if not stale:
                claim = Claim("duplicate", claim.run,
                              f"run {claim.run.run_id} ({claim.run.state}) for the same point")
        return claim

    def _submit(self, run: RunRecord, now: float) -> str | None:
        """Submit a claimed run (idempotent on its id). TransientError propagates (→ 5xx)."""
        request = LaunchRequest.from_dict(run.request)
        labels = {"model": run.model, "policy": run.policy, "trigger_id": run.trigger_id,
                  "run_id": run.run_id}
        try:
            result = self.launcher.submit(request)
        except LaunchRejectedError as exc:
            self.store.update_run(run.run_id, frozenset({"launching"}), RunUpdate(
                state="failed", ended_at=now, message=exc.reason))
            log_event(logger, logging.ERROR, f"launch refused: {exc.reason}", labels=labels)
            return exc.reason
        except TransientError as exc:
            log_event(logger, logging.WARNING, f"launch failed, will retry: {exc}", labels=labels)
            raise
        self.store.update_run(run.run_id, frozenset({"launching"}), RunUpdate(
            state="launched", launched_at=now, resource_name=result.resource_name))
        log_event(logger, logging.INFO,
                  f"launched run {run.run_id}" + (" (already existed)" if result.already_existed
                                                  else ""),
                  labels=labels, resource_name=result.resource_name, launcher=self.launcher.name)
        return None


    # ------------------------------------------------------------------ runs (see runs.py)
    def refresh_runs(self, model: ModelConfig, now: float) -> list[Decision]:
        """Bring the model's in-flight runs up to date: resubmit stale claims, ask the launcher
        for runs whose outcome never arrived, time out runs past `run_timeout`."""
        return runs.refresh_runs(self, model, now)

    def handle_outcome_delivery(self, delivery: Delivery) -> EventResult:
        """An outcome message from Pub/Sub (or the local launcher) ends a run."""
        return runs.handle_outcome_delivery(self, delivery)

    def apply_outcome(
        self, data: Mapping[str, Any], now: float, via: str, message_id: str | None = None
    ) -> list[Decision]:
        """End a run with its outcome; a promotion starts the new champion's history."""
        return runs.apply_outcome(self, data, now, via, message_id)

    # ------------------------------------------------------------------ manual (see manual.py)
    def request_retrain(
        self, model_name: str, reason: str, dry_run: bool = False, force: bool = False,
        caller: str | None = None,
    ) -> RetrainResult:
        """The manual trigger: report what policies and guards say; launch unless dry_run.
        `caller`: who asked (the verified invoker), recorded in the decision's details."""
        return manual.request_retrain(self, model_name, reason, dry_run, force, caller)

    def record_rollback(
        self, model_name: str, restored: str, demoted: str | None, reason: str
    ) -> Decision:
        """After the registry moved `champion` back: the restored version is the champion the
        policies watch, its history starts fresh, and the rollback is in the audit trail."""
        return manual.record_rollback(self, model_name, restored, demoted, reason)

    # ------------------------------------------------------------------ reads
    def model_status(self, model_name: str) -> dict[str, Any]:
        """What `GET /models/{model}` answers (see status.py)."""
        return status.model_status(self, model_name)

    def decisions(self, model: str | None = None, limit: int = 50) -> list[Decision]:
        return self.store.decisions(model, limit)

    # ------------------------------------------------------------------ helpers
    def _decision(
        self,
        kind: DecisionKind,
        model: str,
        now: float,
        message_id: str | None,
        reason: str,
        **fields: Any,
    ) -> Decision:
        run_id = fields.get("run_id")
        if message_id or run_id:  # redelivery or a repeated outcome: same id, no duplicate
            key: tuple[object, ...] = (kind, model, message_id or "", run_id or "")
        else:
            key = (kind, model, reason, now)
        return Decision(
            decision_id=ids.digest(*key, length=24),
            model=model, kind=kind, at=now, reason=reason, message_id=message_id, **fields)

    def _verdict_decision(
        self,
        model: str,
        policy: Policy,
        verdict: Verdict,
        kind: DecisionKind,
        now: float,
        message_id: str,
        as_of: float,
        t_new: float,
        run_id: str | None = None,
        trigger_id: str | None = None,
        reason: str | None = None,
    ) -> Decision:
        text = reason or verdict.reason
        details: dict[str, Any] = dict(verdict.details)
        if as_of != t_new:
            details["reevaluated_after_late_point"] = iso(t_new)
        return Decision(
            # one record per (policy, point, verdict): a redelivery, a re-evaluation after a
            # late point, or a concurrent delivery restating it updates it, never repeats it
            decision_id=ids.digest("verdict", model, policy.name, as_of, kind, length=24),
            model=model,
            kind=kind,
            at=now,
            reason=text,
            policy=policy.name,
            event_time=as_of,
            statistic=verdict.statistic,
            limit=verdict.limit,
            run_id=run_id,
            trigger_id=trigger_id,
            message_id=message_id,
            details=details,
        )


def unsettled_gap(prefix: Sequence[StoredPoint], lateness: float, now: float) -> float | None:
    """The end of the first missing window in `prefix` that may still arrive, if any.

    Points are judged in event-time order up to that gap, as if they had arrived in order.
    """
    if lateness <= 0 or not prefix:
        return None
    end = prefix[0].window_end  # (one pass, no pairs built: it runs per policy per event)
    for point in islice(prefix, 1, None):
        start = point.window_start
        if start is not None and start > end + 1e-6 and now - point.recorded_at < lateness:
            return start
        end = point.window_end
    return None




def _model_name(payload: bytes) -> str | None:
    """Best effort: the model a rejected payload names, for the audit trail."""
    try:
        data = json.loads(payload[:65536].decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    model = data.get("model") if isinstance(data, dict) else None
    return _text(model[:128]) if isinstance(model, str) else None


def _text(text: str) -> str:
    """`text` made storable: lone surrogates (valid in JSON escapes, not UTF-8) replaced."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _attributed(decisions: list[Decision], caller: str | None) -> list[Decision]:
    """`decisions` with who posted their event (over HTTPS) in their details."""
    if not caller:
        return decisions
    return [replace(d, details={**d.details, "caller": caller}) for d in decisions]
