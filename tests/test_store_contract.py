"""The StateStore contract, run against every implementation (SQLite file, SQLite in memory,
Firestore on Google's emulator): what the service relies on, checked the same way."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from pipeline_client.launching.protocol import FakeLauncher
from tests.support.emulators import FirestoreEmulator
from tests.support.fixtures import firestore_emulator, firestore_env  # noqa: F401
from triggers.events import Delivery
from triggers.guards import Guards
from triggers.series import SeriesMarks
from triggers.state.memory import MemoryStore
from triggers.state.protocol import (
    IN_FLIGHT,
    Decision,
    IncidentRecord,
    ModelState,
    RejectedEvent,
    RunRecord,
    RunUpdate,
    StateStore,
    StoredPoint,
)
from triggers.state.sqlite import SQLiteStore

NOW = 1_800_000_000.0
GUARDS = Guards(cooldown=timedelta(hours=1), max_runs=2, max_runs_per=timedelta(days=1))
StoreFactory = Callable[[], StateStore]


@pytest.fixture(params=["sqlite-file", "sqlite-memory", "memory", "firestore"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Makes stores on one backend: each call is another "instance" (its own connection or
    client) sharing the same state; the in-memory stores can only share themselves."""
    made: list[StateStore] = []
    memory: list[StateStore] = []

    def make() -> StateStore:
        if request.param == "sqlite-file":
            store: StateStore = SQLiteStore(tmp_path / "state.db")
        elif request.param == "sqlite-memory":
            if not memory:
                memory.append(SQLiteStore(":memory:"))
            store = memory[0]
        elif request.param == "memory":
            from triggers.state.memory import MemoryStore

            if not memory:
                memory.append(MemoryStore())
            store = memory[0]
        else:
            from triggers.state.firestore import FirestoreStore

            emulator: FirestoreEmulator = request.getfixturevalue("firestore_env")
            store = FirestoreStore(project=emulator.project)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()  # type: ignore[attr-defined]


@pytest.fixture
def store(store_factory: StoreFactory) -> StateStore:
    return store_factory()


def point(t: float, value: float, metric: str = "accuracy", **extra: object) -> StoredPoint:
    return StoredPoint("m", "overall", metric, t, value, recorded_at=NOW, **extra)  # type: ignore[arg-type]


def run(run_id: str, created: float, state: str = "launching") -> RunRecord:
    return RunRecord(run_id, "m", "p", run_id[-4:], state, "why", created, {"run_id": run_id},
                     claimed_by="msg")


def test_points_upsert_by_key_and_come_back_in_event_time_order(store: StateStore) -> None:
    store.record_points([point(30, 0.3), point(10, 0.1), point(20, 0.2)])
    store.record_points([point(20, 0.25, examples=9)])
    got = store.points("m", "overall", "accuracy")
    assert [(p.window_end, p.value) for p in got] == [(10, 0.1), (20, 0.25), (30, 0.3)]
    assert got[1].examples == 9
    assert [p.window_end for p in store.points("m", "overall", "accuracy", since=10)] == [20, 30]
    assert [p.window_end for p in store.points("m", "overall", "accuracy", until=20)] == [10, 20]
    assert [p.window_end for p in store.points("m", "overall", "accuracy", limit=2)] == [20, 30]
    assert store.points("m", "other", "accuracy") == []


def test_every_write_of_a_series_replaces_its_mark_where_the_store_keeps_marks(
    store: StateStore,
) -> None:
    """A `ChampionSeries` keeps what it read on a store with marks (the service's warm
    instance, the backtest's replay on the memory store): a write it did not see must show."""
    if not isinstance(store, SeriesMarks):
        assert not isinstance(store, (MemoryStore, SQLiteStore)), "lost its series marks"
        pytest.skip("this store has no series marks: a ChampionSeries reads it afresh")
    assert store.series_mark("m", "overall", "accuracy") is None
    store.record_points([point(10, 0.1)])
    marks = [store.series_mark("m", "overall", "accuracy")]
    store.record_points([point(10, 0.1)])  # the same point again is a write all the same
    marks.append(store.series_mark("m", "overall", "accuracy"))
    store.record_points([point(5, 0.2), point(7, 0.3, metric="auc")])
    marks.append(store.series_mark("m", "overall", "accuracy"))
    auc = store.series_mark("m", "overall", "auc")
    assert None not in marks and len(set(marks)) == 3
    store.record_points([point(20, 0.2, metric="auc")])  # another series: this one's stays
    assert store.series_mark("m", "overall", "accuracy") == marks[-1]
    assert store.series_mark("m", "overall", "auc") != auc
    if isinstance(store, MemoryStore):  # (SQLite's comes with the warm-path change on main)
        written = store.record_points_marked([point(30, 0.3), point(31, 0.3)])
        assert written == {("m", "overall", "accuracy"):
                           store.series_mark("m", "overall", "accuracy")}


