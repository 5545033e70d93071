"""Cloud Monitoring incidents (schema 1.2 notifications, saved under tests/fixtures) on the
metric path: `alert` policies launch once per incident, `inhibit_when` holds retraining back,
and told decisions wait in the outbox — on a real SQLite file with the fake launcher."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Harness
from tests.test_service import DEGRADING, FIRST_FIRE, feed
from triggers.cloud.outbox import RecordingPublisher, drain
from triggers.errors import InvalidEventError
from triggers.incidents import looks_like_incident, parse_incident

FIXTURES = Path(__file__).parent / "fixtures"
POLICIES = """
defaults:
  guards: {cooldown: 1h}
models:
  fraud-detector:
    pipeline: {template: %(template)s}
    policies:
      - {name: accuracy-floor, metric: accuracy, direction: higher_is_better,
         absolute: {threshold: 0.95}, breaches_to_trigger: 3, evaluation_points: 5}
      - {name: drift-alert, alert: {}}
    inhibit_when:
      - {policy_name: Feature store freshness}
  churn:
    pipeline: {template: %(template)s}
    policies:
      - {name: by-name, alert: {policy_name: Feature store freshness,
                                condition_name: No new rows for 6h}}
"""


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


@pytest.fixture
def h(make_harness: Callable[..., Harness]) -> Harness:
    harness = make_harness(POLICIES)
    harness.store.outbox_switch.on = True  # as with RETRAIN_DECISIONS_TOPIC set
    return harness


def test_the_saved_notifications_are_recognised_and_metric_events_are_not(h: Harness) -> None:
    incident = parse_incident(fixture("incident_open.json"))
    assert incident.open and incident.incident_id == "0.opqiw61fsv7p"
    assert incident.model_label == "fraud-detector"
    assert looks_like_incident(fixture("incident_closed.json"))
    assert not looks_like_incident(json.dumps(h.event(0, 0.9)).encode())
    bad = json.loads(fixture("incident_open.json"))
    bad["incident"]["state"] = "snoozed"
    with pytest.raises(InvalidEventError) as caught:
        parse_incident(json.dumps(bad).encode())
    assert caught.value.field == "incident.state"


def test_an_open_incident_launches_once_however_often_it_arrives(h: Harness) -> None:
    first = h.send(fixture("incident_open.json"), "n-1")
    assert first.status == "recorded" and len(first.launched) == 1
    fired = [d for d in first.decisions if d.kind == "fired"]
    assert fired[0].policy == "drift-alert"
    assert fired[0].reason.startswith("Prediction drift for fraud-detector")
    assert h.send(fixture("incident_open.json"), "n-1").status == "duplicate"
    again = h.send(fixture("incident_open.json"), "n-2")  # delivered again / reopened
    assert again.launched == []
    assert [d.kind for d in again.decisions] == ["suppressed"]
    closed = h.send(fixture("incident_closed.json"), "n-3")
    assert [d.kind for d in closed.decisions] == ["ok"] and "closed" in closed.decisions[0].reason
    assert len(h.launcher.submitted) == 1
    run_id = h.launcher.submitted[0].run_id
    assert run_id == first.launched[0]
    # the same (model, policy, incident) always names the same run
    assert run_id == h.service._launch_request(
        h.service.config.models["fraud-detector"], h.store.model_state("fraud-detector"),
        "drift-alert", "incident|0.opqiw61fsv7p", "any reason").run_id


def test_an_unlabelled_incident_is_mapped_by_name_and_an_unknown_one_is_rejected(
    h: Harness,
) -> None:
    result = h.send(fixture("incident_freshness_open.json"), "f-1")
    assert {d.model for d in result.decisions} == {"fraud-detector", "churn"}
    assert [r.model for r in h.launcher.submitted] == ["churn"]
    unknown = json.loads(fixture("incident_freshness_open.json"))
    unknown["incident"]["policy_name"] = "Someone else's policy"
    rejected = h.send(json.dumps(unknown).encode(), "f-2")
    assert rejected.status == "rejected" and rejected.error is not None
    assert rejected.error.field == "incident.policy_name"
    assert h.store.rejected_events()[0].message_id == "f-2"


def test_an_open_inhibiting_incident_holds_every_retraining_back_and_says_which(
    h: Harness,
) -> None:
    h.send(fixture("incident_freshness_open.json"), "f-1")
    results = feed(h, DEGRADING)
    held = [d for d in results[FIRST_FIRE].decisions  # type: ignore[attr-defined]
            if d.kind == "suppressed"]
    assert held and held[0].details["inhibited_by"] == "0.nfr3shn3ss01"
    assert "Feature store freshness" in held[0].reason
    assert h.service.request_retrain("fraud-detector", "by hand").status == "suppressed"
    assert h.send(fixture("incident_open.json"), "d-1").launched == []
    assert not any(r.model == "fraud-detector" for r in h.launcher.submitted)

    h.send(fixture("incident_freshness_closed.json"), "f-2")
    h.send(fixture("incident_freshness_open.json"), "f-3")  # late: a closed one stays closed
    after = h.send(h.event(20, 0.90))
    assert len(after.launched) == 1

    publisher = RecordingPublisher()
    report = drain(h.store, publisher)
    told = [(a["kind"], json.loads(data).get("details", {}).get("inhibited_by"))
            for data, a in publisher.messages]
    assert ("suppressed", "0.nfr3shn3ss01") in told and ("fired", None) in told
    assert report.published == len(publisher.messages) and report.left == 0
    assert drain(h.store, publisher).published == 0  # cleared: told once


def test_a_reopened_incident_launches_nothing_more(h: Harness) -> None:
    """Cloud Monitoring may close an incident and open it again under the same id (the
    condition flaps): the run it launched is that incident's, whatever the cooldown says."""
    h.send(fixture("incident_open.json"), "r-1")
    assert len(h.launcher.submitted) == 1
    run = h.launcher.submitted[0]
    # The run is over (nothing in flight holds the next launch back), the incident closes.
    h.service.apply_outcome({"model": "fraud-detector", "run_id": run.run_id,
                             "decision": "rejected"}, h.clock(), via="test")
    assert h.store.in_flight_runs("fraud-detector") == []
    h.send(fixture("incident_closed.json"), "r-2")
    h.clock.advance(days=3)  # long past the 1h cooldown: only the incident id holds it
    reopened = h.send(fixture("incident_open.json"), "r-3")
    assert reopened.status == "recorded" and reopened.launched == []
    assert len(h.launcher.submitted) == 1
    assert [d.kind for d in reopened.decisions] == ["suppressed"]
    # Another incident of the same alerting policy is a new reason: it launches.
    other = json.loads(fixture("incident_open.json"))
    other["incident"]["incident_id"] = "0.another0000"
    fresh = h.send(json.dumps(other).encode(), "r-4")
    assert len(fresh.launched) == 1, [d.reason for d in fresh.decisions]
