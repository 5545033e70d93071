"""Shared fixtures: a policy file builder, a controllable clock, services on real SQLite files.

Emulator fixtures come from tests/support/fixtures.py.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pipeline_client.launching.protocol import FakeLauncher
from tests.support.fixtures import pubsub_emulator, pubsub_env, unique_name  # noqa: F401
from triggers.config import ServiceConfig
from triggers.events import Delivery
from triggers.service import RetrainService
from triggers.state.sqlite import SQLiteStore

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
EXAMPLE_TEMPLATE = ROOT / "pipelines" / "example.yaml"
# What a Vertex deployment compiles with (RETRAIN_PIPELINE_IMAGE); Vertex refuses the placeholder.
TEST_PIPELINE_IMAGE = "europe-west4-docker.pkg.dev/acme-ml/retrain/steps:test"


def vertex_ready_template(directory: Path, template: Path = EXAMPLE_TEMPLATE) -> Path:
    """A copy of `template` in `directory` whose steps name TEST_PIPELINE_IMAGE, as if compiled
    with RETRAIN_PIPELINE_IMAGE set (the Vertex launcher refuses the placeholder image)."""
    from pipeline_client.launching.templates import PLACEHOLDER_IMAGE

    target = directory / f"{template.stem}.vertex.yaml"
    text = template.read_text(encoding="utf-8")
    target.write_text(text.replace(f"image: {PLACEHOLDER_IMAGE}", f"image: {TEST_PIPELINE_IMAGE}"),
                      encoding="utf-8")
    return target

POLICY_YAML = """
defaults:
  guards: {cooldown: 24h, max_runs: {count: 3, per: 7d}, skip_if_running: true, run_timeout: 24h}
models:
  fraud-detector:
    pipeline:
      template: %(template)s
      parameters: {training_days: 30}
      pipeline_root: gs://test-bucket/root
    policies:
      - {name: accuracy-floor, metric: accuracy, direction: higher_is_better,
         absolute: {threshold: 0.95}, breaches_to_trigger: 3, evaluation_points: 5,
         min_examples: 500}
    guards: {cooldown: 72h}
  churn:
    pipeline:
      template: %(template)s
      pipeline_root: gs://test-bucket/root
    policies:
      - {name: logloss-ceiling, metric: logloss, direction: lower_is_better,
         absolute: {threshold: 0.30}}
"""

T0 = datetime(2026, 11, 1, tzinfo=UTC)

DESIGN_EVENT: dict[str, Any] = {
    "model": "fraud-detector",
    "model_version": "7",
    "metrics": {"accuracy": 0.943, "auc": 0.971},
    "window_start": "2026-11-01T00:00:00Z",
    "window_end": "2026-11-02T00:00:00Z",
    "examples": 12000,
    "slice": "overall",
}
"""The metric event of the design document, as every envelope test sends it."""


def policy_config(yaml_text: str | None = None, template: Path = EXAMPLE_TEMPLATE) -> ServiceConfig:
    text = textwrap.dedent(yaml_text or POLICY_YAML) % {"template": template}
    return ServiceConfig.from_yaml(text, ROOT)


class Clock:
    """A wall clock the test moves by hand; it starts after every event time the tests use
    (an event later than the service's clock is refused)."""

    def __init__(self, start: datetime = T0 + timedelta(days=400)) -> None:
        self.now = start.timestamp()

    def __call__(self) -> float:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta).total_seconds()


@dataclass
class Harness:
    service: RetrainService
    store: SQLiteStore
    launcher: FakeLauncher
    clock: Clock
    counter: int = 0

    def event(self, day: float, value: float, model: str = "fraud-detector",
              metric: str = "accuracy", **extra: Any) -> dict[str, Any]:
        event: dict[str, Any] = {
            "model": model,
            "metrics": {metric: value},
            "window_end": (T0 + timedelta(days=day)).isoformat().replace("+00:00", "Z"),
            "examples": 1000,
        }
        event.update(extra)
        return event

    def send(self, event: dict[str, Any] | bytes, message_id: str | None = None) -> Any:
        payload = event if isinstance(event, bytes) else json.dumps(event).encode()
        if message_id is None:
            self.counter += 1
            message_id = f"msg-{self.counter}"
        return self.service.handle_delivery(Delivery(message_id, payload, "pubsub"))


@pytest.fixture
def make_harness(tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    stores: list[SQLiteStore] = []

    def make(yaml_text: str | None = None, launcher: FakeLauncher | None = None,
             db: Path | None = None, **service_args: Any) -> Harness:
        store = SQLiteStore(db or tmp_path / f"state-{len(stores)}.db")
        stores.append(store)
        clock = Clock()
        launcher = launcher or FakeLauncher()
        service = RetrainService(policy_config(yaml_text), store, launcher, clock=clock,
                                 **service_args)
        return Harness(service, store, launcher, clock)

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def harness(make_harness: Callable[..., Harness]) -> Harness:
    return make_harness()


@pytest.fixture()
def fresh_template_cache() -> Iterator[None]:
    """Templates are cached per process: each test starts and ends with none loaded."""
    from pipeline_client.launching.templates import clear_template_cache

    clear_template_cache()
    yield
    clear_template_cache()


@pytest.fixture()
def vertex() -> Iterator[Any]:
    """The wire-level fake of the Vertex AI REST API, on a free loopback port."""
    from tests.fakes.vertex_server import FakeVertexServer

    with FakeVertexServer() as server:
        yield server
