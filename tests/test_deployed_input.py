"""Hostile input against the functions as deployed: each one under a real `functions-framework
--target ... --source main.py --signature-type cloudevent` process, fed structured CloudEvents
over HTTP, state read back from the real store (SQLite file or the Firestore emulator).

Project issue 12: a future `window_end` blinding a champion, an outcome no store can hold
redelivered forever, state growing with unwatched metrics and slices, rejected events never
expiring on SQLite.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pipeline_client.launching.protocol import FakeLauncher
from tests.conftest import EXAMPLE_TEMPLATE, FIXTURES, POLICY_YAML, ROOT, Clock, policy_config
from tests.support import fixtures
from tests.support.emulators import FirestoreEmulator, free_port
from triggers.config import ServiceConfig
from triggers.errors import PolicyConfigError
from triggers.events import Delivery
from triggers.service import RetrainService
from triggers.state.memory import MemoryStore
from triggers.state.protocol import RejectedEvent, StateStore, StoredPoint
from triggers.state.sqlite import SQLiteStore

firestore_emulator = fixtures.firestore_emulator
firestore_env = fixtures.firestore_env

MAIN = ROOT / "main.py"
FUNCTIONS_FRAMEWORK = str(Path(sys.executable).with_name("functions-framework"))
"""The console script Cloud Functions runs, from this interpreter's environment."""
LONE = "\\ud800"
"""A lone surrogate as JSON writes it: valid JSON, not valid UTF-8 text."""


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class Function:
    """One deployed function: `functions-framework` in its own process group on a free port."""

    def __init__(self, target: str, workdir: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = workdir / f"{target}.log"
        self._out = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [FUNCTIONS_FRAMEWORK, "--target", target, "--source", str(MAIN),
             "--signature-type", "cloudevent", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=workdir, stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(self.url, timeout=1).close()
            except urllib.error.HTTPError:
                return  # answering (a GET is no CloudEvent)
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"functions-framework did not start:\n"
                                       f"{self.log.read_text()}") from None
                time.sleep(0.1)
            else:
                return

    def post(self, payload: bytes | str, message_id: str) -> int:
        """Deliver `payload` as Eventarc does (a structured Pub/Sub CloudEvent); the status."""
        raw = payload.encode() if isinstance(payload, str) else payload
        ce = json.loads((FIXTURES / "cloudevent_metric.json").read_text())
        ce["id"] = ce["data"]["message"]["messageId"] = message_id
        ce["data"]["message"]["data"] = base64.b64encode(raw).decode()
        request = urllib.request.Request(
            self.url, data=json.dumps(ce).encode(), method="POST",
            headers={"Content-Type": "application/cloudevents+json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._out.close()


class Deployment:
    """A policy file, a state URL and the functions started on them (stopped at the end)."""

    def __init__(self, workdir: Path, state: str, extra_env: dict[str, str] | None = None,
                 policy_yaml: str = POLICY_YAML) -> None:
        self.workdir = workdir
        self.policy = workdir / "policies.yaml"
        self.policy.write_text(policy_yaml % {"template": EXAMPLE_TEMPLATE})
        self.env = {"RETRAIN_POLICY_FILE": str(self.policy), "RETRAIN_STATE": state,
                    "RETRAIN_LAUNCHER": "local", **(extra_env or {})}
        self.functions: list[Function] = []

    def start(self, target: str) -> Function:
        function = Function(target, self.workdir, self.env)
        self.functions.append(function)
        return function

    def stop(self) -> None:
        for function in self.functions:
            function.stop()


@pytest.fixture
def sqlite_deployment(tmp_path: Path) -> Iterator[tuple[Deployment, SQLiteStore]]:
    db = tmp_path / "state.db"
    deployment = Deployment(tmp_path, f"sqlite:///{db}")
    store = SQLiteStore(db)
    try:
        yield deployment, store
    finally:
        deployment.stop()
        store.close()


def event(**changes: Any) -> dict[str, Any]:
    """A valid event of the configured model, an hour old, with `changes`."""
    data: dict[str, Any] = {"model": "fraud-detector", "model_version": "7",
                            "metrics": {"accuracy": 0.97},
                            "window_end": iso(datetime.now(UTC) - timedelta(hours=1)),
                            "examples": 1000}
    data.update(changes)
    return data


def seed_run_in_flight(store: StateStore) -> str:
    """A retraining run launched (by a fake launcher) and still in flight; its id."""
    service = RetrainService(policy_config(), store, FakeLauncher())
    answer = service.request_retrain("fraud-detector", "seeded by the test")
    assert answer.status == "fired", answer
    return str(answer.run_id)


# ---------------------------------------------------------------- 1. future window_end
def test_a_future_window_end_is_a_recorded_permanent_rejection(
    sqlite_deployment: tuple[Deployment, SQLiteStore],
) -> None:
    deployment, store = sqlite_deployment
    function = deployment.start("on_metric_event")
    a_year_ahead = datetime.now(UTC) + timedelta(days=365)
    assert function.post(json.dumps(event(window_end=iso(a_year_ahead))), "future-1") == 200
    assert function.post(json.dumps(event(window_end=iso(a_year_ahead))), "future-1") == 200
    rejected = store.rejected_events()
    assert [(r.message_id, r.field) for r in rejected] == [("future-1", "window_end")]
    reason = rejected[0].reason
    assert iso(a_year_ahead).removesuffix("Z") in reason and "max_clock_skew (1h)" in reason
    assert store.latest_points("fraud-detector", 10) == []
    # within the allowed skew (clocks differ a little) is accepted
    soon = datetime.now(UTC) + timedelta(minutes=20)
    assert function.post(json.dumps(event(window_end=iso(soon))), "skewed-1") == 200
    assert [p.message_id for p in store.latest_points("fraud-detector", 10)] == ["skewed-1"]


def test_a_future_event_no_longer_blinds_the_next_champion(
    sqlite_deployment: tuple[Deployment, SQLiteStore],
) -> None:
    """The attack: a year-ahead evaluation, then a promotion: the new champion's history
    started a year ahead and its breaching points were never judged."""
    deployment, store = sqlite_deployment
    metrics = deployment.start("on_metric_event")
    outcomes = deployment.start("on_run_outcome")
    now = datetime.now(UTC)
    assert metrics.post(json.dumps(event(window_end=iso(now - timedelta(days=2)))), "m-1") == 200
    typo = json.dumps(event(model_version=None, window_end=iso(now + timedelta(days=365))))
    assert metrics.post(typo, "typo") == 200
    run_id = seed_run_in_flight(store)
    promoted = {"model": "fraud-detector", "run_id": run_id, "decision": "promoted",
                "champion_version": "8"}
    assert outcomes.post(json.dumps(promoted), "outcome-1") == 200
    state = store.model_state("fraud-detector")
    assert state.champion_version == "8"
    assert state.history_start is not None and state.history_start <= time.time()
    # five breaching evaluations of the new champion: the floor fires (cooldown holds it)
    for i in range(5):
        end = now - timedelta(hours=5 - i)
        assert metrics.post(json.dumps(event(model_version="8", metrics={"accuracy": 0.5},
                                             window_end=iso(end))), f"v8-{i}") == 200
    verdicts = [d for d in store.decisions("fraud-detector", limit=100)
                if d.message_id == "v8-4" and d.policy == "accuracy-floor"]
    assert [d.kind for d in verdicts] == ["suppressed"], [d.reason for d in verdicts]
    assert "5 of the latest 5" in verdicts[0].reason


@pytest.mark.parametrize("make_store", [MemoryStore, lambda: SQLiteStore(":memory:")],
                         ids=["memory", "sqlite"])
def test_a_champion_history_never_starts_in_the_future(make_store: Any) -> None:
    """A future point already stored (before the check existed): a promotion and a rollback
    start the champion's history at their own time, not after that point."""
    store, clock = make_store(), Clock()
    service = RetrainService(policy_config(), store, FakeLauncher(), clock=clock)
    future = clock() + 365 * 86400
    store.record_points([StoredPoint("fraud-detector", "overall", "accuracy", future, 0.9,
                                     1000, "7", "old", clock())])
    run_id = seed_run_in_flight_at(service)
    service.apply_outcome({"model": "fraud-detector", "run_id": run_id, "decision": "promoted",
                           "champion_version": "8"}, clock(), via="test")
    assert store.model_state("fraud-detector").history_start == clock()
    clock.advance(hours=1)
    service.record_rollback("fraud-detector", "6", "8", "test")
    assert store.model_state("fraud-detector").history_start == clock()


def seed_run_in_flight_at(service: RetrainService) -> str:
    answer = service.request_retrain("fraud-detector", "seeded by the test")
    return str(answer.run_id)


def test_max_clock_skew_is_set_in_defaults() -> None:
    config = policy_config(POLICY_YAML.replace("defaults:\n", "defaults:\n  max_clock_skew: 5m\n"))
    assert config.max_clock_skew == timedelta(minutes=5)
    assert policy_config().max_clock_skew == timedelta(hours=1)
    store, clock = MemoryStore(), Clock()
    service = RetrainService(config, store, FakeLauncher(), clock=clock)
    ahead = datetime.fromtimestamp(clock() + 600, UTC)
    result = service.handle_delivery(Delivery("m", json.dumps(event(
        window_end=iso(ahead))).encode(), "pubsub"))
    assert result.status == "rejected" and result.error is not None
    assert result.error.field == "window_end" and "max_clock_skew (5m)" in result.error.reason


# ---------------------------------------------------------------- 2. text no store can hold
def outcome_text(run_id: str, summary: str) -> str:
    """An outcome message as JSON text (the lone surrogate stays an escape)."""
    return json.dumps({"model": "fraud-detector", "run_id": run_id, "decision": "rejected",
                       "report": {"summary": summary, "notes": ["ok", "LONE"]}}).replace(
        "LONE", LONE)


def check_sanitised_outcome_ends_the_run(function: Function, store: StateStore) -> None:
    run_id = seed_run_in_flight(store)
    body = outcome_text(run_id, "challenger lost LONE")
    for _ in range(3):  # the first delivery ends the run; redeliveries are duplicates
        assert function.post(body, "outcome-bad") == 200
    run = store.get_run(run_id)
    assert run is not None and run.state == "rejected" and run.outcome is not None
    assert run.outcome["report"] == {"summary": "challenger lost \ufffd",
                                     "notes": ["ok", "\ufffd"]}
    assert store.is_processed("outcome-bad")
    ended = [d for d in store.decisions("fraud-detector") if d.kind == "rejected_challenger"]
    assert len(ended) == 1
    assert "report sanitised" in ended[0].reason and "report.summary" in ended[0].reason
    assert ended[0].details["sanitised"] == ["report.notes.1", "report.summary"]
    # a lone surrogate where the run is named: rejected naming the field, acknowledged
    bad_id = json.dumps({"model": "fraud-detector", "run_id": "LONE", "decision": "failed"})
    bad_id = bad_id.replace("LONE", LONE)
    assert function.post(bad_id, "outcome-bad-id") == 200
    assert ("outcome-bad-id", "run_id") in {(r.message_id, r.field)
                                            for r in store.rejected_events()}
    assert store.is_processed("outcome-bad-id")


def test_an_outcome_with_a_lone_surrogate_ends_the_run_sqlite(
    sqlite_deployment: tuple[Deployment, SQLiteStore],
) -> None:
    deployment, store = sqlite_deployment
    check_sanitised_outcome_ends_the_run(deployment.start("on_run_outcome"), store)


def test_an_outcome_with_a_lone_surrogate_ends_the_run_firestore(
    tmp_path: Path, firestore_env: FirestoreEmulator,
) -> None:
    from triggers.state.firestore import FirestoreStore

    deployment = Deployment(tmp_path, "firestore://", firestore_env.env())
    store = FirestoreStore(project=firestore_env.project)
    try:
        check_sanitised_outcome_ends_the_run(deployment.start("on_run_outcome"), store)
    finally:
        deployment.stop()


def test_an_outcome_with_a_lone_surrogate_ends_the_run_memory() -> None:
    store = MemoryStore()
    service = RetrainService(policy_config(), store, FakeLauncher(), clock=Clock())
    run_id = seed_run_in_flight_at(service)
    result = service.handle_outcome_delivery(
        Delivery("o-1", outcome_text(run_id, "LONE").encode(), "pubsub"))
    assert result.status == "recorded"
    run = store.get_run(run_id)
    assert run is not None and run.state == "rejected"
    assert "\ud800" not in json.dumps(run.outcome, ensure_ascii=False, default=str)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ('{"model": "fraud-detector%s", "metrics": {"accuracy": 0.9}, "window_end": "%s"}',
         "model"),
        ('{"model": "fraud-detector", "slice": "eu%s", "metrics": {"accuracy": 0.9},'
         ' "window_end": "%s"}', "slice"),
        ('{"model": "fraud-detector", "metrics": {"acc%s": 0.9}, "window_end": "%s"}',
         "metrics.acc\ufffd"),
    ],
    ids=["model", "slice", "metric-name"],
)
def test_metric_events_with_a_lone_surrogate_are_rejected_naming_the_field(
    sqlite_deployment: tuple[Deployment, SQLiteStore], raw: str, field: str,
) -> None:
    deployment, store = sqlite_deployment
    function = deployment.start("on_metric_event")
    body = raw % (LONE, iso(datetime.now(UTC) - timedelta(hours=1)))
    assert function.post(body, "surrogate-1") == 200
    assert function.post(body, "surrogate-1") == 200
    rejected = store.rejected_events()
    assert [(r.message_id, r.field) for r in rejected] == [("surrogate-1", field)]
    assert "lone UTF-16 surrogate" in rejected[0].reason
    assert store.latest_points("fraud-detector", 10) == []


# ---------------------------------------------------------------- 3. bounded state
def test_only_watched_metrics_and_slices_are_stored(
    sqlite_deployment: tuple[Deployment, SQLiteStore],
) -> None:
    deployment, store = sqlite_deployment
    function = deployment.start("on_metric_event")
    wide = {f"metric_{i}": 0.5 for i in range(99)}
    assert function.post(json.dumps(event(slice="new-slice-1", metrics={
        "accuracy": 0.9, **wide})), "wide-1") == 200
    assert function.post(json.dumps(event(metrics={"accuracy": 0.9, **wide})), "wide-2") == 200
    points = store.latest_points("fraud-detector", 1000)
    assert [(p.slice, p.metric, p.message_id) for p in points] == [
        ("overall", "accuracy", "wide-2")]
    assert store.ignored_metrics("wide-1") == 100
    assert store.ignored_metrics("wide-2") == 99
    assert store.rejected_events() == []


def test_max_slices_bounds_the_slices_a_model_watches() -> None:
    policies = "\n".join(
        f"      - {{name: floor-{i}, metric: accuracy, direction: higher_is_better, "
        f"slice: s{i}, absolute: {{threshold: 0.9}}}}" for i in range(3))
    text = f"""
defaults:
  max_slices: 2
models:
  m:
    pipeline: {{template: %(template)s}}
    policies:
{policies}
"""
    with pytest.raises(PolicyConfigError) as caught:
        policy_config(text)
    assert caught.value.field == "models.m.policies"
    assert "3 slices" in caught.value.reason
    assert "defaults.max_slices allows 2" in caught.value.reason
    assert policy_config(text.replace("max_slices: 2", "max_slices: 3")).max_slices == 3
    assert isinstance(policy_config(), ServiceConfig) and policy_config().max_slices == 100


def test_old_rejected_events_expire_on_sqlite_as_deployed(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    store = SQLiteStore(db)
    two_days_ago = time.time() - 2 * 86400
    store.record_rejected(RejectedEvent("old-1", two_days_ago, "pubsub", "model", "unknown",
                                        "{}", "ghost"))
    deployment = Deployment(tmp_path, f"sqlite:///{db}?retention=1d")
    try:
        function = deployment.start("on_metric_event")
        assert function.post(json.dumps(event(model="ghost")), "ghost-2") == 200
    finally:
        deployment.stop()
    assert [r.message_id for r in store.rejected_events()] == ["ghost-2"]
    store.close()


@pytest.mark.parametrize("make_store", [
    lambda: MemoryStore(retention=timedelta(days=1)),
    lambda: SQLiteStore(":memory:", retention=timedelta(days=1)),
], ids=["memory", "sqlite"])
def test_rejected_events_expire_after_retention_a_bounded_number_per_write(
    make_store: Any,
) -> None:
    store = make_store()
    day = 86400.0
    for i in range(150):
        store.record_rejected(RejectedEvent(f"r-{i}", 1000.0 + i, "pubsub", "data", "bad", "x"))
    store.record_rejected(RejectedEvent("late", 1000.0 + 2 * day, "pubsub", "data", "bad", "x"))
    assert len(store.rejected_events(1000)) == 51  # 100 expired by one write; 50 remain
    store.record_rejected(RejectedEvent("later", 1001.0 + 2 * day, "pubsub", "data", "x", "x"))
    assert {r.message_id for r in store.rejected_events(1000)} == {"late", "later"}


def test_sqlite_url_retention_option() -> None:
    assert SQLiteStore.from_url("sqlite:///:memory:?retention=30d").retention == timedelta(
        days=30)
    assert SQLiteStore.from_url("sqlite:///:memory:?retention=none").retention is None
    assert SQLiteStore.from_url("sqlite:///:memory:").retention == timedelta(days=400)
    from triggers.errors import ConfigError

    with pytest.raises(ConfigError, match="retention"):
        SQLiteStore.from_url("sqlite:///:memory:?retention=0")
    with pytest.raises(ConfigError, match="known: timeout, retention"):
        SQLiteStore.from_url("sqlite:///:memory:?keep=1d")



def check_ignored_metrics_on_the_marker(store: StateStore) -> None:
    store.finish_message("wide", 1000.0, [], ignored_metrics=97)
    store.finish_message("narrow", 1000.0, [])
    store.finish_message("wide", 1001.0, [], ignored_metrics=5)  # a redelivery: first stands
    assert store.ignored_metrics("wide") == 97
    assert store.ignored_metrics("narrow") == 0
    assert store.ignored_metrics("never-seen") is None


@pytest.mark.parametrize("make_store", [MemoryStore, lambda: SQLiteStore(":memory:")],
                         ids=["memory", "sqlite"])
def test_ignored_metrics_are_kept_on_the_processed_marker(make_store: Any) -> None:
    check_ignored_metrics_on_the_marker(make_store())


def test_ignored_metrics_are_kept_on_the_processed_marker_firestore(
    firestore_env: FirestoreEmulator,
) -> None:
    from triggers.state.firestore import FirestoreStore

    check_ignored_metrics_on_the_marker(FirestoreStore(project=firestore_env.project))


def test_a_state_file_from_before_the_marker_column_is_upgraded(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE processed (message_id TEXT PRIMARY KEY, at REAL NOT NULL)")
    conn.execute("INSERT INTO processed VALUES ('before', 1.0)")
    conn.commit()
    conn.close()
    store = SQLiteStore(db)
    store.finish_message("after", 2.0, [], ignored_metrics=4)
    assert (store.ignored_metrics("before"), store.ignored_metrics("after")) == (0, 4)
    store.close()
