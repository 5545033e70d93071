"""What only the Firestore store has: its URL, the unit of work behind `atomic()`, expiry
fields, transient errors, and every query it runs covered by deploy/firestore.indexes.json."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from pipeline_client.launching.protocol import FakeLauncher
from tests.conftest import ROOT, Clock, policy_config
from tests.support import fixtures
from tests.support.emulators import FirestoreEmulator, free_port
from tests.support.grpc_recorder import GrpcRecorder, RecordedCall
from tests.test_service import DEGRADING, FIRST_FIRE
from triggers.errors import ConfigError, TransientError
from triggers.events import Delivery
from triggers.guards import Guards
from triggers.service import RetrainService
from triggers.state import firestore_sdk
from triggers.state.firestore import (
    COLLECTION_GROUPS,
    DEFAULT_RETENTION,
    EXPIRING,
    FirestoreStore,
)
from triggers.state.protocol import (
    Decision,
    ModelState,
    RejectedEvent,
    RunRecord,
    RunUpdate,
    StoredPoint,
)

firestore_emulator = fixtures.firestore_emulator  # the session emulator (shared) and
firestore_env = fixtures.firestore_env  # its per-test reset with the environment set
INDEXES = ROOT / "deploy" / "firestore.indexes.json"
NOW = 1_800_000_000.0
DAY = timedelta(days=1)
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
    assert FirestoreStore.from_url("firestore://?retention=None", env).retention is None
    with pytest.raises(ConfigError, match="retention"):
        FirestoreStore(retention=timedelta(0))
    assert FirestoreStore.from_url("firestore://(default)", env).database == "(default)"
    for bad, words in [
        ("firestore://Bad_DB", "database id"),
        ("firestore://db/extra", "no path"),
        ("firestore://db?retention=soon", "retention"),
        ("firestore://db?retention=0s", "positive"),
        ("firestore://db?retention=0", "retention must be positive"),
        ("firestore://db?ttl=3d", "unknown option 'ttl'"),
    ]:
        with pytest.raises(ConfigError) as info:
            FirestoreStore.from_url(bad, env)
        assert info.value.variable == "RETRAIN_STATE" and words in info.value.reason, bad


def test_wiring_builds_it_from_retrain_state() -> None:
    from triggers.cloud.wiring import build_store

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
    with pytest.raises(TransientError, match="changed before it committed"), store.atomic():
        ended = store.update_run("run-1", frozenset({"launching"}), RunUpdate(state="promoted"))
        assert ended is not None and ended.state == "promoted"
        assert store.get_run("run-1") == ended  # the unit sees its own update
        store.finish_message("outcome-1", NOW, [Decision("d1", "m", "promoted", NOW, "r")])
        peer.update_run("run-1", frozenset({"launching"}), RunUpdate(message="changed elsewhere"))
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
    """`retention` everywhere, except that processed markers outlive Pub/Sub's 31 days."""
    store = FirestoreStore(project=firestore_env.project, retention=timedelta(days=30))
    store.record_points([StoredPoint("m", "overall", "accuracy", 10.0, 0.9, recorded_at=NOW)])
    store.finish_message("msg-1", NOW + 1, [Decision("d1", "m", "ok", NOW + 2, "r")])
    store.record_rejected(RejectedEvent("msg-2", NOW + 3, "pubsub", "data", "bad", "{", None))
    store.set_model_state(ModelState("m", "7", 5.0, NOW))
    store.claim_run(run("run-1"), GUARDS, NOW, False)
    month = timedelta(days=30)
    expected = {"retrain_points": (NOW, month), "retrain_processed": (NOW + 1, 31 * DAY),
                "retrain_decisions": (NOW + 2, month), "retrain_rejected": (NOW + 3, month)}
    assert set(expected) == EXPIRING
    for group in COLLECTION_GROUPS:
        for doc in documents(store, group):
            if group in EXPIRING:
                at, kept = expected[group]
                assert doc["expire_at"] == datetime.fromtimestamp(at, UTC) + kept, group
            else:
                assert "expire_at" not in doc, group
    store.close()

    long = FirestoreStore(project=firestore_env.project, retention=timedelta(days=90))
    long.finish_message("msg-4", NOW, [])
    marker = [doc for doc in documents(long, "retrain_processed") if doc["message_id"] == "msg-4"]
    assert marker[0]["expire_at"] == datetime.fromtimestamp(NOW, UTC) + timedelta(days=90)
    long.close()

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


