"""The storm at full size: 20,000 events for 50 models (30 % redelivered, 10 % out of order,
1 % malformed) pushed to `retrain-trigger serve` (2 workers) on SQLite with the fake Vertex,
then the same storm under faults (Vertex failing 20 %, the state file locked, SIGKILL).

Prints events/s held (against a hello-world function served the same way, same run), p50/p99
latency, and what the store holds afterwards: duplicates 0, lost 0, one run per decision.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    HELLO_SOURCE,
    PYTHON,
    ROOT,
    Row,
    Server,
    base_env,
    first_answer,
    free_port,
    machine_banner,
    print_rows,
    write_rows,
)
from tests.fakes.vertex_server import Chaos, FakeVertexServer  # noqa: E402
from tests.support.serve import ServeProcess  # noqa: E402
from tests.support.storm import (  # noqa: E402
    BackgroundStorm,
    PushClient,
    RunFinisher,
    StormPlan,
    StormReport,
    check_launcher_timeline,
    check_store,
    figures,
    hold_sqlite_lock,
    model_name,
    policy_yaml,
)
from triggers.state.sqlite import SQLiteStore  # noqa: E402

EXAMPLE_TEMPLATE = ROOT / "pipelines" / "example.yaml"


def hello_floor(plan: StormPlan, work: Path, workers: int, threads: int,
                clients: int) -> StormReport:
    """The same deliveries pushed to a hello-world CloudEvent function under the same server."""
    source = work / "hello.py"
    source.write_text(HELLO_SOURCE, encoding="utf-8")
    port = free_port()
    cmd = [PYTHON, str(ROOT / "bench" / "hello_server.py"), "--source", str(source),
           "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
           "--threads", str(threads)]
    bodies = [plan.messages[i].envelope() for i in plan.deliveries]
    with Server(cmd, base_env(), work, work / "hello.log", port) as server:
        first_answer(server, "/", bodies[0], {"Content-Type": "application/json"})
        return PushClient(f"http://127.0.0.1:{port}", clients).push("/", bodies)


def run_storm(plan: StormPlan, work: Path, args: argparse.Namespace,
              faults: bool) -> tuple[StormReport, Any, dict[str, Any]]:
    """One storm on a fresh state file; with `faults`, Vertex fails 20 % of calls, the file
    is locked for 3 s at a third of the storm and the server SIGKILLed at two thirds."""
    work.mkdir()
    db = work / "state.db"
    survived: dict[str, Any] = {}
    with FakeVertexServer() as vertex:
        if faults:
            vertex.chaos = Chaos(rate=0.2, seed=args.seed, delay=2.0)
        policy = work / "policies.yaml"
        policy.write_text(policy_yaml(args.models, str(EXAMPLE_TEMPLATE)), encoding="utf-8")
        env = dict(
            RETRAIN_POLICY_FILE=str(policy), RETRAIN_STATE=f"sqlite:///{db}?timeout=0.5s",
            RETRAIN_LAUNCHER="vertex", RETRAIN_VERTEX_ENDPOINT=vertex.endpoint,
            GOOGLE_CLOUD_PROJECT="test-project", RETRAIN_LOCATION="us-central1",
            RETRAIN_MANUAL_TOKEN="bench-token", RETRAIN_VERTEX_TIMEOUT="1s",
        )
        server = ServeProcess(work, env, args.workers, args.threads)
        server.start()
        try:
            with RunFinisher(server.base, vertex, after=args.run_seconds) as finisher:
                running = BackgroundStorm(server.base, plan, threads=args.clients)
                if faults:
                    running.when_acked(len(plan.deliveries) // 3, timeout=1800)
                    hold_sqlite_lock(db, 3.0)
                    survived["lock_seconds"] = 3.0
                    running.when_acked(2 * len(plan.deliveries) // 3, timeout=1800)
                    server.kill()
                    time.sleep(0.5)
                    server.start()
                    survived["sigkills"] = 1
                report = running.result()
            finisher.finish_due(everything=True)
        finally:
            server.stop()
        if faults:
            assert vertex.chaos is not None
            survived["vertex_faults"] = dict(vertex.chaos.injected)
            survived["vertex_calls"] = vertex.chaos.calls
        check = check_store(SQLiteStore(db), plan, [model_name(i) for i in range(args.models)],
                            vertex_jobs=vertex.jobs)
        check.problems += check_launcher_timeline(vertex.jobs)
    survived["failed_deliveries"] = report.retries
    return report, check, survived


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--clients", type=int, default=16, help="concurrent pushes")
    parser.add_argument("--run-seconds", type=float, default=1.0,
                        help="a launched run ends (outcome 'rejected') after this long")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-faults", action="store_true", help="skip the fault storm")
    parser.add_argument("--repeat", type=int, default=1, help="accepted for run_all; unused")
    parser.add_argument("--json", help="write the summary rows to this file")
    args = parser.parse_args(argv)
    machine_banner("storm.py", argv)
    plan = StormPlan.build(args.models, args.events, seed=args.seed)
    print(f"# {len(plan.messages)} messages ({plan.malformed} malformed, {plan.out_of_order} "
          f"out of order) for {args.models} models, {len(plan.deliveries)} deliveries "
          f"({plan.redelivered} redelivered); serve {args.workers}x{args.threads}, "
          f"{args.clients} concurrent pushes", flush=True)
    rows: list[Row] = []
    extra: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="retrain-storm-") as tmp:
        work = Path(tmp)
        floor = hello_floor(plan, work, args.workers, args.threads, args.clients)
        print(f"hello world: {floor.rate:.0f} deliveries/s, p50 "
              f"{floor.percentile(0.5) * 1000:.1f} ms, p99 {floor.percentile(0.99) * 1000:.1f} ms",
              flush=True)
        variants = [("clean", False)] + ([] if args.no_faults else [("faults", True)])
        for name, faults in variants:
            report, check, survived = run_storm(plan, work / name, args, faults)
            print(f"\n## storm ({name})\n{figures(plan, report, check)}")
            if faults:
                print(f"survived: {survived}")
            for problem in check.problems:
                print(f"  PROBLEM: {problem}")
            label = f"storm {name}"
            rows += [
                Row(label, "deliveries/s held", report.rate, floor.rate, "ev/s",
                    report.rate / floor.rate, "info", None),
                Row(label, "p50 latency", report.percentile(0.5) * 1000,
                    floor.percentile(0.5) * 1000, "ms", None, "info", None),
                Row(label, "p99 latency", report.percentile(0.99) * 1000,
                    floor.percentile(0.99) * 1000, "ms", None, "info", None),
                Row(label, "duplicates", check.duplicates, None, "", None, "= 0",
                    check.duplicates == 0),
                Row(label, "lost", check.lost, None, "", None, "= 0", check.lost == 0),
                Row(label, "store/launcher problems", len(check.problems), None, "", None,
                    "= 0", not check.problems),
            ]
            extra[name] = {"runs": check.runs, "fired": check.fired,
                           "suppressed": check.suppressed, "rejected": check.rejected,
                           "survived": survived, "statuses": dict(report.statuses)}
    print()
    print_rows(rows)
    write_rows(args.json, rows, extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
