"""A real `retrain-trigger serve` process (gunicorn, 2 workers) over HTTP with the local kfp
launcher: events in, a pipeline run, its outcome back, the new champion; plus the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipelines.example import champion_version_for
from tests.conftest import EXAMPLE_TEMPLATE, POLICY_YAML, ROOT
from tests.support.serve import serve_process
from triggers.tools.quickstart import call

TOKEN = "serve-test-token"


class Server:
    def __init__(self, base: str, env: dict[str, str]) -> None:
        self.base = base
        self.env = env

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return call(self.base, TOKEN, method, path, body)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    policy = tmp_path / "policies.yaml"
    policy.write_text(POLICY_YAML % {"template": EXAMPLE_TEMPLATE})
    env = dict(RETRAIN_POLICY_FILE=str(policy), RETRAIN_STATE=f"sqlite:///{tmp_path}/state.db",
               RETRAIN_LAUNCHER="local", RETRAIN_MANUAL_TOKEN=TOKEN)
    with serve_process(tmp_path, env, workers=2, threads=4) as base:
        yield Server(base, {**os.environ, **env})


def event(day: int, value: float, version: str = "7") -> dict[str, Any]:
    return {"model": "fraud-detector", "model_version": version, "metrics": {"accuracy": value},
            "window_end": f"2026-11-{day + 1:02d}T00:00:00Z", "examples": 1000}


def test_events_to_promotion_through_a_real_server(server: Server) -> None:
    from tests.test_service import DEGRADING, FIRST_FIRE

    launched = []
    for day, value in enumerate(DEGRADING):
        status, answer = server.call("POST", "/events", event(day, value))
        assert status == 200, answer
        launched += answer["launched"]
        if day < FIRST_FIRE:
            assert answer["launched"] == []
    assert len(launched) == 1
    run_id = launched[0]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        _, model = server.call("GET", "/models/fraud-detector")
        run = next(r for r in model["recent_runs"] if r["run_id"] == run_id)
        if run["state"] not in ("launching", "launched", "running"):
            break
        time.sleep(0.5)
    assert run["state"] == "promoted", run
    assert model["armed"] is True
    trigger_id = run["trigger_id"]
    assert model["champion_version"] == champion_version_for(trigger_id)
    # the new champion starts a fresh history: one point is not enough to fire
    status, answer = server.call("POST", "/events", event(20, 0.5, model["champion_version"]))
    assert status == 200 and [d["kind"] for d in answer["decisions"]] == ["insufficient_data"]

    out = subprocess.run(
        [sys.executable, "-m", "triggers", "decisions", "--model", "fraud-detector",
         "--limit", "100", "--json"],
        env=server.env, cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout
    kinds = [json.loads(line)["kind"] for line in out.splitlines()]
    assert kinds.count("fired") == 1 and "promoted" in kinds and "champion" in kinds


def test_publish_command_to_the_server(server: Server, tmp_path: Path) -> None:
    events = tmp_path / "events.csv"
    events.write_text(
        "model,metric,value,window_end,examples\n"
        "churn,logloss,0.21,2026-11-01T00:00:00Z,900\n"
        "churn,logloss,0.22,2026-11-02T00:00:00Z,900\n"
        "churn,logloss,NaN-ish,2026-11-03T00:00:00Z,900\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "triggers", "publish", str(events), "--url", server.base,
         "--token", TOKEN],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode != 0
    assert "events.csv:4" in result.stderr + result.stdout
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(json.dumps({"model": "churn", "metrics": {"logloss": 0.2},
                                          "window_end": f"2026-11-0{d}T00:00:00Z"})
                              for d in (1, 2, 3)) + "\n")
    result = subprocess.run(
        [sys.executable, "-m", "triggers", "publish", str(good), "--url", server.base,
         "--token", TOKEN],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 accepted" in result.stdout
    _, model = server.call("GET", "/models/churn")
    assert len(model["latest_points"]) == 3


def test_pubsub_push_path_on_the_server(server: Server) -> None:
    body = json.loads((ROOT / "tests" / "fixtures" / "pubsub_push_body.json").read_text())
    request = urllib.request.Request(
        server.base + "/pubsub/metrics", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    _, model = server.call("GET", "/models/fraud-detector")
    # only the watched metric is kept as a point (auc: no policy of the model reads it)
    assert {p["metric"] for p in model["latest_points"]} == {"accuracy"}