def test_index_file_exempts_long_text_fields_from_indexing() -> None:
    """Long free text is never queried: indexing it costs writes and can hit the 1500-byte
    index entry limit."""
    data = json.loads(INDEXES.read_text())
    exempt = {(o["collectionGroup"], o["fieldPath"]) for o in data["fieldOverrides"]
              if o.get("indexes") == []}
    assert {("retrain_runs", "outcome"), ("retrain_runs", "reason"),
            ("retrain_runs", "message"), ("retrain_runs", "request"),
            ("retrain_decisions", "reason"), ("retrain_decisions", "details"),
            ("retrain_rejected", "payload")} <= exempt


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
    from triggers.state.firestore import doc_id_of, key_of, point_path

    assert key_of("fraud/detector") == key_of("fraud/detector") != key_of("fraud-detector")
    assert "/" not in key_of("a/b") and not key_of("__x__").startswith("__")
    assert doc_id_of("rt-m-p-0123") == "rt-m-p-0123" and doc_id_of("a/b") == key_of("a/b")
    path = point_path("m", "overall", "accuracy", 1_700_000_000.0)
    assert path.endswith("/retrain_points/2023-11-14T22:13:20Z")
    assert path.count("/") == 5


# ---------------------------------------------------------------------------- races
# Each test interleaves a second instance's write (its own client) between the first one's
# read and its commit, deterministically: in the test's own order, or from a hook on the
# Firestore SDK client (never on the store's own code).
def launch(run_id: str, champion: str, model: str = "m") -> RunRecord:
    """A run as the service claims it: its request names the champion it was built for."""
    return RunRecord(run_id, model, "p", "trig", "launching", "why", NOW,
                     {"run_id": run_id, "parameters": {"champion_version": champion}},
                     claimed_by="msg")


def on_first_get_all(store: FirestoreStore, action: Any) -> list[bool]:
    """Run `action` right after the store's next `get_all` (the claim's first read)."""
    client = store.client
    original = client.get_all
    done: list[bool] = []

    def get_all(*args: Any, **kwargs: Any) -> Iterator[Any]:
        found = list(original(*args, **kwargs))
        if not done:
            done.append(True)
            action()
        return iter(found)

    client.get_all = get_all
    return done


def test_a_claim_after_a_promotion_it_did_not_evaluate_is_refused(
    store: FirestoreStore, peer: FirestoreStore
) -> None:
    """The champion read, the evaluation and the claim must see one state: a promotion (or a
    rollback restarting the history) committed in between fails the claim."""
    peer.set_model_state(ModelState("m", "7", 5.0, NOW))
    with pytest.raises(TransientError, match="champion state changed"), store.atomic():
        assert store.model_state("m").champion_version == "7"
        peer.set_model_state(ModelState("m", "8", 50.0, NOW + 1))  # promoted meanwhile
        store.claim_run(launch("run-1", "7"), GUARDS, NOW, False)
    assert peer.get_run("run-1") is None
    with pytest.raises(TransientError, match="champion state changed"), store.atomic():
        assert store.model_state("m").champion_version == "8"
        peer.set_model_state(ModelState("m", "8", 60.0, NOW + 2))  # same version, new history
        store.claim_run(launch("run-1", "8"), GUARDS, NOW, False)
    assert peer.get_run("run-1") is None
    # outside a unit (the manual trigger) the request's champion_version is the reference
    with pytest.raises(TransientError, match="champion state changed"):
        store.claim_run(launch("run-2", "7"), GUARDS, NOW, False)
    assert store.claim_run(launch("run-2", "8"), GUARDS, NOW, False).status == "claimed"


