"""What only the Firestore store has: its URL, the unit of work behind `atomic()`, expiry
fields, transient errors, and every query it runs covered by deploy/firestore.indexes.json."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pipeline_client.launcher import FakeLauncher
from tests.conftest import ROOT, Clock, policy_config
from tests.support import fixtures
from tests.support.emulators import FirestoreEmulator, free_port
from tests.test_service import DEGRADING, FIRST_FIRE
from triggers.config import Guards
from triggers.errors import ConfigError, TransientError
from triggers.events import Delivery
from triggers.firestore_store import (
    COLLECTION_GROUPS,
    DEFAULT_RETENTION,
    EXPIRING,
    FirestoreStore,
)
from triggers.service import RetrainService
from triggers.store import Decision, ModelState, RejectedEvent, RunRecord, StoredPoint

firestore_emulator = fixtures.firestore_emulator  # the session emulator (shared) and
firestore_env = fixtures.firestore_env  # its per-test reset with the environment set
INDEXES = ROOT / "deploy" / "firestore.indexes.json"
NOW = 1_800_000_000.0
GUARDS = Guards(cooldown=timedelta(hours=1), max_runs=2, max_runs_per=timedelta(days=1))


@pytest.fixture
def store(firestore_env: FirestoreEmulator) -> Iterator[FirestoreStore]:
    made = FirestoreStore(project=firestore_env.project)
    yield made
    made.close()


@pytest.fixture
def peer(firestore_env: FirestoreEmulator) -> Iterator[FirestoreStore]:
    """A second instance on the same database (its own client)."""
    made = FirestoreStore(project=firestore_env.project)
    yield made
    made.close()


def run(run_id: str, state: str = "launched") -> RunRecord:
    return RunRecord(run_id, "m", "p", "trig", state, "why", NOW, {"run_id": run_id},
                     claimed_by="msg")


def documents(store: FirestoreStore, group: str) -> list[dict[str, Any]]:
    return [s.to_dict() for s in store.client.collection_group(group).stream()]


# ---------------------------------------------------------------------------- URL
def test_url_names_database_retention_and_timeout() -> None:
    env = {"GOOGLE_CLOUD_PROJECT": "p1"}
    default = FirestoreStore.from_url("firestore://", env)
    assert (default.database, default.project, default.retention, default.timeout) == (
        "(default)", "p1", DEFAULT_RETENTION, 10.0)
    named = FirestoreStore.from_url("firestore://retrain-state?retention=90d&timeout=5s", {})
    assert (named.database, named.project, named.retention, named.timeout) == (
        "retrain-state", None, timedelta(days=90), 5.0)
    assert FirestoreStore.from_url("firestore://?retention=none", env).retention is None
    assert FirestoreStore.from_url("firestore://(default)", env).database == "(default)"
    for bad, words in [
        ("firestore://Bad_DB", "database id"),
        ("firestore://db/extra", "no path"),
        ("firestore://db?retention=soon", "retention"),
        ("firestore://db?retention=0s", "positive"),
        ("firestore://db?ttl=3d", "unknown option 'ttl'"),
    ]:
        with pytest.raises(ConfigError) as info:
            FirestoreStore.from_url(bad, env)
        assert info.value.variable == "RETRAIN_STATE" and words in info.value.reason, bad


def test_wiring_builds_it_from_retrain_state() -> None:
    from triggers.wiring import build_store

    store = build_store("firestore://retrain-state?retention=30d")
    assert isinstance(store, FirestoreStore)
    assert store.database == "retrain-state" and store.retention == timedelta(days=30)
    assert store._client is None  # nothing connected (or imported) before first use


# ---------------------------------------------------------------------------- atomic()
def test_unit_of_work_commits_at_the_end_and_points_at_once(
    store: FirestoreStore, peer: FirestoreStore
) -> None:
    with store.atomic():
        store.record_points([StoredPoint("m", "overall", "accuracy", 10.0, 0.9,
                                         recorded_at=NOW)])
        assert [p.value for p in peer.points("m", "overall", "accuracy")] == [0.9]
        store.set_model_state(ModelState("m", "7", 5.0, NOW))
        store.finish_message("msg-1", NOW, [Decision("d1", "m", "ok", NOW, "r")])
        with store.atomic():  # nested: joins the outer unit
            store.record_decisions([Decision("d2", "m", "ok", NOW + 1, "r2")])
        # the unit sees its own writes; another instance sees none of them yet
        assert store.is_processed("msg-1") and store.model_state("m").champion_version == "7"
        assert not peer.is_processed("msg-1") and peer.model_state("m") == ModelState("m")
        assert peer.decisions() == []
    assert peer.is_processed("msg-1") and peer.model_state("m") == ModelState("m", "7", 5.0, NOW)
    assert [d.decision_id for d in peer.decisions()] == ["d2", "d1"]


def test_unit_of_work_is_discarded_when_it_raises(
    store: FirestoreStore, peer: FirestoreStore
) -> None:
    with pytest.raises(RuntimeError), store.atomic():
        store.set_model_state(ModelState("m", "7", 5.0, NOW))
        store.finish_message("msg-1", NOW, [Decision("d1", "m", "ok", NOW, "r")])
        raise RuntimeError("crash before the end")
    assert not peer.is_processed("msg-1") and peer.decisions() == []
    assert peer.model_state("m") == ModelState("m")


def test_a_run_changed_under_a_unit_fails_the_whole_unit(
    store: FirestoreStore, peer: FirestoreStore
) -> None:
    assert store.claim_run(run("run-1", "launching"), GUARDS, NOW, False).status == "claimed"
    with pytest.raises(TransientError, match="run changed"), store.atomic():
        ended = store.update_run("run-1", frozenset({"launching"}), state="promoted")
        assert ended is not None and ended.state == "promoted"
        assert store.get_run("run-1") == ended  # the unit sees its own update
        store.finish_message("outcome-1", NOW, [Decision("d1", "m", "promoted", NOW, "r")])
        peer.update_run("run-1", frozenset({"launching"}), message="changed elsewhere")
    after = peer.get_run("run-1")
    assert after is not None and (after.state, after.message) == ("launching",
                                                                  "changed elsewhere")
    assert not peer.is_processed("outcome-1") and peer.decisions() == []


def test_an_outcome_is_applied_all_or_nothing(
    store: FirestoreStore, peer: FirestoreStore
) -> None:
    """A crash between the run's end and the champion change must not lose the promotion:
    the redelivery finds the run still in flight and applies everything."""

    class CrashOnce(FirestoreStore):
        crashed = False

        def set_model_state(self, state: ModelState) -> None:
            if not self.crashed:
                self.crashed = True
                raise TransientError("instance died here")
            super().set_model_state(state)

    crashing = CrashOnce(project=store.project)
    clock = Clock()
    service = RetrainService(policy_config(), crashing, FakeLauncher(), clock=clock)
    run_id = "rt-fraud-detector-accuracy-floor-0123456789abcdef"
    crashing.claim_run(RunRecord(run_id, "fraud-detector", "accuracy-floor", "0123456789abcdef",
                                 "launched", "why", clock(), {}), GUARDS, clock(), False)
    outcome = json.dumps({"model": "fraud-detector", "run_id": run_id, "decision": "promoted",
                          "champion_version": "8"}).encode()
    with pytest.raises(TransientError):
        service.handle_outcome_delivery(Delivery("out-1", outcome, "pubsub"))
    unchanged = peer.get_run(run_id)
    assert unchanged is not None and unchanged.state == "launched"
    assert not peer.is_processed("out-1") and peer.decisions() == []
    result = service.handle_outcome_delivery(Delivery("out-1", outcome, "pubsub"))
    assert result.status == "recorded"
    ended = peer.get_run(run_id)
    assert ended is not None and ended.state == "promoted"
    assert peer.model_state("fraud-detector").champion_version == "8"
    assert {d.kind for d in peer.decisions("fraud-detector")} == {"promoted", "champion"}
    assert peer.is_processed("out-1")
    crashing.close()


# ---------------------------------------------------------------------------- expiry
def test_expiring_documents_carry_expire_at(firestore_env: FirestoreEmulator) -> None:
    store = FirestoreStore(project=firestore_env.project, retention=timedelta(days=30))
    store.record_points([StoredPoint("m", "overall", "accuracy", 10.0, 0.9, recorded_at=NOW)])
    store.finish_message("msg-1", NOW + 1, [Decision("d1", "m", "ok", NOW + 2, "r")])
    store.record_rejected(RejectedEvent("msg-2", NOW + 3, "pubsub", "data", "bad", "{", None))
    store.set_model_state(ModelState("m", "7", 5.0, NOW))
    store.claim_run(run("run-1"), GUARDS, NOW, False)
    expected = {"retrain_points": NOW, "retrain_processed": NOW + 1,
                "retrain_decisions": NOW + 2, "retrain_rejected": NOW + 3}
    assert set(expected) == EXPIRING
    for group in COLLECTION_GROUPS:
        for doc in documents(store, group):
            if group in EXPIRING:
                assert doc["expire_at"] == datetime.fromtimestamp(
                    expected[group], UTC) + timedelta(days=30), group
            else:
                assert "expire_at" not in doc, group
    store.close()

    forever = FirestoreStore(project=firestore_env.project, retention=None)
    forever.finish_message("msg-3", NOW, [Decision("d3", "m", "ok", NOW, "r")])
    assert all("expire_at" not in doc for doc in documents(forever, "retrain_decisions")
               if doc["decision_id"] == "d3")
    forever.close()


def test_index_file_declares_a_ttl_policy_for_every_expiring_collection() -> None:
    data = json.loads(INDEXES.read_text())
    ttl = {o["collectionGroup"] for o in data["fieldOverrides"]
           if o.get("ttl") and o["fieldPath"] == "expire_at"}
    assert ttl == EXPIRING
    assert all(o.get("indexes") == [] for o in data["fieldOverrides"])  # TTL: no index churn


# ---------------------------------------------------------------------------- errors
def test_an_unreachable_firestore_is_a_transient_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", f"127.0.0.1:{free_port()}")  # nobody there
    store = FirestoreStore(project="test-project", timeout=1.0)
    started = time.monotonic()
    with pytest.raises(TransientError, match="is_processed"):
        store.is_processed("msg-1")
    with pytest.raises(TransientError, match="finish_message"):
        store.finish_message("msg-1", NOW, [])
    with pytest.raises(TransientError, match="points"):
        store.points("m", "overall", "accuracy", limit=5)
    assert time.monotonic() - started < 15
    store.close()


def test_a_forked_child_builds_its_own_client(store: FirestoreStore) -> None:
    """gunicorn forks workers: a gRPC channel must not cross the fork."""
    store.is_processed("warm")
    assert store._client is not None
    pid = os.fork()
    if pid == 0:
        os._exit(0 if store._client is None else 3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store._client is not None


# ---------------------------------------------------------------------------- indexes
_EQUALITY = {"EQUAL", "IN", "ARRAY_CONTAINS", "ARRAY_CONTAINS_ANY"}


def _filters(where: Any) -> list[Any]:
    from google.cloud.firestore_v1.types import StructuredQuery

    kind = StructuredQuery.Filter.pb(where).WhichOneof("filter_type")
    if kind is None:
        return []
    if kind == "composite_filter":
        return [f for sub in where.composite_filter.filters for f in _filters(sub)]
    if kind == "field_filter":
        return [where.field_filter]
    raise AssertionError(f"unexpected filter {kind}")


def required_index(query: Any) -> tuple[str, str, frozenset[str], tuple[tuple[str, str], ...]]:
    """(collection group, scope, equality fields, ordered fields) a query needs."""
    source = query.from_[0]
    scope = "COLLECTION_GROUP" if source.all_descendants else "COLLECTION"
    filters = _filters(query.where)
    equality = frozenset(f.field.field_path for f in filters if f.op.name in _EQUALITY)
    ranges = [f.field.field_path for f in filters if f.op.name not in _EQUALITY]
    orders = [(o.field.field_path, o.direction.name) for o in query.order_by
              if o.field.field_path != "__name__"]
    assert len(set(ranges)) <= 1, "Firestore allows range filters on one field per query here"
    if ranges and (not orders or orders[0][0] != ranges[0]):
        orders.insert(0, (ranges[0], "ASCENDING"))
    return source.collection_id, scope, equality, tuple(orders)


def covered(need: tuple[str, str, frozenset[str], tuple[tuple[str, str], ...]],
            data: dict[str, Any]) -> str | None:
    """How the query is served: "automatic" (single field, collection scope) or the composite
    index from the file; None when nothing serves it."""
    group, scope, equality, orders = need
    fields = equality | {f for f, _ in orders}
    exempt = {(o["collectionGroup"], o["fieldPath"]) for o in data["fieldOverrides"]
              if o.get("indexes") == []}
    if len(fields) <= 1 and scope == "COLLECTION":
        return None if any((group, f) in exempt for f in fields) else "automatic"
    for index in data["indexes"]:
        declared = [(f["fieldPath"], f["order"]) for f in index["fields"]]
        if (index["collectionGroup"], index["queryScope"]) != (group, scope):
            continue
        head, tail = declared[:len(equality)], declared[len(equality):]
        if {f for f, _ in head} == equality and tuple(tail) == orders:
            return json.dumps(index, sort_keys=True)
    return None


def test_every_query_the_store_makes_is_covered_by_the_index_file(
    store: FirestoreStore,
) -> None:
    store.executed_queries = []
    # each read with each shape it has
    for since in (None, 1.0):
        for until in (None, 2.0):
            for limit in (None, 3):
                for oldest in (False, True):
                    store.points("m", "overall", "accuracy", since=since, until=until,
                                 limit=limit, oldest=oldest)
    store.latest_points("m", 5)
    store.decisions()
    store.decisions("m")
    store.runs()
    store.runs("m")
    store.in_flight_runs()
    store.in_flight_runs("m")
    store.rejected_events()
    store.claim_run(run("run-1", "launching"), GUARDS, NOW, False)
    store.claim_run(run("run-2", "launching"), GUARDS, NOW, False)
    # and what the service does on its own: events, a launch, a suppression, status, manual
    service = RetrainService(policy_config(), store, FakeLauncher(), clock=Clock())
    for day, value in enumerate(DEGRADING):
        event = {"model": "fraud-detector", "metrics": {"accuracy": value},
                 "window_end": f"2026-11-{day + 1:02d}T00:00:00Z", "examples": 1000}
        result = service.handle_delivery(Delivery(f"m{day}", json.dumps(event).encode(), "x"))
        assert bool(result.launched) == (day == FIRST_FIRE)
    service.model_status("fraud-detector")
    service.request_retrain("fraud-detector", "check", dry_run=True)
    service.handle_delivery(Delivery("bad", b"not json", "x"))

    data = json.loads(INDEXES.read_text())
    shapes = {required_index(q) for q in store.executed_queries}
    assert {group for group, *_ in shapes} == {
        "retrain_points", "retrain_decisions", "retrain_runs", "retrain_rejected"}, shapes
    served = {shape: covered(shape, data) for shape in shapes}
    missing = [shape for shape, how in served.items() if how is None]
    assert not missing, f"queries without an index in {INDEXES}: {missing}"
    used = {how for how in served.values() if how != "automatic"}
    unused = [i for i in data["indexes"] if json.dumps(i, sort_keys=True) not in used]
    assert not unused, f"indexes no query uses: {unused}"


def test_the_index_file_keeps_the_firebase_cli_format() -> None:
    data = json.loads(INDEXES.read_text())
    assert set(data) == {"indexes", "fieldOverrides"}
    for index in data["indexes"]:
        assert set(index) == {"collectionGroup", "queryScope", "fields"}
        assert index["queryScope"] in ("COLLECTION", "COLLECTION_GROUP")
        assert index["collectionGroup"] in COLLECTION_GROUPS
        for field in index["fields"]:
            assert set(field) == {"fieldPath", "order"}
            assert field["order"] in ("ASCENDING", "DESCENDING")
    for override in data["fieldOverrides"]:
        assert set(override) <= {"collectionGroup", "fieldPath", "ttl", "indexes"}
        assert override["collectionGroup"] in COLLECTION_GROUPS


def test_the_index_check_can_fail() -> None:
    """The checker itself: a query needing a composite index the file lacks is reported."""
    from google.cloud import firestore
    from google.cloud.firestore_v1.base_query import FieldFilter

    client = firestore.Client(project="p", credentials=_anonymous())
    query = (client.collection("retrain_runs").where(filter=FieldFilter("policy", "==", "x"))
             .order_by("created_at", direction="DESCENDING"))
    need = required_index(query._to_protobuf())
    assert need == ("retrain_runs", "COLLECTION", frozenset({"policy"}),
                    (("created_at", "DESCENDING"),))
    assert covered(need, json.loads(INDEXES.read_text())) is None
    exempt = (client.collection("retrain_rejected")
              .order_by("payload", direction="DESCENDING"))._to_protobuf()
    assert covered(required_index(exempt), json.loads(INDEXES.read_text())) is None


def _anonymous() -> Any:
    from google.auth.credentials import AnonymousCredentials

    return AnonymousCredentials()  # type: ignore[no-untyped-call]


def test_paths_are_deterministic_and_valid_document_ids() -> None:
    from triggers.firestore_store import _doc_id, _key, _point_path

    assert _key("fraud/detector") == _key("fraud/detector") != _key("fraud-detector")
    assert "/" not in _key("a/b") and not _key("__x__").startswith("__")
    assert _doc_id("rt-m-p-0123") == "rt-m-p-0123" and _doc_id("a/b") == _key("a/b")
    path = _point_path("m", "overall", "accuracy", 1_700_000_000.0)
    assert path.endswith("/retrain_points/2023-11-14T22:13:20Z")
    assert path.count("/") == 5
