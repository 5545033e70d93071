"""Storms under faults: Vertex failing at random, the store locked or unreachable for a while,
the server SIGKILLed mid-storm and restarted. Redeliveries must end with each decision launched
exactly once and nothing lost; each test counts the faults it survived."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.vertex_server import Chaos, FakeVertexServer
from tests.support.emulators import FirestoreEmulator
from tests.support.fixtures import firestore_emulator  # noqa: F401
from tests.support.serve import ServeProcess, served
from tests.support.storm import (
    BackgroundStorm,
    RunFinisher,
    StormPlan,
    StormReport,
    check_launcher_timeline,
    check_store,
    figures,
    hold_sqlite_lock,
    model_name,
    storm,
)
from tests.support.tcp_proxy import TcpProxy
from tests.test_storm import vertex_env
from triggers.state.protocol import StateStore
from triggers.state.sqlite import SQLiteStore

EVENTS = int(os.environ.get("RETRAIN_STORM_EVENTS", "2000")) // 2
MODELS = 5


@pytest.fixture
def vertex() -> Iterator[FakeVertexServer]:
    with FakeVertexServer() as server:
        yield server


def run_checks(store: StateStore, plan: StormPlan, vertex: FakeVertexServer,
               report: StormReport) -> None:
    check = check_store(store, plan, [model_name(i) for i in range(MODELS)],
                        vertex_jobs=vertex.jobs)
    print(figures(plan, report, check))
    assert check.problems == []
    assert check_launcher_timeline(vertex.jobs) == []
    assert check.lost == 0 and check.duplicates == 0 and check.rejected == plan.malformed
    assert check.runs > 0


def test_vertex_failing_at_random(tmp_path: Path, vertex: FakeVertexServer) -> None:
    """20 % of Vertex calls answer 503, time out (the job was created; the answer never comes)
    or close the connection after creating the job. Retries resubmit the same run id."""
    vertex.chaos = Chaos(rate=0.2, seed=2, delay=2.0)  # creates #2 and #4 fail, for certain
    plan = StormPlan.build(MODELS, EVENTS, seed=21)
    env = {**vertex_env(tmp_path, vertex, MODELS, f"sqlite:///{tmp_path}/state.db"),
           "RETRAIN_VERTEX_TIMEOUT": "1s"}
    with served(tmp_path, env, workers=2, threads=4) as server:
        with RunFinisher(server.base, vertex, after=0.3) as finisher:
            report = storm(server.base, plan, threads=12)
        finisher.finish_due(everything=True)
    injected = vertex.chaos.injected
    print(f"survived Vertex faults: {injected} ({vertex.chaos.by_op} by call) in "
          f"{vertex.chaos.calls} calls; "
          f"{report.retries} redeliveries")
    assert vertex.chaos.by_op.get("create", 0) >= 2 and report.retries > 0
    run_checks(SQLiteStore(tmp_path / "state.db"), plan, vertex, report)


def test_sqlite_locked_for_a_while(tmp_path: Path, vertex: FakeVertexServer) -> None:
    """Mid-storm the state file is locked for 3 s, longer than the store's 0.5 s wait: events
    are answered 5xx, redelivered, and nothing is lost or launched twice."""
    plan = StormPlan.build(MODELS, EVENTS, seed=22)
    db = tmp_path / "state.db"
    env = vertex_env(tmp_path, vertex, MODELS, f"sqlite:///{db}?timeout=0.5s")
    with served(tmp_path, env, workers=2, threads=4) as server:
        with RunFinisher(server.base, vertex, after=0.3) as finisher:
            running = BackgroundStorm(server.base, plan)
            running.when_acked(len(plan.deliveries) // 3)
            hold_sqlite_lock(db, 3.0)
            report = running.result()
        finisher.finish_due(everything=True)
    failed = sum(n for status, n in report.statuses.items() if status.startswith("5"))
    print(f"survived a 3 s lock: {failed} deliveries answered 5xx and redelivered")
    assert failed > 0
    run_checks(SQLiteStore(db), plan, vertex, report)


def test_firestore_unreachable_for_a_while(
    tmp_path: Path, vertex: FakeVertexServer, firestore_emulator: FirestoreEmulator,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Mid-storm every connection to Firestore is cut and refused for 3 s."""
    firestore_emulator.reset()
    plan = StormPlan.build(MODELS, max(100, EVENTS // 10), seed=23)
    host, port = firestore_emulator.host.rsplit(":", 1)
    with TcpProxy(host, int(port)) as proxy:
        env = {**vertex_env(tmp_path, vertex, MODELS, "firestore://?timeout=3s"),
               **firestore_emulator.env(), "FIRESTORE_EMULATOR_HOST": proxy.host}
        with served(tmp_path, env, workers=2, threads=2) as server:
            with RunFinisher(server.base, vertex, after=2.0) as finisher:
                running = BackgroundStorm(server.base, plan, threads=4)
                running.when_acked(len(plan.deliveries) // 3)
                proxy.down()
                time.sleep(3.0)
                proxy.up()
                report = running.result()
            finisher.finish_due(everything=True)
            time.sleep(1.0)  # outcomes of the last runs
    for key, value in firestore_emulator.env().items():
        monkeypatch.setenv(key, value)
    from triggers.state.firestore import FirestoreStore

    failed = sum(n for status, n in report.statuses.items() if not status.startswith("2"))
    print(f"survived a 3 s Firestore outage: {failed} deliveries failed and were redelivered, "
          f"{proxy.refused} connections refused")
    assert failed > 0
    store = FirestoreStore(project=firestore_emulator.env()["GOOGLE_CLOUD_PROJECT"])
    run_checks(store, plan, vertex, report)


def test_server_killed_mid_storm_and_restarted(tmp_path: Path, vertex: FakeVertexServer) -> None:
    """SIGKILL to the server's whole process group twice mid-storm; it restarts on the same
    address and the redeliveries finish the work: every claim left half-done is resumed."""
    plan = StormPlan.build(MODELS, EVENTS, seed=24)
    db = tmp_path / "state.db"
    env = vertex_env(tmp_path, vertex, MODELS, f"sqlite:///{db}")
    server = ServeProcess(tmp_path, env, workers=2, threads=4)
    server.start()
    kills = 0
    try:
        with RunFinisher(server.base, vertex, after=0.3) as finisher:
            running = BackgroundStorm(server.base, plan)
            for share in (1 / 3, 2 / 3):
                running.when_acked(int(len(plan.deliveries) * share))
                server.kill()
                kills += 1
                time.sleep(0.5)
                server.start()
            report = running.result()
        finisher.finish_due(everything=True)
    finally:
        server.stop()
    failed = sum(n for status, n in report.statuses.items() if not status.startswith("2"))
    print(f"survived {kills} SIGKILLs: {failed} deliveries failed and were redelivered")
    assert kills == 2 and failed > 0
    run_checks(SQLiteStore(db), plan, vertex, report)