def test_a_promotion_between_evaluation_and_claim_launches_nothing_for_the_old_champion(
    store: FirestoreStore, peer: FirestoreStore
) -> None:
    """Through the service: an event of champion 7 breaches; version 8 is promoted after the
    event read the champion and before its claim. No run is launched for 7; the redelivery
    sees 8 and records the event as `ignored`."""
    clock = Clock()
    launcher = FakeLauncher()
    service = RetrainService(policy_config(), store, launcher, clock=clock)
    peer.set_model_state(ModelState("churn", "7", None, clock()))
    done = on_first_get_all(store, lambda: peer.set_model_state(
        ModelState("churn", "8", None, clock())))
    event = json.dumps({"model": "churn", "model_version": "7", "metrics": {"logloss": 0.5},
                        "window_end": "2026-11-02T00:00:00Z"}).encode()
    with pytest.raises(TransientError, match="champion state changed"):
        service.handle_delivery(Delivery("msg-1", event, "pubsub"))
    assert done and not launcher.runs and peer.runs("churn") == []
    result = service.handle_delivery(Delivery("msg-1", event, "pubsub"))
    assert [d.kind for d in result.decisions] == ["ignored"] and result.launched == []
    assert not launcher.runs and peer.runs("churn") == []
    assert peer.model_state("churn").champion_version == "8"


def test_two_first_champions_one_wins_the_other_is_retried(
    store: FirestoreStore, peer: FirestoreStore
) -> None:
    """Two first events (versions 7 and 8) both read "no champion" and both adopt: the one
    committed second fails — it is neither a silent overwrite nor a dropped, acknowledged
    unit — and its redelivery sees the winner."""
    with pytest.raises(TransientError, match="created meanwhile"), store.atomic():
        assert store.model_state("m").champion_version is None
        with peer.atomic():
            assert peer.model_state("m").champion_version is None
            peer.set_model_state(ModelState("m", "8", None, NOW))
            peer.finish_message("msg-8", NOW, [Decision("d8", "m", "champion", NOW, "8")])
        store.set_model_state(ModelState("m", "7", None, NOW))
        store.finish_message("msg-7", NOW, [Decision("d7", "m", "champion", NOW, "7")])
    assert peer.model_state("m").champion_version == "8"
    assert not peer.is_processed("msg-7") and [d.decision_id for d in peer.decisions()] == ["d8"]
    with store.atomic():  # the redelivery
        assert store.model_state("m").champion_version == "8"
        store.finish_message("msg-7", NOW, [Decision("d7", "m", "ignored", NOW, "not 8")])
    assert peer.is_processed("msg-7")


def test_a_late_adopter_does_not_overwrite_a_promotion(
    store: FirestoreStore, peer: FirestoreStore
) -> None:
    """The model document exists (a claim wrote it) without a champion; an adoption read it,
    then a promotion committed: the adoption fails on the document's update time."""
    assert peer.claim_run(run("run-0"), GUARDS, NOW, False).status == "claimed"
    with pytest.raises(TransientError, match="changed before it committed"), store.atomic():
        assert store.model_state("m").champion_version is None
        peer.set_model_state(ModelState("m", "9", 20.0, NOW))
        store.set_model_state(ModelState("m", "7", None, NOW))
        store.finish_message("msg-7", NOW, [])
    assert peer.model_state("m") == ModelState("m", "9", 20.0, NOW)
    assert not peer.is_processed("msg-7")


