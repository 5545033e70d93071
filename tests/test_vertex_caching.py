"""Execution caching: a retraining run must run every task again unless the policy file opts in.

The service launches the reference pipeline through the real VertexLauncher and aiplatform_v1
REST client against the fake Vertex, which serves a task from its execution cache the way
Vertex does (same component, same resolved inputs as a task of an earlier successful job).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline_client.launching.templates import without_caching
from pipeline_client.launching.vertex import VertexLauncher
from tests.conftest import Clock
from tests.fakes.vertex_server import FakeVertexServer
from triggers.config import ServiceConfig
from triggers.service import RetrainService
from triggers.state.memory import MemoryStore

ROOT = Path(__file__).resolve().parents[1]
RETRAIN_TEMPLATE = ROOT / "pipelines" / "retrain.yaml"
PROJECT, LOCATION = "acme-ml", "europe-west4"
# The container steps of the reference pipeline that do not depend on the trigger: with the
# template's compiled caching options, a second run for another trigger reuses all of them.
TRIGGER_INDEPENDENT = {"prepare-data", "train-model", "evaluate-models", "promotion-gate"}

POLICY = """
models:
  fraud-detector:
    pipeline:
      template: {template}
      pipeline_root: gs://acme-ml-pipelines/root
      parameters: {{data_uri: "gs://acme-ml-data/lake", registry: "vertex"}}
{extra}
    policies:
      - {{name: accuracy-floor, metric: accuracy, direction: higher_is_better,
         absolute: {{threshold: 0.9}}}}
"""

pytestmark = pytest.mark.usefixtures("fresh_template_cache")


def service(vertex: FakeVertexServer, clock: Clock, extra: str = "") -> RetrainService:
    text = POLICY.format(template=RETRAIN_TEMPLATE, extra=extra)
    config = ServiceConfig.from_yaml(text, ROOT, "policy.yaml")
    launcher = VertexLauncher(PROJECT, LOCATION, endpoint=vertex.endpoint)
    return RetrainService(config, MemoryStore(), launcher, clock=clock)


def two_runs(vertex: FakeVertexServer, retrain: RetrainService, clock: Clock) -> list[str]:
    """Two manual triggers (different reasons), the first run succeeding before the second."""
    first = retrain.request_retrain("fraud-detector", "labels drifted")
    assert first.status == "fired", first
    vertex.set_state(first.run_id, "SUCCEEDED")
    clock.advance(days=2)  # past the cooldown
    second = retrain.request_retrain("fraud-detector", "new fraud pattern")
    assert second.status == "fired", second
    assert second.run_id != first.run_id
    return [first.run_id, second.run_id]


def test_retraining_runs_reuse_nothing_from_earlier_runs(vertex: FakeVertexServer) -> None:
    clock = Clock()
    first, second = two_runs(vertex, service(vertex, clock), clock)

    assert vertex.cached_tasks(first) == []
    assert vertex.cached_tasks(second) == []  # every step ran again on the new data
    assert TRIGGER_INDEPENDENT <= set(vertex.task_states(second))
    sent = vertex.created[second]["pipelineSpec"]
    template = yaml.safe_load(RETRAIN_TEMPLATE.read_text(encoding="utf-8"))
    assert sent == without_caching(template)


def test_enable_caching_opt_in_keeps_the_templates_caching(vertex: FakeVertexServer) -> None:
    clock = Clock()
    retrain = service(vertex, clock, extra="      enable_caching: true")
    first, second = two_runs(vertex, retrain, clock)

    assert vertex.cached_tasks(first) == []
    assert set(vertex.cached_tasks(second)) == TRIGGER_INDEPENDENT
    # the steps that take the trigger (or the run's own name) ran
    states = vertex.task_states(second)
    assert states["report-outcome"] == states["promote-model"] == "PENDING"
    template = yaml.safe_load(RETRAIN_TEMPLATE.read_text(encoding="utf-8"))
    assert vertex.created[second]["pipelineSpec"] == template


def test_without_caching_turns_off_every_task_nested_ones_too() -> None:
    template = yaml.safe_load(RETRAIN_TEMPLATE.read_text(encoding="utf-8"))
    template["root"]["dag"]["tasks"]["prepare-data"]["cachingOptions"]["cacheKey"] = "pinned"
    rewritten = without_caching(template)

    dags = [rewritten["root"], *rewritten["components"].values()]
    tasks = [t for c in dags if "dag" in c for t in c["dag"]["tasks"].values()]
    assert len(tasks) == 10  # 5 at the root (the If/Else group too), its 2 branches, 2 + 1 in them
    assert all(task["cachingOptions"] == {"enableCache": False} for task in tasks)
    assert template["root"]["dag"]["tasks"]["prepare-data"]["cachingOptions"]["enableCache"]
    rewritten["root"]["dag"]["tasks"]["prepare-data"].pop("cachingOptions")
    template["root"]["dag"]["tasks"]["prepare-data"].pop("cachingOptions")
    assert rewritten["root"]["dag"]["tasks"]["prepare-data"] == (
        template["root"]["dag"]["tasks"]["prepare-data"])
