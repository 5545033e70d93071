"""What 50 future-dated events cost every later event (issue 12): the median time of
`RetrainService.handle_delivery` for healthy hourly events on a SQLite file, on a fresh store
and on one that was sent 50 evaluations dated a year ahead first (examples/policies.yaml).

Once future points were stored, every later event was a "late" point: the service judged it
again as of each later point (up to 50). Now they are refused, so the ratio should be ~1.
Run it on an older checkout (PYTHONPATH) to see that version's ratio.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline_client.launching.protocol import FakeLauncher  # noqa: E402
from triggers.config import load_policy_file  # noqa: E402
from triggers.events import Delivery  # noqa: E402
from triggers.service import RetrainService  # noqa: E402
from triggers.state.sqlite import SQLiteStore  # noqa: E402

POLICIES = Path(__file__).resolve().parent.parent / "examples" / "policies.yaml"
HOUR = 3600.0


def payload(end: float, accuracy: float) -> bytes:
    text = datetime.fromtimestamp(end, UTC).isoformat().replace("+00:00", "Z")
    return json.dumps({"model": "fraud-detector", "model_version": "7",
                       "metrics": {"accuracy": accuracy, "auc": 0.98}, "examples": 1000,
                       "window_end": text}).encode()


def run(db: Path, future: int, events: int, now: float) -> tuple[float, int]:
    """Median seconds per healthy event after `future` year-ahead events; points kept."""
    store = SQLiteStore(db)
    service = RetrainService(load_policy_file(POLICIES), store, FakeLauncher())
    for i in range(future):
        service.handle_delivery(Delivery(f"f-{i}", payload(now + 365 * 86400 + i * HOUR, 0.97),
                                         "pubsub"))
    times = []
    for i in range(events):
        end = now - (events - i) * HOUR
        started = time.perf_counter()
        service.handle_delivery(Delivery(f"e-{i}", payload(end, 0.97 + (i % 3) / 1000),
                                         "pubsub"))
        times.append(time.perf_counter() - started)
    kept = len(store.latest_points("fraud-detector", 10**6))
    store.close()
    return statistics.median(times[events // 4:]), kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--future", type=int, default=50)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds; the best median of each variant is kept")
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # each refused future event is logged at ERROR
    now = time.time()
    clean = dirty = float("inf")
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            median, clean_points = run(Path(tmp) / f"clean-{round_}.db", 0, args.events, now)
            clean = min(clean, median)
            median, dirty_points = run(Path(tmp) / f"future-{round_}.db", args.future,
                                       args.events, now)
            dirty = min(dirty, median)
    print(f"{args.events} healthy hourly events, median per event (last 3/4), "
          f"best of {args.rounds} interleaved rounds")
    print(f"fresh store:               {clean * 1000:7.2f} ms ({clean_points} points kept)")
    print(f"after {args.future} future events: {dirty * 1000:7.2f} ms "
          f"({dirty_points} points kept)")
    print(f"ratio: {dirty / clean:.2f}x")


if __name__ == "__main__":
    main()
