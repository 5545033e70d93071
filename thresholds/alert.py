"""The `alert` policy: a Cloud Monitoring incident of the model is the verdict (open fires,
closed is recorded), and the name matching shared with `inhibit_when`. No I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import field

from thresholds.base import Point, Policy, Verdict, VerdictStatus
from thresholds.records import record
from thresholds.spec import AlertSpec, PolicySpec

MODEL_LABEL = "retrain_model"
"""The alerting policy's user label that names the model an incident is about."""


@record
class Incident:
    """What a policy needs of one incident notification (parsed by `triggers.incidents`)."""

    incident_id: str
    open: bool
    policy_name: str = ""
    condition_name: str = ""
    summary: str = ""
    started_at: float | None = None
    ended_at: float | None = None
    policy_user_labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def model_label(self) -> str | None:
        return self.policy_user_labels.get(MODEL_LABEL)


def names_match(rule: AlertSpec, incident: Incident) -> bool:
    """Whether every name `rule` gives equals the incident's (no name given: True)."""
    return ((rule.policy_name is None or rule.policy_name == incident.policy_name)
            and (rule.condition_name is None or rule.condition_name == incident.condition_name))


def is_about(rule: AlertSpec, incident: Incident, model: str) -> bool:
    """Whether `incident` is about `model` for an alert rule: its alerting policy is labelled
    `retrain_model: <model>` (and matches the names the rule gives), or it is unlabelled and
    matches the names the rule gives (at least one). A label naming another model: never."""
    label = incident.model_label
    if label is not None:
        return label == model and names_match(rule, incident)
    named = rule.policy_name is not None or rule.condition_name is not None
    return named and names_match(rule, incident)


def inhibits(rule: AlertSpec, incident: Incident) -> bool:
    """Whether an `inhibit_when` rule (at least one name, validated) covers `incident`."""
    return names_match(rule, incident)


class AlertPolicy(Policy[Sequence[Point]]):
    """Fires on an open incident of the model; it never judges metric points."""

    kind = "alert"

    def __init__(self, spec: PolicySpec) -> None:
        super().__init__(spec)
        assert spec.alert is not None
        self.rule: AlertSpec = spec.alert

    def select(self, points: Sequence[Point]) -> Sequence[Point]:
        return ()

    def judge(self, window: Sequence[Point]) -> Verdict:
        return self.verdict("insufficient_data",
                            "an alert policy is judged on Cloud Monitoring incidents, not on "
                            "metric points")

    def breached(self, window: Sequence[Point]) -> bool:
        return False

    def is_about(self, incident: Incident, model: str) -> bool:
        return is_about(self.rule, incident, model)

    def judge_incident(self, incident: Incident) -> Verdict:
        """Open: fired, the incident's summary as the reason. Closed: ok, recorded."""
        names = " / ".join(n for n in (incident.policy_name, incident.condition_name) if n)
        summary = incident.summary or f"incident {incident.incident_id} of {names or 'an alert'}"
        status: VerdictStatus
        status, reason = (("fired", summary) if incident.open else
                          ("ok", f"incident {incident.incident_id} closed: {summary}"))
        return self.verdict(status, reason, incident_id=incident.incident_id,
                            policy_name=incident.policy_name,
                            condition_name=incident.condition_name)
