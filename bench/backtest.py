"""Backtest speed: a year of hourly points replayed through an absolute and a trend policy, a
vectorised numpy evaluation of the same absolute rule as the floor, and a 20-value sweep.

Figures are medians of alternating repetitions after one unmeasured warm-up (imports).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bench.common import Row, interleaved, machine_banner, median, print_rows, write_rows  # noqa: E402
from triggers.config import ServiceConfig  # noqa: E402
from triggers.events import MetricEvent, fast_event  # noqa: E402
from triggers.tools.backtest.io import read_history  # noqa: E402
from triggers.tools.backtest.replay import BacktestSettings, Replay  # noqa: E402
from triggers.tools.backtest.sweep import available_cores, parse_sweep, run_sweeps  # noqa: E402

HOURS = 8760
THRESHOLD, BREACHES, WINDOW = 0.95, 3, 5
ABSOLUTE = {"name": "floor", "metric": "accuracy", "direction": "higher_is_better",
            "absolute": {"threshold": THRESHOLD}, "breaches_to_trigger": BREACHES,
            "evaluation_points": WINDOW}
TREND = {"name": "slide", "metric": "accuracy", "direction": "higher_is_better",
         "trend": {"lookback": "3d", "min_points": 24, "max_decline_per_day": 0.004}}
SWEEP = "slide.max_decline_per_day=0.001:0.02:0.001"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def year_of_hours(seed: int = 4) -> np.ndarray:
    """Accuracy around 0.962 (daily cycle, noise), with 8 sags of 0.03 over 2-5 days."""
    rng = np.random.default_rng(seed)
    hours = np.arange(HOURS)
    values = 0.962 + 0.002 * np.sin(hours * 2 * np.pi / 24) + rng.normal(0, 0.002, HOURS)
    for start in rng.choice(np.arange(200, HOURS - 200), 8, replace=False):
        length = int(rng.integers(48, 120))
        values[start:start + length] -= np.linspace(0, 0.03, length)
    return np.round(values, 6)


def history(values: np.ndarray) -> list[dict[str, Any]]:
    def stamp(hour: int) -> str:
        return (T0 + timedelta(hours=hour)).isoformat().replace("+00:00", "Z")

    return [{"model": "m", "metrics": {"accuracy": float(v)}, "window_start": stamp(h - 1),
             "window_end": stamp(h), "examples": 1000} for h, v in enumerate(values)]


def config(policy: dict[str, Any]) -> ServiceConfig:
    return ServiceConfig.from_dict(
        {"defaults": {"guards": {"cooldown": "24h", "max_runs": {"count": 3, "per": "7d"}}},
         "models": {"m": {"pipeline": {"template": "unused.yaml"}, "policies": [policy]}}},
        Path("."))


def replay(cfg: ServiceConfig, events: list[tuple[int, MetricEvent]]) -> tuple[float, Replay]:
    started = time.perf_counter()
    done = Replay(cfg, BacktestSettings())
    done.run(events)
    return time.perf_counter() - started, done


def numpy_absolute(values: np.ndarray) -> tuple[float, int]:
    """The M-of-N rule on every window at once; seconds per pass (best of a batch of 50)."""
    best = float("inf")
    fired = 0
    for _ in range(50):
        started = time.perf_counter()
        breaches = np.convolve(values < THRESHOLD, np.ones(WINDOW, dtype=np.int64), "valid")
        fired = int(np.count_nonzero(breaches >= BREACHES))
        best = min(best, time.perf_counter() - started)
    return best, fired


def fired_verdicts(done: Replay) -> int:
    return sum(1 for d in done.store.all_decisions()
               if d.kind in ("fired", "suppressed", "launch_failed"))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", help="write the summary rows here")
    args = parser.parse_args(argv)
    machine_banner("backtest.py", argv)

    values = year_of_hours()
    raw = history(values)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "history.jsonl"
        path.write_text("".join(json.dumps(e) + "\n" for e in raw), encoding="utf-8")
        started = time.perf_counter()
        read = read_history(path, config(ABSOLUTE))
        read_seconds = time.perf_counter() - started
    events = [(line, e) for line, e in enumerate(
        (fast_event(d) for d in raw), start=1) if e is not None]
    assert len(events) == HOURS == len(read.events)
    absolute, trend = config(ABSOLUTE), config(TREND)

    print(f"# {HOURS} hourly points; absolute {BREACHES} of {WINDOW} < {THRESHOLD}; trend "
          f"{TREND['trend']}; guards: cooldown 24h, 3 runs / 7d; runs 6h, rejected")
    replay(absolute, events)  # warm-up: imports (pydantic for outcomes, scipy) and caches
    replay(trend, events[:500])
    ours: list[float] = []
    floor: list[float] = []
    done: Replay | None = None
    numpy_fired = 0
    for rep in range(args.repeat):
        for variant in interleaved(rep, ("numpy", "ours")):
            if variant == "numpy":
                seconds, numpy_fired = numpy_absolute(values)
                floor.append(seconds)
            else:
                seconds, done = replay(absolute, events)
                ours.append(seconds)
        print(f"  rep {rep + 1}: replay {ours[-1] * 1000:.0f} ms, numpy {floor[-1] * 1e6:.0f} us")
    assert done is not None
    # the same rule: every point where 3 of the latest 5 breach is a fired verdict (launched
    # or suppressed by a guard) in the replay
    assert fired_verdicts(done) == numpy_fired, (fired_verdicts(done), numpy_fired)
    absolute_rate, numpy_rate = HOURS / median(ours), HOURS / median(floor)
    service_share = 1 - done.fast_events / done.events
    print(f"  absolute: {absolute_rate:,.0f} points/s; numpy {numpy_rate:,.0f} points/s; "
          f"{len(done.store.runs(limit=10**6))} runs, {numpy_fired} fired verdicts; "
          f"{service_share:.1%} of events through RetrainService.handle_event")

    trend_times = []
    for rep in range(max(1, args.repeat // 2)):
        seconds, trend_done = replay(trend, events)
        trend_times.append(seconds)
        print(f"  trend rep {rep + 1}: {seconds:.2f} s "
              f"({len(trend_done.store.runs(limit=10**6))} runs)")
    trend_rate = HOURS / median(trend_times)

    sweep = parse_sweep(SWEEP)
    cores = available_cores()
    sweep_times = []
    for rep in range(max(1, args.repeat // 3)):
        started = time.perf_counter()
        [result] = run_sweeps(trend, events, BacktestSettings(), [sweep], ["m"],
                              slo_value=THRESHOLD, workers=cores)
        sweep_times.append(time.perf_counter() - started)
        print(f"  sweep rep {rep + 1}: {sweep_times[-1]:.2f} s on {cores} processes; runs per "
              f"value {[p.runs for p in result.points]}")
    sweep_seconds = median(sweep_times)
    unshared = len(sweep.values) * median(trend_times) / cores
    print(f"  (a sweep that fitted every window again per value would take about "
          f"{unshared:.1f} s: {len(sweep.values)} x {median(trend_times):.2f} s / {cores})")

    rows = [
        Row("backtest", "absolute replay", absolute_rate, numpy_rate, "points/s",
            absolute_rate / numpy_rate, ">= 100000 points/s", absolute_rate >= 100_000),
        Row("backtest", "trend replay", trend_rate, None, "points/s", None, "", None),
        Row("backtest", f"sweep of 20 trend values ({cores} processes)", sweep_seconds, None,
            "s", None, "< 10 s", sweep_seconds < 10),
        Row("backtest", "read + validate JSONL history", HOURS / read_seconds, None,
            "points/s", None, "", None),
    ]
    print_rows(rows)
    write_rows(args.json, rows, {"service_share": service_share, "numpy_fired": numpy_fired})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
