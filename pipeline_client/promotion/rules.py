"""The promotion gate's rules as plain frozen dataclasses, and its metric catalogue.

No numpy, no pydantic: the pipeline reads its `promotion` parameter (JSON) with these.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from pipeline_client.errors import PolicyConfigError
from thresholds.spec import Direction

Task = Literal["classification", "regression"]
MetricName = Literal[
    "accuracy", "auc", "log_loss", "brier", "precision", "recall", "f1", "mae", "rmse"
]
DIRECTIONS: tuple[Direction, ...] = get_args(Direction)

DEFAULT_CONFIDENCE = 0.95
DEFAULT_RESAMPLES = 2000
MAX_RESAMPLES = 100_000
DEFAULT_DECISION_THRESHOLD = 0.5


@dataclass(frozen=True)
class MetricInfo:
    """One catalogue entry: the task it applies to, its natural direction, its value range."""

    name: str
    task: Task
    direction: Direction
    low: float
    high: float
    description: str


METRICS: Mapping[str, MetricInfo] = {
    info.name: info
    for info in (
        MetricInfo("accuracy", "classification", "higher_is_better", 0.0, 1.0,
                   "share of examples classified correctly at the decision threshold"),
        MetricInfo("auc", "classification", "higher_is_better", 0.0, 1.0,
                   "area under the ROC curve (ties count one half)"),
        MetricInfo("log_loss", "classification", "lower_is_better", 0.0, math.inf,
                   "mean negative log-likelihood of the labels (probabilities clipped)"),
        MetricInfo("brier", "classification", "lower_is_better", 0.0, 1.0,
                   "mean squared error of the positive-class probability"),
        MetricInfo("precision", "classification", "higher_is_better", 0.0, 1.0,
                   "true positives / predicted positives at the decision threshold"),
        MetricInfo("recall", "classification", "higher_is_better", 0.0, 1.0,
                   "true positives / actual positives at the decision threshold"),
        MetricInfo("f1", "classification", "higher_is_better", 0.0, 1.0,
                   "harmonic mean of precision and recall at the decision threshold"),
        MetricInfo("mae", "regression", "lower_is_better", 0.0, math.inf,
                   "mean absolute error"),
        MetricInfo("rmse", "regression", "lower_is_better", 0.0, math.inf,
                   "root mean squared error"),
    )
}
assert set(METRICS) == set(get_args(MetricName)), "MetricName and METRICS disagree"


def check_direction(metric: str, direction: str | None) -> Direction:
    """The metric's direction; a stated one must agree with the catalogue (ValueError)."""
    natural = METRICS[metric].direction
    if direction is not None and direction != natural:
        raise ValueError(f"{metric} is {natural}; a stated direction must agree "
                         f"(got {direction})")
    return natural


def check_floor(metric: str, value: float) -> None:
    """A floor must lie in the metric's range (ValueError)."""
    info = METRICS[metric]
    if not info.low <= value <= info.high:
        raise ValueError(f"the {metric} floor must lie in [{info.low:g}, {info.high:g}] "
                         f"(got {value:g})")


@dataclass(frozen=True)
class PrimaryRule:
    """The challenger must beat the champion on `metric` by at least `min_improvement`,
    with a paired confidence interval's lower bound above it (and McNemar for accuracy)."""

    metric: str
    direction: Direction
    min_improvement: float = 0.0
    confidence: float = DEFAULT_CONFIDENCE
    resamples: int = DEFAULT_RESAMPLES


@dataclass(frozen=True)
class GuardrailRule:
    """Non-inferiority: the challenger may be worse on `metric` by at most `max_regression`,
    shown by the lower bound of the improvement's confidence interval."""

    metric: str
    direction: Direction
    max_regression: float
    confidence: float = DEFAULT_CONFIDENCE
    resamples: int = DEFAULT_RESAMPLES


