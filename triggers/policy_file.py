"""The policy file's format as pydantic models: validation with errors naming the field, and
the JSON Schema. Imported only when a policy file is validated, never on the event path."""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from pipeline_client.promotion.rules import (
    DEFAULT_CONFIDENCE,
    DEFAULT_DECISION_THRESHOLD,
    DEFAULT_RESAMPLES,
    MAX_RESAMPLES,
    METRICS,
    MetricName,
    check_direction,
)
from thresholds.checks import Duration
from thresholds.schema import StrictModel
from thresholds.spec import NAME_PATTERN, Direction, InhibitSpec, PolicySpec
from triggers.errors import PolicyConfigError

SERVICE_PARAMETERS = ("model", "trigger_id", "reason", "champion_version")
"""Pipeline parameters the service sets itself; a policy file may not set them."""

ParameterValue = str | int | float | bool | list[Any] | dict[str, Any]


class MaxRunsSpec(StrictModel):
    count: int = Field(ge=1, le=10_000)
    per: Duration


class GuardsSpec(StrictModel):
    """Guards as written; unset fields inherit from `defaults.guards`, then the built-ins."""

    cooldown: Duration | None = None
    max_runs: MaxRunsSpec | None = None
    skip_if_running: bool | None = None
    run_timeout: Duration | None = None


class PipelineSpec(StrictModel):
    """Which pipeline to run and how; nothing here can come from an event."""

    template: str = Field(min_length=1)
    parameters: dict[str, ParameterValue] = Field(default_factory=dict)
    service_account: str | None = None
    pipeline_root: str | None = None
    network: str | None = None
    kms_key_name: str | None = None
    enable_caching: bool = Field(
        default=False,
        description="false (default): every task of a retraining run runs again (Vertex AI "
        "execution caching off, since a run exists because the data changed); true: the "
        "template's own per-task caching options stand",
    )

    @field_validator("parameters")
    @classmethod
    def _no_service_parameters(cls, value: dict[str, Any]) -> dict[str, Any]:
        taken = sorted(set(value) & set(SERVICE_PARAMETERS))
        if taken:
            raise ValueError(
                f"{', '.join(taken)} are set by the service and cannot be fixed in the file"
            )
        problem = _not_json(value)
        if problem:
            raise ValueError(problem)
        return value


def _not_json(parameters: dict[str, Any]) -> str | None:
    """What keeps the parameters from reaching the pipeline as written: NaN and infinities
    (not JSON; nested ones became null) and binary data (`!!binary`, which broke loading)."""
    stack: list[tuple[Any, str]] = [(value, key) for key, value in parameters.items()]
    while stack:
        item, where = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return f"{where}: {item} is not a finite number"
        if isinstance(item, (bytes, bytearray)):
            return f"{where}: binary data cannot be a pipeline parameter; write text"
        if isinstance(item, dict):
            stack.extend((child, f"{where}.{key}") for key, child in item.items())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend((child, f"{where}.{index}") for index, child in enumerate(item))
    return None


Confidence = Annotated[float, Field(gt=0.5, lt=1)]


def _direction_agrees(value: Direction | None, info: ValidationInfo) -> Direction | None:
    """A stated direction must be the metric's own (its metric is validated first)."""
    metric = info.data.get("metric")
    if metric is not None:
        check_direction(metric, value)
    return value


class PrimarySpec(StrictModel):
    """The challenger must beat the champion on one metric, significantly."""

    metric: MetricName = Field(description="the metric to win on (catalogue name)")
    direction: Direction | None = Field(
        default=None,
        description="optional; must agree with the metric's natural direction when stated",
    )
    min_improvement: float = Field(
        default=0.0, ge=0, allow_inf_nan=False,
        description="required gain, in the metric's units, oriented so positive is better; "
        "both the point estimate and the lower confidence bound must clear it",
    )
    confidence: Confidence = Field(
        default=DEFAULT_CONFIDENCE,
        description="one-sided confidence of the paired bootstrap bound (and 1 - the "
        "McNemar significance level for accuracy)",
    )
    resamples: int = Field(
        default=DEFAULT_RESAMPLES, ge=100, le=MAX_RESAMPLES,
        description="bootstrap resamples",
    )

    _direction = field_validator("direction")(_direction_agrees)


