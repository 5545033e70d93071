"""The decision path on a real SQLite file: dedupe, M-of-N, guards, exactly-once launches,
run lifecycle (outcomes, fallback status, timeouts), and arrival order independence."""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from pipeline_client.launching.protocol import FakeLauncher, RunStatus
from tests.conftest import T0, Clock, Harness, policy_config
from thresholds.base import Point
from triggers.errors import ModelNotConfiguredError, TransientError
from triggers.events import Delivery
from triggers.ids import RUN_ID_PATTERN
from triggers.service import RetrainResult, RetrainService
from triggers.state.protocol import ModelState, RunRecord
from triggers.state.sqlite import SQLiteStore

HEALTHY = [0.96, 0.961, 0.959, 0.962, 0.96]
# accuracy-floor is 3 of the latest 5 below 0.95: with these values it fires at index 7.
DEGRADING = HEALTHY + [0.94, 0.93, 0.935, 0.93, 0.92]
FIRST_FIRE = 7


def feed(h: Harness, values: list[float], start_day: int = 0) -> list[object]:
    return [h.send(h.event(start_day + i, v)) for i, v in enumerate(values)]


def kinds(result: object) -> list[str]:
    return sorted(d.kind for d in result.decisions)  # type: ignore[attr-defined]


def test_fires_exactly_at_the_third_breach_of_five(harness: Harness) -> None:
    results = feed(harness, DEGRADING)
    launched = [i for i, r in enumerate(results) if r.launched]  # type: ignore[attr-defined]
    assert launched == [FIRST_FIRE]
    assert len(harness.launcher.runs) == 1
    request = harness.launcher.submitted[0]
    assert RUN_ID_PATTERN.match(request.run_id)
    assert request.parameters["model"] == "fraud-detector"
    assert request.parameters["training_days"] == 30
    assert request.parameters["trigger_id"] == request.trigger_id
    assert "3 of the latest 5" in request.parameters["reason"]
    assert request.labels == {
        "model": "fraud-detector", "policy": "accuracy-floor", "trigger-id": request.trigger_id}
    # later breaches are suppressed (disarmed), each recorded with the blocking run
    for r in results[FIRST_FIRE + 1:]:
        assert kinds(r) == ["suppressed"]
        assert "still in flight" in r.decisions[0].reason  # type: ignore[attr-defined]


def test_same_message_five_times_is_one_point_and_one_run(harness: Harness) -> None:
    feed(harness, DEGRADING[:FIRST_FIRE])
    event = harness.event(FIRST_FIRE, DEGRADING[FIRST_FIRE])
    results = [harness.send(event, message_id="same-id") for _ in range(5)]
    assert [r.status for r in results] == ["recorded"] + ["duplicate"] * 4
    assert len(harness.store.points("fraud-detector", "overall", "accuracy")) == FIRST_FIRE + 1
    assert len(harness.launcher.submitted) == 1
    assert len(harness.store.runs("fraud-detector")) == 1


def test_corrected_value_replaces_the_point(harness: Harness) -> None:
    harness.send(harness.event(1, 0.90))
    harness.send(harness.event(1, 0.97))
    points = harness.store.points("fraud-detector", "overall", "accuracy")
    assert [p.value for p in points] == [0.97]


