"""The service's configuration at run time: the policy file resolved into plain objects.
Validated once at cold start; errors name the field (the environment: `cloud.environment`).

A policy file is validated by `triggers.policy_file` (pydantic). `retrain-trigger validate
--compile` stores the validated result beside it; a cold start that finds it, with the
source's digest unchanged, loads it without importing pydantic or PyYAML.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import field
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

from thresholds.base import Policy
from thresholds.durations import parse_duration
from thresholds.records import record
from thresholds.registry import build_policy
from thresholds.spec import AlertSpec, PolicySpec
from triggers.errors import ConfigError, PolicyConfigError
from triggers.guards import Guards

COMPILED_FORMAT = 1
DEFAULT_LATENESS = timedelta(hours=1)
DEFAULT_MAX_CLOCK_SKEW = timedelta(hours=1)
"""How far past the service's clock an event's `window_end` may lie (clocks differ a little;
an evaluation of a window that has not ended yet is a typo, and would blind the model)."""
DEFAULT_MAX_SLICES = 100
"""How many distinct slices the policies of one model may watch (points are stored for
watched slices only, so this bounds the series a model keeps)."""


def _duration(value: Any, default: timedelta) -> timedelta:
    return default if value is None else parse_duration(value)


@record
class PipelineConfig:
    """Which pipeline to run and how; nothing here can come from an event."""

    template: str
    parameters: Mapping[str, Any] = field(default_factory=dict)
    service_account: str | None = None
    pipeline_root: str | None = None
    network: str | None = None
    kms_key_name: str | None = None
    enable_caching: bool = False


@record
class ModelConfig:
    """One model, resolved: built policies, merged guards, pipeline template path."""

    name: str
    pipeline: PipelineConfig
    policies: tuple[Policy, ...]
    guards: Guards
    promotion: Mapping[str, Any] | None = None
    lateness: timedelta = DEFAULT_LATENESS
    inhibit_when: tuple[AlertSpec, ...] = ()
    """Alert conditions whose open incidents hold back every retraining of the model."""

    @cached_property
    def watched(self) -> frozenset[tuple[str, str]]:
        """The (slice, metric) pairs some policy reads: the only points the service keeps
        (an `alert` policy reads incidents, not points)."""
        return frozenset((p.spec.slice, p.metric) for p in self.policies
                         if p.spec.kind != "alert")

    @cached_property
    def watched_slices(self) -> frozenset[str]:
        return frozenset(slice_ for slice_, _ in self.watched)


@record
class ServiceConfig:
    """The policy file, resolved for the service."""

    models: Mapping[str, ModelConfig]
    source: str
    max_clock_skew: timedelta = DEFAULT_MAX_CLOCK_SKEW
    max_slices: int = DEFAULT_MAX_SLICES

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], base_dir: Path, source: str = "<memory>"
    ) -> ServiceConfig:
        """Resolve a validated policy file (its JSON dump); templates relative to `base_dir`."""
        defaults_data = data.get("defaults") or {}
        defaults = Guards().merged(defaults_data.get("guards"))
        default_lateness = _duration(defaults_data.get("lateness"), DEFAULT_LATENESS)
        max_clock_skew = _duration(defaults_data.get("max_clock_skew"), DEFAULT_MAX_CLOCK_SKEW)
        max_slices = defaults_data.get("max_slices") or DEFAULT_MAX_SLICES
        models = {}
        for name, model in data["models"].items():
            pipeline = PipelineConfig(**model["pipeline"])
            template = pipeline.template
            if "://" not in template and not Path(template).is_absolute():
                template = str((base_dir / template).resolve())
            models[name] = ModelConfig(
                name=name,
                pipeline=PipelineConfig(**{**model["pipeline"], "template": template}),
                policies=tuple(build_policy(PolicySpec.from_dict(p)) for p in model["policies"]),
                guards=defaults.merged(model.get("guards")),
                promotion=model.get("promotion"),
                lateness=_duration(model.get("lateness"), default_lateness),
                inhibit_when=tuple(AlertSpec(**rule) for rule in model.get("inhibit_when") or ()),
            )
            slices = models[name].watched_slices
            if len(slices) > max_slices:
                raise PolicyConfigError(
                    f"models.{name}.policies", None,
                    f"the policies watch {len(slices)} slices; defaults.max_slices allows "
                    f"{max_slices} per model (raise it, or watch fewer slices)")
        return cls(models=models, source=source, max_clock_skew=max_clock_skew,
                   max_slices=max_slices)

    @classmethod
    def from_yaml(cls, text: str, base_dir: Path, source: str = "<memory>") -> ServiceConfig:
        """Validate policy-file YAML and resolve it (raises PolicyConfigError)."""
        from triggers.policy_file import parse_policy_file

        return cls.from_dict(parse_policy_file(text, source).model_dump(mode="json"), base_dir,
                             source)


def compiled_path(path: Path) -> Path:
    """Where `validate --compile` stores the validated form of the policy file at `path`."""
    return path.with_name(path.stem + ".compiled.json")


def load_policy_file(path: str | os.PathLike[str]) -> ServiceConfig:
    """Read, validate and resolve the policy file at `path` (its compiled form if current)."""
    file = Path(path)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ConfigError("RETRAIN_POLICY_FILE", f"cannot read {file}: {exc.strerror}") from None
    digest = hashlib.sha256(raw).hexdigest()
    base_dir = file.resolve().parent
    try:
        compiled = json.loads(compiled_path(file).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        compiled = None
    if (
        isinstance(compiled, dict)
        and compiled.get("format") == COMPILED_FORMAT
        and compiled.get("source_sha256") == digest
    ):
        try:
            return ServiceConfig.from_dict(compiled["policy_file"], base_dir, str(file))
        except (KeyError, TypeError, ValueError, AttributeError):
            pass  # a damaged compiled file is a stale one: validate the source below
    return ServiceConfig.from_yaml(raw.decode("utf-8", errors="replace"), base_dir, str(file))


def compile_policy_file(path: str | os.PathLike[str]) -> Path:
    """Validate the policy file and store its validated form beside it; returns that path."""
    from triggers.policy_file import parse_policy_file

    file = Path(path)
    raw = file.read_bytes()
    spec = parse_policy_file(raw.decode("utf-8", errors="replace"), str(file))
    target = compiled_path(file)
    payload = {
        "format": COMPILED_FORMAT,
        "source": file.name,
        "source_sha256": hashlib.sha256(raw).hexdigest(),
        "policy_file": spec.model_dump(mode="json"),
    }
    target.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return target