class GuardrailSpec(StrictModel):
    """Non-inferiority: the challenger may be worse on a metric by at most `max_regression`."""

    metric: MetricName = Field(description="the metric not to regress on (catalogue name)")
    direction: Direction | None = Field(
        default=None,
        description="optional; must agree with the metric's natural direction when stated",
    )
    max_regression: float = Field(
        ge=0, allow_inf_nan=False,
        description="largest tolerated loss in the metric's units; the lower confidence "
        "bound of the improvement must be >= -max_regression",
    )
    confidence: Confidence | None = Field(
        default=None, description="one-sided confidence; default: the primary's (0.95)"
    )
    resamples: int | None = Field(
        default=None, ge=100, le=MAX_RESAMPLES,
        description="bootstrap resamples; default: the primary's (2000)",
    )

    _direction = field_validator("direction")(_direction_agrees)


def _floor(metric: MetricName) -> Any:
    info = METRICS[metric]
    limit = "minimum" if info.direction == "higher_is_better" else "maximum"
    upper = None if math.isinf(info.high) else info.high
    return Field(default=None, ge=info.low, le=upper, allow_inf_nan=False,
                 description=f"{limit} {metric} of the challenger ({info.description})")


class FloorsSpec(StrictModel):
    """Absolute limits on the challenger's point estimates, by metric."""

    accuracy: float | None = _floor("accuracy")
    auc: float | None = _floor("auc")
    log_loss: float | None = _floor("log_loss")
    brier: float | None = _floor("brier")
    precision: float | None = _floor("precision")
    recall: float | None = _floor("recall")
    f1: float | None = _floor("f1")
    mae: float | None = _floor("mae")
    rmse: float | None = _floor("rmse")

    def named(self) -> dict[str, float]:
        """The floors that are set."""
        return {name: value for name, value in self.model_dump().items() if value is not None}