def test_a_champion_write_whose_champion_still_holds_is_rebased_not_refused(
    store: FirestoreStore, peer: FirestoreStore
) -> None:
    """Conflicts that change no champion do not cost a redelivery: the same version adopted
    by two first events (the second write is redundant), and a claim that rewrote only
    `claim_last_*` after a promotion read the document (re-conditioned on the new version)."""
    with store.atomic():
        assert store.model_state("m").champion_version is None
        with peer.atomic():
            assert peer.model_state("m").champion_version is None
            peer.set_model_state(ModelState("m", "7", None, NOW))
        store.set_model_state(ModelState("m", "7", None, NOW + 1))
        store.finish_message("msg-a", NOW, [])
    assert peer.is_processed("msg-a") and peer.model_state("m") == ModelState("m", "7", None, NOW)
    with store.atomic():
        assert store.model_state("m").champion_version == "7"
        assert peer.claim_run(run("run-1"), GUARDS, NOW, False).status == "claimed"
        store.set_model_state(ModelState("m", "8", 50.0, NOW + 2))
        store.finish_message("msg-b", NOW, [])
    assert peer.model_state("m") == ModelState("m", "8", 50.0, NOW + 2)
    assert peer.is_processed("msg-b")


def test_an_adopted_champion_is_committed_with_the_units_claim(
    store: FirestoreStore, peer: FirestoreStore
) -> None:
    """A first event that adopts version 7 and claims a run: the claim commits the adoption
    with the run, the unit still commits after its own claim changed the model document, and
    an adopter that read "no champion" before that claim loses."""
    with store.atomic():
        assert store.model_state("m") == ModelState("m")
        store.set_model_state(ModelState("m", "7", None, NOW))
        with pytest.raises(TransientError, match="created meanwhile"), peer.atomic():
            assert peer.model_state("m").champion_version is None
            assert store.claim_run(launch("run-1", "7"), GUARDS, NOW, False).status == "claimed"
            peer.set_model_state(ModelState("m", "8", None, NOW))
        assert store.claim_run(launch("run-1", "7"), GUARDS, NOW, False).status == "resume"
        store.finish_message("msg-7", NOW, [Decision("d7", "m", "champion", NOW, "7")])
    assert peer.model_state("m") == ModelState("m", "7", None, NOW)
    assert peer.is_processed("msg-7")
    claimed = peer.get_run("run-1")
    assert claimed is not None and claimed.request["parameters"]["champion_version"] == "7"


def test_a_unit_too_large_for_one_commit_is_refused_whole(
    store: FirestoreStore, peer: FirestoreStore
) -> None:
    from triggers.state.firestore import MAX_BATCH_WRITES, UnitTooLargeError

    many = [Decision(f"d{i}", "m", "ok", NOW, "r") for i in range(MAX_BATCH_WRITES)]
    with pytest.raises(UnitTooLargeError, match="refusing to split"), store.atomic():
        store.finish_message("msg-1", NOW, many)  # 500 decisions and the marker
    assert peer.decisions(limit=1) == [] and not peer.is_processed("msg-1")
    # points are independent, idempotent writes: those may take several batches
    store.record_points([StoredPoint("m", "overall", "accuracy", float(t), 0.9,
                                     recorded_at=NOW) for t in range(MAX_BATCH_WRITES + 1)])
    assert len(peer.points("m", "overall", "accuracy")) == MAX_BATCH_WRITES + 1


# ---------------------------------------------------------------------------- bounded RPCs
class FreezableProxy:
    """A TCP relay in front of the emulator that can stop relaying (a network that hangs)."""

    def __init__(self, upstream: str) -> None:
        import socket
        import threading

        self.upstream = upstream.rsplit(":", 1)
        self.frozen = threading.Event()
        self.closed = threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self.server.getsockname()[1]}"
        self.sockets: list[Any] = [self.server]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while not self.closed.is_set():
            try:
                down, _ = self.server.accept()
            except OSError:
                return
            up = socket.create_connection((self.upstream[0], int(self.upstream[1])))
            self.sockets += [down, up]
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: Any, target: Any) -> None:
        while not self.closed.is_set():
            try:
                data = source.recv(65536)
                while self.frozen.is_set() and not self.closed.is_set():
                    time.sleep(0.01)
                if not data or self.closed.is_set():
                    return
                target.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self.closed.set()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()


