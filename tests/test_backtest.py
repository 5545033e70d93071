"""Backtests: exact trigger counts on seeded series, the same decisions as the live service,
sweeps, malformed history lines, the command end to end; and the speed paths' equivalences."""

from __future__ import annotations

import csv
import json
import math
import random
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline_client.launching.protocol import FakeLauncher
from tests.conftest import EXAMPLE_TEMPLATE, ROOT, Clock, policy_config
from thresholds import Point, PolicySpec, build_policy
from thresholds.trend import DAY, kendall_p_value, theil_sen
from triggers.config import ServiceConfig
from triggers.events import Delivery, MetricEvent, fast_event
from triggers.service import RetrainService
from triggers.state.protocol import StateStore
from triggers.state.sqlite import SQLiteStore
from triggers.tools.backtest.io import BacktestInputError, read_history
from triggers.tools.backtest.replay import BacktestSettings, Replay, parse_recovery
from triggers.tools.backtest.report import BacktestReport, backtest, format_report
from triggers.tools.backtest.sweep import parse_sweep, run_sweeps

HOUR = 3600.0
T0 = datetime(2026, 3, 1, tzinfo=UTC)
HEALTHY, BAD = 0.96, 0.93
EPISODES = (50, 110, 170)
"""Start hours of the absolute tests' degradations: 10 hours at BAD each, HEALTHY around."""

NO_GUARDS = "{cooldown: 0s, max_runs: {count: 10000, per: 1d}, skip_if_running: false}"
COOLDOWN = "{cooldown: 24h, max_runs: {count: 10000, per: 1d}}"
BUDGET = "{cooldown: 1h, max_runs: {count: 2, per: 7d}}"


def stamp(hour: float) -> str:
    return (T0 + timedelta(hours=hour)).isoformat().replace("+00:00", "Z")


def events(values: Sequence[float], metric: str = "acc", **extra: Any) -> list[dict[str, Any]]:
    """Hourly metric events of model `m` (hour 0 = T0), as a history file holds them."""
    return [{"model": "m", "metrics": {metric: float(v)}, "window_end": stamp(h), **extra}
            for h, v in enumerate(values)]


def parsed(raw: Sequence[dict[str, Any]]) -> list[tuple[int, MetricEvent]]:
    out = []
    for line, data in enumerate(raw, start=1):
        event = fast_event(data)
        assert event is not None, data
        out.append((line, event))
    return out


def config(policies: str, guards: str = NO_GUARDS) -> ServiceConfig:
    """Model `m` with these guards and these policies (a YAML list)."""
    head = f"models:\n  m:\n    pipeline: {{template: %(template)s}}\n    guards: {guards}\n"
    return policy_config(head + "    policies:\n"
                         + textwrap.indent(textwrap.dedent(policies).strip(), " " * 6) + "\n")


def run(cfg: ServiceConfig, raw: Sequence[dict[str, Any]],
        settings: BacktestSettings | None = None) -> tuple[Replay, BacktestReport]:
    return backtest(cfg, parsed(raw), settings or BacktestSettings(run_duration=6 * HOUR))


def hours(times: Sequence[float]) -> list[float]:
    return [(t - T0.timestamp()) / HOUR for t in times]


# ------------------------------------------------------------------------------ absolute
FLOOR_3_OF_5 = """
- {name: floor, metric: acc, direction: higher_is_better, absolute: {threshold: 0.95},
   breaches_to_trigger: 3, evaluation_points: 5}
"""


def episode_values() -> list[float]:
    return [BAD if any(s <= h < s + 10 for s in EPISODES) else HEALTHY for h in range(240)]


def test_absolute_3_of_5_without_guards_fires_on_every_window_holding_3_breaches() -> None:
    # In each episode the 3rd bad hour (s+2) is the first window of 5 with 3 breaches; every
    # bad hour after it too (s+2..s+9), and the 2 healthy hours after the episode still see
    # 4 and 3 breaches (s+10, s+11): 10 fires per episode, each its own run (no guards).
    _, report = run(config(FLOOR_3_OF_5), events(episode_values()))
    expected = [float(s + k) for s in EPISODES for k in range(2, 12)]
    assert hours([t.time for t in report.triggers]) == expected
    assert len(report.runs) == 30 and report.suppressed == []
    # each episode's first trigger comes 2h after its first breach; 30 bad hours in all
    assert [t.detection_delay for t in report.triggers][::10] == [2 * HOUR] * 3
    floor = report.policies[0].time_worse
    assert floor is not None and floor.worse == 30 * HOUR and floor.stretches == 3