@dataclass(frozen=True)
class PromotionRules:
    """The `promotion:` section of one model, resolved (directions and defaults filled in)."""

    primary: PrimaryRule | None = None
    guardrails: tuple[GuardrailRule, ...] = ()
    floors: Mapping[str, float] = field(default_factory=dict)
    decision_threshold: float = DEFAULT_DECISION_THRESHOLD

    @property
    def metrics(self) -> tuple[str, ...]:
        """Every metric the rules name, primary first."""
        names = [self.primary.metric] if self.primary else []
        return (*names, *(g.metric for g in self.guardrails), *self.floors)

    @property
    def task(self) -> Task | None:
        """classification or regression (None when the rules name no metric)."""
        names = self.metrics
        return METRICS[names[0]].task if names else None

    @property
    def empty(self) -> bool:
        return not self.metrics

    @classmethod
    def from_json(cls, text: str, where: str = "promotion") -> PromotionRules:
        """Parse the pipeline's `promotion` parameter (JSON of the section, `{}` for none)."""
        try:
            data = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError as exc:
            raise PolicyConfigError(where, None, f"is not valid JSON: {exc}") from None
        return cls.from_dict(data, where)

    @classmethod
    def from_dict(cls, data: Any, where: str = "promotion") -> PromotionRules:
        """Check and resolve the section as written or as dumped by the policy-file schema.

        `None` values mean "unset". Errors are `PolicyConfigError`s naming the dotted field.
        """
        if data is None:
            return cls()
        section = _Reader(data, where)
        section.only("primary", "guardrails", "floors", "decision_threshold")
        primary = None
        if section.get("primary") is not None:
            rule = _Reader(section.get("primary"), f"{where}.primary")
            rule.only("metric", "direction", "min_improvement", "confidence", "resamples")
            metric = rule.metric()
            primary = PrimaryRule(
                metric=metric,
                direction=rule.direction(metric),
                min_improvement=rule.number("min_improvement", 0.0, low=0.0),
                confidence=rule.confidence(DEFAULT_CONFIDENCE),
                resamples=rule.resamples(DEFAULT_RESAMPLES),
            )
        confidence = primary.confidence if primary else DEFAULT_CONFIDENCE
        resamples = primary.resamples if primary else DEFAULT_RESAMPLES
        guardrails = []
        raw_guardrails = section.get("guardrails")
        if raw_guardrails is not None and not isinstance(raw_guardrails, list):
            raise PolicyConfigError(f"{where}.guardrails", None, "must be a list")
        seen: set[str] = set()
        for index, item in enumerate(raw_guardrails or []):
            rule = _Reader(item, f"{where}.guardrails.{index}")
            rule.only("metric", "direction", "max_regression", "confidence", "resamples")
            metric = rule.metric()
            if metric in seen:
                raise PolicyConfigError(f"{where}.guardrails.{index}.metric", metric,
                                        "a metric may have one guardrail only")
            seen.add(metric)
            guardrails.append(GuardrailRule(
                metric=metric,
                direction=rule.direction(metric),
                max_regression=rule.number("max_regression", None, low=0.0),
                confidence=rule.confidence(confidence),
                resamples=rule.resamples(resamples),
            ))
        floors = {}
        raw_floors = section.get("floors")
        if raw_floors is not None and not isinstance(raw_floors, dict):
            raise PolicyConfigError(f"{where}.floors", None, "must be a mapping metric: value")
        floor_reader = _Reader(raw_floors or {}, f"{where}.floors")
        for name, raw in (raw_floors or {}).items():
            metric = floor_reader.metric_key(name)
            if raw is None:  # the schema's dump lists every metric, unset ones as null
                continue
            value = floor_reader.number(name, None)
            try:
                check_floor(metric, value)
            except ValueError as exc:
                raise PolicyConfigError(f"{where}.floors.{name}", value, str(exc)) from None
            floors[metric] = value
        threshold = section.number("decision_threshold", DEFAULT_DECISION_THRESHOLD,
                                   low=0.0, high=1.0, open_interval=True)
        rules = cls(primary, tuple(guardrails), floors, threshold)
        _check_one_task(rules, where)
        return rules

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; `from_dict(to_dict())` gives these rules back."""
        data: dict[str, Any] = {"decision_threshold": self.decision_threshold}
        if self.primary:
            data["primary"] = vars(self.primary).copy()
        if self.guardrails:
            data["guardrails"] = [vars(g).copy() for g in self.guardrails]
        if self.floors:
            data["floors"] = dict(self.floors)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def _check_one_task(rules: PromotionRules, where: str) -> None:
    """Classification and regression metrics cannot be mixed: they read different labels."""
    task = rules.task
    fields = ([("primary.metric", rules.primary.metric)] if rules.primary else []) + [
        (f"guardrails.{i}.metric", g.metric) for i, g in enumerate(rules.guardrails)
    ] + [(f"floors.{name}", name) for name in rules.floors]
    for path, metric in fields:
        if METRICS[metric].task != task:
            raise PolicyConfigError(
                f"{where}.{path}", metric,
                f"{metric} is a {METRICS[metric].task} metric; the other metrics of this "
                f"section are {task} metrics",
            )


class _Reader:
    """Typed, field-naming access to one mapping of the section."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, Mapping):
            raise PolicyConfigError(where, None, "must be a mapping")
        self.data = data
        self.where = where

    def only(self, *names: str) -> None:
        for key in self.data:
            if key not in names:
                raise PolicyConfigError(f"{self.where}.{key}", None, "unknown field")

    def get(self, name: str) -> Any:
        return self.data.get(name)

    def metric(self) -> str:
        value = self.data.get("metric")
        if value is None:
            raise PolicyConfigError(f"{self.where}.metric", None, "is required")
        if value not in METRICS:
            raise PolicyConfigError(f"{self.where}.metric", value,
                                    f"unknown metric; known: {', '.join(METRICS)}")
        return str(value)

    def metric_key(self, name: Any) -> str:
        if name not in METRICS:
            raise PolicyConfigError(f"{self.where}.{name}", None,
                                    f"unknown metric; known: {', '.join(METRICS)}")
        return str(name)

    def direction(self, metric: str) -> Direction:
        value = self.data.get("direction")
        if value is not None and value not in DIRECTIONS:
            raise PolicyConfigError(f"{self.where}.direction", value,
                                    f"must be one of {', '.join(DIRECTIONS)}")
        try:
            return check_direction(metric, value)
        except ValueError as exc:
            raise PolicyConfigError(f"{self.where}.direction", value, str(exc)) from None

    def number(self, name: str, default: float | None, *, low: float = -math.inf,
               high: float = math.inf, open_interval: bool = False) -> float:
        value = self.data.get(name)
        path = f"{self.where}.{name}"
        if value is None:
            if default is None:
                raise PolicyConfigError(path, None, "is required")
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PolicyConfigError(path, value, "must be a number")
        if not math.isfinite(value):
            raise PolicyConfigError(path, value, "must be finite")
        inside = low < value < high if open_interval else low <= value <= high
        if not inside:
            bounds = f"({low:g}, {high:g})" if open_interval else f"[{low:g}, {high:g}]"
            raise PolicyConfigError(path, value, f"must lie in {bounds}")
        return float(value)

    def confidence(self, default: float) -> float:
        value = self.data.get("confidence")
        if value is None:
            return default
        return self.number("confidence", default, low=0.5, high=1.0, open_interval=True)

    def resamples(self, default: int) -> int:
        value = self.data.get("resamples")
        path = f"{self.where}.resamples"
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise PolicyConfigError(path, value, "must be an integer")
        if not 100 <= value <= MAX_RESAMPLES:
            raise PolicyConfigError(path, value, f"must lie in [100, {MAX_RESAMPLES}]")
        return value