def test_processed_and_rejected_are_idempotent(store: StateStore) -> None:
    assert not store.is_processed("a")
    store.finish_message("a", NOW, [Decision("d1", "m", "ok", NOW, "r")])
    store.finish_message("a", NOW + 1, [Decision("d1", "m", "ok", NOW, "r")])
    assert store.is_processed("a")
    assert [d.decision_id for d in store.decisions()] == ["d1"]
    event = RejectedEvent("a", NOW, "pubsub", "data", "bad", "{", None)
    store.record_rejected(event)
    store.record_rejected(event)
    assert store.rejected_events() == [event]


def test_two_deliveries_finishing_one_message_both_keep_their_decisions(
    store: StateStore,
) -> None:
    """Two deliveries of one message race: one records "suppressed", the other launched a run
    and records "fired". Whichever finishes second still has its decisions kept (a storm on
    Firestore once lost the "fired" one: the run was explained only as suppressed)."""
    store.finish_message("m1", NOW, [Decision("d-suppressed", "m", "suppressed", NOW, "blocked")])
    store.finish_message("m1", NOW + 1, [Decision("d-fired", "m", "fired", NOW, "fired",
                                                   run_id="r1")])
    with store.atomic():
        store.record_decisions([Decision("d-unit", "m", "ok", NOW, "unit")])
        store.finish_message("m1", NOW + 2, [Decision("d-unit-2", "m", "fired", NOW, "u2")])
    assert store.is_processed("m1")
    kept = {d.decision_id for d in store.decisions("m", limit=10)}
    assert kept == {"d-suppressed", "d-fired", "d-unit", "d-unit-2"}


def test_decisions_newest_first_filtered_and_replaced_by_id(store: StateStore) -> None:
    store.record_decisions([
        Decision(f"d{i}", "m" if i % 2 else "n", "ok", NOW + i, f"r{i}") for i in range(6)])
    store.record_decisions([Decision("d5", "m", "fired", NOW + 5, "changed")])
    assert [d.decision_id for d in store.decisions(limit=3)] == ["d5", "d4", "d3"]
    assert [d.decision_id for d in store.decisions("m")] == ["d5", "d3", "d1"]
    assert store.decisions("m", limit=1)[0].reason == "changed"


def test_told_decisions_enter_the_outbox_with_the_decision_and_leave_when_cleared(
    store: StateStore,
) -> None:
    store.finish_message("o0", NOW, [Decision("d-unheard", "x", "fired", NOW, "no topic")])
    assert store.outbox() == []  # off (no decisions topic): nothing is kept to be told
    store.outbox_switch.on = True
    store.finish_message("o1", NOW, [
        Decision("d-ok", "m", "ok", NOW, "fine"),
        Decision("d-fired", "m", "fired", NOW + 1, "floor", policy="p", run_id="r1",
                 event_time=NOW - 60, details={"x": 1}),
        Decision("d-blocked", "m", "suppressed", NOW + 2, "cooldown"),
        Decision("d-held", "m", "suppressed", NOW + 3, "held",
                 details={"inhibited_by": "0.abc"}),
    ])
    store.record_decisions([Decision("d-promoted", "m", "promoted", NOW + 4, "won")])
    store.record_decisions([Decision("d-fired", "m", "fired", NOW + 1, "floor", policy="p",
                                     run_id="r1", event_time=NOW - 60, details={"x": 1})])
    waiting = store.outbox()
    assert [d.decision_id for d in waiting] == ["d-fired", "d-held", "d-promoted"]
    assert waiting[0] == store.decisions("m", limit=10)[-2]  # the same record, round-tripped
    assert [d.decision_id for d in store.outbox(limit=1)] == ["d-fired"]
    store.clear_outbox(["d-fired", "d-held", "unknown"])
    assert [d.decision_id for d in store.outbox()] == ["d-promoted"]