def test_absolute_with_cooldown_launches_once_per_episode() -> None:
    # The run launched at s+2 is in flight for 6h, then the 24h cooldown blocks the episode's
    # other 9 fires; episodes are 60h apart, so each gets exactly one run.
    _, report = run(config(FLOOR_3_OF_5, COOLDOWN), events(episode_values()))
    assert hours([r.launched for r in report.runs]) == [52.0, 112.0, 172.0]
    assert len(report.suppressed) == 27
    assert {r.state for r in report.runs} == {"rejected"}
    reasons = [s.reason for s in report.suppressed]
    assert sum("in flight" in r for r in reasons) == 3 * 5  # s+3..s+7, before s+2+6h
    assert sum("cooldown" in r for r in reasons) == 3 * 4  # s+8..s+11
    # a bad point stands for the hour it ends: each stretch starts at s-1, a run came at s+2
    floor = report.policies[0].time_worse
    assert floor is not None and floor.before_a_run == 3 * 3 * HOUR


def test_absolute_with_budget_stops_after_two_runs_a_week() -> None:
    # Run 1 at 52 ends (rejected) at 58, past the 1h cooldown: run 2 at 58, in flight over
    # 59-61. Episodes 2 and 3 (all within 7 days of both runs) are blocked by the budget.
    _, report = run(config(FLOOR_3_OF_5, BUDGET), events(episode_values()))
    assert hours([r.launched for r in report.runs]) == [52.0, 58.0]
    assert len(report.suppressed) == 8 + 10 + 10
    assert sum("budget: 2 runs" in s.reason for s in report.suppressed) == 20
    floor = report.policies[0].time_worse
    assert floor is not None and floor.before_a_run == (3 + 10 + 10) * HOUR


# ------------------------------------------------------------------------- trend, forecast
TREND = """
- {name: slide, metric: acc, direction: higher_is_better,
   trend: {lookback: 1d, min_points: 12, max_decline_per_day: 0.005}}
"""
FORECAST = """
- {name: cast, metric: acc, direction: higher_is_better,
   forecast: {threshold: 0.94, horizon: 1d, lookback: 1d, min_points: 12}}
"""
DECLINES = (100, 250)
"""Start hours of 48-hour declines of 0.02/day from 0.96; flat (with noise) in between."""


def declining_values(seed: int = 3) -> list[float]:
    rng = np.random.default_rng(seed)
    values = []
    for hour in range(400):
        into = next((hour - s for s in DECLINES if s <= hour < s + 48), None)
        level = HEALTHY - (0.02 * into / 24 if into is not None else 0.0)
        values.append(round(level + float(rng.normal(0, 0.0005)), 6))
    return values


def reference_fires(policy_yaml: str, values: Sequence[float]) -> list[float]:
    """Hours at which the policy alone fires, fed the series prefix by prefix."""
    policy = config(policy_yaml).models["m"].policies[0]
    points = [Point(T0.timestamp() + h * HOUR, v) for h, v in enumerate(values)]
    return [float(k) for k in range(len(points)) if policy.evaluate(points[: k + 1]).fired]


@pytest.mark.parametrize("policy_yaml", [TREND, FORECAST], ids=["trend", "forecast"])
def test_trend_and_forecast_without_guards_fire_where_the_policy_alone_fires(
    policy_yaml: str,
) -> None:
    values = declining_values()
    expected = reference_fires(policy_yaml, values)
    # the series is built so that only the declines (and the lookback after them) can fire
    assert expected and all(any(s <= h < s + 48 + 24 for s in DECLINES) for h in expected)
    _, report = run(config(policy_yaml), events(values))
    assert hours([t.time for t in report.triggers]) == expected
    assert len(report.runs) == len(expected)


def test_trend_with_cooldown_launches_once_per_decline() -> None:
    # Each decline can fire only within its 48h plus the 24h lookback after it; the 72h
    # cooldown covers that span, and the declines start 150h apart: one run each.
    _, report = run(config(TREND, "{cooldown: 72h}"), events(declining_values()))
    launched = hours([r.launched for r in report.runs])
    assert len(launched) == 2
    assert all(s <= h < s + 48 for h, s in zip(launched, DECLINES, strict=True))


def test_forecast_fires_ahead_of_the_first_breach() -> None:
    # 0.02/day from 0.96 crosses 0.94 after about 24h; projected a day ahead, the fitted line
    # crosses it long before that: the trigger comes first, with a lead time, no delay.
    _, report = run(config(FORECAST, "{cooldown: 72h}"), events(declining_values()))
    assert len(report.runs) == 2
    for trigger, start in zip(report.triggers, DECLINES, strict=True):
        first_breach = start + next(h for h, v in enumerate(declining_values()[start:])
                                    if v < 0.94)
        assert hours([trigger.time])[0] < first_breach
        assert trigger.detection_delay is None
        assert trigger.lead_time == pytest.approx(first_breach * HOUR
                                                  - (trigger.time - T0.timestamp()))


