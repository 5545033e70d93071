"""The policy part of the policy file as pydantic models: validation, errors, JSON Schema.

Imported only to validate (CLI, cold start without a compiled policy file); runtime code
uses the plain dataclasses of `thresholds.spec` that `PolicySchema.to_spec` returns.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    model_validator,
)

from thresholds.durations import format_duration, parse_duration
from thresholds.spec import (
    INCIDENT_METRIC,
    NAME_PATTERN,
    POLICY_KINDS,
    Direction,
    PolicyKind,
    PolicySpec,
)

Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*[smhdw]?\s*$"},
                {"type": "number", "minimum": 0},
            ],
            "description": "a duration: '90s', '30m', '24h', '7d', '2w', or seconds",
        }
    ),
]


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo in a policy file must never be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class AbsoluteSchema(StrictModel):
    """Breach when a value is strictly worse than `threshold`."""

    threshold: float = Field(allow_inf_nan=False)


class BaselineSchema(StrictModel):
    """Breach when the latest value dropped from the champion's reference by more than allowed."""

    max_relative_drop: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    max_absolute_drop: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    reference_points: int = Field(default=3, ge=1, le=1000)

    @model_validator(mode="after")
    def _one_limit(self) -> BaselineSchema:
        if self.max_relative_drop is None and self.max_absolute_drop is None:
            raise ValueError("set max_relative_drop and/or max_absolute_drop")
        return self


class TrendSchema(StrictModel):
    """Breach when the robust slope is significantly worse than `max_decline_per_day`."""

    lookback: Duration
    min_points: int = Field(default=8, ge=4, le=100_000)  # below 4, Kendall never reaches 95%
    max_decline_per_day: float = Field(ge=0, allow_inf_nan=False)
    confidence: float = Field(default=0.95, gt=0.5, lt=1)


class ForecastSchema(StrictModel):
    """Breach when the robust linear fit is projected to cross `threshold` within `horizon`."""

    threshold: float = Field(allow_inf_nan=False)
    horizon: Duration
    lookback: Duration
    min_points: int = Field(default=8, ge=3, le=100_000)


class CostSchema(StrictModel):
    """Breach when keeping the champion over `horizon` is projected, at `confidence`, to lose
    more than one run costs: loss = loss_per_unit_day × (fresh level − forecast path) × days."""

    retrain_cost: float = Field(gt=0, allow_inf_nan=False,
                                description="the cost of one retraining run")
    loss_per_unit_day: float = Field(
        gt=0, allow_inf_nan=False,
        description="the cost of the metric being 1.0 worse than a fresh model for one day")
    horizon: Duration | None = Field(
        default=None, description="how far ahead to project (default: (√2 − 1) × the "
        "champion's age, the cost-optimal period for a linear decay)")
    lookback: Duration = Field(default=timedelta(days=14),
                               description="the window of the forecast's robust line")
    min_points: int = Field(default=4, ge=3, le=100_000)
    reference_points: int = Field(
        default=3, ge=1, le=1000,
        description="the champion's first points whose mean is the expected fresh level")
    confidence: float = Field(default=0.8, gt=0.5, lt=1)


class AlertSchema(StrictModel):
    """Fires on an open Cloud Monitoring incident (notification schema 1.2) whose alerting
    policy carries the user label `retrain_model: <model>`; `policy_name` and
    `condition_name` narrow that, or map an unlabelled alerting policy by its names."""

    policy_name: str | None = Field(default=None, min_length=1, max_length=512)
    condition_name: str | None = Field(default=None, min_length=1, max_length=512)


class InhibitSchema(StrictModel):
    """An alert condition that holds back every retraining of the model while an incident
    of it is open (data freshness, schema, pipeline failures)."""

    policy_name: str | None = Field(default=None, min_length=1, max_length=512)
    condition_name: str | None = Field(default=None, min_length=1, max_length=512)

    @model_validator(mode="after")
    def _named(self) -> InhibitSchema:
        if self.policy_name is None and self.condition_name is None:
            raise ValueError("name the alerting policy_name and/or condition_name")
        return self


class PolicySchema(StrictModel):
    """One policy: a metric, a direction, and exactly one rule."""

    name: str = Field(pattern=NAME_PATTERN)
    metric: str = Field(min_length=1, max_length=128)
    direction: Direction
    slice: str = Field(default="overall", min_length=1, max_length=128)
    absolute: AbsoluteSchema | None = None
    baseline: BaselineSchema | None = None
    trend: TrendSchema | None = None
    forecast: ForecastSchema | None = None
    cost: CostSchema | None = None
    alert: AlertSchema | None = None
    breaches_to_trigger: int = Field(default=1, ge=1, le=10_000)
    evaluation_points: int = Field(default=1, ge=1, le=10_000)
    min_examples: int = Field(default=0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _exactly_one_rule(cls, data: Any) -> Any:
        if isinstance(data, dict):
            given = [kind for kind in POLICY_KINDS if data.get(kind) is not None]
            if len(given) != 1:
                raise ValueError(
                    "a policy needs exactly one of absolute, baseline, trend, forecast, cost, "
                    "alert" + (f" (got {', '.join(given)})" if given else "")
                )
            if given == ["alert"]:  # judged on incidents: no metric, no direction
                if data.get("metric", INCIDENT_METRIC) != INCIDENT_METRIC:
                    raise ValueError("an alert policy reads incidents, not a metric: "
                                     "leave metric out")
                data = {"metric": INCIDENT_METRIC, "direction": "higher_is_better", **data}
        return data

    @model_validator(mode="after")
    def _m_of_n(self) -> PolicySchema:
        if self.breaches_to_trigger > self.evaluation_points:
            raise ValueError(
                f"breaches_to_trigger ({self.breaches_to_trigger}) cannot exceed "
                f"evaluation_points ({self.evaluation_points})"
            )
        m_of_n = self.breaches_to_trigger != 1 or self.evaluation_points != 1
        if self.kind != "absolute" and m_of_n:
            raise ValueError(
                "breaches_to_trigger and evaluation_points apply to absolute policies only"
            )
        return self

    @model_validator(mode="after")
    def _positive_lookback(self) -> PolicySchema:
        rule = self.trend or self.forecast or self.cost
        if rule is not None and rule.lookback.total_seconds() <= 0:
            raise ValueError("lookback must be longer than zero")
        if self.cost is not None and self.cost.horizon is not None \
                and self.cost.horizon.total_seconds() <= 0:
            raise ValueError("cost.horizon must be longer than zero")
        return self

    @property
    def kind(self) -> PolicyKind:
        for kind in POLICY_KINDS:
            if getattr(self, kind) is not None:
                return kind
        raise AssertionError("validated PolicySpec without a rule")  # pragma: no cover

    def to_spec(self) -> PolicySpec:
        """The runtime spec of this validated policy."""
        return PolicySpec.from_dict(self.model_dump(mode="json"))
