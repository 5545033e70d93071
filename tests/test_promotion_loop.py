"""The compare-before-promotion loop end to end: a real `serve`, the local launcher running
pipelines/retrain.yaml under kfp.local, the promotion gate, the file model registry, the
outcome back to the service, and `rollback`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline_client.promotion.registries import LocalModelRegistry
from pipelines.datalake import LabelledDay, write_day
from pipelines.drift import FEATURES, DriftingConcept
from pipelines.logistic import LogisticModel, fit_logistic
from tests.conftest import ROOT
from tests.support.serve import serve_process

MODEL = "churn"
TOKEN = "t0ken-for-tests"
POLICY = """\
defaults:
  guards: {{cooldown: 0s, max_runs: {{count: 10, per: 1d}}, skip_if_running: true,
           run_timeout: 10m}}
models:
  {model}:
    pipeline:
      template: {template}
      parameters: {{data_uri: {data}, registry: {registry}, training_days: 3, holdout_days: 1,
                   outcome_topic: ""}}
    policies:
      - {{name: accuracy-floor, metric: accuracy, direction: higher_is_better,
         absolute: {{threshold: 0.8}}}}
    promotion:
      primary: {{metric: accuracy, min_improvement: 0.0, confidence: 0.95}}
      guardrails: [{{metric: auc, max_regression: 0.01}}]
      floors: {{accuracy: 0.6}}