@pytest.mark.parametrize("rpc", ["begin_transaction", "run_query", "commit"])
def test_a_hanging_transaction_is_bounded_by_the_store_timeout(
    rpc: str, firestore_env: FirestoreEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The network stops answering just as the claim's transaction begins, reads (then it
    rolls back) or commits: `?timeout=` bounds each of those RPCs (the library's defaults
    would wait up to 60 s, retried) and the claim fails as a TransientError."""
    proxy = FreezableProxy(firestore_env.host)
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", proxy.host)
    store = FirestoreStore(project=firestore_env.project, timeout=0.5, max_attempts=1)
    api = store.client._firestore_api  # the SDK's GAPIC client: freeze before its call
    original = getattr(api, rpc)
    stranded: list[bytes] = []  # a transaction the emulator holds open (its rollback froze)

    def frozen_call(*args: Any, **kwargs: Any) -> Any:
        transaction = rpc == "begin_transaction" or kwargs["request"].get("transaction")
        if transaction:
            proxy.frozen.set()
            if transaction is not True:
                stranded.append(transaction)
        return original(*args, **kwargs)

    setattr(api, rpc, frozen_call)
    started = time.monotonic()
    try:
        with pytest.raises(TransientError, match="claim_run"):
            store.claim_run(run("run-1", "launching"), GUARDS, NOW, False)
        elapsed = time.monotonic() - started
        assert proxy.frozen.is_set()
        assert elapsed < 5, f"claim_run took {elapsed:.1f}s with timeout=0.5s"
    finally:
        proxy.close()
        store.close()
        # release its locks, or later tests' transactions wait on them until it expires
        monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_env.host)
        direct = FirestoreStore(project=firestore_env.project).client
        for transaction in stranded:
            with contextlib.suppress(Exception):
                direct._firestore_api.rollback(request={
                    "database": direct._database_string, "transaction": transaction})
        direct.close()


def test_a_client_that_cannot_be_built_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """No emulator, no usable credentials: the first store call says what to set, as a
    ConfigError naming RETRAIN_STATE (not the SDK's exception from wherever it surfaced)."""
    monkeypatch.delenv("FIRESTORE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    store = FirestoreStore(project="test-project")
    for call in (lambda: store.is_processed("msg-1"),
                 lambda: store.points("m", "overall", "accuracy")):
        with pytest.raises(ConfigError) as info:
            call()
        assert info.value.variable == "RETRAIN_STATE"
        assert "missing.json" in info.value.reason and "credentials" in info.value.reason
    assert store._client is None


# ---------------------------------------------------------------------------- SDK internals
def test_the_installed_sdk_still_has_every_private_name_the_store_uses() -> None:
    """An SDK upgrade that drops or changes a private name the claim transaction uses fails
    here, naming the name and the installed version (not somewhere deep in a claim)."""
    missing = firestore_sdk.missing_private_names()
    assert not missing, "\n".join(missing)


def test_the_private_name_check_names_what_is_missing_and_the_version() -> None:
    gone = firestore_sdk.PrivateName(
        "google.cloud.firestore_v1.transaction.Transaction", "_no_such_state", "a test",
        instance=True)
    renamed = firestore_sdk.PrivateName(
        "google.cloud.firestore_v1.services.firestore.client.FirestoreClient", "commit",
        "a test", keywords=("request", "deadline"))
    version = firestore_sdk.installed_version()
    assert version == firestore_sdk.WRITTEN_FOR  # the pin in requirements.txt
    first, second = firestore_sdk.missing_private_names((gone, renamed))
    assert "Transaction._no_such_state is missing" in first and version in first
    assert "FirestoreClient.commit no longer takes keyword(s) deadline" in second
    assert f"google-cloud-firestore {version}" in second


def test_claims_retried_with_lock_priority_never_put_two_runs_of_a_model_in_flight(
    firestore_env: FirestoreEmulator,
) -> None:
    """Four instances claim runs of one model for a while; a winner ends its run soon after
    (as an outcome would). Retries carry `retry_transaction`, so a retry waits ahead of newer
    claims, but each attempt still reads and checks afresh in its own transaction: a claim
    that wins while another run is in flight is a broken invariant. The in-flight marker is
    cleared BEFORE the run's end is written, so a correct store can never meet a set one."""
    from triggers.state.protocol import IN_FLIGHT

    loose = Guards(cooldown=timedelta(0), max_runs=10**6, max_runs_per=timedelta(days=1))
    stores = [FirestoreStore(project=firestore_env.project) for _ in range(4)]
    lock = threading.Lock()
    in_flight: list[str] = []
    overlaps: list[tuple[str, str]] = []
    outcomes: Counter[str] = Counter()
    stop = time.monotonic() + 12

    def work(index: int, store: FirestoreStore) -> None:
        count = 0
        while time.monotonic() < stop:
            count += 1
            run_id = f"m-w{index}-{count}"
            record = RunRecord(run_id, "m", "p", "trig", "launching", "why", time.time(),
                               {"run_id": run_id}, claimed_by=f"msg-{run_id}")
            try:
                status = store.claim_run(record, loose, time.time(), False).status
            except TransientError:
                status = "transient"  # contention that did not clear: redelivered in life
            with lock:
                outcomes[status] += 1
                if status == "claimed":
                    overlaps.extend((held, run_id) for held in in_flight)
                    in_flight.append(run_id)
            if status != "claimed":
                continue
            time.sleep(0.05)
            with lock:
                in_flight.remove(run_id)
            for _ in range(20):
                with contextlib.suppress(TransientError):
                    store.update_run(run_id, IN_FLIGHT, RunUpdate(state="succeeded",
                                                                  ended_at=time.time()))
                    break

    threads = [threading.Thread(target=work, args=(i, s)) for i, s in enumerate(stores)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        for store in stores:
            store.close()
    assert overlaps == [], (f"{len(overlaps)} claims won while another run was in flight, "
                            f"first {overlaps[:3]}; {dict(outcomes)}")
    assert outcomes["claimed"] >= 2, f"too few claims to tell anything: {dict(outcomes)}"


def _transaction_of(call: RecordedCall) -> bytes:
    """The transaction id a recorded Firestore request ran in (b"" for none)."""
    from google.cloud.firestore_v1.types import firestore as messages

    kinds = {"Commit": messages.CommitRequest, "Rollback": messages.RollbackRequest,
             "RunQuery": messages.RunQueryRequest,
             "BatchGetDocuments": messages.BatchGetDocumentsRequest}
    kind = kinds.get(call.method.rsplit("/", 1)[1])
    return bytes(kind.deserialize(call.request).transaction) if kind is not None else b""


def test_a_claim_retried_after_an_abort_keeps_its_place_in_the_lock_queue(
    firestore_env: FirestoreEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Concurrent claims of one model conflict on its document: the emulator aborts some.
    Observed on the wire (a recording gRPC proxy in front of the emulator): every retry's
    BeginTransaction carries `options.read_write.retry_transaction` = the id of the claim's
    FIRST attempt (as the SDK's own retry does: `_Transactional.retry_id`), so a retried
    claim keeps the place it took when it began; a first attempt carries none; and still
    exactly one claim wins."""
    from google.cloud.firestore_v1.types import firestore as messages

    loose = Guards(cooldown=timedelta(0), max_runs=100, max_runs_per=timedelta(days=1))
    with GrpcRecorder(firestore_env.host) as recorder:
        monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", recorder.host)
        stores = [FirestoreStore(project=firestore_env.project) for _ in range(3)]
        aborted: set[bytes] = set()
        try:
            for round_ in range(3):  # contention is near certain; a calm round tries again
                barrier = threading.Barrier(len(stores))
                statuses: list[str] = []

                def claim(i: int, store: FirestoreStore, model: str,
                          barrier: threading.Barrier = barrier,
                          statuses: list[str] = statuses) -> None:
                    record = RunRecord(f"{model}-run-{i}", model, "p", "trig", "launching",
                                       "why", NOW, {"run_id": f"run-{i}"}, claimed_by="msg")
                    barrier.wait()
                    statuses.append(store.claim_run(record, loose, NOW, False).status)

                threads = [threading.Thread(target=claim, args=(i, s, f"m{round_}"))
                           for i, s in enumerate(stores)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(timeout=60)
                assert len(statuses) == len(stores), "a claim failed"
                assert statuses.count("claimed") == 1, statuses  # one in flight at a time
                aborted = {_transaction_of(c) for c in recorder.calls
                           if c.code == grpc.StatusCode.ABORTED}
                if aborted:
                    break
        finally:
            for store in stores:
                store.close()
        begins = [(bytes(messages.BeginTransactionRequest.deserialize(c.request)
                         .options.read_write.retry_transaction),
                   bytes(messages.BeginTransactionResponse.deserialize(c.responses[0])
                         .transaction))
                  for c in recorder.of("BeginTransaction")]
    assert aborted and b"" not in aborted, "the emulator aborted no claim: nothing retried"
    assert aborted <= {given for _, given in begins}
    first_attempts = {given for asked, given in begins if not asked}
    claim_of = {given: asked or given for asked, given in begins}  # attempt -> first attempt
    named = Counter(asked for asked, _ in begins if asked)
    assert set(named) <= first_attempts, (
        f"retry_transaction named a retry, not a claim's first attempt: {begins}")
    assert set(named) <= aborted, "retry_transaction named a first attempt that was not aborted"
    # each aborted attempt (first or retry) is followed by one retry naming its first attempt
    assert named == Counter(claim_of[a] for a in aborted), (
        f"aborted attempts and the retries naming their claim's first attempt differ; "
        f"BeginTransaction requests: {begins}")


def test_one_instance_claims_a_model_one_thread_at_a_time_so_none_is_aborted(
    firestore_env: FirestoreEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Threads of one instance claiming one model at once would lock each other out (the
    emulator aborts one of two transactions on the model's documents, as Firestore does):
    they queue in the store instead. Observed on the wire: no ABORTED; one claim wins in the
    one transaction begun, and the others, queued behind it, see its run in their first read
    and begin none."""
    loose = Guards(cooldown=timedelta(0), max_runs=100, max_runs_per=timedelta(days=1))
    with GrpcRecorder(firestore_env.host) as recorder:
        monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", recorder.host)
        store = FirestoreStore(project=firestore_env.project)
        threads_count = 6
        barrier = threading.Barrier(threads_count)
        statuses: list[str] = []

        def claim(i: int) -> None:
            record = RunRecord(f"queue-run-{i}", "queue-model", "p", "trig", "launching", "why",
                               NOW, {"run_id": f"queue-run-{i}"}, claimed_by="msg")
            barrier.wait()
            statuses.append(store.claim_run(record, loose, NOW, False).status)

        try:
            threads = [threading.Thread(target=claim, args=(i,)) for i in range(threads_count)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
        finally:
            store.close()
        aborted = [c for c in recorder.calls if c.code == grpc.StatusCode.ABORTED]
        begins = recorder.of("BeginTransaction")
    assert sorted(statuses) == ["blocked"] * (threads_count - 1) + ["claimed"], statuses
    assert aborted == [], f"{len(aborted)} aborted calls: the instance's claims collided"
    assert len(begins) == 1