def test_inhibiting_incidents_open_close_and_never_reopen(store: StateStore) -> None:
    opened = IncidentRecord("m", "0.abc", True, "Data freshness", "stale", "no data", NOW)
    store.record_incident(opened)
    store.record_incident(IncidentRecord("n", "0.xyz", True, "Data freshness", "stale", "", NOW))
    assert store.open_incidents("m") == [opened]
    store.record_incident(replace(opened, open=False, at=NOW + 10))
    assert store.open_incidents("m") == []
    store.record_incident(replace(opened, at=NOW + 20))  # a late "open" after the close
    assert store.open_incidents("m") == []
    assert [i.incident_id for i in store.open_incidents("n")] == ["0.xyz"]


def test_model_state_round_trips(store: StateStore) -> None:
    assert store.model_state("m") == ModelState("m")
    store.set_model_state(ModelState("m", "7", 5.0, NOW))
    assert store.model_state("m") == ModelState("m", "7", 5.0, NOW)


def test_claim_checks_guards_in_one_step(store: StateStore) -> None:
    assert store.claim_run(run("run-1", NOW), GUARDS, NOW, False).status == "claimed"
    again = store.claim_run(run("run-1", NOW), GUARDS, NOW, False)
    assert again.status == "resume"  # same id, still launching
    blocked = store.claim_run(run("run-2", NOW), GUARDS, NOW, False)
    assert blocked.status == "blocked" and "in flight" in blocked.reason
    assert store.claim_run(run("run-2", NOW), GUARDS, NOW, True).status == "blocked"
    store.update_run("run-1", IN_FLIGHT, RunUpdate(state="rejected", ended_at=NOW))
    assert store.claim_run(run("run-1", NOW), GUARDS, NOW, False).status == "exists"
    cooldown = store.claim_run(run("run-2", NOW + 60), GUARDS, NOW + 60, False)
    assert cooldown.status == "blocked" and cooldown.reason.startswith("cooldown")
    assert store.claim_run(run("run-2", NOW + 60), GUARDS, NOW + 60, True).status == "claimed"
    store.update_run("run-2", IN_FLIGHT, RunUpdate(state="failed"))
    budget = store.claim_run(run("run-3", NOW + 7200), GUARDS, NOW + 7200, False)
    assert budget.status == "blocked" and budget.reason.startswith("budget")
    later = NOW + 86400 + 61
    assert store.claim_run(run("run-3", later), GUARDS, later, False).status == "claimed"


def interleaved(store: StateStore, action: Callable[[], None]) -> list[bool]:
    """Make `action` (another instance's write) land inside `store`'s next claim where it
    can: on Firestore right after the claim's first read (a hook on the SDK client's
    `get_all`); the other stores claim under one lock, so there it simply runs first."""
    from triggers.state.firestore import FirestoreStore

    done: list[bool] = []
    if not isinstance(store, FirestoreStore):
        action()
        done.append(True)
        return done
    client = store.client
    original = client.get_all

    def get_all(*args: object, **kwargs: object) -> Iterator[object]:
        found = list(original(*args, **kwargs))
        if not done:
            done.append(True)
            action()
        return iter(found)

    client.get_all = get_all
    return done


def test_a_run_claimed_by_another_instance_meanwhile_is_resumed_not_blocked(
    store_factory: StoreFactory,
) -> None:
    """One message delivered to two instances at once: the other claims the run while this
    claim is reading. This claim must answer `resume` with the other's record — a `blocked`
    (by its own run in flight) would lose the message's `fired` audit entry."""
    mine, other = store_factory(), store_factory()

    def other_claims() -> None:
        theirs = replace(run("run-1", NOW), claimed_by="other-instance")
        assert other.claim_run(theirs, GUARDS, NOW, False).status == "claimed"

    done = interleaved(mine, other_claims)
    claim = mine.claim_run(run("run-1", NOW), GUARDS, NOW, False)
    assert done
    assert (claim.status, claim.run.claimed_by) == ("resume", "other-instance"), claim
    mine.update_run("run-1", IN_FLIGHT, RunUpdate(state="launched", launched_at=NOW))
    claim = mine.claim_run(run("run-1", NOW), GUARDS, NOW, False)
    assert (claim.status, claim.run.state) == ("exists", "launched")


