"""End to end with shared Firestore state: Pub/Sub emulator → one push subscription → a
round-robin proxy → TWO `retrain-trigger serve` processes on one Firestore emulator, launching on
a fake Vertex server whose first create answers 503. Exactly one run per degradation.

Why a proxy: a push subscription has one endpoint, and two subscriptions on one topic would
deliver every message twice (once per subscription), which is not how one function scaled to
two instances receives them. The proxy stands in for Cloud Run's load balancer: each delivery
goes to one instance, alternating; a redelivery goes to the instance that did NOT handle the
previous attempt, so a claim left behind by one instance is finished by the other.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import vertex_ready_template
from tests.fakes.vertex_server import FakeVertexServer
from tests.support import fixtures
from tests.support.emulators import FirestoreEmulator, PubSubEmulator
from tests.support.serve import serve_process
from tests.test_e2e_pubsub import POLICIES as E2E_POLICIES
from tests.test_service import DEGRADING, FIRST_FIRE
from triggers.state.firestore import FirestoreStore

firestore_emulator = fixtures.firestore_emulator  # the session emulator (shared) and
firestore_env = fixtures.firestore_env  # its per-test reset with the environment set

POLICIES = E2E_POLICIES + """\
  churn:
    pipeline:
      template: %(template)s
      pipeline_root: gs://retrain-test/root
    policies:
      - {name: logloss-ceiling, metric: logloss, direction: lower_is_better,
         absolute: {threshold: 0.30}}
"""
CHURN = [0.20, 0.22, 0.35, 0.40, 0.41]  # breaches from index 2 on: one degradation


@dataclass(frozen=True)
class Forwarded:
    message_id: str
    upstream: int
    status: int


class RoundRobinProxy:
    """One push endpoint in front of several servers: each request goes to one of them."""

    def __init__(self, upstreams: list[str]) -> None:
        self.upstreams = [u.removeprefix("http://") for u in upstreams]
        self.log: list[Forwarded] = []
        self._turn = itertools.cycle(range(len(upstreams)))
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, answer = owner.forward(self.path, body, dict(self.headers))
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def choose(self, message_id: str) -> int:
        with self._lock:
            earlier = [f.upstream for f in self.log if f.message_id == message_id]
            if earlier:  # a redelivery: the other instance
                return (earlier[-1] + 1) % len(self.upstreams)
            return next(self._turn)

    def forward(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        message_id = json.loads(body)["message"]["messageId"]
        upstream = self.choose(message_id)
        host, port = self.upstreams[upstream].split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            conn.request("POST", path, body, {"Content-Type": headers.get(
                "Content-Type", "application/json")})
            response = conn.getresponse()
            status, answer = response.status, response.read()
        except OSError as exc:
            status, answer = 502, str(exc).encode()
        finally:
            conn.close()
        with self._lock:
            self.log.append(Forwarded(message_id, upstream, status))
        return status, answer

    def __enter__(self) -> RoundRobinProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def vertex() -> Iterator[FakeVertexServer]:
    with FakeVertexServer() as server:
        yield server


@pytest.fixture
def two_instances(
    tmp_path: Path, vertex: FakeVertexServer, firestore_env: FirestoreEmulator
) -> Iterator[list[str]]:
    policy = tmp_path / "policies.yaml"
    policy.write_text(POLICIES % {"template": vertex_ready_template(tmp_path)})
    env = dict(
        RETRAIN_POLICY_FILE=str(policy), RETRAIN_STATE="firestore://",
        RETRAIN_LAUNCHER="vertex", RETRAIN_VERTEX_ENDPOINT=vertex.endpoint,
        RETRAIN_LOCATION="us-central1", RETRAIN_MANUAL_TOKEN="e2e-token",
        **firestore_env.env(),  # FIRESTORE_EMULATOR_HOST and GOOGLE_CLOUD_PROJECT
    )
    with contextlib.ExitStack() as stack:
        bases = []
        for name in ("instance-a", "instance-b"):
            workdir = tmp_path / name
            workdir.mkdir()
            bases.append(stack.enter_context(serve_process(workdir, env, workers=1, threads=4)))
        yield bases


def test_two_instances_one_firestore_one_run_per_degradation(
    pubsub_emulator: PubSubEmulator, unique_name: Any, vertex: FakeVertexServer,
    firestore_env: FirestoreEmulator, two_instances: list[str],
) -> None:
    store = FirestoreStore(project=firestore_env.project)
    with RoundRobinProxy(two_instances) as proxy:
        topic = pubsub_emulator.create_topic(unique_name("metrics"))
        pubsub_emulator.create_push_subscription(
            unique_name("push"), topic, f"{proxy.url}/pubsub/metrics")
        vertex.fail_next(1, 503)  # the first create fails: 5xx, and Pub/Sub redelivers

        # Everything at once, both models interleaved: the two instances handle breaching
        # events of one model concurrently.
        events = [("fraud-detector", "accuracy", v, day) for day, v in enumerate(DEGRADING)]
        events += [("churn", "logloss", v, day) for day, v in enumerate(CHURN)]
        futures = [
            pubsub_emulator.publisher.publish(topic, json.dumps({
                "model": model, "model_version": "7", "metrics": {metric: value},
                "window_end": f"2026-11-{day + 1:02d}T00:00:00Z", "examples": 1000,
            }).encode(), model=model)
            for model, metric, value, day in sorted(events, key=lambda e: (e[3], e[0]))
        ]
        message_ids = [f.result(timeout=30) for f in futures]

        deadline = time.monotonic() + 60
        while not (all(store.is_processed(m) for m in message_ids) and len(vertex.created) == 2):
            assert time.monotonic() < deadline, (
                f"processed {sum(map(store.is_processed, message_ids))}/{len(message_ids)}, "
                f"created {sorted(vertex.created)}, proxy {proxy.log}")
            time.sleep(0.2)
        time.sleep(1.5)  # anything still in flight (a late duplicate) has had time to land
        log = list(proxy.log)

    # one run per degradation, created once on Vertex, recorded once in Firestore
    assert len(vertex.created) == 2
    labels = sorted(body["labels"]["model"] for body in vertex.created.values())
    assert labels == ["churn", "fraud-detector"]
    for model in ("fraud-detector", "churn"):
        runs = store.runs(model)
        assert len(runs) == 1 and runs[0].run_id in vertex.created, runs
        assert runs[0].state in ("launched", "running"), runs[0]
        trail = store.decisions(model, limit=200)
        assert [d.kind for d in trail].count("fired") == 1, [
            (d.kind, d.event_time, d.reason[:60]) for d in trail]
    # Firestore has no lock around record + evaluate + claim: when the deliveries of the
    # first breaching points race on two instances, either may win the one claim, so the run
    # belongs to the first point that fires in order or to one after it (still one run).
    fired = [d for d in store.decisions("fraud-detector", limit=200) if d.kind == "fired"]
    points = store.points("fraud-detector", "overall", "accuracy")
    assert fired[0].event_time in [p.window_end for p in points[FIRST_FIRE:]], fired[0]

    # the 503: its delivery failed on one instance and was finished by the other
    failed = [f for f in log if f.status >= 500]
    assert len(failed) == 1, log
    retried = [f for f in log if f.message_id == failed[0].message_id and f.status < 300]
    assert retried and retried[0].upstream != failed[0].upstream, log
    assert vertex.create_calls >= 3  # the failed create, its resubmission, the other run
    # both instances took deliveries; every message was acknowledged
    assert {f.upstream for f in log if f.status < 300} == {0, 1}
    assert {f.message_id for f in log if f.status < 300} == set(message_ids)
    store.close()
