"""Firestore state vs SQLite: decision-path latency per event through RetrainService (Firestore
on Google's emulator), and cold start with RETRAIN_STATE=firestore:// vs the hello-world floor.

The emulator runs on loopback: its latency is not Cloud Firestore's (a few ms per RPC in the
same region), so read the Firestore figures as "RPCs × local round trip", not as production.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    CLOUDEVENT_HEADERS,
    HELLO_SOURCE,
    MAIN,
    ROOT,
    Row,
    Server,
    base_env,
    cloudevent_body,
    db_counts,
    ff_command,
    finish,
    first_answer,
    fixture_event,
    free_port,
    healthy_event,
    interleaved,
    machine_banner,
    median,
    percentile,
    policy_text,
    print_rows,
    tempdir,
    write_rows,
)

COLD_TARGET = 1.3  # the decision path's cold-start target (README), here with Firestore state


def decision_latency(args: argparse.Namespace, work: Path, emulator: Any) -> list[Row]:
    """Median and p95 of one `handle_delivery` (no launch), SQLite file vs Firestore."""
    from pipeline_client.launching.protocol import FakeLauncher
    from triggers.config import ServiceConfig
    from triggers.events import Delivery
    from triggers.service import RetrainService
    from triggers.state.firestore import FirestoreStore
    from triggers.state.sqlite import SQLiteStore

    config = ServiceConfig.from_yaml(policy_text(), ROOT)
    stores: dict[str, Any] = {
        "sqlite": SQLiteStore(work / "latency.db"),
        "firestore": FirestoreStore(project=emulator.project),
    }
    services = {name: RetrainService(config, store, FakeLauncher())
                for name, store in stores.items()}
    times: dict[str, list[float]] = {name: [] for name in services}
    print(f"\n## decision path per event through RetrainService: {args.events} events each "
          f"(+{args.warmup_events} warm-up), alternating stores")
    for i in range(args.warmup_events + args.events):
        payload = json.dumps(healthy_event(i)).encode()
        for name in interleaved(i, list(services)):
            delivery = Delivery(f"latency-{i}", payload, "pubsub")
            started = time.perf_counter()
            result = services[name].handle_delivery(delivery)
            elapsed = time.perf_counter() - started
            if result.status != "recorded" or result.launched:
                raise RuntimeError(f"{name}: event {i} took another path: {result.to_json()}")
            if i >= args.warmup_events:
                times[name].append(elapsed)
    rows = []
    sqlite_median = median(times["sqlite"])
    for name in services:
        med, p95 = median(times[name]), percentile(times[name], 95)
        print(f"  {name:<9} median {med * 1000:.2f} ms  p95 {p95 * 1000:.2f} ms")
        rows.append(Row("firestore", f"decision latency {name} (median)", med * 1000,
                        sqlite_median * 1000, "ms", med / sqlite_median, "info", None))
        rows.append(Row("firestore", f"decision latency {name} (p95)", p95 * 1000,
                        percentile(times["sqlite"], 95) * 1000, "ms",
                        p95 / percentile(times["sqlite"], 95), "info", None))
    queries: list[Any] = []
    stores["firestore"].executed_queries = queries
    services["firestore"].handle_delivery(
        Delivery("latency-count", json.dumps(healthy_event(10_001)).encode(), "pubsub"))
    print(f"  firestore queries for one event: {len(queries)} (plus 2 document reads and "
          "2 commits: processed check, model state, points write, unit of work)")
    for store in stores.values():
        store.close()
    return rows


def cold_start(args: argparse.Namespace, work: Path, emulator: Any) -> list[Row]:
    """Popen → first CloudEvent answered: hello world, ours on SQLite, ours on Firestore."""
    from triggers.config import compile_policy_file
    from triggers.state.firestore import FirestoreStore

    hello = work / "hello.py"
    hello.write_text(HELLO_SOURCE, encoding="utf-8")
    policy = work / "policy.yaml"
    policy.write_text(policy_text(), encoding="utf-8")
    compile_policy_file(policy)  # shipped compiled, as a deploy does
    store = FirestoreStore(project=emulator.project)
    counter = iter(range(1_000_000))
    variants = ["hello", "sqlite", "firestore"]

    def start(variant: str) -> float:
        n = next(counter)
        run = work / f"cold-{variant}-{n}"
        run.mkdir()
        port = free_port()
        message_id = f"cold-{variant}-{n}"  # a new message each start: never a duplicate
        body = cloudevent_body(fixture_event(), message_id=message_id)
        if variant == "hello":
            cmd, env = ff_command(hello, "hello", port), base_env()
        else:
            state = (f"sqlite:///{run}/state.db" if variant == "sqlite" else "firestore://")
            env = base_env(RETRAIN_POLICY_FILE=str(policy), RETRAIN_STATE=state,
                           RETRAIN_LAUNCHER="local", **emulator.env())
            cmd = ff_command(MAIN, "on_metric_event", port)
        with Server(cmd, env, run, run / "server.log", port) as server:
            seconds, status, data = first_answer(server, "/", body, CLOUDEVENT_HEADERS)
            if status != 200:
                raise RuntimeError(f"{variant}: HTTP {status} {data[:300]!r}\n{server.log_tail()}")
        if variant == "sqlite" and db_counts(run / "state.db")["processed"] != 1:
            raise RuntimeError("sqlite: the event was not processed")
        if variant == "firestore" and not store.is_processed(message_id):
            raise RuntimeError("firestore: the event was not processed")
        return seconds

    print(f"\n## cold start, decision path: Popen → first answer ({args.repeat} starts each, "
          f"+{args.warmup} warm-up, order alternating)")
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(args.warmup):
        for variant in variants:
            start(variant)
    for rep in range(args.repeat):
        for variant in interleaved(rep, variants):
            times[variant].append(start(variant))
        print(f"  rep {rep + 1}: " + "  ".join(
            f"{v} {times[v][-1]:.3f}s" for v in variants), flush=True)
    store.close()
    floor = median(times["hello"])
    rows = []
    for variant in ("sqlite", "firestore"):
        ours = median(times[variant])
        paired = median([o / h for o, h in zip(times[variant], times["hello"], strict=True)])
        print(f"  median: hello {floor:.3f}s  {variant} {ours:.3f}s  ratio {ours / floor:.2f}x"
              f"  (median of paired ratios {paired:.2f}x, +{(ours - floor) * 1000:.0f} ms)")
        rows.append(Row("firestore", f"cold start {variant}, Popen→first answer", ours, floor,
                        "s", ours / floor, f"<= {COLD_TARGET}x", ours / floor <= COLD_TARGET))
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=300, help="measured events per store")
    parser.add_argument("--warmup-events", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=7, help="measured cold starts per variant")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured starts per variant")
    parser.add_argument("--skip-cold", action="store_true", help="decision latency only")
    parser.add_argument("--json", help="write the summary rows to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (server logs)")
    args = parser.parse_args(argv)
    machine_banner("firestore.py", argv)

    from tests.support.emulators import FirestoreEmulator

    work = tempdir("firestore")
    with FirestoreEmulator() as emulator:
        os.environ.update(emulator.env())  # this process's clients talk to the emulator
        print(f"# Firestore emulator on {emulator.host} (ready in {emulator.startup_seconds:.1f}s)")
        rows = decision_latency(args, work, emulator)
        if not args.skip_cold:
            rows += cold_start(args, work, emulator)
    print()
    print_rows(rows)
    write_rows(args.json, rows)
    finish(work, args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