def test_transient_launch_error_then_redelivery_launches_once_with_same_id(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(launcher=FakeLauncher(transient_failures=1))
    feed(h, DEGRADING[:FIRST_FIRE])
    event = h.event(FIRST_FIRE, DEGRADING[FIRST_FIRE])
    with pytest.raises(TransientError):
        h.send(event, message_id="m-fire")
    assert not h.store.is_processed("m-fire")  # not acked: Pub/Sub will redeliver
    assert [r.state for r in h.store.runs("fraud-detector")] == ["launching"]
    result = h.send(event, message_id="m-fire")  # the redelivery
    assert result.status == "recorded"
    assert len(h.launcher.submitted) == 2  # first attempt failed, second succeeded
    assert h.launcher.submitted[0].run_id == h.launcher.submitted[1].run_id
    assert len(h.launcher.runs) == 1
    assert [r.state for r in h.store.runs("fraud-detector")] == ["launched"]
    fired = [d for d in h.store.decisions("fraud-detector") if d.kind == "fired"]
    assert len(fired) == 1


def test_redelivery_after_a_crash_between_submit_and_ack_does_not_launch_twice(
    harness: Harness,
) -> None:
    feed(harness, DEGRADING[:FIRST_FIRE])
    event = harness.event(FIRST_FIRE, DEGRADING[FIRST_FIRE])
    harness.send(event, message_id="m-fire")
    # simulate the crash: the ack never happened
    harness.store._conn().execute("DELETE FROM processed WHERE message_id = 'm-fire'")
    result = harness.send(event, message_id="m-fire")
    assert result.status == "recorded"
    assert len(harness.launcher.runs) == 1
    assert len(harness.launcher.submitted) == 1  # the run existed: not submitted again
    assert [d.kind for d in result.decisions] == ["fired"]


def test_stale_launching_claim_is_resubmitted_by_the_next_event(
    make_harness: Callable[..., Harness],
) -> None:
    """A claim whose submit failed and whose message was never redelivered is not lost."""
    h = make_harness(launcher=FakeLauncher(transient_failures=1))
    feed(h, DEGRADING[:FIRST_FIRE])
    with pytest.raises(TransientError):
        h.send(h.event(FIRST_FIRE, DEGRADING[FIRST_FIRE]))
    h.clock.advance(minutes=5)
    h.send(h.event(FIRST_FIRE + 1, 0.96))
    assert [r.state for r in h.store.runs("fraud-detector")] == ["launched"]
    assert len(h.launcher.runs) == 1


def test_permanent_launch_refusal_is_recorded_and_acked(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(launcher=FakeLauncher(reject=True))
    results = feed(h, DEGRADING[: FIRST_FIRE + 1])
    assert results[-1].status == "recorded"  # type: ignore[attr-defined]
    assert kinds(results[-1]) == ["launch_failed"]
    assert [r.state for r in h.store.runs("fraud-detector")] == ["failed"]


def windowed(h: Harness, day: int) -> dict[str, object]:
    start = (T0 + timedelta(days=day - 1)).isoformat().replace("+00:00", "Z")
    return h.event(day, DEGRADING[day], window_start=start)


def test_a_missing_window_is_awaited_then_passed(harness: Harness) -> None:
    for day in (0, 1, 2, 3, 4, 5, 6):
        harness.send(windowed(harness, day))
    late = harness.send(windowed(harness, 8))  # day 7 is missing
    assert kinds(late) == ["insufficient_data"]
    assert "waiting for the accuracy window ending 2026-11-08T00:00:00Z" in (
        late.decisions[0].reason)
    harness.clock.advance(hours=2)  # past the default lateness of 1h: judge without day 7
    result = harness.send(windowed(harness, 9))
    assert kinds(result) == ["fired"] and result.launched


ADJACENT_SWAPS = [1, 0, 3, 2, 5, 4, 7, 6, 9, 8]
LATE_PAIR = [0, 1, 2, 3, 4, 5, 7, 6, 8, 9]
EARLY_HISTORY = [3, 4, 0, 1, 2, 5, 6, 7, 8, 9]
LATE_BURST = [0, 1, 2, 3, 4, 9, 8, 7, 6, 5]
# Any order once the first window is in (nothing says that windows before it exist).
SHUFFLED = [[0, *random.Random(seed).sample(range(1, 10), 9)] for seed in range(8)]


@pytest.mark.parametrize("order", [ADJACENT_SWAPS, LATE_PAIR, EARLY_HISTORY, LATE_BURST,
                                   *SHUFFLED],
                         ids=["adjacent-swaps", "late-pair", "early-history", "late-burst",
                              *(f"shuffled-{seed}" for seed in range(len(SHUFFLED)))])
def test_out_of_order_arrival_gives_the_same_decisions(
    make_harness: Callable[..., Harness], order: list[int]
) -> None:
    """Points are evaluated by event time; a gap in the windows (window_start) waits for the
    late point, which re-evaluates the points after it: the same point fires, the same run."""
    in_order = make_harness()
    for day in range(len(DEGRADING)):
        in_order.send(windowed(in_order, day))
    shuffled = make_harness()
    for day in order:
        shuffled.send(windowed(shuffled, day))

    def fired(h: Harness) -> set[tuple[str | None, float | None, str | None]]:
        return {(d.policy, d.event_time, d.run_id) for d in h.store.decisions(limit=1000)
                if d.kind == "fired"}

    assert len(fired(in_order)) == 1
    assert fired(in_order) == fired(shuffled)
    assert [r.run_id for r in in_order.store.runs()] == [r.run_id for r in shuffled.store.runs()]
    assert len(shuffled.launcher.runs) == 1


def test_cooldown_and_budget_suppress_with_reasons(make_harness: Callable[..., Harness]) -> None:
    yaml_text = """
    models:
      churn:
        pipeline: {template: %(template)s}
        policies:
          - {name: logloss-ceiling, metric: logloss, direction: lower_is_better,
             absolute: {threshold: 0.30}}
        guards: {cooldown: 1h, max_runs: {count: 2, per: 1d}}
    """
    h = make_harness(yaml_text)
    launches = []
    for i in range(4):
        r = h.send(h.event(i, 0.5, model="churn", metric="logloss"))
        launches.append(bool(r.launched))
        for run in h.store.in_flight_runs("churn"):
            h.service.apply_outcome({"model": "churn", "run_id": run.run_id,
                                     "decision": "rejected"}, h.clock(), via="test")
        if i == 1:
            blocked = h.send(h.event(i + 0.5, 0.5, model="churn", metric="logloss"))
            assert kinds(blocked) == ["suppressed"]
            assert blocked.decisions[0].reason.split("blocked: ")[1].startswith("cooldown")
        h.clock.advance(hours=2)
    # 2 per day: runs at hours 0 and 2, then the budget blocks hours 4 and 6
    assert launches == [True, True, False, False]
    suppressed = [d for d in h.store.decisions("churn", limit=100) if d.kind == "suppressed"]
    assert any("budget: 2 runs in the last 1d" in d.reason for d in suppressed)


def test_promotion_starts_a_fresh_history_for_the_new_champion(harness: Harness) -> None:
    feed(harness, [v for v in DEGRADING[: FIRST_FIRE + 1]], start_day=0)
    run = harness.store.in_flight_runs("fraud-detector")[0]
    harness.clock.advance(days=1)
    outcome = {"model": "fraud-detector", "run_id": run.run_id, "trigger_id": run.trigger_id,
               "decision": "promoted", "champion_version": "8", "report": {"summary": "won"}}
    result = harness.service.handle_outcome_delivery(
        Delivery("outcome-1", json.dumps(outcome).encode(), "pubsub"))
    assert sorted(d.kind for d in result.decisions) == ["champion", "promoted"]
    state = harness.store.model_state("fraud-detector")
    assert state.champion_version == "8"
    # the same outcome again changes nothing
    again = harness.service.handle_outcome_delivery(
        Delivery("outcome-1", json.dumps(outcome).encode(), "pubsub"))
    assert again.status == "duplicate"
    # old version-7 points no longer count: the new champion needs 5 fresh points
    r = harness.send(harness.event(70, 0.90, model_version="8"))
    assert kinds(r) == ["insufficient_data"]
    r = harness.send(harness.event(71, 0.90, model_version="7"))
    assert kinds(r) == ["ignored"]


def test_a_new_champions_points_seen_before_its_promotion_count(harness: Harness) -> None:
    # On Vertex the registry alias moves before the outcome arrives: the new version may be
    # evaluated (and its points stored, as not-the-champion's) before the service hears.
    for day, value in enumerate(DEGRADING[: FIRST_FIRE + 1]):
        harness.send(harness.event(day, value, model_version="7"))
    run = harness.store.in_flight_runs("fraud-detector")[0]
    early = [harness.send(harness.event(day, 0.90, model_version="8")) for day in (30, 31)]
    assert all(kinds(r) == ["ignored"] for r in early)
    harness.service.apply_outcome({"model": "fraud-detector", "run_id": run.run_id,
                                   "decision": "promoted", "champion_version": "8"},
                                  harness.clock(), via="test")
    harness.clock.advance(hours=73)
    r = [harness.send(harness.event(day, 0.90, model_version="8")) for day in (32, 33, 34)]
    # 5 points of version 8 (two from before the promotion): 3 of 5 breach → fires
    assert kinds(r[-1]) == ["fired"], r[-1]
    assert [kinds(x) for x in r[:2]] == [["insufficient_data"], ["insufficient_data"]]


def test_rejected_challenger_re_arms_after_cooldown(harness: Harness) -> None:
    feed(harness, DEGRADING[: FIRST_FIRE + 1])
    run = harness.store.in_flight_runs("fraud-detector")[0]
    harness.service.apply_outcome({"model": "fraud-detector", "run_id": run.run_id,
                                   "decision": "rejected"}, harness.clock(), via="test")
    r = harness.send(harness.event(20, 0.90))
    assert kinds(r) == ["suppressed"] and "cooldown" in r.decisions[0].reason
    harness.clock.advance(hours=73)
    r = harness.send(harness.event(21, 0.90))
    assert kinds(r) == ["fired"] and r.launched


def test_outcome_by_launcher_status_when_no_message_arrives(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(status_interval=0)
    feed(h, DEGRADING[: FIRST_FIRE + 1])
    run = h.store.in_flight_runs("fraud-detector")[0]
    h.launcher.finish(run.run_id, "failed")
    h.clock.advance(hours=80)
    r = h.send(h.event(30, 0.90))
    assert [x.kind for x in r.decisions][:1] == ["failed"]
    assert h.store.get_run(run.run_id).state == "failed"  # type: ignore[union-attr]
    assert r.launched  # re-armed, cooldown passed, still breaching: a new run


def test_run_timeout_marks_the_run_and_re_arms(harness: Harness) -> None:
    feed(harness, DEGRADING[: FIRST_FIRE + 1])
    run = harness.store.in_flight_runs("fraud-detector")[0]
    harness.launcher.statuses[run.run_id] = RunStatus("running")
    harness.clock.advance(hours=25)
    r = harness.send(harness.event(30, 0.96))
    assert "timed_out" in [d.kind for d in r.decisions]
    assert harness.store.get_run(run.run_id).state == "timed_out"  # type: ignore[union-attr]
    assert harness.store.in_flight_runs("fraud-detector") == []


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (b"{not json", "data"),
        (b'{"model": "fraud-detector", "metrics": {"accuracy": NaN},'
         b' "window_end": "2026-11-01T00:00:00Z"}', "data"),
        (json.dumps({"model": "fraud-detector", "metrics": {"accuracy": 0.9}}).encode(),
         "window_end"),
        (json.dumps({"model": "fraud-detector", "metrics": {"accuracy": 0.9},
                     "window_end": "2026-11-01T00:00:00"}).encode(), "window_end"),
        (json.dumps({"model": "fraud-detector", "metrics": {"accuracy": "high"},
                     "window_end": "2026-11-01T00:00:00Z"}).encode(), "metrics"),
        (json.dumps({"model": "fraud-detector", "metrics": {"accuracy": 0.9}, "colour": 1,
                     "window_end": "2026-11-01T00:00:00Z"}).encode(), "colour"),
        (json.dumps({"model": "nobody", "metrics": {"accuracy": 0.9},
                     "window_end": "2026-11-01T00:00:00Z"}).encode(), "model"),
        (b"x" * (1024 * 1024), "data"),
    ],
    ids=["malformed-json", "nan", "missing-window-end", "no-offset", "string-value",
         "extra-field", "unknown-model", "1MiB"],
)
def test_bad_events_are_rejected_and_stored_with_the_field(
    harness: Harness, payload: bytes, field: str
) -> None:
    result = harness.send(payload, message_id="bad")
    assert result.status == "rejected"
    assert result.error.field == field
    rejected = harness.store.rejected_events()
    assert [(r.message_id, r.field) for r in rejected] == [("bad", field)]
    assert len(rejected[0].payload) <= 1030
    assert harness.store.is_processed("bad")
    assert [d.kind for d in harness.store.decisions()] == ["rejected"]
    assert harness.send(payload, message_id="bad").status == "duplicate"


def test_points_of_unwatched_slices_and_metrics_are_counted_not_stored(
    harness: Harness,
) -> None:
    results = [harness.send(harness.event(i, 0.5, slice="mobile")) for i in range(6)]
    assert all(r.decisions == [] and r.ignored_metrics == 1 for r in results)
    assert harness.store.points("fraud-detector", "mobile", "accuracy") == []
    assert harness.store.ignored_metrics(results[0].message_id) == 1
    assert harness.launcher.submitted == []
    both = harness.send(harness.event(7, 0.97, metrics={"accuracy": 0.97, "auc": 0.9}))
    assert both.ignored_metrics == 1 and harness.store.ignored_metrics(both.message_id) == 1
    assert [p.metric for p in harness.store.latest_points("fraud-detector", 10)] == ["accuracy"]


def test_manual_retrain_dry_run_force_and_in_flight(harness: Harness) -> None:
    feed(harness, HEALTHY)
    dry = harness.service.request_retrain("fraud-detector", "check", dry_run=True)
    assert dry.would_launch and dry.policies_fired == [] and harness.launcher.runs == {}
    first = harness.service.request_retrain("fraud-detector", "new labels arrived")
    assert first.status == "fired" and first.run_id in harness.launcher.runs
    # in flight: even force is refused
    forced = harness.service.request_retrain("fraud-detector", "again", force=True)
    assert forced.status == "suppressed" and "in flight" in forced.reason
    harness.service.apply_outcome({"model": "fraud-detector", "run_id": first.run_id,
                                   "decision": "rejected"}, harness.clock(), via="test")
    # cooldown blocks a plain request; force passes it
    plain = harness.service.request_retrain("fraud-detector", "once more")
    assert plain.status == "suppressed" and "cooldown" in plain.reason
    forced = harness.service.request_retrain("fraud-detector", "once more", force=True)
    assert forced.status == "fired" and len(harness.launcher.runs) == 2


def test_bounded_reads_give_the_verdicts_of_the_whole_history(
    make_harness: Callable[..., Harness],
) -> None:
    """The service reads only what each policy needs; its verdicts must equal evaluating the
    whole champion history, for every policy kind, with noisy points to skip."""
    yaml_text = """
    models:
      m:
        pipeline: {template: %(template)s}
        guards: {cooldown: 0s, max_runs: {count: 10000, per: 1d}, skip_if_running: false}
        policies:
          - {name: floor, metric: a, direction: higher_is_better, min_examples: 50,
             absolute: {threshold: 0.5}, breaches_to_trigger: 3, evaluation_points: 6}
          - {name: base, metric: a, direction: higher_is_better, min_examples: 50,
             baseline: {max_relative_drop: 0.1, reference_points: 4}}
          - {name: trend, metric: a, direction: higher_is_better,
             trend: {lookback: 10d, min_points: 6, max_decline_per_day: 0.001}}
          - {name: cast, metric: a, direction: higher_is_better,
             forecast: {threshold: 0.4, horizon: 5d, lookback: 8d, min_points: 5}}
    """
    h = make_harness(yaml_text)
    rng = random.Random(7)
    model = h.service.config.models["m"]
    history: list[Point] = []
    for day in range(120):
        value = 0.6 + 0.1 * math.sin(day / 9) + rng.uniform(-0.05, 0.05)
        examples = rng.choice([10, 100, 1000])
        result = h.send(h.event(day, value, model="m", metric="a", examples=examples))
        history.append(Point((T0 + timedelta(days=day)).timestamp(), value, examples))
        got = {d.policy: (d.kind, d.statistic) for d in result.decisions}
        for policy in model.policies:
            expected = policy.evaluate(history)
            kind, statistic = got[policy.name]
            assert (kind == "insufficient_data") == (expected.status == "insufficient_data")
            assert (kind in ("fired", "suppressed")) == expected.fired, (day, policy.name)
            assert statistic == expected.statistic, (day, policy.name)


def test_in_order_windows_never_wait_for_any_policy_kind(
    make_harness: Callable[..., Harness],
) -> None:
    """Contiguous windows delivered in order leave no gap to wait for, whatever a policy reads
    (a baseline reads its first points and its latest, not what lies between)."""
    yaml_text = """
    models:
      m:
        pipeline: {template: %(template)s}
        policies:
          - {name: base, metric: a, direction: higher_is_better,
             baseline: {max_relative_drop: 0.5}}
          - {name: trend, metric: a, direction: higher_is_better,
             trend: {lookback: 5d, min_points: 4, max_decline_per_day: 0.5}}
          - {name: floor, metric: a, direction: higher_is_better,
             absolute: {threshold: 0.1}, breaches_to_trigger: 2, evaluation_points: 3}
    """
    h = make_harness(yaml_text)
    for day in range(12):
        start = (T0 + timedelta(days=day - 1)).isoformat().replace("+00:00", "Z")
        result = h.send(h.event(day, 0.9, model="m", metric="a", window_start=start))
        assert not [d.reason for d in result.decisions if "waiting for" in d.reason], day
    assert {d.kind for d in result.decisions} == {"ok"}


# --- run ends that must never be lost (review findings) -------------------------------------


class FlakyChampionStore(SQLiteStore):
    """A real SQLite store whose next champion write fails, as a locked database would."""

    failures = 1

    def set_model_state(self, state: ModelState) -> None:
        if self.failures:
            self.failures -= 1
            raise TransientError("database is locked (injected)")
        super().set_model_state(state)


def promoted(run: RunRecord, version: str = "8") -> bytes:
    return json.dumps({"model": run.model, "run_id": run.run_id, "decision": "promoted",
                       "champion_version": version}).encode()


def test_an_outcome_is_all_or_nothing(tmp_path: Path) -> None:
    store = FlakyChampionStore(tmp_path / "state.db")
    h = Harness(RetrainService(policy_config(), store, FakeLauncher(), clock=Clock()), store,
                FakeLauncher(), Clock())
    h.service.launcher = h.launcher
    h.service.clock = h.clock
    feed(h, DEGRADING[: FIRST_FIRE + 1])
    run = store.in_flight_runs("fraud-detector")[0]
    with pytest.raises(TransientError):
        h.service.handle_outcome_delivery(Delivery("out-1", promoted(run), "pubsub"))
    assert store.get_run(run.run_id).state == "launched"  # type: ignore[union-attr]
    again = h.service.handle_outcome_delivery(Delivery("out-1", promoted(run), "pubsub"))
    assert sorted(d.kind for d in again.decisions) == ["champion", "promoted"]
    assert store.model_state("fraud-detector").champion_version == "8"


@pytest.mark.parametrize("inferred", ["completed", "timed_out"])
def test_a_real_outcome_replaces_an_inferred_end(
    make_harness: Callable[..., Harness], inferred: str
) -> None:
    h = make_harness(status_interval=0)
    feed(h, DEGRADING[: FIRST_FIRE + 1])
    run = h.store.in_flight_runs("fraud-detector")[0]
    if inferred == "completed":
        h.launcher.finish(run.run_id, "succeeded")  # Vertex says done; the outcome is late
    else:
        h.clock.advance(hours=25)
    h.send(h.event(20, 0.96))
    assert h.store.get_run(run.run_id).state == inferred  # type: ignore[union-attr]
    result = h.service.handle_outcome_delivery(Delivery("late", promoted(run), "pubsub"))
    assert "promoted" in [d.kind for d in result.decisions]
    assert h.store.get_run(run.run_id).state == "promoted"  # type: ignore[union-attr]
    assert h.store.model_state("fraud-detector").champion_version == "8"


def test_a_run_never_submitted_fails_at_run_timeout(make_harness: Callable[..., Harness]) -> None:
    h = make_harness(launcher=FakeLauncher(transient_failures=1000))
    feed(h, DEGRADING[:FIRST_FIRE])
    with pytest.raises(TransientError):
        h.send(h.event(FIRST_FIRE, DEGRADING[FIRST_FIRE]))
    h.clock.advance(hours=25)  # Pub/Sub gave up; the launcher never came back
    r = h.send(h.event(30, 0.96))
    assert "launch_failed" in [d.kind for d in r.decisions]
    assert [x.state for x in h.store.runs("fraud-detector")] == ["failed"]
    assert h.store.in_flight_runs("fraud-detector") == []


def test_a_malformed_outcome_from_the_launcher_fails_the_run_not_the_model(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(status_interval=0)
    feed(h, DEGRADING[: FIRST_FIRE + 1])
    run = h.store.in_flight_runs("fraud-detector")[0]
    h.launcher.finish(run.run_id, "succeeded", {"decision": "skipped"})
    r = h.send(h.event(20, 0.96))
    assert r.status == "recorded" and "failed" in [d.kind for d in r.decisions]
    failed = h.store.get_run(run.run_id)
    assert failed is not None and failed.state == "failed"
    assert "invalid_outcome" in failed.outcome["report"]  # type: ignore[index]


def test_a_promotion_must_name_the_champion(harness: Harness) -> None:
    feed(harness, DEGRADING[: FIRST_FIRE + 1])
    run = harness.store.in_flight_runs("fraud-detector")[0]
    body = json.dumps({"model": run.model, "run_id": run.run_id, "decision": "promoted"})
    result = harness.service.handle_outcome_delivery(Delivery("o", body.encode(), "pubsub"))
    assert result.status == "rejected" and "champion_version" in result.error.reason
    assert harness.store.get_run(run.run_id).state == "launched"  # type: ignore[union-attr]


def test_the_same_manual_request_after_its_run_ended_is_refused(harness: Harness) -> None:
    feed(harness, HEALTHY)
    first = harness.service.request_retrain("fraud-detector", "labels", force=True)
    harness.service.apply_outcome({"model": "fraud-detector", "run_id": first.run_id,
                                   "decision": "rejected"}, harness.clock(), via="test")
    again = harness.service.request_retrain("fraud-detector", "labels", force=True)
    assert again.status == "suppressed" and "already triggered" in again.reason
    assert len(harness.launcher.submitted) == 1
    other = harness.service.request_retrain("fraud-detector", "labels, again", force=True)
    assert other.status == "fired" and len(harness.launcher.runs) == 2


def test_an_unconfigured_model_is_a_domain_error_and_answers_are_typed(
    harness: Harness,
) -> None:
    """The service raises what went wrong, not an HTTP status (the HTTP layer maps it), and
    `request_retrain` answers with a typed result."""
    for call in (lambda: harness.service.request_retrain("nope", "x"),
                 lambda: harness.service.model_status("nope")):
        with pytest.raises(ModelNotConfiguredError) as info:
            call()
        assert info.value.model == "nope" and info.value.field == "model"
    dry = harness.service.request_retrain("fraud-detector", "check", dry_run=True)
    assert isinstance(dry, RetrainResult) and dry.status is None
    assert "status" not in dry.to_json() and dry.to_json()["would_launch"] is True


def test_cli_flags_do_not_leak_into_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """`rollback --policies P --state S` uses them for its own service only."""
    from tests.conftest import EXAMPLE_TEMPLATE, POLICY_YAML
    from triggers.tools.cli import main

    monkeypatch.delenv("RETRAIN_POLICY_FILE", raising=False)
    monkeypatch.delenv("RETRAIN_STATE", raising=False)
    policy = tmp_path / "policies.yaml"
    policy.write_text(POLICY_YAML % {"template": EXAMPLE_TEMPLATE})
    state = f"sqlite:///{tmp_path / 'state.db'}"
    code = main(["rollback", "not-a-model", "--policies", str(policy), "--state", state])
    assert code == 2 and "'not-a-model' is not in the policy file" in capsys.readouterr().err
    assert "RETRAIN_POLICY_FILE" not in os.environ and "RETRAIN_STATE" not in os.environ
