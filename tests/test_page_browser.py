"""The page in a real browser: headless Chromium loads the pages of a real `serve` fed by a
seeded stream (launches on the wire-level Vertex fake, outcomes pushed as the pipeline does),
and the chart's marks are checked against the recorded decisions; no console error allowed."""

from __future__ import annotations

import json
import os
import random
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pipeline_client.promotion.outcome import publish_outcome
from tests.conftest import vertex_ready_template
from tests.fakes.vertex_server import FakeVertexServer
from tests.support.browser import CHROMIUM, chromium
from tests.support.serve import serve_process
from triggers.tools.quickstart import call

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")

TOKEN = "page-test-token"
MODEL = "fraud-detector"
POLICY = """\
defaults:
  guards: {{cooldown: 0s, max_runs: {{count: 10, per: 1d}}, skip_if_running: true,
           run_timeout: 24h}}
models:
  {model}:
    pipeline: {{template: {template}, pipeline_root: gs://test-bucket/root}}
    policies:
      - {{name: accuracy-floor, metric: accuracy, direction: higher_is_better,
         absolute: {{threshold: 0.9}}, breaches_to_trigger: 2, evaluation_points: 3}}
      - {{name: accuracy-trend, metric: accuracy, direction: higher_is_better,
         trend: {{lookback: 10d, min_points: 7, max_decline_per_day: 0.004, confidence: 0.95}}}}
      - {{name: auc-drop, metric: auc, direction: higher_is_better,
         baseline: {{max_relative_drop: 0.05}}}}
      - {{name: accuracy-forecast, metric: accuracy, direction: higher_is_better,
         forecast: {{threshold: 0.85, horizon: 3d, lookback: 10d, min_points: 6}}}}
  churn:
    pipeline: {{template: {template}, pipeline_root: gs://test-bucket/root}}
    policies:
      - {{name: logloss-ceiling, metric: logloss, direction: lower_is_better,
         absolute: {{threshold: 0.3}}}}
"""
DAYS = 42
OUTCOMES = ["promoted", "rejected", "promoted"]
"""What the gate says of the runs, in order; the last run stays in flight."""


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    policy = tmp_path / "policies.yaml"
    policy.write_text(POLICY.format(model=MODEL, template=json.dumps(str(
        vertex_ready_template(tmp_path)))))
    with FakeVertexServer() as vertex:
        env = dict(RETRAIN_POLICY_FILE=str(policy), RETRAIN_STATE=f"sqlite:///{tmp_path}/s.db",
                   RETRAIN_LAUNCHER="vertex", RETRAIN_VERTEX_ENDPOINT=vertex.endpoint,
                   GOOGLE_CLOUD_PROJECT="test-project", RETRAIN_LOCATION="us-central1",
                   RETRAIN_MANUAL_TOKEN=TOKEN)
        with serve_process(tmp_path, env, workers=1, threads=4) as base:
            yield base


def feed(base: str, seed: int = 16) -> dict[str, Any]:
    """A seeded stream: each champion starts fresh and drifts down; a run fired by it ends,
    a few points later, as OUTCOMES says (a promotion brings the next version)."""
    rng = random.Random(seed)
    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(
        days=DAYS + 1)
    version, age, pending, outcomes = 1, 0, None, list(OUTCOMES)
    for day in range(DAYS):
        accuracy = 0.95 - 0.006 * age + rng.gauss(0, 0.004)
        auc = 0.97 - 0.004 * age + rng.gauss(0, 0.003)
        event = {"model": MODEL, "model_version": str(version), "examples": 5000,
                 "metrics": {"accuracy": round(accuracy, 5), "auc": round(auc, 5)},
                 "window_end": (start + timedelta(days=day)).isoformat().replace("+00:00", "Z")}
        status, answer = call(base, TOKEN, "POST", "/events", event)
        assert status == 200, answer
        age += 1
        if answer["launched"] and pending is None:
            run_id = answer["launched"][0]
            trigger = next(d["trigger_id"] for d in answer["decisions"] if d["run_id"] == run_id)
            pending = (run_id, day, trigger)
        if pending is not None and day - pending[1] >= 3 and outcomes:
            decision = outcomes.pop(0)
            message = {"model": MODEL, "run_id": pending[0], "trigger_id": pending[2],
                       "decision": decision,
                       "report": {"summary": f"gate: challenger {decision} (seeded)"}}
            if decision == "promoted":
                version, age = version + 1, 0
                message["champion_version"] = str(version)
            publish_outcome(message, base + "/pubsub/outcomes")
            pending = None
    status, trail = call(base, TOKEN, "GET", f"/decisions?model={MODEL}&limit=1000")
    assert status == 200
    return {"start": start, "decisions": trail["decisions"]}


