"""Validation of one policy as written in the policy file: errors name the field."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from thresholds.durations import format_duration, parse_duration
from thresholds.spec import PolicySpec

RULES = ("absolute", "baseline", "trend", "forecast")

# The four policies of the design's example policy file.
EXAMPLES: list[dict[str, Any]] = [
    {
        "name": "accuracy-floor",
        "metric": "accuracy",
        "direction": "higher_is_better",
        "absolute": {"threshold": 0.95},
        "breaches_to_trigger": 3,
        "evaluation_points": 5,
        "min_examples": 500,
    },
    {
        "name": "accuracy-trend",
        "metric": "accuracy",
        "direction": "higher_is_better",
        "trend": {
            "lookback": "14d",
            "min_points": 8,
            "max_decline_per_day": 0.002,
            "confidence": 0.95,
        },
    },
    {
        "name": "auc-drop",
        "metric": "auc",
        "direction": "higher_is_better",
        "baseline": {"max_relative_drop": 0.02},
    },
    {
        "name": "accuracy-forecast",
        "metric": "accuracy",
        "direction": "higher_is_better",
        "forecast": {"threshold": 0.95, "horizon": "7d", "lookback": "14d", "min_points": 8},
    },
]


def policy(**changes: Any) -> dict[str, Any]:
    """A valid absolute policy with `changes`; a change naming a rule replaces the rule."""
    data: dict[str, Any] = {
        "name": "accuracy-floor",
        "metric": "accuracy",
        "direction": "higher_is_better",
    }
    if not any(rule in changes for rule in RULES):
        data["absolute"] = {"threshold": 0.95}
    data.update(changes)
    return {key: value for key, value in data.items() if value is not ...}


def errors(data: dict[str, Any]) -> list[dict[str, Any]]:
    with pytest.raises(ValidationError) as caught:
        PolicySpec.parse(data)
    return [dict(error) for error in caught.value.errors()]


def test_the_design_examples_are_valid() -> None:
    specs = [PolicySpec.parse(example) for example in EXAMPLES]
    assert [spec.kind for spec in specs] == ["absolute", "trend", "baseline", "forecast"]
    floor, trend, drop, forecast = specs
    assert (floor.breaches_to_trigger, floor.evaluation_points, floor.min_examples) == (3, 5, 500)
    assert trend.trend is not None and trend.trend.lookback == timedelta(days=14)
    assert drop.baseline is not None and drop.baseline.reference_points == 3
    assert drop.baseline.max_absolute_drop is None
    assert forecast.forecast is not None and forecast.forecast.horizon == timedelta(days=7)


def test_defaults() -> None:
    spec = PolicySpec.parse(policy())
    assert (spec.breaches_to_trigger, spec.evaluation_points, spec.min_examples) == (1, 1, 0)
    trend = PolicySpec.parse(
        policy(trend={"lookback": "7d", "max_decline_per_day": 0.001})
    ).trend
    assert trend is not None and (trend.min_points, trend.confidence) == (8, 0.95)


@pytest.mark.parametrize(
    ("changes", "loc", "error_type"),
    [
        ({"direction": "up"}, ("direction",), "literal_error"),
        ({"direction": ...}, ("direction",), "missing"),
        ({"name": "has space"}, ("name",), "string_pattern_mismatch"),
        ({"name": "-leading-dash"}, ("name",), "string_pattern_mismatch"),
        ({"metric": ""}, ("metric",), "string_too_short"),
        ({"absolute": {}}, ("absolute", "threshold"), "missing"),
        ({"absolute": {"threshold": float("nan")}}, ("absolute", "threshold"), "finite_number"),
        ({"absolute": {"threshold": "high"}}, ("absolute", "threshold"), "float_parsing"),
        ({"breaches_to_trigger": 0}, ("breaches_to_trigger",), "greater_than_equal"),
        ({"evaluation_points": 0}, ("evaluation_points",), "greater_than_equal"),
        ({"min_examples": -1}, ("min_examples",), "greater_than_equal"),
        ({"baseline": {"max_relative_drop": 0}}, ("baseline", "max_relative_drop"), "greater_than"),
        (
            {"baseline": {"max_absolute_drop": float("inf")}},
            ("baseline", "max_absolute_drop"),
            "finite_number",
        ),
        (
            {"baseline": {"max_relative_drop": 0.1, "reference_points": 0}},
            ("baseline", "reference_points"),
            "greater_than_equal",
        ),
        (
            {"trend": {"lookback": "14d", "max_decline_per_day": -0.1}},
            ("trend", "max_decline_per_day"),
            "greater_than_equal",
        ),
        (
            {"trend": {"lookback": "14d", "max_decline_per_day": 0.1, "confidence": 1.0}},
            ("trend", "confidence"),
            "less_than",
        ),
        (
            {"trend": {"lookback": "14d", "max_decline_per_day": 0.1, "confidence": 0.5}},
            ("trend", "confidence"),
            "greater_than",
        ),
        (
            {"trend": {"lookback": "14d", "max_decline_per_day": 0.1, "min_points": 2}},
            ("trend", "min_points"),
            "greater_than_equal",
        ),
        (
            {"trend": {"lookback": "soon", "max_decline_per_day": 0.1}},
            ("trend", "lookback"),
            "value_error",
        ),
        (
            {"forecast": {"threshold": 0.9, "lookback": "14d"}},
            ("forecast", "horizon"),
            "missing",
        ),
    ],
    ids=lambda value: ".".join(value) if isinstance(value, tuple) else None,
)
def test_errors_name_the_field(
    changes: dict[str, Any], loc: tuple[str, ...], error_type: str
) -> None:
    found = errors(policy(**changes))
    assert [(error["loc"], error["type"]) for error in found] == [(loc, error_type)]


def test_a_baseline_needs_a_limit() -> None:
    [error] = errors(policy(baseline={"reference_points": 5}))
    assert error["loc"] == ("baseline",)
    assert "max_relative_drop and/or max_absolute_drop" in error["msg"]


def test_a_bad_duration_says_how_to_write_one() -> None:
    [error] = errors(policy(trend={"lookback": "7 days", "max_decline_per_day": 0.1}))
    assert error["loc"] == ("trend", "lookback")
    assert "'24h'" in error["msg"] and "'7 days'" in error["msg"]


@pytest.mark.parametrize(
    ("changes", "loc"),
    [
        ({"treshold": 0.9}, ("treshold",)),
        ({"absolute": {"threshold": 0.9, "treshold": 0.8}}, ("absolute", "treshold")),
        (
            {"trend": {"lookback": "7d", "max_decline_per_day": 0.1, "lookbak": "9d"}},
            ("trend", "lookbak"),
        ),
        ({"baseline": {"max_relative_drop": 0.1, "window": 3}}, ("baseline", "window")),
    ],
)
def test_unknown_keys_are_rejected(changes: dict[str, Any], loc: tuple[str, ...]) -> None:
    found = errors(policy(**changes))
    # a dataclass's word for an unknown key; the policy file reports it as "unknown field"
    assert [(error["loc"], error["type"]) for error in found] == [
        (loc, "unexpected_keyword_argument")]


def test_exactly_one_rule() -> None:
    [none] = errors(policy(absolute=None))
    assert "exactly one of absolute, baseline, trend, forecast" in none["msg"]
    assert "(got" not in none["msg"]
    [two] = errors(
        policy(
            absolute={"threshold": 0.9},
            trend={"lookback": "7d", "max_decline_per_day": 0.1},
        )
    )
    assert "exactly one" in two["msg"] and "(got absolute, trend)" in two["msg"]
    # An explicit null is no rule.
    spec = PolicySpec.parse(policy(absolute=None, baseline={"max_relative_drop": 0.1}))
    assert spec.kind == "baseline"


def test_m_of_n() -> None:
    [error] = errors(policy(breaches_to_trigger=4, evaluation_points=3))
    assert "breaches_to_trigger (4) cannot exceed evaluation_points (3)" in error["msg"]
    spec = PolicySpec.parse(policy(breaches_to_trigger=5, evaluation_points=5))
    assert (spec.breaches_to_trigger, spec.evaluation_points) == (5, 5)
    # Only absolute policies count breaches.
    [error] = errors(policy(baseline={"max_relative_drop": 0.1}, evaluation_points=3))
    assert "apply to absolute policies only" in error["msg"]


def test_specs_are_frozen() -> None:
    spec = PolicySpec.parse(policy())
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.min_examples = 10  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("30m", timedelta(minutes=30)),
        ("24h", timedelta(hours=24)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
        ("1.5h", timedelta(minutes=90)),
        (" 14d ", timedelta(days=14)),
        ("45", timedelta(seconds=45)),
        (3600, timedelta(hours=1)),
        (2.5, timedelta(seconds=2.5)),
        (timedelta(days=3), timedelta(days=3)),
    ],
)
def test_durations_parse(text: str | float | timedelta, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["7 days", "1y", "", "-1d", "d", -5, True])
def test_bad_durations_are_rejected(text: str | int) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(days=14), "2w"),
        (timedelta(days=10), "10d"),
        (timedelta(hours=36), "36h"),
        (timedelta(minutes=90), "90m"),
        (timedelta(seconds=90), "90s"),
        (timedelta(seconds=1.5), "1.5s"),
    ],
)
def test_durations_format_back(value: timedelta, text: str) -> None:
    assert format_duration(value) == text
    assert parse_duration(text) == value


def test_durations_in_a_spec_round_trip() -> None:
    data = policy(forecast={"threshold": 0.9, "horizon": 86400, "lookback": "36h"})
    spec = PolicySpec.parse(data)
    assert spec.forecast is not None
    assert (spec.forecast.horizon, spec.forecast.lookback) == (
        timedelta(days=1),
        timedelta(hours=36),
    )
    dumped = spec.to_dict()
    assert (dumped["forecast"]["horizon"], dumped["forecast"]["lookback"]) == ("1d", "36h")
    assert PolicySpec.parse(dumped) == spec


def test_each_setting_is_defined_once_by_the_runtime_dataclasses() -> None:
    """The JSON Schema (and the validation) come from the dataclasses the policies read:
    the same classes, the same fields, no hand-written twin to drift from them."""
    from dataclasses import fields

    from thresholds import spec as specs
    from triggers.policy_file import policy_file_schema

    definitions = policy_file_schema()["$defs"]
    for cls in (specs.AbsoluteSpec, specs.BaselineSpec, specs.TrendSpec, specs.ForecastSpec,
                specs.CostSpec, specs.AlertSpec, specs.InhibitSpec, specs.PolicySpec):
        assert set(definitions[cls.__name__]["properties"]) == {f.name for f in fields(cls)}
    assert type(PolicySpec.parse(policy())) is PolicySpec
