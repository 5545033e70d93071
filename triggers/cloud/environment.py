"""The deployed service's settings from environment variables (RETRAIN_*), validated once at
cold start; an error names the variable and what to set.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from thresholds.durations import parse_duration
from thresholds.records import record
from triggers.cloud.auth import GOOGLE_CERTS_URL, audiences, parse_invokers
from triggers.cloud.outbox import topic_path
from triggers.errors import ConfigError


@record
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
    decisions_topic: str | None = None
    """RETRAIN_DECISIONS_TOPIC as a full topic name: told decisions are kept in the store's
    outbox and published there (None: neither)."""

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
        topic = (env.get("RETRAIN_DECISIONS_TOPIC") or "").strip()
        decisions_topic = topic_path(topic, project) if topic else None
        return cls(
            decisions_topic=decisions_topic,
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
