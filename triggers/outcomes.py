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
    field_validator,
    model_validator,
)

from triggers.errors import InvalidEventError
from triggers.events import LONE_SURROGATE, lone_surrogate_paths, replace_lone_surrogates


class RunOutcome(BaseModel):
    """The message a pipeline's last step publishes when the run ends."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    model: str = Field(min_length=1)
    run_id: str = Field(min_length=1)
    decision: Literal["promoted", "rejected", "failed", "completed"]
    trigger_id: str | None = None
    champion_version: str | None = None
    report: dict[str, Any] = Field(default_factory=dict)
    sanitised: tuple[str, ...] = ()
    """Where in `report` lone surrogates were replaced by U+FFFD (set by the service)."""

    @model_validator(mode="after")
    def _promotion_names_the_champion(self) -> RunOutcome:
        if self.decision == "promoted" and not self.champion_version:
            raise ValueError("a promotion must name the new champion_version")
        return self



def validate_outcome(data: Any) -> RunOutcome:
    """The outcome in `data`, or an InvalidEventError naming the first bad field.

    Text no store can hold (a lone UTF-16 surrogate, valid in a JSON escape) is refused in
    the fields that say which run ended and how; in the free-text `report` it is replaced by
    U+FFFD and the places are listed in `sanitised`, so the run still ends.
    """
    if isinstance(data, dict):
        kept = lone_surrogate_paths({k: v for k, v in data.items() if k in _CHECKED_FIELDS})
        if kept:
            raise InvalidEventError(kept[0], LONE_SURROGATE)
        in_report = lone_surrogate_paths({"report": data.get("report")})
        if in_report:
            try:
                report = replace_lone_surrogates(data["report"])
            except RecursionError:
                raise InvalidEventError("report", "nested too deeply") from None
            data = {**data, "report": report,
                    "sanitised": [*_listed(data.get("sanitised")), *in_report]}
    try:
        return RunOutcome.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"]) or "data"
        raise InvalidEventError(field, error["msg"], error.get("input")) from None


_CHECKED_FIELDS = frozenset(RunOutcome.model_fields) - {"report"}


def _listed(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, (list, tuple)) else []


class RetrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=128)
    reason: str = Field(min_length=1, max_length=1000)
    dry_run: StrictBool = False
    force: StrictBool = False

    @field_validator("model", "reason")
    @classmethod
    def _storable(cls, value: str) -> str:
        if lone_surrogate_paths(value):
            raise ValueError(LONE_SURROGATE)
        return value
