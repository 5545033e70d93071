"""The champion's series as a warm instance keeps it: exact fits of sliding windows, and
points kept across events that never hide another instance's writes."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Harness
from thresholds.base import Point
from thresholds.theil_sen import SlidingPairs, sliding_statistics
from thresholds.trend import AllPairs, kendall_p_value_of_pairs, theil_sen_of_pairs

WARM_POLICY = """
defaults:
  guards: {cooldown: 6h, max_runs: {count: 50, per: 7d}, skip_if_running: false}
models:
  fraud-detector:
    pipeline:
      template: %(template)s
      pipeline_root: gs://test-bucket/root
    policies:
      - {name: accuracy-floor, metric: accuracy, direction: higher_is_better,
         absolute: {threshold: 0.95}, breaches_to_trigger: 3, evaluation_points: 5,
         min_examples: 500}
      - {name: accuracy-trend, metric: accuracy, direction: higher_is_better,
         trend: {lookback: 2d, max_decline_per_day: 0.001, confidence: 0.9, min_points: 12}}
      - {name: accuracy-forecast, metric: accuracy, direction: higher_is_better,
         forecast: {lookback: 1d, horizon: 2d, threshold: 0.9, min_points: 6}}
"""


def _full(window: list[Point], confidence: float, decreasing: bool) -> tuple[float, ...]:
    pairs = AllPairs(window)
    fit = theil_sen_of_pairs(pairs, confidence, window[-1].time)
    return (fit.slope, fit.low_slope, fit.high_slope, fit.level,
            kendall_p_value_of_pairs(pairs, decreasing))


def _same(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(x == y and math.copysign(1, x) == math.copysign(1, y)
               or (math.isnan(x) and math.isnan(y)) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("seed", range(8))
def test_sliding_fit_is_bit_identical_to_the_full_refit(seed: int) -> None:
    rng = random.Random(seed)
    step = [3600.0, 60.0, 1.0, 0.001, 86400.0, 3600.0, 7.5, 3600.0][seed]
    start = 1.7e9 + rng.random() * 1e6
    points = []
    for i in range(260):
        t = start + i * step + (rng.random() * step * 0.4 if rng.random() < 0.3 else 0.0)
        v = (round(rng.random(), 1) if seed % 3 == 0
             else 0.9 - i * 1e-5 + rng.gauss(0, 1e-3) if seed % 3 == 1
             else rng.gauss(0.9, 0.01))
        points.append(Point(t, v))
    sliding = SlidingPairs()
    width = [7, 40, 120, 60, 25, 90, 33, 150][seed]
    compared = 0
    for end in range(width, len(points)):
        window = points[end - width:end]
        if rng.random() < 0.1:  # a hole, or a late point arriving in the middle
            del window[rng.randrange(1, width - 1)]
        if rng.random() < 0.05:  # a corrected value
            i = rng.randrange(width - 1)
            window[i] = Point(window[i].time, window[i].value + 0.01)
        confidence = rng.choice([0.8, 0.9, 0.95])
        quick = sliding_statistics(sliding, window, confidence, True)
        assert quick is not None
        fit, p_value = quick
        assert _same((fit.slope, fit.low_slope, fit.high_slope, fit.level, p_value),
                     _full(window, confidence, True)), (seed, end)
        compared += 1
    assert compared == len(points) - width
    assert sliding.updates > sliding.rebuilds  # incremental, not rebuilt every time



@pytest.mark.parametrize(("margin", "level"), [(0, 0.97), (3, 0.97), (0, 0.0), (3, 0.0)])
def test_sliding_fit_keeps_only_a_band_of_the_pairs_and_stays_exact(
    margin: int, level: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two weeks of hourly points with few distinct values (many tied and zero slopes), slid
    hour by hour: only the pairs near the ranks asked for are kept sorted; a band the ranks
    drift out of is rebuilt (margin 0 forces that often), and every fit is the full refit's."""
    from thresholds import theil_sen

    monkeypatch.setattr(theil_sen, "_MARGIN_POINTS", margin)
    rng = random.Random(margin)
    steps = [0.0, 0.0, 0.001, -0.001] if level == 0 else [k * 0.001 for k in range(7)]
    drift = 0.0 if level == 0 else 2e-5
    points = [Point(1.7e9 + i * 3600.0, level + rng.choice(steps) - i * drift)
              for i in range(336 + 120)]
    sliding = SlidingPairs()
    for end in range(336, len(points)):
        window = points[end - 336:end]
        quick = sliding_statistics(sliding, window, 0.95, True)
        assert quick is not None
        fit, p_value = quick
        assert _same((fit.slope, fit.low_slope, fit.high_slope, fit.level, p_value),
                     _full(window, 0.95, True)), end
        assert sliding.kept < sliding.count / 2  # not every pair
    assert sliding.updates > sliding.rebuilds


def test_sliding_fit_declines_windows_it_cannot_fit_exactly() -> None:
    sliding = SlidingPairs()
    tied = [Point(1.0, 0.5), Point(1.0, 0.6), Point(2.0, 0.7)]
    assert sliding_statistics(sliding, tied, 0.95, True) is None
    infinite = [Point(1.0, 0.5), Point(2.0, math.inf), Point(3.0, 0.7)]
    assert sliding_statistics(sliding, infinite, 0.95, True) is None
    # -0.0 among +0.0: some zero slopes are -0.0, and the full fit's sort decides which zero
    # it ranks where
    zeros = [Point(float(i), [0.0, -0.0, 0.0, 0.1][i % 4]) for i in range(40)]
    assert sliding_statistics(sliding, zeros, 0.95, True) is None


