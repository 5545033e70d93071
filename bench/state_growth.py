"""State kept per event when an evaluation job sends wide events: 1,000 events of 100 metrics,
each in a new slice, through `RetrainService.handle_delivery` on a SQLite file (issue 12).

Prints the SQLite bytes per event the service keeps, the bytes per event of keeping every
metric as a point (what the service did before it kept only watched metrics and slices:
the same store, written directly) and their ratio. Run it on an older checkout (PYTHONPATH)
to measure that version's service instead.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
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
from triggers.state.protocol import StoredPoint  # noqa: E402
from triggers.state.sqlite import SQLiteStore  # noqa: E402

POLICIES = Path(__file__).resolve().parent.parent / "examples" / "policies.yaml"


def events(count: int, metrics: int, now: float) -> list[dict[str, object]]:
    """`count` events of `metrics` metrics (accuracy among them), each in a new slice."""
    out = []
    for i in range(count):
        end = datetime.fromtimestamp(now - (count - i) * 60, UTC)
        values = {"accuracy": 0.97, **{f"metric_{m:03d}": 0.5 + m / 1000
                                       for m in range(metrics - 1)}}
        out.append({"model": "fraud-detector", "model_version": "7", "metrics": values,
                    "slice": f"slice-{i:05d}", "examples": 1000,
                    "window_end": end.isoformat().replace("+00:00", "Z")})
    return out


def file_bytes(path: Path) -> int:
    """Bytes the database holds once its write-ahead log is folded in."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    return int((pages - free) * size)


def through_service(workdir: Path, batch: list[dict[str, object]]) -> tuple[int, float]:
    db = workdir / "service.db"
    store = SQLiteStore(db)
    empty = file_bytes(db)
    service = RetrainService(load_policy_file(POLICIES), store, FakeLauncher())
    started = time.perf_counter()
    for i, event in enumerate(batch):
        service.handle_delivery(Delivery(f"m-{i}", json.dumps(event).encode(), "pubsub"))
    elapsed = time.perf_counter() - started
    store.close()
    return file_bytes(db) - empty, elapsed


def every_metric_stored(workdir: Path, batch: list[dict[str, object]], now: float) -> int:
    """The same events with every metric kept as a point, plus the processed marker."""
    db = workdir / "all.db"
    store = SQLiteStore(db)
    empty = file_bytes(db)
    for i, event in enumerate(batch):
        end = datetime.fromisoformat(str(event["window_end"]).replace("Z", "+00:00"))
        metrics = event["metrics"]
        assert isinstance(metrics, dict)
        store.record_points([
            StoredPoint("fraud-detector", str(event["slice"]), name, end.timestamp(), value,
                        1000, "7", f"m-{i}", now) for name, value in metrics.items()])
        store.finish_message(f"m-{i}", now, [])
    store.close()
    return file_bytes(db) - empty


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--metrics", type=int, default=100)
    args = parser.parse_args()
    now = time.time()
    batch = events(args.events, args.metrics, now)
    with tempfile.TemporaryDirectory() as tmp:
        kept, elapsed = through_service(Path(tmp), batch)
        everything = every_metric_stored(Path(tmp), batch, now)
    per_event = kept / args.events
    print(f"{args.events} events x {args.metrics} metrics, each in a new slice "
          f"(one watched metric: accuracy; slices watched: overall)")
    print(f"service keeps:          {per_event:10.0f} bytes/event "
          f"({elapsed / args.events * 1000:.2f} ms/event)")
    print(f"every metric as points: {everything / args.events:10.0f} bytes/event")
    print(f"ratio (every metric / service): {everything / max(kept, 1):.1f}x")


if __name__ == "__main__":
    main()
