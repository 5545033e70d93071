"""The service's configuration at run time: the policy file resolved into plain objects, and
the environment. Validated once at cold start; errors name the field or the variable.

A policy file is validated by `triggers.policy_file` (pydantic). `retrain-trigger validate
--compile` stores the validated result beside it; a cold start that finds it, with the
source's digest unchanged, loads it without importing pydantic or PyYAML.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

from thresholds.base import Policy
from thresholds.durations import parse_duration
from thresholds.registry import build_policy
from thresholds.spec import AlertSpec, PolicySpec
from triggers.auth import GOOGLE_CERTS_URL, audiences, parse_invokers
from triggers.errors import ConfigError, PolicyConfigError

COMPILED_FORMAT = 1
DEFAULT_LATENESS = timedelta(hours=1)
DEFAULT_MAX_CLOCK_SKEW = timedelta(hours=1)
"""How far past the service's clock an event's `window_end` may lie (clocks differ a little;
an evaluation of a window that has not ended yet is a typo, and would blind the model)."""
DEFAULT_MAX_SLICES = 100
"""How many distinct slices the policies of one model may watch (points are stored for
watched slices only, so this bounds the series a model keeps)."""


@dataclass(frozen=True)
class Guards:
    """Resolved guards of one model."""

    cooldown: timedelta = timedelta(hours=24)
    max_runs: int = 3
    max_runs_per: timedelta = timedelta(days=7)
    skip_if_running: bool = True
    run_timeout: timedelta = timedelta(hours=24)

    def merged(self, data: Mapping[str, Any] | None) -> Guards:
        """These guards with the fields `data` (validated, as written) sets replaced."""
        if not data:
            return self
        max_runs = data.get("max_runs")
        return Guards(
            cooldown=_duration(data.get("cooldown"), self.cooldown),
            max_runs=max_runs["count"] if max_runs else self.max_runs,
            max_runs_per=parse_duration(max_runs["per"]) if max_runs else self.max_runs_per,
            skip_if_running=(
                data["skip_if_running"]
                if data.get("skip_if_running") is not None
                else self.skip_if_running
            ),
            run_timeout=_duration(data.get("run_timeout"), self.run_timeout),
        )


def _duration(value: Any, default: timedelta) -> timedelta:
    return default if value is None else parse_duration(value)


@dataclass(frozen=True)
class PipelineConfig:
    """Which pipeline to run and how; nothing here can come from an event."""

    template: str
    parameters: Mapping[str, Any] = field(default_factory=dict)
    service_account: str | None = None
    pipeline_root: str | None = None
    network: str | None = None
    kms_key_name: str | None = None
    enable_caching: bool = False


@dataclass(frozen=True)
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


@dataclass(frozen=True)
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
    vertex_timeout: float = 30.0
    audience: str | None = None
    """With trust-IAM, the audience the caller's Google ID token must name: the function's URL."""
    invokers: frozenset[str] = frozenset()
    """With trust-IAM, the emails allowed to call the manual trigger."""
    certs_url: str = GOOGLE_CERTS_URL
    """Where the keys that sign ID tokens are published (Google's; a test serves its own)."""

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
        vertex_timeout = 30.0
        if env.get("RETRAIN_VERTEX_TIMEOUT"):
            try:
                vertex_timeout = parse_duration(env["RETRAIN_VERTEX_TIMEOUT"]).total_seconds()
            except ValueError as exc:
                raise ConfigError("RETRAIN_VERTEX_TIMEOUT", str(exc)) from None
            if vertex_timeout <= 0:
                raise ConfigError("RETRAIN_VERTEX_TIMEOUT", "must be positive, e.g. '30s'")
        audience = env.get("RETRAIN_AUDIENCE") or None
        try:
            invokers = parse_invokers(env.get("RETRAIN_INVOKERS") or "")
        except ValueError as exc:
            raise ConfigError("RETRAIN_INVOKERS", str(exc)) from None
        if trust in ("true", "1", "yes"):
            if not audience:
                raise ConfigError("RETRAIN_AUDIENCE", "is not set; with RETRAIN_TRUST_IAM=true "
                                  "set it to the manual trigger's URL (callers' ID tokens name it)")
            for url in audiences(audience) or [audience]:
                if not url.startswith("https://"):
                    raise ConfigError("RETRAIN_AUDIENCE", f"{url!r} is not an https:// URL")
            if not invokers:
                raise ConfigError("RETRAIN_INVOKERS", "is not set; with RETRAIN_TRUST_IAM=true "
                                  "list who may call, e.g. serviceAccount:ci@PROJECT.iam."
                                  "gserviceaccount.com,user:you@example.com")
        certs_url = env.get("RETRAIN_ID_TOKEN_CERTS_URL") or GOOGLE_CERTS_URL
        if not certs_url.startswith(("https://", "http://127.0.0.1:", "http://localhost:")):
            raise ConfigError("RETRAIN_ID_TOKEN_CERTS_URL", f"{certs_url!r} is not an https:// URL")
        return cls(
            audience=audience,
            invokers=invokers,
            certs_url=certs_url,
            policy_file=policy_file,
            state=state,
            launcher=launcher,
            project=project,
            location=env.get("RETRAIN_LOCATION") or "us-central1",
            vertex_endpoint=env.get("RETRAIN_VERTEX_ENDPOINT") or None,
            manual_token=env.get("RETRAIN_MANUAL_TOKEN") or None,
            trust_iam=trust in ("true", "1", "yes"),
            vertex_timeout=vertex_timeout,
        )
