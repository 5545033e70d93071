"""Warm throughput and latency of `python -m triggers serve` (SQLite, local launcher, healthy
events: no launch) vs a hello-world function under the same gunicorn options, same client."""

from __future__ import annotations

import argparse
import http.client
import itertools
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    HELLO_SOURCE,
    PUSH_HEADERS,
    PYTHON,
    ROOT,
    T0,
    Row,
    Server,
    base_env,
    db_counts,
    finish,
    first_answer,
    free_port,
    healthy_event,
    interleaved,
    machine_banner,
    median,
    percentile,
    policy_text,
    print_rows,
    push_body,
    tempdir,
    verdict_kinds,
    write_rows,
)

TARGET = 0.7
METRICS_PATH = "/pubsub/metrics"

REALISTIC_POLICY = """
defaults:
  guards: {cooldown: 24h, max_runs: {count: 3, per: 7d}, skip_if_running: true, run_timeout: 24h}
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
         trend: {lookback: 14d, max_decline_per_day: 0.002, confidence: 0.95, min_points: 24}}
  churn:
    pipeline:
      template: %(template)s
      pipeline_root: gs://test-bucket/root
    policies:
      - {name: logloss-ceiling, metric: logloss, direction: lower_is_better,
         absolute: {threshold: 0.30}, breaches_to_trigger: 3, evaluation_points: 5}
      - {name: logloss-trend, metric: logloss, direction: lower_is_better,
         trend: {lookback: 14d, max_decline_per_day: 0.002, confidence: 0.95, min_points: 24}}
"""
"""`--policy realistic`: an M-of-N floor and a 14-day trend per model over hourly evaluations
(with the default warm-up of 800 events each model's window holds ~340 points)."""