# ------------------------------------------------------------------------------ live parity
PARITY_POLICIES = """
- {name: floor, metric: acc, direction: higher_is_better, min_examples: 100,
   absolute: {threshold: 0.95}, breaches_to_trigger: 3, evaluation_points: 5}
- {name: slide, metric: acc, direction: higher_is_better, min_examples: 100,
   trend: {lookback: 2d, min_points: 12, max_decline_per_day: 0.004}}
- {name: cast, metric: acc, direction: higher_is_better,
   forecast: {threshold: 0.94, horizon: 1d, lookback: 2d, min_points: 12}}
- {name: base, metric: auc, direction: higher_is_better, baseline: {max_relative_drop: 0.02}}
"""
PARITY_GUARDS = "{cooldown: 12h, max_runs: {count: 3, per: 7d}, run_timeout: 24h}"


def parity_history(seed: int) -> list[dict[str, Any]]:
    """Hourly windows of version 7 sliding and recovering; noisy points with few examples,
    a missing window, points of another version, and corrections of a value."""
    rng = random.Random(seed)
    history: list[dict[str, Any]] = []
    acc, drift = HEALTHY, 0.0
    for hour in range(360):
        if hour % 120 == 60:
            drift = -0.0006
        if hour % 120 == 100:
            acc, drift = HEALTHY, 0.0
        acc += drift
        if hour == 200:
            continue  # a missing window: the service waits for it (lateness)
        event = {
            "model": "m", "model_version": "7",
            "metrics": {"acc": round(acc + rng.gauss(0, 0.002), 5),
                        "auc": round(0.97 - (0.03 if 150 < hour < 180 else 0)
                                     + rng.gauss(0, 0.002), 5)},
            "window_start": stamp(hour - 1), "window_end": stamp(hour),
            "examples": rng.choice([50, 1000, 1000, 1000]),
        }
        history.append(event)
        if hour % 97 == 5:  # a challenger's evaluation: not the champion's, ignored
            history.append({**event, "model_version": "8", "metrics": {"acc": 0.5, "auc": 0.5},
                            "window_start": stamp(hour - 0.5), "window_end": stamp(hour + 0.5)})
        if hour % 131 == 7:
            history.append({**event, "metrics": {"acc": 0.5}})  # a correction
        if hour % 120 in (85, 90, 95):  # corrections inside a slide that fire nothing
            history.append({**event, "metrics": {"acc": 0.99}})
    return history


def live_replay(cfg: ServiceConfig, history: Sequence[dict[str, Any]],
                store: SQLiteStore) -> None:
    """The service on a SQLite file, fed the events in event-time order as messages; the
    fake launcher's runs are ended (rejected) 6h after their launch."""
    clock, launcher = Clock(), FakeLauncher()
    service = RetrainService(cfg, store, launcher, clock=clock)
    ordered = sorted(enumerate(history, start=1),
                     key=lambda item: (item[1]["window_end"], item[0]))
    for line, event in ordered:
        clock.now = datetime.fromisoformat(event["window_end"]).timestamp()
        for live_run in store.in_flight_runs("m"):
            if live_run.launched_at is not None and clock.now >= live_run.launched_at + 6 * HOUR:
                launcher.finish(live_run.run_id, "succeeded", {"decision": "rejected"})
        service.handle_delivery(Delivery(f"msg-{line}", json.dumps(event).encode(), "pubsub"))


def audit(store: StateStore) -> list[tuple[str, str, float, str]]:
    kinds = ("fired", "suppressed", "launch_failed", "rejected_challenger", "timed_out",
             "champion", "ignored")
    return sorted((d.kind, d.policy or "", d.event_time or 0.0, d.run_id or "")
                  for d in store.decisions(limit=1_000_000) if d.kind in kinds)


@pytest.mark.parametrize("seed", [5, 6])
def test_backtest_and_live_service_make_the_same_decisions(tmp_path: Path, seed: int) -> None:
    cfg = config(PARITY_POLICIES, PARITY_GUARDS)
    history = parity_history(seed)
    replay, _ = run(cfg, history)

    store = SQLiteStore(tmp_path / "live.db")
    live_replay(cfg, history, store)
    live = audit(store)
    assert {kind for kind, *_ in live} >= {"fired", "suppressed", "ignored", "champion"}
    assert audit(replay.store) == live
    assert ([(r.run_id, r.created_at, r.state, r.ended_at) for r in replay.store.runs(limit=99)]
            == [(r.run_id, r.created_at, r.state, r.ended_at) for r in store.runs(limit=99)])
    # most events never reached the service's own handler: no policy fired on them
    assert replay.fast_events > len(history) // 2
    store.close()