def test_update_run_only_from_the_given_states(store: StateStore) -> None:
    store.claim_run(run("run-1", NOW), GUARDS, NOW, False)
    updated = store.update_run("run-1", frozenset({"launching"}), RunUpdate(state="launched",
                               launched_at=NOW, outcome={"a": 1}))
    assert updated is not None and updated.state == "launched" and updated.outcome == {"a": 1}
    assert store.update_run("run-1", frozenset({"launching"}), RunUpdate(state="failed")) is None
    assert store.update_run("missing", IN_FLIGHT, RunUpdate(state="failed")) is None
    assert [r.run_id for r in store.in_flight_runs("m")] == ["run-1"]
    assert store.get_run("run-1") == updated


def test_concurrent_claims_from_threads_give_one_run(store: StateStore) -> None:
    results: list[str] = []
    barrier = threading.Barrier(8)

    def claim(i: int) -> None:
        barrier.wait()
        results.append(store.claim_run(run(f"run-{i}", NOW), GUARDS, NOW, False).status)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["blocked"] * 7 + ["claimed"]
    assert len(store.runs("m")) == 1


def test_two_claimers_for_one_model_claim_once(store_factory: StoreFactory) -> None:
    """Two instances (threads, each its own store) race 10 claims each for one model, all
    different runs: the guards let exactly one through."""
    stores = [store_factory(), store_factory()]
    results: list[str] = []
    barrier = threading.Barrier(2)

    def claim(worker: int) -> None:
        barrier.wait()
        for i in range(10):
            claimed = stores[worker].claim_run(run(f"run-{worker}-{i}", NOW), GUARDS, NOW, False)
            results.append(claimed.status)

    threads = [threading.Thread(target=claim, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["blocked"] * 19 + ["claimed"]
    assert len(stores[0].runs("m")) == 1


def test_one_message_delivered_to_two_instances_at_once_is_processed_once(
    store_factory: StoreFactory,
) -> None:
    """Pub/Sub may deliver one message twice at the same moment: 10 messages of a degrading
    series, each handed to two services (threads, each its own store) at once. Every message
    ends processed, one run is launched, one `fired` decision is recorded, one point per key."""
    from tests.conftest import Clock, policy_config
    from tests.test_service import DEGRADING, FIRST_FIRE
    from triggers.service import RetrainService

    launcher = FakeLauncher()
    clock = Clock()
    services = [RetrainService(policy_config(), store_factory(), launcher, clock=clock)
                for _ in range(2)]
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []
    statuses: list[str] = []

    def deliver(worker: int) -> None:
        for day, value in enumerate(DEGRADING):
            event = (f'{{"model": "fraud-detector", "metrics": {{"accuracy": {value}}}, '
                     f'"window_end": "2026-11-{day + 1:02d}T00:00:00Z", "examples": 1000}}')
            barrier.wait()
            try:
                result = services[worker].handle_delivery(
                    Delivery(f"msg-{day}", event.encode(), "pubsub"))
                statuses.append(result.status)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

    threads = [threading.Thread(target=deliver, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert set(statuses) <= {"recorded", "duplicate"} and len(statuses) == 20
    store = services[0].store
    assert all(store.is_processed(f"msg-{day}") for day in range(len(DEGRADING)))
    assert len(launcher.runs) == 1
    runs = store.runs("fraud-detector")
    assert len(runs) == 1 and runs[0].state in ("launched", "running")  # submitted
    trail = store.decisions("fraud-detector", limit=200)
    assert [d.event_time for d in trail if d.kind == "fired"] == [
        p.window_end for p in store.points("fraud-detector", "overall", "accuracy")][
        FIRST_FIRE:FIRST_FIRE + 1]
    assert len({d.decision_id for d in trail}) == len(trail)
    assert len(store.points("fraud-detector", "overall", "accuracy")) == len(DEGRADING)


def test_a_forked_child_opens_its_own_connection(tmp_path: Path) -> None:
    """gunicorn forks workers after the app is imported: the child must not reuse the
    parent's SQLite connection."""
    import os

    store = SQLiteStore(tmp_path / "state.db")
    parent_conn = store._conn()
    store.record_points([point(1, 0.5)])
    pid = os.fork()
    if pid == 0:  # the child
        code = 0
        try:
            if store._conn() is parent_conn:
                code = 3
            store.record_points([point(2, 0.6)])
        except BaseException:
            code = 4
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store._conn() is parent_conn
    assert [p.value for p in store.points("m", "overall", "accuracy")] == [0.5, 0.6]