"""


def call(base: str, method: str, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        base + path, data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def event(version: str, accuracy: float, day: int) -> dict[str, Any]:
    return {"model": MODEL, "model_version": version,
            "metrics": {"accuracy": accuracy, "auc": 0.9},
            "window_end": f"2026-10-{day:02d}T00:00:00Z", "examples": 1000}


def wait_for_end(base: str, run_id: str, deadline: float = 240) -> dict[str, Any]:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        status = call(base, "GET", f"/models/{MODEL}")
        runs = {r["run_id"]: r for r in status["recent_runs"]}
        if run_id in runs and runs[run_id]["state"] not in ("launching", "launched", "running"):
            return status
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} did not end in {deadline} s")


def day_of(concept: DriftingConcept, day: int, label: str) -> LabelledDay:
    sample = concept.sample(day)
    return LabelledDay(label, sample.features, sample.x, sample.y)


@pytest.fixture
def workspace(tmp_path: Path) -> dict[str, Path]:
    paths = {"root": tmp_path, "data": tmp_path / "data", "registry": tmp_path / "registry",
             "policy": tmp_path / "policies.yaml", "state": tmp_path / "state.db"}
    paths["policy"].write_text(POLICY.format(
        model=MODEL, template=json.dumps(str(ROOT / "pipelines" / "retrain.yaml")),
        data=json.dumps(str(paths["data"])),
        registry=json.dumps(f"file://{paths['registry']}")))
    return paths


def env_for(paths: dict[str, Path]) -> dict[str, str]:
    return {"RETRAIN_POLICY_FILE": str(paths["policy"]),
            "RETRAIN_STATE": f"sqlite:///{paths['state']}", "RETRAIN_LAUNCHER": "local",
            "RETRAIN_MANUAL_TOKEN": TOKEN}


def register_champion(registry_root: Path, model: LogisticModel, tmp: Path) -> str:
    registry = LocalModelRegistry(registry_root)
    artifact = tmp / "champion-artifact"
    model.save(artifact)
    version = registry.register(MODEL, str(artifact), {}, {"source": "test"})
    registry.promote(MODEL, version.version)
    return version.version


def fire_and_wait(base: str, version: str) -> tuple[str, dict[str, Any]]:
    answer = call(base, "POST", "/events", event(version, 0.55, 10))
    assert [d["kind"] for d in answer["decisions"] if d["policy"] == "accuracy-floor"] == [
        "fired"], answer
    assert len(answer["launched"]) == 1, answer
    run_id = answer["launched"][0]
    return run_id, wait_for_end(base, run_id)


def test_a_better_challenger_is_promoted_and_the_service_rearms_on_it(
    workspace: dict[str, Path],
) -> None:
    concept = DriftingConcept(examples_per_day=1500)
    for day in range(4):
        write_day(workspace["data"], MODEL, day_of(concept, day, f"2026-09-0{day + 1}"))
    # The champion looks at the wrong feature: a good challenger beats it clearly.
    weak = LogisticModel((0.0, 0.0, 0.0, 0.0, 1.0), 0.0, FEATURES)
    assert register_champion(workspace["registry"], weak, workspace["root"]) == "1"

    with serve_process(workspace["root"], env_for(workspace)) as base:
        call(base, "POST", "/events", event("1", 0.85, 9))  # adopts champion 1
        run_id, status = fire_and_wait(base, "1")
        run = next(r for r in status["recent_runs"] if r["run_id"] == run_id)
        assert run["state"] == "promoted", run
        assert status["champion_version"] == "2"
        trail = call(base, "GET", f"/decisions?model={MODEL}&limit=10")["decisions"]
        promoted = next(d for d in trail if d["kind"] == "promoted")
        gate = promoted["details"]["report"]["gate"]
        assert gate["decision"] == "promote"
        # Compared on the newest day, which the challenger never saw in training.
        assert gate["holdout_days"] == ["2026-09-04"]
        training = promoted["details"]["report"]["training"]
        assert training["days"] == ["2026-09-01", "2026-09-02", "2026-09-03"]
        assert gate["champion_version"] == "1" and gate["examples"] == 1500
        primary = next(c for c in gate["checks"] if c["kind"] == "primary")
        assert primary["metric"] == "accuracy" and primary["passed"] is True
        assert primary["challenger"] > primary["champion"] + 0.1
        assert any(d["kind"] == "champion" for d in trail)

        registry = LocalModelRegistry(workspace["registry"])
        champion, previous = registry.champion(MODEL), registry.previous(MODEL)
        assert champion is not None and champion.version == "2"
        assert previous is not None and previous.version == "1"
        # Re-armed on the new champion: its points are judged, the old version's are not.
        old = call(base, "POST", "/events", event("1", 0.5, 11))
        assert {d["kind"] for d in old["decisions"]} == {"ignored"}
        fresh = call(base, "POST", "/events", event("2", 0.93, 12))
        assert [d["kind"] for d in fresh["decisions"]] == ["ok"]
        assert call(base, "GET", f"/models/{MODEL}")["armed"] is True

    # `rollback` moves the registry's champion back and the service follows.
    result = subprocess.run(
        [sys.executable, "-m", "triggers", "rollback", MODEL, "--reason", "bad release",
         "--policies", str(workspace["policy"]), "--state", f"sqlite:///{workspace['state']}"],
        cwd=workspace["root"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "rollback" in result.stdout and "from 2 to 1: bad release" in result.stdout
    registry = LocalModelRegistry(workspace["registry"])
    champion = registry.champion(MODEL)
    assert champion is not None and champion.version == "1"
    from triggers.state.sqlite import SQLiteStore

    store = SQLiteStore(workspace["state"])
    assert store.model_state(MODEL).champion_version == "1"
    assert store.decisions(MODEL, 1)[0].kind == "rollback"
    # Repeating it with --to (say, after the state write failed) moves nothing twice.
    again = rollback_cli(workspace, "--to", "1")
    assert again.returncode == 0, again.stderr
    assert "champion set to 1 (the registry already held it)" in again.stdout
    champion = LocalModelRegistry(workspace["registry"]).champion(MODEL)
    assert champion is not None and champion.version == "1"
    assert store.model_state(MODEL).champion_version == "1"


def rollback_cli(workspace: dict[str, Path], *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "triggers", "rollback", MODEL, *extra, "--policies",
         str(workspace["policy"]), "--state", f"sqlite:///{workspace['state']}"],
        cwd=workspace["root"], capture_output=True, text=True, timeout=60)


def test_a_worse_challenger_is_rejected_and_the_champion_stays(
    workspace: dict[str, Path],
) -> None:
    stable = DriftingConcept(examples_per_day=1500)
    turned = DriftingConcept(drift_start=0, drift_end=30, degrees_per_day=3.0,
                             examples_per_day=1500)
    # The training days come from a turned concept, the held-out day from the champion's.
    for day in range(3):
        write_day(workspace["data"], MODEL, day_of(turned, 30 + day, f"2026-09-0{day + 1}"))
    write_day(workspace["data"], MODEL, day_of(stable, 3, "2026-09-04"))
    history = [stable.sample(day) for day in range(-4, 0)]
    strong = fit_logistic(np.vstack([d.x for d in history]),
                          np.concatenate([d.y for d in history]), FEATURES)
    assert register_champion(workspace["registry"], strong, workspace["root"]) == "1"

    with serve_process(workspace["root"], env_for(workspace)) as base:
        call(base, "POST", "/events", event("1", 0.85, 9))
        run_id, status = fire_and_wait(base, "1")
        run = next(r for r in status["recent_runs"] if r["run_id"] == run_id)
        assert run["state"] == "rejected", run
        assert status["champion_version"] == "1"
        trail = call(base, "GET", f"/decisions?model={MODEL}&limit=10")["decisions"]
        rejected = next(d for d in trail if d["kind"] == "rejected_challenger")
        gate = rejected["details"]["report"]["gate"]
        assert gate["decision"] == "reject"
        assert "accuracy" in rejected["reason"]
        # Rejected → re-armed once the cooldown (0 s here) has passed: a breach fires again.
        again = call(base, "POST", "/events", event("1", 0.5, 11))
        assert "fired" in [d["kind"] for d in again["decisions"]], again
        # A rollback while that run is in flight could be overtaken by its promotion: refused.
        refused = rollback_cli(workspace)
        assert refused.returncode == 1 and "is in flight" in refused.stderr, refused
        wait_for_end(base, again["launched"][0])

    registry = LocalModelRegistry(workspace["registry"])
    champion = registry.champion(MODEL)
    assert champion is not None and champion.version == "1"
    assert [v.version for v in registry.versions(MODEL)] == ["1"]
