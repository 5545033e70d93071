"""What the service answers: an event's result, a manual retrain's result, and a launch the
event path claimed and still has to submit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pipeline_client.launching.protocol import LaunchRequest
from thresholds.base import Policy, Verdict
from thresholds.records import record
from triggers.errors import (
    InvalidEventError,
)
from triggers.state.protocol import (
    Claim,
    Decision,
)


@dataclass
class EventResult:
    """What handling one message did."""

    status: Literal["recorded", "duplicate", "rejected"]
    message_id: str
    model: str | None = None
    decisions: list[Decision] = field(default_factory=list)
    launched: list[str] = field(default_factory=list)
    error: InvalidEventError | None = None
    ignored_metrics: int = 0
    """Metric values of the event that no policy watches (counted, not stored)."""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "status": self.status,
            "message_id": self.message_id,
            "model": self.model,
            "launched": self.launched,
            "decisions": [d.to_json() for d in self.decisions],
        }
        if self.ignored_metrics:
            data["ignored_metrics"] = self.ignored_metrics
        if self.error is not None:
            data["error"] = self.error.reason
            data["field"] = self.error.field
        return data


# A new champion's history starts this long (seconds) after the old champion's last point.


@record
class RetrainResult:
    """The answer of `request_retrain`: what the policies and guards say and, unless a dry
    run, what became of the request (`status`: fired, suppressed or launch_failed)."""

    model: str
    dry_run: bool
    force: bool
    policies: list[dict[str, Any]]
    policies_fired: list[str]
    guard: str | None
    would_launch: bool
    status: Literal["fired", "suppressed", "launch_failed"] | None = None
    run_id: str | None = None
    reason: str | None = None
    already_existed: bool | None = None

    def to_json(self) -> dict[str, Any]:
        """As the manual trigger answers it (a dry run has no status, run or reason)."""
        data = asdict(self)
        if self.status is None:
            for key in ("status", "run_id", "reason", "already_existed"):
                del data[key]
        return data


@record
class PendingLaunch:
    """A claimed degradation waiting for its submit (done outside the store transaction)."""

    model: str
    fired: tuple[tuple[Policy, Verdict], ...]
    as_of: float
    t_new: float
    request: LaunchRequest
    claim: Claim

    @property
    def needs_submit(self) -> bool:
        return self.claim.status in ("claimed", "resume")