class PromotionSpec(StrictModel):
    """The promotion gate: when the pipeline's challenger may replace the champion.

    Evaluated on the same held-out examples for both models; a first model (no champion)
    faces the floors only.
    """

    primary: PrimarySpec | None = Field(
        default=None, description="the metric the challenger must significantly win on"
    )
    guardrails: list[GuardrailSpec] = Field(
        default_factory=list, description="metrics the challenger must not regress on"
    )
    floors: FloorsSpec | None = Field(
        default=None,
        description="absolute limits on the challenger's value: a minimum for "
        "higher-is-better metrics, a maximum for lower-is-better ones",
    )
    decision_threshold: float = Field(
        default=DEFAULT_DECISION_THRESHOLD, gt=0, lt=1,
        description="positive-class probability at or above which an example is predicted "
        "positive (accuracy, precision, recall, f1)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> PromotionSpec:
        floors = self.floors.named() if self.floors else {}
        if self.primary is None and not self.guardrails and not floors:
            raise ValueError("set at least one of primary, guardrails, floors")
        guarded = [g.metric for g in self.guardrails]
        twice = sorted({m for m in guarded if guarded.count(m) > 1})
        if twice:
            raise ValueError(f"a metric may have one guardrail only: {', '.join(twice)}")
        named = ([self.primary.metric] if self.primary else []) + guarded + list(floors)
        tasks = {METRICS[m].task: m for m in named}
        if len(tasks) > 1:
            raise ValueError("classification and regression metrics cannot be mixed "
                             f"(got {tasks['classification']} and {tasks['regression']})")
        return self


class ModelSpec(StrictModel):
    pipeline: PipelineSpec
    policies: list[PolicySpec] = Field(min_length=1)
    guards: GuardsSpec | None = None
    lateness: Duration | None = Field(
        default=None,
        description="how long to wait for a missing evaluation window (events with "
        "window_start) before evaluating past the gap",
    )
    promotion: PromotionSpec | None = None
    inhibit_when: list[InhibitSpec] = Field(
        default_factory=list,
        description="alert conditions (Cloud Monitoring policy_name / condition_name) that "
        "hold back every retraining of the model while one of their incidents is open")

    @model_validator(mode="after")
    def _unique_policy_names(self) -> ModelSpec:
        seen: set[str] = set()
        for policy in self.policies:
            if policy.name in seen:
                raise ValueError(f"policy name {policy.name!r} is used twice")
            seen.add(policy.name)
        return self


class DefaultsSpec(StrictModel):
    guards: GuardsSpec | None = None
    lateness: Duration | None = None
    max_clock_skew: Duration | None = Field(
        default=None,
        description="how far past the service's clock an event's window_end may lie before "
        "the event is rejected (default 1h): a window that has not ended yet is a mistake, "
        "and its point would be the latest one for good",
    )
    max_slices: int | None = Field(
        default=None, ge=1, le=100_000,
        description="most distinct slices the policies of one model may watch (default 100); "
        "points are kept only for the slices and metrics some policy watches",
    )


class PolicyFile(StrictModel):
    """The whole policy file."""

    defaults: DefaultsSpec = Field(default_factory=DefaultsSpec)
    models: dict[str, ModelSpec] = Field(min_length=1)

    @field_validator("models")
    @classmethod
    def _model_names(cls, value: dict[str, ModelSpec]) -> dict[str, ModelSpec]:
        for name in value:
            if not re.match(NAME_PATTERN, name):
                raise ValueError(
                    f"model name {name!r} must be 1-63 letters, digits, '.', '_' or '-'"
                )
        return value


def policy_errors(exc: ValidationError) -> list[PolicyConfigError]:
    """Every error of a failed validation, each naming its dotted field path."""
    errors = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "<file>"
        reason = error["msg"].removeprefix("Value error, ")
        if error["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            reason = "unknown field"
        elif error["type"] == "missing_argument":  # a dataclass's own word for it
            reason = "Field required"
        value = error.get("input")
        if isinstance(value, (dict, list)):
            value = None
        errors.append(PolicyConfigError(field, value, reason))
    return errors


def parse_policy_file(text: str, source: str = "<memory>") -> PolicyFile:
    """Validate YAML text; raise the first `PolicyConfigError` (all are in `.errors`)."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyConfigError("<file>", None, f"{source} is not valid YAML: {exc}") from None
    except RecursionError:
        raise PolicyConfigError("<file>", None, f"{source} nests too deeply") from None
    if not isinstance(data, dict):
        raise PolicyConfigError("<file>", None, f"{source} must be a YAML mapping")
    problem = _oversized(data)
    if problem:
        raise PolicyConfigError("<file>", None, f"{source} {problem}")
    try:
        return PolicyFile.model_validate(data)
    except ValidationError as exc:
        errors = policy_errors(exc)
        first = errors[0]
        first.errors = errors  # type: ignore[attr-defined]
        raise first from None


MAX_VALUES = 100_000
"""Most values (mappings, lists, scalars) a policy file may hold once YAML aliases are
expanded: a real one has hundreds; nine nested aliases of ten items each expand to 10^9."""
MAX_DEPTH = 32
"""Deepest nesting of a policy file (validation recurses; a real one nests about 6 levels)."""


def _oversized(data: Any) -> str | None:
    """Why the loaded file is too big to validate, if it is; the walk stops at the limits."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    seen = 0
    while stack:
        item, depth = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            return (f"holds more than {MAX_VALUES} values once its aliases (*name) are "
                    "expanded")
        if depth > MAX_DEPTH:
            return f"nests deeper than {MAX_DEPTH} levels"
        if isinstance(item, dict):
            children = list(item.keys()) + list(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            children = list(item)
        else:
            continue
        stack.extend((child, depth + 1) for child in children)
    return None


def policy_file_schema() -> dict[str, Any]:
    """JSON Schema of the policy file, for editors."""
    schema = PolicyFile.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "retrain-trigger policy file"
    return schema


def schema_json() -> str:
    return json.dumps(policy_file_schema(), indent=2, sort_keys=True) + "\n"
