"""`retrain-trigger matrix`: the pipeline's own train step over a grid of training dates, each
model scored on every later day of the data lake."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipelines.datalake import read_day, write_day
from pipelines.drift import DriftingConcept
from pipelines.logistic import fit_logistic
from tests.conftest import ROOT
from triggers.tools.backtest.counterfactual import read_matrix
from triggers.tools.demo import score
from triggers.tools.matrix import MatrixInputError, build_matrix


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    concept = DriftingConcept(examples_per_day=300, drift_start=3, drift_end=9,
                              degrees_per_day=8.0)
    for day in range(10):
        write_day(tmp_path / "lake", "m", concept.sample(day))
    return tmp_path / "lake"


def test_rows_and_values(lake: Path, tmp_path: Path) -> None:
    # 10 days, 3 training days, a date every 2 days: models end on days 2, 4, 6, 8 (not 9:
    # nothing is later); each is scored on every later day: 7 + 5 + 3 + 1 = 16 rows.
    seen: list[tuple[int, int]] = []
    rows = build_matrix(lake, "m", tmp_path / "m.csv", training_days=3, every_days=2,
                        progress=lambda done, total: seen.append((done, total)))
    assert rows == 16 and seen[-1] == (4, 4)
    (matrix,) = read_matrix(tmp_path / "m.csv").values()
    assert [len([k for k in matrix.scores if k[0] == t]) for t in matrix.trained] == [7, 5, 3, 1]
    with open(tmp_path / "m.csv", encoding="utf-8") as handle:
        first = next(csv.DictReader(handle))
    assert first["trained_through"] == "2026-09-04T00:00:00Z"   # the end of day 2 (Sep 3)
    assert first["window_start"] == "2026-09-04T00:00:00Z"
    assert first["window_end"] == "2026-09-05T00:00:00Z"
    # the same model as fitting the days 0–2 directly, scored on day 3
    days = [read_day(lake, "m", f"2026-09-0{d}") for d in (1, 2, 3)]
    direct = fit_logistic(np.vstack([d.x for d in days]), np.concatenate([d.y for d in days]),
                          days[0].features)
    accuracy, auc = score(direct, *(lambda d: (d.x, d.y))(read_day(lake, "m", "2026-09-04")))
    assert float(first["accuracy"]) == pytest.approx(accuracy, abs=1e-5)
    assert float(first["auc"]) == pytest.approx(auc, abs=1e-5)
    assert int(first["examples"]) == 300


def test_too_few_days_names_the_option(lake: Path, tmp_path: Path) -> None:
    with pytest.raises(MatrixInputError, match="--data: .* holds 10 day"):
        build_matrix(lake, "m", tmp_path / "m.csv", training_days=10)
    result = subprocess.run(
        [sys.executable, "-m", "triggers", "matrix", "--data", str(lake), "--model", "x",
         "--output", str(tmp_path / "m.csv")],
        capture_output=True, text=True, cwd=ROOT, check=False)
    assert result.returncode == 2 and "holds 0 day(s)" in result.stderr


def test_the_committed_example_is_the_demos(tmp_path: Path) -> None:
    # examples/matrix.csv: the demo's 48 days (seed 7, 2000 examples a day), 7 training days.
    (matrix,) = read_matrix(ROOT / "examples" / "matrix.csv").values()
    assert matrix.model == "fraud-detector" and len(matrix.trained) == 41
    assert len(matrix.windows) == 41
