"""The policy file's format as pydantic models: validation with errors naming the field, and
the JSON Schema. Imported only when a policy file is validated, never on the event path."""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from thresholds.schema import Duration, PolicySchema, StrictModel
from thresholds.spec import NAME_PATTERN
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

    @field_validator("parameters")
    @classmethod
    def _no_service_parameters(cls, value: dict[str, Any]) -> dict[str, Any]:
        taken = sorted(set(value) & set(SERVICE_PARAMETERS))
        if taken:
            raise ValueError(
                f"{', '.join(taken)} are set by the service and cannot be fixed in the file"
            )
        return value


class PromotionSpec(BaseModel):
    """The promotion gate's settings; checked in full by the promotion gate."""

    model_config = ConfigDict(extra="allow", frozen=True)


class ModelSpec(StrictModel):
    pipeline: PipelineSpec
    policies: list[PolicySchema] = Field(min_length=1)
    guards: GuardsSpec | None = None
    lateness: Duration | None = Field(
        default=None,
        description="how long to wait for a missing evaluation window (events with "
        "window_start) before evaluating past the gap",
    )
    promotion: PromotionSpec | None = None

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
        if error["type"] == "extra_forbidden":
            reason = "unknown field"
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
    if not isinstance(data, dict):
        raise PolicyConfigError("<file>", None, f"{source} must be a YAML mapping")
    try:
        return PolicyFile.model_validate(data)
    except ValidationError as exc:
        errors = policy_errors(exc)
        first = errors[0]
        first.errors = errors  # type: ignore[attr-defined]
        raise first from None


def policy_file_schema() -> dict[str, Any]:
    """JSON Schema of the policy file, for editors."""
    schema = PolicyFile.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "retrain-trigger policy file"
    return schema


def schema_json() -> str:
    return json.dumps(policy_file_schema(), indent=2, sort_keys=True) + "\n"
