"""Builds the service from the environment once per process (store, launcher, policies).

Production defaults are created here; tests build their own `RetrainService` instead.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline_client.launching.protocol import PipelineLauncher
from triggers.cloud.auth import GoogleIdTokenVerifier, IdTokenVerifier
from triggers.cloud.environment import Environment
from triggers.cloud.outbox import DecisionPublisher, Teller
from triggers.config import ServiceConfig, load_policy_file
from triggers.errors import ConfigError, PolicyConfigError
from triggers.events import Delivery
from triggers.service import EventResult, RetrainService
from triggers.state.protocol import StateStore

_lock = threading.Lock()
_service: RetrainService | None = None
_environment: Environment | None = None
_verifier: IdTokenVerifier | None = None
_teller: Teller | None | bool = False  # False: not built yet


def build_store(url: str, outbox: bool = False) -> StateStore:
    """The store a RETRAIN_STATE URL names; `outbox`: it keeps told decisions for a
    decisions topic."""
    store: StateStore
    if url.startswith("sqlite:///"):
        from triggers.state.sqlite import SQLiteStore

        store = SQLiteStore.from_url(url)
    elif url.startswith("firestore://"):
        from triggers.state.firestore import FirestoreStore  # the SDK loads on first use

        store = FirestoreStore.from_url(url)
    else:
        raise ConfigError("RETRAIN_STATE", f"{url!r} is not a sqlite:/// or firestore:// URL")
    store.outbox_switch.on = outbox
    return store


def check_vertex_templates(config: ServiceConfig) -> None:
    """Refuses a local template that Vertex AI cannot run (its steps on the placeholder image).

    Templates at gs:// or Artifact Registry are not downloaded at cold start; the launcher
    refuses them at submit instead. A template that cannot be read is left to the launcher."""
    from pipeline_client.launching.templates import TemplateError, fetch_template
    from pipeline_client.launching.vertex import placeholder_problem

    for name, model in config.models.items():
        uri = model.pipeline.template
        if "://" in uri:
            continue
        try:
            template = fetch_template(uri)
        except TemplateError:
            continue
        problem = placeholder_problem(template)
        if problem:
            raise PolicyConfigError(f"models.{name}.pipeline.template", uri, problem)


def build_launcher(env: Environment) -> PipelineLauncher:
    """The launcher RETRAIN_LAUNCHER names; SDKs load on first submit, not here."""
    if env.launcher == "vertex":
        from pipeline_client.launching.vertex import VertexLauncher

        assert env.project is not None
        return VertexLauncher(env.project, env.location, endpoint=env.vertex_endpoint,
                              timeout=env.vertex_timeout)
    from pipeline_client.launching.local import LocalLauncher

    state_dir = _state_dir(env.state)
    # The run's child hands the outcome to a service of its own: the same settings as ours.
    return LocalLauncher(workdir=state_dir / "runs", child_env={
        "RETRAIN_POLICY_FILE": env.policy_file, "RETRAIN_STATE": env.state,
        "RETRAIN_LAUNCHER": env.launcher})


def _state_dir(url: str) -> Path:
    path = url.partition("?")[0]
    if path.startswith("sqlite:///") and path != "sqlite:///:memory:":
        return Path(path[len("sqlite:///") :]).parent
    return Path(".retrain")


def environment() -> Environment:
    global _environment
    if _environment is None:
        _environment = Environment.from_env()
    return _environment


def use_environment(env: Environment) -> None:
    """Make `env` the process's environment (`serve --policies ...`): the service is built
    from it, and the workers forked after this call inherit it."""
    global _environment, _service, _verifier, _teller
    with _lock:
        _environment, _service, _verifier, _teller = env, None, None, False


def id_token_verifier() -> IdTokenVerifier | None:
    """The process's ID-token verifier when the manual trigger trusts IAM (its certificate
    cache lives as long as the process); None in bearer-token mode."""
    global _verifier
    env = environment()
    if _verifier is None and env.trust_iam and not env.manual_token and env.audience:
        _verifier = GoogleIdTokenVerifier(env.audience, env.certs_url)
    return _verifier


def build_service(env: Environment | None = None) -> RetrainService:
    env = env or Environment.from_env()
    config = load_policy_file(env.policy_file)
    if env.launcher == "vertex":
        check_vertex_templates(config)
    store = build_store(env.state, outbox=env.decisions_topic is not None)
    return RetrainService(config, store, build_launcher(env))


def service() -> RetrainService:
    """The process's service, built (and its config validated) on first call."""
    global _service
    if _service is None:
        with _lock:
            if _service is None:
                _service = build_service(environment())
    return _service


def decision_publisher() -> DecisionPublisher | None:
    """The publisher of told decisions to the environment's decisions topic (None when
    RETRAIN_DECISIONS_TOPIC is unset); the SDK loads on the first publish."""
    teller = decision_teller()
    return teller.publisher if teller is not None else None


def decision_teller() -> Teller | None:
    """The process's teller of decisions (None without a decisions topic)."""
    global _teller
    if _teller is False:
        from triggers.cloud.outbox import PubSubPublisher

        topic = environment().decisions_topic
        _teller = Teller(PubSubPublisher(topic)) if topic else None
    assert _teller is not True
    return _teller


def reset() -> None:
    """Forget the cached service and environment (tests change the environment)."""
    global _service, _environment, _verifier, _teller
    with _lock:
        _service = None
        _environment = None
        _verifier = None
        _teller = False


def deliver_outcome(outcome: Mapping[str, Any]) -> EventResult:
    """Outcome handler of the local launcher: the same path as `on_run_outcome`."""
    payload = json.dumps(dict(outcome), sort_keys=True).encode("utf-8")
    delivery = Delivery(
        message_id=f"local-outcome-{outcome.get('run_id', 'unknown')}",
        payload=payload,
        source="local-launcher",
    )
    result = service().handle_outcome_delivery(delivery)
    teller = decision_teller()  # the run's child tells what it decided (its own thread wrote)
    if teller is not None:
        teller.tell(service().store)
    return result
