"""The policy file (YAML) and the service's environment, validated once at cold start.

Errors name the field (a dotted path into the file) or the environment variable to set.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from thresholds.base import Policy
from thresholds.registry import build_policy
from thresholds.spec import NAME_PATTERN, Duration, PolicySpec, StrictModel
from triggers.errors import ConfigError, PolicyConfigError

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


@dataclass(frozen=True)
class Guards:
    """Resolved guards of one model."""

    cooldown: timedelta = timedelta(hours=24)
    max_runs: int = 3
    max_runs_per: timedelta = timedelta(days=7)
    skip_if_running: bool = True
    run_timeout: timedelta = timedelta(hours=24)

    def merged(self, spec: GuardsSpec | None) -> Guards:
        if spec is None:
            return self
        return Guards(
            cooldown=spec.cooldown if spec.cooldown is not None else self.cooldown,
            max_runs=spec.max_runs.count if spec.max_runs else self.max_runs,
            max_runs_per=spec.max_runs.per if spec.max_runs else self.max_runs_per,
            skip_if_running=(
                spec.skip_if_running if spec.skip_if_running is not None else self.skip_if_running
            ),
            run_timeout=spec.run_timeout if spec.run_timeout is not None else self.run_timeout,
        )


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


DEFAULT_LATENESS = timedelta(hours=1)


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
        import re

        for name in value:
            if not re.match(NAME_PATTERN, name):
                raise ValueError(
                    f"model name {name!r} must be 1-63 letters, digits, '.', '_' or '-'"
                )
        return value


@dataclass(frozen=True)
class ModelConfig:
    """One model, resolved: built policies, merged guards, pipeline template path."""

    name: str
    pipeline: PipelineSpec
    policies: tuple[Policy, ...]
    guards: Guards
    promotion: PromotionSpec | None
    lateness: timedelta = DEFAULT_LATENESS

    def policy(self, name: str) -> Policy | None:
        return next((p for p in self.policies if p.name == name), None)


@dataclass(frozen=True)
class ServiceConfig:
    """The policy file, resolved for the service."""

    models: Mapping[str, ModelConfig]
    source: str

    @classmethod
    def from_spec(cls, spec: PolicyFile, base_dir: Path, source: str = "<memory>") -> ServiceConfig:
        defaults = Guards().merged(spec.defaults.guards)
        models = {}
        for name, model in spec.models.items():
            pipeline = model.pipeline
            if "://" not in pipeline.template and not Path(pipeline.template).is_absolute():
                pipeline = pipeline.model_copy(
                    update={"template": str((base_dir / pipeline.template).resolve())}
                )
            models[name] = ModelConfig(
                name=name,
                pipeline=pipeline,
                policies=tuple(build_policy(p) for p in model.policies),
                guards=defaults.merged(model.guards),
                promotion=model.promotion,
                lateness=next(
                    (x for x in (model.lateness, spec.defaults.lateness) if x is not None),
                    DEFAULT_LATENESS,
                ),
            )
        return cls(models=models, source=source)


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


def load_policy_file(path: str | os.PathLike[str]) -> ServiceConfig:
    """Read, validate and resolve the policy file at `path`."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("RETRAIN_POLICY_FILE", f"cannot read {file}: {exc.strerror}") from None
    spec = parse_policy_file(text, str(file))
    return ServiceConfig.from_spec(spec, file.resolve().parent, str(file))


def policy_file_schema() -> dict[str, Any]:
    """JSON Schema of the policy file, for editors."""
    schema = PolicyFile.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "retrain-trigger policy file"
    return schema


def schema_json() -> str:
    return json.dumps(policy_file_schema(), indent=2, sort_keys=True) + "\n"


@dataclass(frozen=True)
class Environment:
    """The service's settings from environment variables."""

    policy_file: str
    state: str
    launcher: str
    project: str | None
    location: str
    vertex_endpoint: str | None
    manual_token: str | None
    trust_iam: bool

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Environment:
        env = os.environ if env is None else env
        policy_file = env.get("RETRAIN_POLICY_FILE", "")
        if not policy_file:
            raise ConfigError("RETRAIN_POLICY_FILE", "is not set; point it at your policy YAML")
        state = env.get("RETRAIN_STATE") or "sqlite:///.retrain/state.db"
        if not (state.startswith("sqlite:///") or state.startswith("firestore://")):
            raise ConfigError(
                "RETRAIN_STATE",
                f"{state!r} is not sqlite:///relative/path, sqlite:////absolute/path "
                "or firestore://[database]",
            )
        launcher = env.get("RETRAIN_LAUNCHER") or "local"
        if launcher not in ("local", "vertex"):
            raise ConfigError("RETRAIN_LAUNCHER", f"{launcher!r} is not 'local' or 'vertex'")
        project = env.get("GOOGLE_CLOUD_PROJECT") or None
        if launcher == "vertex" and not project:
            raise ConfigError("GOOGLE_CLOUD_PROJECT", "is not set; the vertex launcher needs it")
        trust = (env.get("RETRAIN_TRUST_IAM") or "false").lower()
        if trust not in ("true", "false", "1", "0", "yes", "no"):
            raise ConfigError("RETRAIN_TRUST_IAM", f"{trust!r} is not true or false")
        return cls(
            policy_file=policy_file,
            state=state,
            launcher=launcher,
            project=project,
            location=env.get("RETRAIN_LOCATION") or "us-central1",
            vertex_endpoint=env.get("RETRAIN_VERTEX_ENDPOINT") or None,
            manual_token=env.get("RETRAIN_MANUAL_TOKEN") or None,
            trust_iam=trust in ("true", "1", "yes"),
        )
