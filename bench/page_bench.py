"""How long the model page takes for a year of hourly points (issue 16: under a second).

Writes 8,760 hourly points of two metrics and a decision every few days into a SQLite store,
then times gather + render of the whole year (the page's widest period) a few times.
Run: PYTHONPATH=. python bench/page_bench.py
"""

from __future__ import annotations

import math
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline_client.launching.protocol import FakeLauncher  # noqa: E402
from tests.conftest import T0, policy_config  # noqa: E402
from triggers.cloud.page import html  # noqa: E402
from triggers.cloud.page.data import gather_model  # noqa: E402
from triggers.service import RetrainService  # noqa: E402
from triggers.state.protocol import Decision, StoredPoint  # noqa: E402
from triggers.state.sqlite import SQLiteStore  # noqa: E402

HOURS = 365 * 24
POLICIES = """
models:
  m:
    pipeline: {template: %(template)s}
    policies:
      - {name: floor, metric: accuracy, direction: higher_is_better,
         absolute: {threshold: 0.9}, breaches_to_trigger: 3, evaluation_points: 5}
      - {name: trend, metric: accuracy, direction: higher_is_better,
         trend: {lookback: 7d, min_points: 24, max_decline_per_day: 0.002}}
      - {name: auc-drop, metric: auc, direction: higher_is_better,
         baseline: {max_relative_drop: 0.03}}
"""


def main() -> int:
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "s.db")
        start = T0.timestamp()
        points, decisions = [], []
        for hour in range(HOURS):
            t = start + hour * 3600.0
            version = str(1 + hour // (24 * 30))
            for metric, level in (("accuracy", 0.95), ("auc", 0.97)):
                value = level - 0.0004 * (hour % (24 * 30)) / 24 + rng.gauss(0, 0.003)
                points.append(StoredPoint("m", "overall", metric, t, value, 1000, version))
            if hour % 72 == 1:
                decisions.append(Decision(f"d{hour}", "m", "fired" if hour % 144 else
                                          "suppressed", t, "seeded", "floor", event_time=t))
        store.record_points(points)
        store.record_decisions(decisions)
        service = RetrainService(policy_config(POLICIES), store, FakeLauncher(),
                                 clock=lambda: start + HOURS * 3600.0)
        times = []
        for _ in range(5):
            began = time.perf_counter()
            page = gather_model(service, "m", "2026-11-01", "2027-10-31")
            text = html.model_page(page)
            times.append(time.perf_counter() - began)
        drawn = text.count('data-mark="trigger"') + text.count('data-mark="suppressed"')
        print(f"a year of hourly points ({HOURS} × 2 metrics), {len(decisions)} decisions: "
              f"page {len(text) / 1024:.0f} KiB, {drawn} marks drawn; render "
              f"best {min(times) * 1000:.0f} ms, median {sorted(times)[2] * 1000:.0f} ms")
        store.close()
        ok = drawn == len(decisions) and min(times) < 1.0 and not math.isnan(min(times))
        return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
