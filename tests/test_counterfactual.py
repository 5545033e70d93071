"""The counterfactual backtest: a hand-computed matrix replayed and priced exactly, the live
service deciding as the replay does, the command's report and plot, and bad matrices."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import ROOT, Clock
from triggers.config import ServiceConfig
from triggers.events import Delivery
from triggers.service import RetrainService
from triggers.state.sqlite import SQLiteStore
from triggers.tools.backtest.counterfactual import (
    MatrixLauncher,
    counterfactual,
    read_matrix,
)
from triggers.tools.backtest.io import BacktestInputError

D0 = datetime(2026, 3, 1, tzinfo=UTC)


def day(n: float) -> str:
    return (D0 + timedelta(days=n)).isoformat().replace("+00:00", "Z")


# Three models, trained through days 0, 2 and 4, scored on the daily windows ending days 1–6.
SCORES = {
    0: [0.9, 0.9, 0.7, 0.7, 0.7, 0.7],   # A: stale from day 3
    2: [0.9, 0.9, 0.9, 0.9, 0.6, 0.6],   # B: good until day 5
    4: [0.8, 0.8, 0.8, 0.8, 0.9, 0.9],   # C
}
POLICIES = """
models:
  m:
    pipeline: {template: %s, pipeline_root: gs://b/r}
    policies:
      - {name: floor, metric: accuracy, direction: higher_is_better, absolute: {threshold: 0.8}}
    guards: {cooldown: 1h, max_runs: {count: 100, per: 1d}}
"""


def write_matrix(path: Path, scores: dict[int, list[float]] = SCORES) -> Path:
    lines = ["model,trained_through,window_start,window_end,accuracy"]
    for trained, values in scores.items():
        for index, value in enumerate(values):
            lines.append(f"m,{day(trained)},{day(index)},{day(index + 1)},{value}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def config(tmp_path: Path, text: str = POLICIES) -> ServiceConfig:
    return ServiceConfig.from_yaml(text % (ROOT / "pipelines" / "example.yaml"), tmp_path)


def test_hand_computed_matrix(tmp_path: Path) -> None:
    # Replay, run 6h: A scores 0.9, 0.9, then 0.7 at day 3 < 0.8: a run launched at day 3
    # promotes B (trained through day 2 ≤ day 3) from day 3 + 6h: day 4 reads B's 0.9; day 5
    # B's 0.6 fires again: C (day 4 ≤ day 5) from day 5 + 6h; day 6 reads C's 0.9.
    # Production A A A B B C; best per window 0.9 everywhere; gaps 0.2 (day 3) + 0.3 (day 5).
    # One run 150, loss 1000 per unit-day: 2 × 150 + 1000 × 0.5 = 800.
    matrices = read_matrix(write_matrix(tmp_path / "m.csv"))
    report = counterfactual(config(tmp_path), matrices, 6 * 3600.0,
                            retrain_cost=150, loss_per_unit_day=1000)
    (model,) = report.models
    (policy,) = model.policies
    assert [r["launched"] for r in report.runs] == [day(3), day(5)]
    assert [r["promoted"] for r in report.runs] == ["trained-20260303T000000Z",
                                                    "trained-20260305T000000Z"]
    assert policy.runs == 2
    assert policy.loss == pytest.approx(500)
    assert policy.total_cost == pytest.approx(800)
    assert policy.mean_metric == pytest.approx(4.9 / 6)
    # Baselines (launches every k days from day 1, through day 6; span 5 days: k = 1..4):
    #   never: A throughout, gaps 0.2 × 4 days → 800
    #   1d: launches days 2–6; B from day 3, C from day 5 → no gap, 5 runs → 750
    #   2d: days 3, 5; A on day 3 (0.2), B on day 5 (0.3) → 300 + 500 = 800
    #   3d: day 4; A on days 3, 4 (0.4), C from day 5 → 150 + 400 = 550 (best)
    #   4d: day 5; A on days 3–5 (0.6), C on day 6 → 150 + 600 = 750
    got = {o.name: (o.runs, round(o.total_cost, 6), o.best_in_hindsight)
           for o in model.baselines}
    assert got == {"never retrain": (0, 800, False), "every 1 days": (5, 750, False),
                   "every 2 days": (2, 800, False), "every 3 days": (1, 550, True),
                   "every 4 days": (1, 750, False)}


def test_lower_is_better_and_no_window_start(tmp_path: Path) -> None:
    # The same matrix as error rates, without window_start: each window is the day since the
    # previous end (the first, the median gap: 1 day). Identical decisions and costs.
    lines = ["model,trained_through,window_end,error"]
    for trained, values in SCORES.items():
        lines += [f"m,{day(trained)},{day(i + 1)},{1 - v:.1f}" for i, v in enumerate(values)]
    (tmp_path / "e.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    text = POLICIES.replace("metric: accuracy, direction: higher_is_better, "
                            "absolute: {threshold: 0.8}",
                            "metric: error, direction: lower_is_better, "
                            "absolute: {threshold: 0.2}")
    report = counterfactual(config(tmp_path, text), read_matrix(tmp_path / "e.csv"), 21600.0,
                            retrain_cost=150, loss_per_unit_day=1000)
    assert report.models[0].policies[0].total_cost == pytest.approx(800)
    assert [o.total_cost for o in report.models[0].baselines] == pytest.approx(
        [800, 750, 800, 550, 750])


COST_POLICIES = """
models:
  m:
    pipeline: {template: %s, pipeline_root: gs://b/r}
    policies:
      - {name: worth-a-run, metric: accuracy, direction: higher_is_better,
         cost: {retrain_cost: 40, loss_per_unit_day: 1000}}
      - {name: floor, metric: accuracy, direction: higher_is_better,
         absolute: {threshold: 0.75}, breaches_to_trigger: 2, evaluation_points: 3}
    guards: {cooldown: 2d}
"""


def drifting_matrix(path: Path, days: int = 90) -> Path:
    """Daily models; a model trained through day t scores 0.95 − 0.004 × (days since t) on
    day w ≥ t (plus seeded noise), and a step of −0.1 for models trained before day 50."""
    rng = np.random.default_rng(3)
    lines = ["model,trained_through,window_start,window_end,accuracy"]
    for trained in range(days):
        for w in range(trained + 1, days + 1):
            value = 0.95 - 0.004 * (w - trained) - (0.1 if trained < 50 <= w else 0.0)
            lines.append(f"m,{day(trained)},{day(w - 1)},{day(w)},"
                         f"{value + rng.normal(0, 0.003):.5f}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_the_live_service_decides_as_the_replay(tmp_path: Path) -> None:
    # The live path — JSON deliveries, the event schema, SQLite — fed each window's metrics
    # of whichever model its own state has in production, runs ended by the same matrix
    # launcher: the same launches, promoting the same models, as the replay.
    cfg = config(tmp_path, COST_POLICIES)
    (matrix,) = read_matrix(drifting_matrix(tmp_path / "d.csv")).values()
    report = counterfactual(cfg, {"m": matrix}, 6 * 3600.0)
    replayed = [(r["launched"], r["policy"], r["promoted"]) for r in report.runs]
    assert len(replayed) >= 3 and {p for _, p, _ in replayed} <= {"worth-a-run", "floor"}

    assert live_launches(cfg, matrix, tmp_path / "live.db") == [
        (launched, policy, str(promoted)) for launched, policy, promoted in replayed]


def test_command_writes_the_report_and_the_plot(tmp_path: Path) -> None:
    policies = tmp_path / "p.yaml"
    policies.write_text(COST_POLICIES % (ROOT / "pipelines" / "example.yaml"), encoding="utf-8")
    matrix = drifting_matrix(tmp_path / "d.csv", days=60)
    result = subprocess.run(
        [sys.executable, "-m", "triggers", "backtest", "--policies", str(policies),
         "--counterfactual", str(matrix), "--run-duration", "6h",
         "--output", str(tmp_path / "out.json"), "--plot", str(tmp_path / "out.png")],
        capture_output=True, text=True, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr
    assert "best in hindsight" in result.stdout and "never retrain" in result.stdout
    data = json.loads((tmp_path / "out.json").read_text())["backtest"]
    assert data["runs"] and {"model", "policy", "launched"} <= data["runs"][0].keys()
    (model,) = data["models"]
    assert [o["name"] for o in model["policies"]] == ["all policies", "worth-a-run", "floor"]
    assert sum(o["best_in_hindsight"] for o in model["baselines"]) == 1
    assert (tmp_path / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("text", "message"), [
    ("model,window_end,accuracy\nm,2026-03-01T00:00:00Z,0.9\n", "missing column(s) trained"),
    ("model,trained_through,window_end\nm,2026-03-01T00:00:00Z,2026-03-02T00:00:00Z\n",
     "no metric column"),
    ("model,trained_through,window_end,accuracy\nm,2026-03-01,2026-03-02T00:00:00Z,0.9\n",
     "line 2: trained_through '2026-03-01' is not RFC 3339"),
    ("model,trained_through,window_end,accuracy\nm,2026-03-01T00:00:00Z,2026-03-02T00:00:00Z,x\n",
     "line 2: could not convert string to float"),
])
def test_bad_matrices_name_the_line_and_column(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(BacktestInputError) as caught:
        read_matrix(path)
    assert message in str(caught.value) + "".join(f"\n{row}" for row in caught.value.rows)


def test_costs_come_from_the_cost_policy_or_the_options(tmp_path: Path) -> None:
    matrices = read_matrix(write_matrix(tmp_path / "m.csv"))
    with pytest.raises(BacktestInputError, match="no cost policy: set --retrain-cost"):
        counterfactual(config(tmp_path), matrices, 21600.0)


def abrupt_matrix(path: Path, days: int = 60, switch: int = 25) -> Path:
    """Daily models, each trained on the 7 days before its `trained_through`; the concept
    moves by 0.12 on day `switch`. A model scores 0.95 − |concept − the mean concept it
    learned| (plus seeded noise): one trained across the switch is only partly fresh."""
    rng = np.random.default_rng(5)

    def concept(d: float) -> float:
        return 0.12 if d >= switch else 0.0

    lines = ["model,trained_through,window_start,window_end,accuracy"]
    for trained in range(days):
        learned = (np.mean([concept(d) for d in range(max(trained - 7, 0), trained)])
                   if trained else 0.0)
        for w in range(trained + 1, days + 1):
            value = 0.95 - abs(concept(w - 1) - learned) + rng.normal(0, 0.003)
            lines.append(f"m,{day(trained)},{day(w - 1)},{day(w)},{value:.5f}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


ABRUPT_POLICIES = """
models:
  m:
    pipeline: {template: %s, pipeline_root: gs://b/r}
    policies:
      - {name: worth-a-run, metric: accuracy, direction: higher_is_better,
         cost: {retrain_cost: 500, loss_per_unit_day: 20000}}
    guards: {cooldown: 1h}
"""


def live_launches(cfg: ServiceConfig, matrix: Any, db: Path) -> list[tuple[str, str, str]]:
    """The live path fed each window's metrics of whichever model its own state has in
    production (JSON deliveries, SQLite), runs ended by the matrix launcher."""
    clock = Clock()
    launcher = MatrixLauncher(clock, 6 * 3600.0, matrix)
    store = SQLiteStore(db)
    service = RetrainService(cfg, store, launcher, clock=clock)
    model = cfg.models["m"]
    by_version = {matrix.version(t): t for t in matrix.trained}
    for index, window in enumerate(matrix.windows):
        clock.now = window.end
        service.refresh_runs(model, clock.now)
        champion = store.model_state("m").champion_version
        trained = by_version.get(champion or "", matrix.trained[0])
        payload = {"model": "m", "model_version": matrix.version(trained),
                   "metrics": dict(matrix.scores[(trained, window.end)]),
                   "window_end": day((window.end - D0.timestamp()) / 86400),
                   "window_start": day((window.start - D0.timestamp()) / 86400)}
        service.handle_delivery(Delivery(f"w{index}", json.dumps(payload).encode(), "pubsub"))
    live = sorted((run.created_at, run.policy, launcher.runs[run.run_id].champion_version)
                  for run in store.runs("m", limit=1000))
    store.close()
    return [(day((t - D0.timestamp()) / 86400), p, str(v)) for t, p, v in live]


def test_after_an_abrupt_drift_a_partly_fresh_champion_is_retrained_again(
    tmp_path: Path,
) -> None:
    # The concept moves on day 25. The first run after it promotes a model trained mostly on
    # the old concept (its own first points already low); the earlier champions' first
    # points (about 0.95) still show the gap, so the policy retrains again until a model
    # trained on the new concept only (trained through day 32 or later) is in production.
    # With the champion's own first points as the fresh level, the first such model stayed.
    cfg = config(tmp_path, ABRUPT_POLICIES)
    (matrix,) = read_matrix(abrupt_matrix(tmp_path / "a.csv")).values()
    report = counterfactual(cfg, {"m": matrix}, 6 * 3600.0)
    after = [r for r in report.runs if r["launched"] > day(25)]
    assert len(after) >= 2
    assert after[-1]["promoted"] >= matrix.version(D0.timestamp() + 32 * 86400)
    assert after[-1]["launched"] < day(40)
    # and the live service, reading the earlier champions' first points from SQLite before
    # the champion's history, launches the same runs promoting the same models
    replayed = [(r["launched"], r["policy"], r["promoted"]) for r in report.runs]
    assert live_launches(cfg, matrix, tmp_path / "live.db") == replayed
    (policy,) = report.models[0].policies
    fixed = min(report.models[0].baselines, key=lambda o: o.total_cost)
    assert policy.total_cost < fixed.total_cost