def test_parity_holds_when_the_newest_point_has_too_few_examples(tmp_path: Path) -> None:
    """A lookback policy ignores unusable points, so its window ends at the newest usable
    one — in the live service's bounded reads as in the backtest. Hours 0-4 decline, 5-9 are
    flat, 10-14 are unusable: as of hour 14 the window is hours 0-9 (a decline: fires, held
    back by the run in flight), not hours 5-14 (flat: it would say ok)."""
    cfg = config("""
    - {name: slide, metric: acc, direction: higher_is_better, min_examples: 100,
       trend: {lookback: 9h, min_points: 4, max_decline_per_day: 0.01}}
    """)
    values = [0.99 - 0.01 * h for h in range(5)] + [0.94] * 5 + [0.5] * 5
    history = events(values)
    for hour, event in enumerate(history):
        event["examples"] = 1000 if hour < 10 else 10
    policy = cfg.models["m"].policies[0]
    points = [Point(T0.timestamp() + h * HOUR, v, e["examples"])
              for h, (v, e) in enumerate(zip(values, history, strict=True))]
    assert policy.evaluate(points).fired and not policy.evaluate(points[5:]).fired
    store = SQLiteStore(tmp_path / "live.db")
    live_replay(cfg, history, store)
    replay, _ = run(cfg, history)
    assert audit(replay.store) == audit(store)
    last_hour = T0.timestamp() + 14 * HOUR
    verdicts = [kind for kind, _, at, _ in audit(store) if at == last_hour]
    assert verdicts in (["fired"], ["suppressed"]), audit(store)
    store.close()


def test_parity_holds_with_a_challengers_points_between_the_champions(tmp_path: Path) -> None:
    # 3 of 3: the champion's hours 10-12 breach, so both fire at hour 12; had the challenger's
    # good point at 11.5 counted, the window at 12 would hold only 2 breaches.
    cfg = config("""
    - {name: floor, metric: acc, direction: higher_is_better, absolute: {threshold: 0.95},
       breaches_to_trigger: 3, evaluation_points: 3}
    """, COOLDOWN)
    history = events([HEALTHY] * 10 + [BAD] * 5, model_version="7")
    history.insert(12, {"model": "m", "model_version": "8", "metrics": {"acc": 0.99},
                        "window_end": stamp(11.5)})
    history.insert(4, {"model": "m", "model_version": "8", "metrics": {"acc": 0.5},
                       "window_end": stamp(3.5)})
    store = SQLiteStore(tmp_path / "live.db")
    live_replay(cfg, history, store)
    replay, report = run(cfg, history)
    assert audit(replay.store) == audit(store)
    assert hours([t.time for t in report.triggers]) == [12.0]
    # the challenger's bad half hour is not the model's: 5 bad hours, 10-14
    floor = report.policies[0].time_worse
    assert floor is not None and floor.worse == 5 * HOUR
    store.close()


# ------------------------------------------------------------------------------ recovery
def test_assumed_recovery_replaces_later_points_and_ends_the_degradation() -> None:
    values = [HEALTHY] * 50 + [BAD] * 150
    cfg = config("""
    - {name: floor, metric: acc, direction: higher_is_better, absolute: {threshold: 0.95}}
    """, "{cooldown: 24h, max_runs: {count: 100, per: 7d}}")
    raw = events(values, model_version="7")
    _, rejected = run(cfg, raw)
    # runs end rejected: re-armed 24h after each launch, the model stays degraded
    assert hours([r.launched for r in rejected.runs]) == [50.0 + 24 * k for k in range(7)]

    replay, report = run(cfg, raw, BacktestSettings(6 * HOUR, recovery={"*": 0.97}))
    assert [(hours([r.launched])[0], r.state) for r in report.runs] == [(50.0, "promoted")]
    # the promotion ends the run at hour 56: from that point on (the service learns of the
    # promotion as the point at 56 arrives) values read 0.97, under the new version
    stored = replay.store.points("m", "overall", "acc")
    assert {p.value for p in stored if p.window_end >= T0.timestamp() + 56 * HOUR} == {0.97}
    assert {p.model_version for p in stored[56:]} == {"simulated-1"}
    assert not [d for d in replay.store.all_decisions() if d.kind == "ignored"]
    floor = report.policies[0].time_worse
    assert floor is not None and floor.worse == 6 * HOUR  # hours 50..55 were recorded bad
    assert any(note.startswith("SIMULATED") for note in report.notes)
    assert [t.simulated for t in report.triggers] == [False]


def test_recovery_values_per_metric() -> None:
    cfg = config("""
    - {name: floor, metric: acc, direction: higher_is_better, absolute: {threshold: 0.95}}
    """, COOLDOWN)
    raw = [{**event, "metrics": {"acc": event["metrics"]["acc"], "auc": 0.9}}
           for event in events([HEALTHY] * 5 + [BAD] * 20)]
    recovery = parse_recovery(["0.97", "auc=0.99"])
    assert recovery == {"*": 0.97, "auc": 0.99}
    replay, report = run(cfg, raw, BacktestSettings(2 * HOUR, recovery=recovery))
    # the run launched at hour 5 ends at 7: from hour 7 on both metrics read their values
    after = T0.timestamp() + 7 * HOUR
    for metric, value in (("acc", 0.97), ("auc", 0.99)):
        stored = replay.store.points("m", "overall", metric)
        assert {p.value for p in stored if p.window_end >= after} == {value}
        assert replay.is_simulated("m", metric, after)
        assert not replay.is_simulated("m", metric, after - HOUR)
    assert len(report.runs) == 1
    for bad in (["acc="], ["=0.9"], ["x=nan"], ["high"]):
        with pytest.raises(BacktestInputError):
            parse_recovery(bad)


