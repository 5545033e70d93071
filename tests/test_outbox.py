"""The decisions outbox as deployed: kept only with RETRAIN_DECISIONS_TOPIC (from the validated
environment), and read after a delivery only when it wrote a told decision, when the last drain
left some, or on a bounded schedule — with no told decision left behind. Real SQLite files."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE_TEMPLATE
from triggers.cloud import entry, wiring
from triggers.cloud.environment import Environment
from triggers.cloud.outbox import PubSubPublisher, RecordingPublisher, Teller
from triggers.errors import ConfigError
from triggers.state.protocol import Decision
from triggers.state.sqlite import SQLiteStore

NOW = 1_800_000_000.0
TOPIC = "projects/retrain-test/topics/decisions"
POLICIES = f"""
models:
  fraud-detector:
    pipeline: {{template: {EXAMPLE_TEMPLATE}}}
    policies:
      - {{name: drift-alert, alert: {{}}}}
"""


def fired(decision_id: str) -> Decision:
    return Decision(decision_id, "fraud-detector", "fired", NOW, "drift", run_id="r")


def told_ids(publisher: RecordingPublisher) -> list[str]:
    return [attributes["decision_id"] for _, attributes in publisher.messages]


@pytest.fixture
def env_vars(tmp_path: Path) -> dict[str, str]:
    policy = tmp_path / "policies.yaml"
    policy.write_text(POLICIES, encoding="utf-8")
    return {"RETRAIN_POLICY_FILE": str(policy), "RETRAIN_STATE": f"sqlite:///{tmp_path}/s.db"}


@pytest.fixture
def clean_wiring(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("RETRAIN_DECISIONS_TOPIC", raising=False)
    wiring.reset()
    yield
    wiring.reset()


def test_without_a_decisions_topic_no_told_decision_is_kept(env_vars: dict[str, str]) -> None:
    service = wiring.build_service(Environment.from_env(env_vars))
    service.store.finish_message("m-1", NOW, [fired("d-1")])
    assert [d.decision_id for d in service.store.decisions()] == ["d-1"]
    assert service.store.outbox() == []  # nothing would ever drain it

    told = wiring.build_service(Environment.from_env({**env_vars,
                                                      "RETRAIN_DECISIONS_TOPIC": TOPIC}))
    told.store.finish_message("m-2", NOW, [fired("d-2")])
    assert [d.decision_id for d in told.store.outbox()] == ["d-2"]


def test_the_publisher_follows_the_validated_environment_not_the_process_variables(
    env_vars: dict[str, str], clean_wiring: None,
) -> None:
    wiring.use_environment(Environment.from_env({**env_vars, "RETRAIN_DECISIONS_TOPIC": TOPIC}))
    publisher = wiring.decision_publisher()
    assert isinstance(publisher, PubSubPublisher) and publisher.topic == TOPIC
    assert wiring.service().store.outbox_switch.on

    wiring.use_environment(Environment.from_env(env_vars))
    assert wiring.decision_publisher() is None
    assert not wiring.service().store.outbox_switch.on


def test_a_bad_decisions_topic_is_refused_at_cold_start_naming_the_variable(
    env_vars: dict[str, str],
) -> None:
    with pytest.raises(ConfigError, match="RETRAIN_DECISIONS_TOPIC"):
        Environment.from_env({**env_vars, "RETRAIN_DECISIONS_TOPIC": "not a topic"})
    with pytest.raises(ConfigError, match="GOOGLE_CLOUD_PROJECT"):
        Environment.from_env({**env_vars, "RETRAIN_DECISIONS_TOPIC": "decisions"})
    short = Environment.from_env({**env_vars, "RETRAIN_DECISIONS_TOPIC": "decisions",
                                  "GOOGLE_CLOUD_PROJECT": "retrain-test"})
    assert short.decisions_topic == TOPIC


class Ticks:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_outbox_is_read_only_when_this_delivery_told_something_or_on_schedule(
    tmp_path: Path,
) -> None:
    db = tmp_path / "s.db"
    mine, other = SQLiteStore(db), SQLiteStore(db)  # two instances on one database
    mine.outbox_switch.on = other.outbox_switch.on = True
    publisher, clock = RecordingPublisher(), Ticks()
    teller = Teller(publisher, interval=60.0, clock=clock)

    assert teller.tell(mine) is not None  # a new instance reads once: what others left
    other.finish_message("o-1", NOW, [fired("d-other")])  # the other instance, then it died
    mine.finish_message("m-1", NOW, [Decision("d-ok", "fraud-detector", "ok", NOW, "fine")])
    clock.now += 30
    assert teller.tell(mine) is None  # nothing told by this delivery: the outbox is not read
    assert publisher.messages == []

    mine.finish_message("m-2", NOW, [fired("d-mine")])
    report = teller.tell(mine)  # this delivery told: read, and all waiting published
    assert report is not None and report.published == 2
    assert sorted(told_ids(publisher)) == ["d-mine", "d-other"]

    other.finish_message("o-2", NOW, [fired("d-later")])
    clock.now += 30
    assert teller.tell(mine) is None
    clock.now += 31  # the schedule: another instance's entry is published within it
    assert teller.tell(mine) is not None and told_ids(publisher)[-1] == "d-later"
    assert mine.outbox() == []
    mine.close()
    other.close()


def test_a_failed_drain_is_retried_at_the_next_delivery_and_nothing_is_lost(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    store.outbox_switch.on = True
    publisher, clock = RecordingPublisher(failing=True), Ticks()
    teller = Teller(publisher, interval=3600.0, clock=clock)
    teller.tell(store)
    store.finish_message("m-1", NOW, [fired("d-1")])
    report = teller.tell(store)
    assert report is not None and report.error is not None  # Pub/Sub down: it stays queued
    assert [d.decision_id for d in store.outbox()] == ["d-1"]
    publisher.failing = False
    assert teller.tell(store) is not None  # the next delivery, told or not, retries
    assert told_ids(publisher) == ["d-1"] and store.outbox() == []
    store.close()


class SignallingPublisher(RecordingPublisher):
    """The recording fake that also says when a drain has read the outbox (it publishes)."""

    def __init__(self) -> None:
        super().__init__()
        self.published = threading.Event()

    def publish(self, messages: Sequence[tuple[bytes, Mapping[str, str]]]) -> list[bool]:
        accepted = super().publish(messages)
        self.published.set()
        return accepted


def test_a_thread_that_told_drains_after_its_own_commit_whatever_others_drained(
    tmp_path: Path,
) -> None:
    """Two deliveries on one instance: the first drains while the second's transaction, which
    holds a told decision, is still open (so it cannot see it); the second drains after its
    commit all the same — a drain elsewhere never marks another delivery's decision told."""
    store = SQLiteStore(tmp_path / "s.db")
    store.outbox_switch.on = True
    publisher, clock = SignallingPublisher(), Ticks()
    teller = Teller(publisher, interval=3600.0, clock=clock)
    teller.tell(store)
    store.finish_message("m-0", NOW, [fired("d-0")])
    writing = threading.Event()
    reports: list[object] = []

    def second_delivery() -> None:
        with store.atomic():
            store.finish_message("m-1", NOW, [fired("d-1")])
            writing.set()
            publisher.published.wait(10)  # the first delivery has read the outbox
        reports.append(teller.tell(store))

    thread = threading.Thread(target=second_delivery)
    thread.start()
    assert writing.wait(10)
    first = teller.tell(store)
    thread.join(10)
    assert first is not None and first.published == 1  # d-0 only: d-1 was not committed
    assert reports and reports[0] is not None
    assert set(told_ids(publisher)) == {"d-0", "d-1"}  # at least once: dedupe on the id
    assert store.outbox() == []
    store.close()


def test_the_entry_point_tells_through_the_process_teller(
    env_vars: dict[str, str], clean_wiring: None,
) -> None:
    wiring.use_environment(Environment.from_env(env_vars))
    service = wiring.service()
    service.store.finish_message("m-1", NOW, [fired("d-1")])
    assert entry.tell_decisions(service) is None  # no topic: no teller, nothing kept
    publisher = RecordingPublisher()
    service.store.outbox_switch.on = True
    service.store.finish_message("m-2", NOW, [fired("d-2")])
    report = entry.tell_decisions(service, Teller(publisher))
    assert report is not None and told_ids(publisher) == ["d-2"]