def batch_shift(total: int) -> timedelta:
    """How far back a batch of `total` events moves so that its last window ended an hour
    ago (a window that has not ended yet is refused). One shift for the whole batch: events
    moved by different amounts would leave gaps between their windows."""
    last = T0 + timedelta(days=1 + (total // 2) / 24)
    return max(last - (datetime.now(UTC) - timedelta(hours=1)), timedelta(0))


def _in_the_past(event: dict[str, Any], shift: timedelta) -> dict[str, Any]:
    """`event` moved back by `shift` (see `batch_shift`)."""
    moved = dict(event)
    for key in ("window_start", "window_end"):
        if key in moved:
            when = datetime.fromisoformat(moved[key].replace("Z", "+00:00")) - shift
            moved[key] = when.isoformat().replace("+00:00", "Z")
    return moved


def drive(port: int, path: str, bodies: list[bytes], concurrency: int) -> dict[str, float]:
    """POST every body once from `concurrency` threads, each on its own keep-alive connection.

    Returns events/s over the whole batch and over its first and second halves (by completion
    order), and latency percentiles in milliseconds.
    """
    next_index = itertools.count()  # next() on a count is atomic under the GIL
    latencies: list[float] = []
    done_at: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start_gate = threading.Barrier(concurrency + 1)

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        mine: list[tuple[float, float]] = []
        start_gate.wait()
        while True:
            i = next(next_index)
            if i >= len(bodies):
                break
            t = time.perf_counter()
            for attempt in (1, 2):
                try:
                    conn.request("POST", path, bodies[i], PUSH_HEADERS)
                    response = conn.getresponse()
                    data = response.read()
                    break
                except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                    conn.close()  # the server closed an idle keep-alive connection
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                    if attempt == 2:
                        raise
            end = time.perf_counter()
            if response.status != 200:
                with lock:
                    errors.append(f"HTTP {response.status}: {data[:200]!r}")
            mine.append((end - t, end))
        conn.close()
        with lock:
            latencies.extend(latency for latency, _ in mine)
            done_at.extend(end for _, end in mine)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    start_gate.wait()
    t0 = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} failed requests, e.g. {errors[0]}")
    done_at.sort()
    half = len(done_at) // 2
    return {
        "events_per_s": len(bodies) / wall,
        "first_half_per_s": half / (done_at[half - 1] - t0),
        "second_half_per_s": (len(done_at) - half) / (done_at[-1] - done_at[half - 1]),
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3, help="measured batches per variant")
    parser.add_argument("--count", type=int, default=2000, help="events per measured batch")
    parser.add_argument("--warmup", type=int, default=800, help="events sent before timing")
    parser.add_argument("--concurrency", type=int, default=4, help="client threads")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers (both)")
    parser.add_argument("--threads", type=int, default=1, help="gunicorn threads (both)")
    parser.add_argument("--policy", choices=("simple", "realistic"), default="realistic",
                        help="simple: tests/conftest.py's POLICY_YAML (one M-of-N per model); "
                        "realistic: an M-of-N floor and a 14-day trend per model")
    parser.add_argument("--json", help="write the summary rows to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (server logs)")
    args = parser.parse_args(argv)
    machine_banner("throughput.py", argv)
    print(f"# gunicorn: workers={args.workers} threads={args.threads} (triggers.cloud.serve.serve "
          f"options for both); client: {args.concurrency} threads, keep-alive, "
          f"{args.warmup} warm-up + {args.count} timed Pub/Sub push requests")

    work = tempdir("throughput")
    hello = work / "hello.py"
    hello.write_text(HELLO_SOURCE, encoding="utf-8")
    policy = work / "policy.yaml"
    policy.write_text(policy_text(yaml_text=REALISTIC_POLICY if args.policy == "realistic"
                                  else None), encoding="utf-8")
    print(f"# policy file: {args.policy}")
    results: dict[str, list[dict[str, float]]] = {"hello": [], "ours": []}
    counter = iter(range(1_000_000))

    def run(variant: str) -> dict[str, float]:
        n = next(counter)
        run_dir = work / f"{variant}-{n}"
        run_dir.mkdir()
        total = args.warmup + args.count
        shift = batch_shift(total)
        bodies = [push_body(_in_the_past(healthy_event(i), shift), message_id=f"b{n}-{i}")
                  for i in range(total)]
        port = free_port()
        gunicorn = ["--host", "127.0.0.1", "--port", str(port), "--workers", str(args.workers),
                    "--threads", str(args.threads)]
        if variant == "hello":
            cmd = [PYTHON, str(ROOT / "bench" / "hello_server.py"), "--source", str(hello),
                   *gunicorn]
            env, path = base_env(), "/"
        else:
            cmd = [PYTHON, "-m", "triggers", "serve", *gunicorn]
            env = base_env(RETRAIN_POLICY_FILE=str(policy), RETRAIN_LAUNCHER="local",
                           RETRAIN_STATE=f"sqlite:///{run_dir}/state.db")
            path = METRICS_PATH
        with Server(cmd, env, run_dir, run_dir / "server.log", port) as server:
            _, status, data = first_answer(server, path, bodies[0], PUSH_HEADERS)
            if status != 200:
                raise RuntimeError(f"{variant}: HTTP {status} {data[:300]!r}\n{server.log_tail()}")
            drive(port, path, bodies[1:args.warmup], args.concurrency)
            measured = drive(port, path, bodies[args.warmup:], args.concurrency)
        if variant == "ours":
            counts = db_counts(run_dir / "state.db")
            if counts["processed"] != total or counts["runs"] or counts["rejected"]:
                raise RuntimeError(f"ours: unexpected state after the batch: {counts}")
            kinds = verdict_kinds(run_dir / "state.db")
            if kinds.get("ok", 0) < 0.9 * counts["decisions"]:
                raise RuntimeError(f"ours: the policies did not judge most events: {kinds}")
        return measured

    for rep in range(args.repeat):
        for variant in interleaved(rep, ("hello", "ours")):
            results[variant].append(run(variant))
        h, o = results["hello"][-1], results["ours"][-1]
        print(f"  rep {rep + 1}: hello {h['events_per_s']:.0f}/s  ours {o['events_per_s']:.0f}/s"
              f"  ({o['events_per_s'] / h['events_per_s']:.2f}x)  ours halves "
              f"{o['first_half_per_s']:.0f}/s → {o['second_half_per_s']:.0f}/s", flush=True)

    def med(variant: str, key: str) -> float:
        return median([r[key] for r in results[variant]])

    print(f"\n## warm throughput (medians of {args.repeat})")
    for v in ("hello", "ours"):
        print(f"  {v:<6} {med(v, 'events_per_s'):8.0f} events/s   p50 {med(v, 'p50_ms'):6.2f} ms"
              f"   p99 {med(v, 'p99_ms'):6.2f} ms   first half {med(v, 'first_half_per_s'):.0f}/s"
              f", second half {med(v, 'second_half_per_s'):.0f}/s")
    ours, floor = med("ours", "events_per_s"), med("hello", "events_per_s")
    paired = median([o["events_per_s"] / h["events_per_s"]
                     for o, h in zip(results["ours"], results["hello"], strict=True)])
    print(f"  ratio ours/hello {ours / floor:.2f}x (median of paired ratios {paired:.2f}x)")
    rows = [
        Row("throughput", f"events/s, {args.policy} policy, {args.concurrency} clients",
            ours, floor, "ev/s",
            ours / floor, f">= {TARGET}x", ours / floor >= TARGET),
        Row("throughput", "p50 latency", med("ours", "p50_ms"), med("hello", "p50_ms"), "ms",
            med("ours", "p50_ms") / med("hello", "p50_ms"), "info", None),
        Row("throughput", "p99 latency", med("ours", "p99_ms"), med("hello", "p99_ms"), "ms",
            med("ours", "p99_ms") / med("hello", "p99_ms"), "info", None),
    ]
    print()
    print_rows(rows)
    write_rows(args.json, rows, {"medians": {v: {k: med(v, k) for k in results[v][0]}
                                             for v in results}})
    finish(work, args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
