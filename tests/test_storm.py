"""The storm, short: thousands of pushed events (redelivered, out of order, malformed) on every
store through the real service, then the store is checked: nothing lost, nothing twice.

Full size: `python bench/storm.py` (20,000 events, 50 models).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipeline_client.launching.protocol import FakeLauncher
from tests.conftest import EXAMPLE_TEMPLATE, vertex_ready_template
from tests.fakes.vertex_server import FakeVertexServer
from tests.support.emulators import FirestoreEmulator
from tests.support.serve import serve_process
from tests.support.storm import (
    RunFinisher,
    StormPlan,
    StormReport,
    check_launcher_timeline,
    check_store,
    figures,
    model_name,
    policy_yaml,
    storm,
)
from triggers.config import load_policy_file
from triggers.events import Delivery
from triggers.service import RetrainService
from triggers.state.memory import MemoryStore
from triggers.state.sqlite import SQLiteStore

SHORT = int(os.environ.get("RETRAIN_STORM_EVENTS", "2000"))


def vertex_env(tmp_path: Path, vertex: FakeVertexServer, models: int, state: str) -> dict[str, str]:
    policy = tmp_path / "policies.yaml"
    policy.write_text(policy_yaml(models, str(vertex_ready_template(tmp_path))))
    return dict(
        RETRAIN_POLICY_FILE=str(policy), RETRAIN_STATE=state, RETRAIN_LAUNCHER="vertex",
        RETRAIN_VERTEX_ENDPOINT=vertex.endpoint, GOOGLE_CLOUD_PROJECT="test-project",
        RETRAIN_LOCATION="us-central1", RETRAIN_MANUAL_TOKEN="storm-token",
    )


@pytest.fixture
def vertex() -> Iterator[FakeVertexServer]:
    with FakeVertexServer() as server:
        yield server


def test_storm_on_sqlite_through_serve(tmp_path: Path, vertex: FakeVertexServer) -> None:
    """2 workers × 4 threads on one SQLite file; runs end while the storm goes on, so models
    are re-launched: each run once, never two of a model in flight, nothing lost."""
    models = 10
    plan = StormPlan.build(models, SHORT, seed=11)
    env = vertex_env(tmp_path, vertex, models, f"sqlite:///{tmp_path}/state.db")
    with serve_process(tmp_path, env, workers=2, threads=4) as base:
        with RunFinisher(base, vertex, after=0.3) as finisher:
            report = storm(base, plan, threads=12)
        finisher.finish_due(everything=True)
    check = check_store(SQLiteStore(tmp_path / "state.db"), plan,
                        [model_name(i) for i in range(models)], vertex_jobs=vertex.jobs)
    print(figures(plan, report, check))
    assert finisher.failures == []
    assert check.problems == []
    assert check_launcher_timeline(vertex.jobs) == []
    assert check.points == len(plan.valid) and check.lost == 0 and check.duplicates == 0
    assert check.rejected == plan.malformed
    assert check.runs > models, "runs ended mid-storm should have let models retrain again"
    assert check.suppressed > 0


def test_storm_on_memory_store_in_process() -> None:
    """The same storm straight into one service on MemoryStore from 8 threads at once."""
    models = 5
    plan = StormPlan.build(models, SHORT // 2, seed=12)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        policy = Path(tmp) / "policies.yaml"
        policy.write_text(policy_yaml(models, str(EXAMPLE_TEMPLATE)))
        store = MemoryStore()
        launcher = FakeLauncher()
        service = RetrainService(load_policy_file(str(policy)), store, launcher)
        lock = threading.Lock()
        results: list[str] = []

        def deliver(index: int) -> None:
            message = plan.messages[index]
            result = service.handle_delivery(Delivery(message.message_id, message.data, "pubsub"))
            with lock:
                results.append(result.status)

        started = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(deliver, plan.deliveries))
        report = StormReport(deliveries=len(results), acked=len(results),
                             elapsed=time.perf_counter() - started)
    check = check_store(store, plan, [model_name(i) for i in range(models)],
                        vertex_jobs=list(launcher.runs))
    print(figures(plan, report, check))
    assert check.problems == []
    assert check.lost == 0 and check.duplicates == 0 and check.rejected == plan.malformed
    assert check.runs == models  # nothing ends the runs here: one per model, the rest suppressed


@pytest.fixture()
def own_firestore_emulator() -> Iterator[FirestoreEmulator]:
    """A Firestore emulator of this storm's own. On the session's shared one, after the
    other Firestore suites (fault injection, cut connections, abandoned transactions), every
    claim's commit of this storm waited out its timeout in a full run — while the storm
    alone passed in 20–30 s; a fresh emulator holds no one else's locks."""
    emulator = FirestoreEmulator()
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()


def test_storm_on_firestore_two_workers(
    tmp_path: Path, vertex: FakeVertexServer, own_firestore_emulator: FirestoreEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two serve workers on the Firestore emulator (slower per event: a shorter storm)."""
    firestore_emulator = own_firestore_emulator
    models = 4
    plan = StormPlan.build(models, max(100, SHORT // 10), seed=13)
    env = {**vertex_env(tmp_path, vertex, models, "firestore://?timeout=20s"),
           **firestore_emulator.env()}
    with serve_process(tmp_path, env, workers=2, threads=4) as base:
        with RunFinisher(base, vertex, after=2.0) as finisher:
            report = storm(base, plan, threads=8)
        finisher.finish_due(everything=True)
    for key, value in firestore_emulator.env().items():
        monkeypatch.setenv(key, value)
    from triggers.state.firestore import FirestoreStore

    store = FirestoreStore(project=firestore_emulator.env()["GOOGLE_CLOUD_PROJECT"])
    check = check_store(store, plan, [model_name(i) for i in range(models)],
                        vertex_jobs=vertex.jobs)
    print(figures(plan, report, check))
    assert finisher.failures == []  # an outcome delivery answered 5xx for its whole deadline
    assert check.problems == []
    assert check_launcher_timeline(vertex.jobs) == []
    assert check.lost == 0 and check.duplicates == 0 and check.rejected == plan.malformed


def test_storm_with_the_local_launcher(tmp_path: Path) -> None:
    """The laptop set-up under a short storm: real kfp.local runs in detached children, whose
    outcomes re-arm the policies; every run has one run directory and one fired decision."""
    models = 2
    plan = StormPlan.build(models, max(100, SHORT // 10), seed=14)
    policy = tmp_path / "policies.yaml"
    policy.write_text(policy_yaml(models, str(EXAMPLE_TEMPLATE), cloud=False))
    db = tmp_path / "state.db"
    env = dict(RETRAIN_POLICY_FILE=str(policy), RETRAIN_STATE=f"sqlite:///{db}",
               RETRAIN_LAUNCHER="local", RETRAIN_MANUAL_TOKEN="storm-token")
    with serve_process(tmp_path, env, workers=2, threads=2) as base:
        report = storm(base, plan, threads=6)
        store = SQLiteStore(db)
        deadline = time.monotonic() + 180
        while store.in_flight_runs() and time.monotonic() < deadline:
            time.sleep(0.5)
    assert not store.in_flight_runs(), "local runs never reported their outcome"
    check = check_store(store, plan, [model_name(i) for i in range(models)])
    print(figures(plan, report, check))
    assert check.problems == []
    assert check.lost == 0 and check.duplicates == 0 and check.rejected == plan.malformed
    run_dirs = {p.name for p in (tmp_path / "runs").iterdir() if p.is_dir()}
    assert run_dirs == {r.run_id for r in store.runs(limit=1000)} and run_dirs