def _hourly(h: Harness, i: int, value: float, **extra: Any) -> dict[str, Any]:
    event = h.event(i / 24, value, window_start=None, **extra)
    event.pop("window_start")
    return event


def _decisions(h: Harness) -> list[tuple[Any, ...]]:
    return sorted((d.decision_id, d.kind, d.policy, d.event_time, d.statistic, d.limit,
                   d.reason, d.run_id, sorted(d.details.items()))
                  for d in h.store.decisions(limit=1_000_000))


def _stream(seed: int) -> list[tuple[int, float, dict[str, Any]]]:
    """(hour, value, extra fields): a slow decline with noise, some late points, some
    corrections of a point already recorded, some small samples."""
    rng = random.Random(seed)
    out: list[tuple[int, float, dict[str, Any]]] = []
    held: list[tuple[int, float, dict[str, Any]]] = []
    for hour in range(160):
        value = round(0.975 - hour * 0.00015 + rng.gauss(0, 0.002), 4)
        extra: dict[str, Any] = {}
        if rng.random() < 0.05:
            extra["examples"] = 100  # below min_examples
        item = (hour, value, extra)
        if rng.random() < 0.06:
            held.append(item)  # arrives late
            continue
        out.append(item)
        if held and rng.random() < 0.3:
            out.append(held.pop(0))
        if rng.random() < 0.04 and out:
            h, v, e = out[rng.randrange(len(out))]
            out.append((h, round(v - 0.003, 4), e))  # a correction of a recorded window
    return out + held


@pytest.mark.parametrize("seed", [1, 2])
def test_two_warm_instances_on_one_file_decide_as_one_instance(
        make_harness: Callable[..., Harness], tmp_path: Path, seed: int) -> None:
    single = make_harness(WARM_POLICY, db=tmp_path / "single.db")
    first = make_harness(WARM_POLICY, db=tmp_path / "shared.db")
    second = make_harness(WARM_POLICY, db=tmp_path / "shared.db")
    rng = random.Random(seed)
    for n, (hour, value, extra) in enumerate(_stream(seed)):
        event = _hourly(single, hour, value, model_version="7", **extra)
        # runs of a few events on one instance, then the other: each keeps its series warm
        # while the other writes behind its back
        target = first if (n // rng.choice([1, 3, 5])) % 2 == 0 else second
        for h in (single, target):
            h.clock.now = single.clock.now
            h.send(event, message_id=f"m-{n}")
        single.clock.advance(minutes=7)
    assert _decisions(first) == _decisions(second)  # one file
    assert _decisions(first) == _decisions(single)
    kinds = {d[1] for d in _decisions(single)}
    assert {"fired", "ok", "insufficient_data"} <= kinds  # the stream exercised the policies
    assert first.service.series._kept and second.service.series._kept  # both kept series


def test_a_warm_event_reads_its_series_mark_only_around_its_own_write(
        make_harness: Callable[..., Harness]) -> None:
    """In one event's transaction no other instance can write: the mark read before the
    write and the one the write answers vouch for every read of the series in it."""
    h = make_harness(WARM_POLICY)
    for hour in range(30):
        h.send(_hourly(h, hour, 0.97, model_version="7"), message_id=f"warm-{hour}")
    statements: list[str] = []
    h.store._conn().set_trace_callback(statements.append)
    try:
        h.send(_hourly(h, 30, 0.97, model_version="7"), message_id="warm-30")
    finally:
        h.store._conn().set_trace_callback(None)
    mark_reads = [s for s in statements if s.lstrip().upper().startswith("SELECT")
                  and "series_marks" in s]
    assert len(mark_reads) == 1, statements  # three policies read the series: none rereads
    mark_writes = [s for s in statements if "INSERT INTO series_marks" in s]
    assert len(mark_writes) == 1 and "RETURNING" in mark_writes[0], statements
    assert h.store.is_processed("warm-30")


LATEST_POLICY = WARM_POLICY.replace(",\n         min_examples: 500}", "}")


@pytest.mark.parametrize("seed", [3, 4])
def test_a_warm_instance_slicing_the_latest_points_decides_as_one_reading_them_afresh(
        make_harness: Callable[..., Harness], tmp_path: Path, seed: int) -> None:
    """An M-of-N rule without min_examples is answered from one slice of the kept points
    (`_latest_points`); with points of another version, late points and corrections in the
    stream, its decisions are those of an instance that reads every window from the store."""
    from triggers.series import ChampionSeries

    assert LATEST_POLICY != WARM_POLICY
    warm = make_harness(LATEST_POLICY, db=tmp_path / "warm.db")
    fresh = make_harness(LATEST_POLICY, db=tmp_path / "fresh.db")
    fresh.service.series = ChampionSeries(fresh.store, keep=False)
    rng = random.Random(seed)
    for n, (hour, value, extra) in enumerate(_stream(seed)):
        version = "8" if rng.random() < 0.05 else "7"  # a challenger's evaluation, now and then
        for h in (warm, fresh):
            h.clock.now = warm.clock.now
            h.send(_hourly(warm, hour, value, model_version=version, **extra),
                   message_id=f"m-{n}")
        warm.clock.advance(minutes=7)
    assert _decisions(warm) == _decisions(fresh)
    kinds = {d[1] for d in _decisions(warm) if d[2] == "accuracy-floor"}
    assert {"fired", "ok"} <= kinds or {"suppressed", "ok"} <= kinds
    assert warm.service.series.keep and not fresh.service.series.keep
