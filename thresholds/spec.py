"""The settings of one policy as plain frozen dataclasses: what the policies read at run time,
and (through their `thresholds.checks` annotations) what pydantic validates a policy file by.

Each setting is defined here once; `PolicySpec.parse` validates (pydantic, imported then),
`PolicySpec.from_dict` rebuilds a validated dump without checks or pydantic (cold start).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, fields
from datetime import timedelta
from typing import Annotated, Any, Literal

from thresholds.checks import Check, Checked, Duration
from thresholds.durations import format_duration, parse_duration
from thresholds.records import record

Direction = Literal["higher_is_better", "lower_is_better"]
PolicyKind = Literal["absolute", "baseline", "trend", "forecast", "cost", "alert"]
POLICY_KINDS: tuple[PolicyKind, ...] = ("absolute", "baseline", "trend", "forecast", "cost",
                                        "alert")
INCIDENT_METRIC = "(incident)"
"""The `metric` of an `alert` policy: it reads Cloud Monitoring incidents, not points."""
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"

Finite = Annotated[float, Check(finite=True)]
Positive = Annotated[float, Check(gt=0, finite=True)]
Confidence = Annotated[float, Check(gt=0.5, lt=1)]
Name = Annotated[str, Check(min_length=1, max_length=512)]


@record
class AbsoluteSpec(Checked):
    """Breach when a value is strictly worse than `threshold`."""

    threshold: Finite


@record
class BaselineSpec(Checked):
    """Breach when the latest value dropped from the champion's reference by more than allowed."""

    max_relative_drop: Positive | None = None
    max_absolute_drop: Positive | None = None
    reference_points: Annotated[int, Check(ge=1, le=1000)] = 3

    def check(self) -> None:
        if self.max_relative_drop is None and self.max_absolute_drop is None:
            raise ValueError("set max_relative_drop and/or max_absolute_drop")


@record
class TrendSpec(Checked):
    """Breach when the robust slope is significantly worse than `max_decline_per_day`."""

    lookback: Duration
    max_decline_per_day: Annotated[float, Check(ge=0, finite=True)]
    # below 4 points, Kendall's test never reaches 95 %
    min_points: Annotated[int, Check(ge=4, le=100_000)] = 8
    confidence: Confidence = 0.95


@record
class ForecastSpec(Checked):
    """Breach when the robust linear fit is projected to cross `threshold` within `horizon`."""

    threshold: Finite
    horizon: Duration
    lookback: Duration
    min_points: Annotated[int, Check(ge=3, le=100_000)] = 8


@record
class CostSpec(Checked):
    """Breach when keeping the champion over `horizon` is projected, at `confidence`, to lose
    more than one run costs: loss = loss_per_unit_day × (fresh level − forecast path) × days."""

    retrain_cost: Annotated[Positive, Check(description="the cost of one retraining run")]
    loss_per_unit_day: Annotated[Positive, Check(
        description="the cost of the metric being 1.0 worse than a fresh model for one day")]
    horizon: Annotated[Duration | None, Check(
        description="how far ahead to project (default: (√2 − 1) × the champion's age, the "
        "cost-optimal period for a linear decay)")] = None
    lookback: Annotated[Duration, Check(
        description="the window of the forecast's robust line")] = timedelta(days=14)
    min_points: Annotated[int, Check(ge=3, le=100_000)] = 4
    reference_points: Annotated[int, Check(
        ge=1, le=1000,
        description="the first points of a champion whose mean is its fresh level")] = 3
    champions: Annotated[int, Check(
        ge=1, le=100,
        description="the expected fresh level is the upper quartile of the fresh levels of the "
        "latest `champions` champions, the current one included (1: the current one's alone)")] = 5
    confidence: Confidence = 0.8


@record
class AlertSpec(Checked):
    """Fires on an open Cloud Monitoring incident (notification schema 1.2) whose alerting
    policy carries the user label `retrain_model: <model>`; `policy_name` and
    `condition_name` narrow that, or map an unlabelled alerting policy by its names."""

    policy_name: Name | None = None
    condition_name: Name | None = None


@record
class InhibitSpec(AlertSpec):
    """An alert condition that holds back every retraining of the model while an incident
    of it is open (data freshness, schema, pipeline failures)."""

    def check(self) -> None:
        if self.policy_name is None and self.condition_name is None:
            raise ValueError("name the alerting policy_name and/or condition_name")


_RULES: dict[str, type[Any]] = {
    "alert": AlertSpec,
    "absolute": AbsoluteSpec,
    "baseline": BaselineSpec,
    "trend": TrendSpec,
    "forecast": ForecastSpec,
    "cost": CostSpec,
}
_DURATIONS = ("lookback", "horizon")


@record
class PolicySpec(Checked):
    """One policy: a metric, a direction, and exactly one rule."""

    name: Annotated[str, Check(pattern=NAME_PATTERN)]
    metric: Annotated[str, Check(min_length=1, max_length=128)]
    direction: Direction
    slice: Annotated[str, Check(min_length=1, max_length=128)] = "overall"
    absolute: AbsoluteSpec | None = None
    baseline: BaselineSpec | None = None
    trend: TrendSpec | None = None
    forecast: ForecastSpec | None = None
    cost: CostSpec | None = None
    alert: AlertSpec | None = None
    breaches_to_trigger: Annotated[int, Check(ge=1, le=10_000)] = 1
    evaluation_points: Annotated[int, Check(ge=1, le=10_000)] = 1
    min_examples: Annotated[int, Check(ge=0)] = 0

    @property
    def kind(self) -> PolicyKind:
        for kind in POLICY_KINDS:
            if getattr(self, kind) is not None:
                return kind
        raise ValueError(f"policy {self.name!r} has no rule")

    @classmethod
    def prepare(cls, data: Any) -> Any:
        """Exactly one rule; an alert policy gets the incident metric and a direction."""
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

    def check(self) -> None:
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
        rule = self.trend or self.forecast or self.cost
        if rule is not None and rule.lookback.total_seconds() <= 0:
            raise ValueError("lookback must be longer than zero")
        if self.cost is not None and self.cost.horizon is not None \
                and self.cost.horizon.total_seconds() <= 0:
            raise ValueError("cost.horizon must be longer than zero")

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> PolicySpec:
        """Validate `data` as written in a policy file (raises pydantic's ValidationError)."""
        from thresholds.schema import validate_policy

        return validate_policy(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PolicySpec:
        """Rebuild a spec from `to_dict` output or a validated JSON dump (no checks)."""
        values = dict(data)
        for kind, rule in _RULES.items():
            if values.get(kind) is not None:
                values[kind] = rule(**{
                    key: (parse_duration(value)
                          if key in _DURATIONS and value is not None else value)
                    for key, value in values[kind].items()
                })
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, durations written as in a policy file, unset rules left out."""
        data: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if value is None:
                continue
            if item.name in _RULES:
                value = {
                    key: format_duration(v) if isinstance(v, timedelta) else v
                    for key, v in asdict(value).items()
                    if v is not None
                }
            data[item.name] = value
        return data