def get(url: str, headers: dict[str, str]) -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.headers.get("Content-Type", ""), answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


def test_the_model_page_in_chromium_marks_every_decision(served: str, tmp_path: Path) -> None:
    base = served
    stream = feed(base)
    decisions = stream["decisions"]
    fired = {d["decision_id"] for d in decisions if d["kind"] == "fired"}
    promoted = {d["decision_id"] for d in decisions if d["kind"] == "promoted"}
    suppressed = {d["decision_id"] for d in decisions if d["kind"] == "suppressed"}
    assert len(fired) >= len(OUTCOMES) + 1 and len(promoted) == 2 and suppressed
    period = f"from={stream['start']:%Y-%m-%d}&to={datetime.now(UTC):%Y-%m-%d}"

    # content negotiation and authentication, as a client sees them
    auth = {"Authorization": f"Bearer {TOKEN}"}
    status, kind, text = get(f"{base}/models/{MODEL}", auth)
    assert (status, kind) == (200, "application/json") and json.loads(text)["model"] == MODEL
    status, kind, text = get(f"{base}/models/{MODEL}", {**auth, "Accept": "text/html"})
    assert status == 200 and kind.startswith("text/html") and "<svg" in text
    status, kind, text = get(f"{base}/", auth)  # the models list, as JSON for a client
    assert (status, kind) == (200, "application/json")
    listed = {m["model"]: m for m in json.loads(text)["models"]}
    assert listed[MODEL]["last_decision"]["decision_id"] == decisions[0]["decision_id"]
    status, _, text = get(f"{base}/models/{MODEL}", {"Accept": "text/html"})
    assert status == 401 and "token" in json.loads(text)["error"]
    status, _, text = get(f"{base}/models/{MODEL}?from=2020-01-01", {**auth, "Accept": "text/html"})
    assert status == 400 and json.loads(text)["field"] == "from"

    with chromium(tmp_path / "profile") as browser:
        browser.load(f"{base}/?token={TOKEN}")  # the login: a cookie, then the models list
        assert browser.evaluate("location.search") == ""
        assert browser.evaluate(f"document.querySelector('tr[data-model=\"{MODEL}\"] a')"
                                ".getAttribute('href')") == f"/models/{MODEL}"
        in_flight = browser.evaluate(f"document.querySelector('tr[data-model=\"{MODEL}\"]')"
                                     ".cells[2].textContent")
        assert in_flight.startswith("rt-") and "(launched)" in in_flight or "(running)" in in_flight

        browser.load(f"{base}/models/{MODEL}?{period}")
        assert browser.status_of(f"{base}/models/{MODEL}") == 200

        def ids(mark: str) -> set[str]:
            found = browser.evaluate(
                f"[...document.querySelectorAll('[data-mark={mark}]')]"
                ".map(e => e.dataset.decision)")
            assert len(found) == len(set(found)), f"a {mark} decision is marked twice"
            return set(found)

        assert ids("trigger") == fired
        assert ids("promotion") == promoted
        assert ids("suppressed") == suppressed
        assert len(ids("rejected")) == OUTCOMES.count("rejected")
        reasons = browser.evaluate(
            "[...document.querySelectorAll('[data-mark=trigger] title')].map(t => t.textContent)")
        by_id = {d["decision_id"]: d["reason"] for d in decisions}
        assert all(any(by_id[i] in r for r in reasons) for i in fired)
        assert browser.evaluate("document.querySelectorAll('svg.chart[data-metric]').length") == 2
        assert browser.evaluate("[...document.querySelectorAll('.guide')]"
                                ".map(g => g.dataset.policy).sort().join()").count(",") >= 3
        next_fire = browser.evaluate("[...document.querySelectorAll('td.next-fire')]"
                                     ".map(t => t.textContent)")
        assert len(next_fire) == 4 and all(next_fire)
        shot = Path(os.environ.get("RETRAIN_PAGE_SCREENSHOT") or tmp_path / "page.png")
        browser.screenshot(shot)
        assert shot.stat().st_size > 20_000
        assert browser.errors == [], browser.errors
