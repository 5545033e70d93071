"""The settings of one policy as plain frozen dataclasses: what the policies read at run time.

Validation lives in `thresholds.schema` (pydantic), imported only when something is validated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from datetime import timedelta
from typing import Any, Literal

from thresholds.durations import format_duration, parse_duration

Direction = Literal["higher_is_better", "lower_is_better"]
PolicyKind = Literal["absolute", "baseline", "trend", "forecast", "cost", "alert"]
POLICY_KINDS: tuple[PolicyKind, ...] = ("absolute", "baseline", "trend", "forecast", "cost",
                                        "alert")
INCIDENT_METRIC = "(incident)"
"""The `metric` of an `alert` policy: it reads Cloud Monitoring incidents, not points."""
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"


@dataclass(frozen=True)
class AbsoluteSpec:
    """Breach when a value is strictly worse than `threshold`."""

    threshold: float


@dataclass(frozen=True)
class BaselineSpec:
    """Breach when the latest value dropped from the champion's reference by more than allowed."""

    max_relative_drop: float | None = None
    max_absolute_drop: float | None = None
    reference_points: int = 3


@dataclass(frozen=True)
class TrendSpec:
    """Breach when the robust slope is significantly worse than `max_decline_per_day`."""

    lookback: timedelta
    max_decline_per_day: float
    min_points: int = 8
    confidence: float = 0.95


@dataclass(frozen=True)
class ForecastSpec:
    """Breach when the robust linear fit is projected to cross `threshold` within `horizon`."""

    threshold: float
    horizon: timedelta
    lookback: timedelta
    min_points: int = 8


@dataclass(frozen=True)
class CostSpec:
    """Breach when keeping the champion over `horizon` is projected, at `confidence`, to lose
    more than one run costs (see `thresholds.cost`). `horizon` None: (√2 − 1) × its age."""

    retrain_cost: float
    loss_per_unit_day: float
    horizon: timedelta | None = None
    lookback: timedelta = timedelta(days=14)
    min_points: int = 4
    reference_points: int = 3
    confidence: float = 0.8


@dataclass(frozen=True)
class AlertSpec:
    """Fires on an open Cloud Monitoring incident of this model (see `thresholds.alert`):
    its alerting policy labelled `retrain_model: <model>`, or named here."""

    policy_name: str | None = None
    condition_name: str | None = None


_RULES: dict[str, type[Any]] = {
    "alert": AlertSpec,
    "absolute": AbsoluteSpec,
    "baseline": BaselineSpec,
    "trend": TrendSpec,
    "forecast": ForecastSpec,
    "cost": CostSpec,
}


@dataclass(frozen=True)
class PolicySpec:
    """One policy: a metric, a direction, and exactly one rule (already validated)."""

    name: str
    metric: str
    direction: Direction
    slice: str = "overall"
    absolute: AbsoluteSpec | None = None
    baseline: BaselineSpec | None = None
    trend: TrendSpec | None = None
    forecast: ForecastSpec | None = None
    cost: CostSpec | None = None
    alert: AlertSpec | None = None
    breaches_to_trigger: int = 1
    evaluation_points: int = 1
    min_examples: int = 0

    @property
    def kind(self) -> PolicyKind:
        for kind in POLICY_KINDS:
            if getattr(self, kind) is not None:
                return kind
        raise ValueError(f"policy {self.name!r} has no rule")

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> PolicySpec:
        """Validate `data` as written in a policy file (raises pydantic's ValidationError)."""
        from thresholds.schema import PolicySchema

        return PolicySchema.model_validate(data).to_spec()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PolicySpec:
        """Rebuild a spec from `to_dict` output or a validated schema dump (no checks)."""
        values = dict(data)
        for kind, rule in _RULES.items():
            if values.get(kind) is not None:
                values[kind] = rule(**{
                    key: (parse_duration(value)
                          if key in ("lookback", "horizon") and value is not None else value)
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
