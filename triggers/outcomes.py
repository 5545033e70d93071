"""Messages other than metric events, as pydantic models: a run's outcome, a manual retrain
request. Loaded when one arrives, never on the metric event path."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    model_validator,
)

from triggers.errors import InvalidEventError


class RunOutcome(BaseModel):
    """The message a pipeline's last step publishes when the run ends."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    model: str = Field(min_length=1)
    run_id: str = Field(min_length=1)
    decision: Literal["promoted", "rejected", "failed", "completed"]
    trigger_id: str | None = None
    champion_version: str | None = None
    report: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _promotion_names_the_champion(self) -> RunOutcome:
        if self.decision == "promoted" and not self.champion_version:
            raise ValueError("a promotion must name the new champion_version")
        return self



def validate_outcome(data: Any) -> RunOutcome:
    """The outcome in `data`, or an InvalidEventError naming the first bad field."""
    try:
        return RunOutcome.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"]) or "data"
        raise InvalidEventError(field, error["msg"], error.get("input")) from None


class RetrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=128)
    reason: str = Field(min_length=1, max_length=1000)
    dry_run: StrictBool = False
    force: StrictBool = False