# ------------------------------------------------------------------------------ sweeps
def test_a_higher_floor_never_gives_fewer_triggers(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    values = [round(float(v), 4) for v in rng.uniform(0.90, 0.99, 200)]
    cfg = config("""
    - {name: floor, metric: acc, direction: higher_is_better, absolute: {threshold: 0.95}}
    """)
    sweep = parse_sweep("floor.threshold=0.90:0.98:0.01")
    assert sweep.values == (0.90, 0.91, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98)
    [result] = run_sweeps(cfg, parsed(events(values)), BacktestSettings(), [sweep], ["m"],
                          workers=2)
    triggers = [p.triggers for p in result.points]
    # 1 of 1 without guards: one trigger per value strictly below the threshold
    assert triggers == [sum(v < t for v in values) for t in sweep.values]
    assert triggers == sorted(triggers) and triggers[0] < triggers[-1]
    assert [p.runs for p in result.points] == triggers
    # "degraded" is fixed by the policy file's threshold, whatever the swept value
    assert result.slo.threshold == 0.95
    assert len({p.degraded for p in result.points}) == 1


def test_sweep_specs_are_checked() -> None:
    assert parse_sweep("cast.lookback=1d:2d:12h").values == (86400.0, 129600.0, 172800.0)
    assert parse_sweep("a.b.evaluation_points=1:3:1").policy == "a.b"
    # the spelling names the rule too
    qualified = parse_sweep("accuracy-floor.absolute.threshold=0.90:0.99:0.005")
    assert (qualified.policy, qualified.rule, qualified.field) == (
        "accuracy-floor", "absolute", "threshold")
    assert len(qualified.values) == 19 and qualified.values[-1] == 0.99
    for bad in ("floor.threshold", "floor=1:2:1", "floor.threshold=1:2", "x.y=2:1:1",
                "x.y=1:2:0", "x.y=a:b:c"):
        with pytest.raises(BacktestInputError):
            parse_sweep(bad)
    cfg = config(FLOOR_3_OF_5)
    for bad in ("floor.horizon=1:2:1", "nope.threshold=1:2:1",
                "floor.breaches_to_trigger=4:6:1",  # more than evaluation_points (5)
                "floor.evaluation_points=1.5:2:1", "floor.trend.threshold=1:2:1"):
        with pytest.raises(BacktestInputError):
            run_sweeps(cfg, parsed(events([HEALTHY] * 3)), BacktestSettings(),
                       [parse_sweep(bad)], ["m"], workers=1)


# ------------------------------------------------------------------------------ history
POLICY_FILE = """
models:
  m:
    pipeline: {template: %(template)s}
    guards: {cooldown: 24h, max_runs: {count: 100, per: 7d}}
    policies:
      - {name: floor, metric: acc, direction: higher_is_better, absolute: {threshold: 0.95},
         breaches_to_trigger: 3, evaluation_points: 5}
"""


def write_inputs(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A policy file, a CSV history (EPISODES), and a JSONL history with malformed lines."""
    policies = tmp_path / "policies.yaml"
    policies.write_text(textwrap.dedent(POLICY_FILE) % {"template": EXAMPLE_TEMPLATE})
    history = tmp_path / "history.csv"
    with open(history, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "metric", "value", "window_end", "examples"])
        for hour, value in enumerate(episode_values()):
            writer.writerow(["m", "acc", value, stamp(hour), 1000])
    good = json.dumps({"model": "m", "metrics": {"acc": 0.96}, "window_end": stamp(0)})
    lines = [
        good,
        '{"model": "m", "metrics": ',  # 2: not JSON
        json.dumps({"model": "m", "metrics": {"acc": 0.96}, "window_end": stamp(1)}),
        json.dumps({"model": "m", "metrics": {"acc": 0.96}}),  # 4: no window_end
        '{"model": "m", "metrics": {"acc": NaN}, "window_end": "2026-03-01T03:00:00Z"}',  # 5
        json.dumps({"model": "x", "metrics": {"acc": 0.9}, "window_end": stamp(4)}),  # 6
        "",
        json.dumps({"model": "m", "metrics": {"acc": 0.93}, "window_end": stamp(5)}),
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    return policies, history, bad


def test_malformed_lines_are_reported_with_their_line_number(tmp_path: Path) -> None:
    policies, _, bad = write_inputs(tmp_path)
    cfg = ServiceConfig.from_yaml(policies.read_text(), tmp_path)
    history = read_history(bad, cfg)
    assert [line for line, _ in history.events] == [1, 3, 8]
    assert [e.line for e in history.errors] == [2, 4, 5, 6]
    assert history.errors[0].reason.startswith("invalid JSON")
    assert history.errors[1].reason.startswith("window_end")
    assert "not configured" in history.errors[3].reason
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("model,metric,value,window_end\nm,acc,0.9,2026-03-01T00:00:00Z\n"
                       "m,acc,high,2026-03-01T01:00:00Z\nm,acc,0.9\n"
                       "m,acc,0.9,2026-03-01T02:00:00Z\n")
    history = read_history(bad_csv, cfg)
    assert [line for line, _ in history.events] == [2, 5]
    assert [str(e) for e in history.errors] == [
        "line 3: value 'high' is not a number",
        "line 4: expected 4 columns (model,metric,value,window_end), got 3"]


def cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "triggers", "backtest", *map(str, args)],
                          cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_command_skips_malformed_lines_or_refuses_them_with_strict(tmp_path: Path) -> None:
    policies, _, bad = write_inputs(tmp_path)
    skipped = cli("--policies", policies, "--history", bad, cwd=tmp_path)
    assert skipped.returncode == 0, skipped.stderr
    assert "skipped line 2: invalid JSON" in skipped.stderr
    assert "skipped line 5:" in skipped.stderr
    assert "Skipped 4 malformed line(s)" in skipped.stdout
    strict = cli("--policies", policies, "--history", bad, "--strict", cwd=tmp_path)
    assert strict.returncode == 2
    assert "4 malformed line(s) (--strict)" in strict.stderr
    assert "line 6: model: 'x' is not configured" in strict.stderr
    assert "Backtest of" not in strict.stdout


def test_command_writes_json_csv_and_a_sweep_plot(tmp_path: Path) -> None:
    policies, history, _ = write_inputs(tmp_path)
    done = cli("--policies", policies, "--history", history, "--output", "report.json",
               "--progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "replaying events [" in done.stderr
    assert "Retraining runs: 3 (3 rejected); suppressed triggers: 27" in done.stdout
    assert "A backtest cannot know how a retrained model would have scored" in done.stdout
    data = json.loads((tmp_path / "report.json").read_text())["backtest"]
    assert data["runs_count"] == 3 and data["suppressed_count"] == 27
    assert [t["time"] for t in data["triggers"]] == [stamp(52), stamp(112), stamp(172)]
    assert [t["detection_delay"] for t in data["triggers"]] == [2 * HOUR] * 3

    done = cli("--policies", policies, "--history", history, "--assume-recovery", "acc=0.97",
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Retraining runs: 1 (1 promoted)" in done.stdout
    assert "SIMULATED: every run is assumed to take 6h" in done.stdout

    done = cli("--policies", policies, "--history", history, "--output", "report.csv",
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(open(tmp_path / "report.csv", newline="")))
    assert [r["kind"] for r in rows].count("fired") == 3
    assert [r["kind"] for r in rows].count("suppressed") == 27

    done = cli("--policies", policies, "--history", history, "--output", "sweep.csv",
               "--sweep", "floor.threshold=0.92:0.97:0.01", "--sweep",
               "floor.evaluation_points=3:5:1", "--run-duration", "2h", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(open(tmp_path / "sweep.csv", newline="")))
    assert [(r["field"], float(r["value"])) for r in rows] == [
        *(("threshold", v) for v in (0.92, 0.93, 0.94, 0.95, 0.96, 0.97)),
        *(("evaluation_points", v) for v in (3.0, 4.0, 5.0))]
    # up to the bad value 0.93 nothing breaches; from 0.94 one run per episode; at 0.97 the
    # healthy hours breach too: a run every 24h (cooldown) from hour 4, 4 + 24k <= 239
    assert [int(r["runs"]) for r in rows[:6]] == [0, 0, 3, 3, 3, 10]
    assert "Sweep floor.threshold=0.92:0.97:0.01" in done.stdout


# ------------------------------------------------------------------------------ speed paths
def make_policy(kind: str, rule: dict[str, Any], **top: Any) -> Any:
    return build_policy(PolicySpec.parse({"name": "p", "metric": "a",
                                          "direction": "higher_is_better", kind: rule, **top}))


FIRES_CASES = {
    "absolute": ({"threshold": 0.5}, {"breaches_to_trigger": 2, "evaluation_points": 4}),
    "trend": ({"lookback": "12h", "min_points": 4, "max_decline_per_day": 0.5}, {}),
    "forecast": ({"threshold": 0.4, "horizon": "6h", "lookback": "12h", "min_points": 4}, {}),
    "baseline": ({"max_relative_drop": 0.3}, {}),
}


@pytest.mark.parametrize("kind", sorted(FIRES_CASES))
@pytest.mark.parametrize("min_examples", [0, 100])
def test_fires_agrees_with_the_verdict(kind: str, min_examples: int) -> None:
    """The replay's quick question (`fires`) and the verdict never disagree: noisy steps,
    flat stretches (no trend), tied values, points with too few examples."""
    rule, top = FIRES_CASES[kind]
    policy = make_policy(kind, rule, min_examples=min_examples, **top)
    rng = random.Random(min_examples)
    values = [0.7 if hour % 50 < 25 else 0.7 - 0.02 * (hour % 25) for hour in range(300)]
    values = [round(v + rng.uniform(-0.05, 0.05), 1 if hour % 7 == 0 else 3)
              if hour % 60 < 45 else 0.6 for hour, v in enumerate(values)]
    points = [Point(T0.timestamp() + h * HOUR, v, rng.choice([None, 10, 1000]))
              for h, v in enumerate(values)]
    answers = [policy.fires(points[:k]) for k in range(len(points))]
    assert answers == [policy.evaluate(points[:k]).fired for k in range(len(points))]
    assert any(answers) and not all(answers)


def windows(count: int) -> list[list[Point]]:
    """Windows of 2-119 points: regular, irregular, tied times, tied and monotone values."""
    rng = np.random.default_rng(0)
    out = []
    for case in range(count):
        n = int(rng.integers(3, 120))
        times = 1.79e9 + np.cumsum(rng.integers(1, 5, n)) * HOUR
        values = 0.95 + rng.normal(0, 0.01, n) - rng.uniform(0, 0.002) * np.arange(n)
        if case % 4 == 1:
            times = np.sort(1.79e9 + rng.integers(0, n // 2 + 1, n) * HOUR)
            values = np.round(values, 2)
        if case % 4 == 2:
            values = 0.9 - 0.001 * np.arange(n)
        if times[0] != times[-1]:
            out.append([Point(float(t), float(v)) for t, v in zip(times, values, strict=True)])
    return out


def test_robust_fit_and_kendall_test_are_scipys_to_the_bit() -> None:
    from scipy.stats import kendalltau, theilslopes

    def same(a: float, b: float) -> bool:
        return a == b or (math.isnan(a) and math.isnan(b))

    for index, window in enumerate(windows(400)):
        days = [(p.time - window[-1].time) / DAY for p in window]
        values = [p.value for p in window]
        confidence = (0.95, 0.9, 0.99)[index % 3]
        with np.errstate(invalid="ignore"):
            expected = theilslopes(values, days, alpha=confidence)
        fit = theil_sen(window, confidence)
        assert all(same(a, float(b)) for a, b in zip(
            (fit.slope, fit.level, fit.low_slope, fit.high_slope), expected, strict=True))
        for decreasing in (True, False):
            with np.errstate(all="ignore"):
                reference = kendalltau(days, values,
                                       alternative="less" if decreasing else "greater")
            assert same(kendall_p_value(window, decreasing), float(reference.pvalue))


def test_a_sweep_reuses_fits_and_gives_the_same_answers() -> None:
    values = declining_values()
    cfg = config(TREND, "{cooldown: 72h}")
    sweep = parse_sweep("slide.max_decline_per_day=0.004:0.006:0.001")
    [result] = run_sweeps(cfg, parsed(events(values)), BacktestSettings(), [sweep], ["m"],
                          slo_value=0.95, workers=1)
    for point, limit in zip(result.points, sweep.values, strict=True):
        yaml = TREND.replace("max_decline_per_day: 0.005", f"max_decline_per_day: {limit}")
        _, report = run(config(yaml, "{cooldown: 72h}"), events(values),
                        BacktestSettings())
        assert (point.runs, len(report.suppressed)) == (len(report.runs), point.suppressed)



# ------------------------------------------------------------------- review regressions
FLOOR_1 = """
    - {name: floor, metric: acc, direction: higher_is_better, absolute: {threshold: 0.95}}
    """


def test_recovery_starts_at_the_runs_end_even_without_versions() -> None:
    # No model_version: the bad point at hour 56 (the run's end) is read by the new model.
    values = [0.97] * 50 + [BAD] * 30
    _, report = run(config(FLOOR_1, "{cooldown: 0s, max_runs: {count: 100, per: 1d}}"),
                    events(values), BacktestSettings(6 * HOUR, recovery={"*": 0.97}))
    assert [(hours([r.launched])[0], r.state) for r in report.runs] == [(50.0, "promoted")]


def test_recovery_leaves_a_challengers_evaluations_alone() -> None:
    cfg = config(FLOOR_1 + """- {name: base, metric: auc, direction: higher_is_better,
       baseline: {max_relative_drop: 0.05}}
    """, "{cooldown: 0s, max_runs: {count: 100, per: 1d}}")
    raw = []
    for h in range(80):
        raw.append({"model": "m", "model_version": "7", "window_end": stamp(h),
                    "metrics": {"acc": 0.97 if h < 50 else BAD, "auc": 0.9}})
        if h % 10 == 3:  # a challenger, evaluated now and then: poor auc
            raw.append({"model": "m", "model_version": "8", "window_end": stamp(h + 0.5),
                        "metrics": {"acc": 0.99, "auc": 0.5}})
    replay, report = run(cfg, raw, BacktestSettings(6 * HOUR, recovery={"*": 0.97}))
    assert [(hours([r.launched])[0], r.policy) for r in report.runs] == [(50.0, "floor")]
    challenger = [p for p in replay.store.points("m", "overall", "auc") if p.value == 0.5]
    assert {p.model_version for p in challenger} == {"8"}
    assert report.ignored_events == len(challenger)
    assert "Not evaluated: 8 event(s)" in format_report(report)


def test_staleness_is_not_credited_to_a_run_for_an_earlier_blip() -> None:
    # hours 10-11 bad: a run at 10 (ends 16); hours 15-60 bad: the cooldown holds the next
    # run until 34. Each point stands for the hour before it: 9→10 and 14→34 had no run.
    values = [BAD if (10 <= h < 12 or 15 <= h < 61) else 0.97 for h in range(100)]
    _, report = run(config(FLOOR_1, "{cooldown: 24h, max_runs: {count: 100, per: 7d}}"),
                    events(values))
    assert hours([r.launched for r in report.runs])[:2] == [10.0, 34.0]
    worse = report.policies[0].time_worse
    assert worse is not None and worse.stretches == 2
    assert worse.before_a_run == (1 + 20) * HOUR  # not 1 h: the blip's run does not count


def test_rolling_windows_are_not_counted_twice_and_small_windows_not_at_all() -> None:
    rolling = [{"model": "m", "metrics": {"acc": BAD if 50 <= h < 60 else 0.97},
                "window_start": stamp(h - 24), "window_end": stamp(h)} for h in range(100)]
    _, report = run(config(FLOOR_1, COOLDOWN), rolling)
    worse = report.policies[0].time_worse
    assert worse is not None and worse.worse == 10 * HOUR
    noisy = [{"model": "m", "window_end": stamp(h), "metrics": {"acc": v},
              "examples": 20 if 20 <= h < 22 else 1000}
             for h, v in enumerate([0.5 if 20 <= h < 22 else BAD if 24 <= h < 40 else 0.97
                                    for h in range(60)])]
    _, report = run(config("""
    - {name: floor, metric: acc, direction: higher_is_better, min_examples: 500,
       absolute: {threshold: 0.95}, breaches_to_trigger: 3, evaluation_points: 5}
    """, COOLDOWN), noisy)
    [trigger] = report.triggers
    assert hours([trigger.time]) == [26.0] and trigger.detection_delay == 2 * HOUR
    worse = report.policies[0].time_worse
    assert worse is not None and worse.worse == 16 * HOUR and worse.stretches == 1


def test_unusable_outputs_are_refused_before_any_work(tmp_path: Path) -> None:
    history = tmp_path / "h.jsonl"
    history.write_text("".join(json.dumps(e) + "\n" for e in events([0.97] * 3)))
    policies = tmp_path / "p.yaml"
    policies.write_text("models:\n  m:\n    pipeline: {template: " + str(EXAMPLE_TEMPLATE)
                        + "}\n    policies:\n" + FLOOR_1.replace("\n    -", "\n      -"))
    for extra in (["--output", str(tmp_path / "missing" / "r.json")], ["--slo", "0.9"]):
        result = subprocess.run(
            [sys.executable, "-m", "triggers", "backtest", "--policies", str(policies),
             "--history", str(history), *extra], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result.stderr
        assert extra[0] in result.stderr


def test_parity_holds_when_a_correction_fires_nothing_but_changes_a_later_window(
    tmp_path: Path,
) -> None:
    # 3 of 4: hour 1 is corrected from healthy to a breach (nothing fires then: 3 points).
    # At hour 3 the window holds hours 0-3 with three breaches and fires — a replay that
    # appended the correction instead of replacing the value would see only two.
    cfg = config("""
    - {name: floor, metric: acc, direction: higher_is_better, absolute: {threshold: 0.95},
       breaches_to_trigger: 3, evaluation_points: 4}
    """, COOLDOWN)
    history = events([BAD, 0.97, BAD, 0.97])
    history.insert(2, {**history[1], "metrics": {"acc": BAD}})  # the correction of hour 1
    store = SQLiteStore(tmp_path / "live.db")
    live_replay(cfg, history, store)
    replay, report = run(cfg, history)
    assert audit(replay.store) == audit(store)
    assert hours([t.time for t in report.triggers]) == [3.0]
    store.close()
