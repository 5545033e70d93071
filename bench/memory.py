"""Peak RSS (VmHWM of the gunicorn worker) of main.py:on_metric_event after serving N decision
events vs a hello-world function given the same requests; plus the Vertex launch path for info."""

from __future__ import annotations

import argparse
import http.client
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    CLOUDEVENT_HEADERS,
    EXAMPLE_TEMPLATE,
    HELLO_SOURCE,
    MAIN,
    Row,
    Server,
    base_env,
    cloudevent_body,
    db_counts,
    ff_command,
    finish,
    first_answer,
    free_port,
    healthy_event,
    interleaved,
    machine_banner,
    median,
    policy_text,
    print_rows,
    proc_status_kib,
    pss_kib,
    tempdir,
    write_rows,
)

TARGET_MIB = 120.0
MIB = 1024.0


def serve_and_measure(server: Server, bodies: list[bytes]) -> dict[str, float]:
    """Send `bodies` (first through the cold-start retry loop, then on one keep-alive
    connection), then read the master's and worker's memory from /proc (MiB)."""
    _, status, data = first_answer(server, "/", bodies[0], CLOUDEVENT_HEADERS)
    if status != 200:
        raise RuntimeError(f"HTTP {status} {data[:300]!r}\n{server.log_tail()}")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    for body in bodies[1:]:
        for attempt in (1, 2):
            try:
                conn.request("POST", "/", body, CLOUDEVENT_HEADERS)
                response = conn.getresponse()
                data = response.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                conn.close()  # keep-alive timed out: reconnect once
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
                if attempt == 2:
                    raise
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status} {data[:300]!r}\n{server.log_tail()}")
    conn.close()
    master = server.proc.pid
    workers = server.workers()
    if len(workers) != 1:
        raise RuntimeError(f"expected one gunicorn worker, found {workers}")
    worker = workers[0]
    return {
        "worker_hwm": proc_status_kib(worker, "VmHWM") / MIB,
        "worker_rss": proc_status_kib(worker, "VmRSS") / MIB,
        "master_hwm": proc_status_kib(master, "VmHWM") / MIB,
        "pss_total": (pss_kib(master) + pss_kib(worker)) / MIB,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3, help="measured servers per variant")
    parser.add_argument("--events", type=int, default=200, help="events per server")
    parser.add_argument("--skip-vertex", action="store_true", help="decision path only")
    parser.add_argument("--json", help="write the summary rows to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (server logs)")
    args = parser.parse_args(argv)
    machine_banner("memory.py", argv)

    from tests.fakes.vertex_server import FakeVertexServer

    work = tempdir("memory")
    hello = work / "hello.py"
    hello.write_text(HELLO_SOURCE, encoding="utf-8")
    policy = work / "policy.yaml"
    policy.write_text(policy_text(), encoding="utf-8")
    # the same policies, with a pipeline root so the Vertex launcher can create a job
    vertex_policy = work / "vertex-policy.yaml"
    vertex_policy.write_text(
        policy_text().replace(f"template: {EXAMPLE_TEMPLATE}\n",
                              f"template: {EXAMPLE_TEMPLATE}\n      pipeline_root: gs://bench/root\n"),
        encoding="utf-8")
    from bench.cold_start import SAMPLE_SOURCE

    sample = work / "sample.py"
    sample.write_text(SAMPLE_SOURCE, encoding="utf-8")

    variants = ["hello", "ours"] + ([] if args.skip_vertex else ["sample", "ours-vertex"])
    results: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    counter = iter(range(1_000_000))

    def run(variant: str) -> dict[str, float]:
        n = next(counter)
        with FakeVertexServer() as fake:  # a fresh fake each time: the same stream, same run ids
            return run_with(variant, n, fake)

    def run_with(variant: str, n: int, fake: FakeVertexServer) -> dict[str, float]:
        run_dir = work / f"{variant}-{n}"
        run_dir.mkdir()
        # healthy points over two models and ~4 days, each a new message and point
        bodies = [cloudevent_body(healthy_event(i), message_id=f"m{n}-{i}")
                  for i in range(args.events)]
        port = free_port()
        env = base_env()
        if variant == "hello":
            cmd = ff_command(hello, "hello", port)
        elif variant == "sample":
            env.update(GOOGLE_CLOUD_PROJECT="bench", SAMPLE_VERTEX_ENDPOINT=fake.endpoint,
                       SAMPLE_TEMPLATE=str(EXAMPLE_TEMPLATE))
            cmd = ff_command(sample, "on_metric_event", port)
        else:
            env.update(RETRAIN_POLICY_FILE=str(policy), RETRAIN_LAUNCHER="local",
                       RETRAIN_STATE=f"sqlite:///{run_dir}/state.db")
            if variant == "ours-vertex":
                env.update(RETRAIN_POLICY_FILE=str(vertex_policy), RETRAIN_LAUNCHER="vertex",
                           RETRAIN_VERTEX_ENDPOINT=fake.endpoint, GOOGLE_CLOUD_PROJECT="bench")
            cmd = ff_command(MAIN, "on_metric_event", port)
        if variant in ("sample", "ours-vertex"):  # one more event that launches a job
            # the next churn window of the stream (no gap), breaching its 1-of-1 ceiling
            launching = dict(healthy_event(args.events + 1 - args.events % 2),
                             metrics={"logloss": 0.9})
            if variant == "sample":  # the sample watches fraud-detector's accuracy
                launching = dict(healthy_event(args.events - args.events % 2),
                                 metrics={"accuracy": 0.5})
            bodies.append(cloudevent_body(launching, message_id=f"launch-{n}"))
        with Server(cmd, env, run_dir, run_dir / "server.log", port) as server:
            measured = serve_and_measure(server, bodies)
        if variant.startswith("ours"):
            counts = db_counts(run_dir / "state.db")
            want_runs = 1 if variant == "ours-vertex" else 0
            if counts["processed"] != len(bodies) or counts["runs"] != want_runs:
                raise RuntimeError(f"{variant}: unexpected state {counts}")
        if variant in ("sample", "ours-vertex") and len(fake.created) != 1:
            raise RuntimeError(f"{variant}: the launching event created no job")
        return measured

    for rep in range(args.repeat):
        for variant in interleaved(rep, variants):
            results[variant].append(run(variant))
        line = "  ".join(f"{v} {results[v][-1]['worker_hwm']:.1f}" for v in variants)
        print(f"  rep {rep + 1}: {line} MiB (worker VmHWM)", flush=True)

    def med(variant: str, key: str) -> float:
        return median([r[key] for r in results[variant]])

    print(f"\n## peak RSS after {args.events} events (medians of {args.repeat}; MiB)")
    print(f"  {'variant':<12} {'worker VmHWM':>13} {'worker VmRSS':>13} {'master VmHWM':>13}"
          f" {'PSS master+worker':>18}")
    for v in variants:
        print(f"  {v:<12} {med(v, 'worker_hwm'):>13.1f} {med(v, 'worker_rss'):>13.1f}"
              f" {med(v, 'master_hwm'):>13.1f} {med(v, 'pss_total'):>18.1f}")
    ours, floor = med("ours", "worker_hwm"), med("hello", "worker_hwm")
    print(f"  ours - hello: +{ours - floor:.1f} MiB worker peak; ratio {ours / floor:.2f}x")
    total = med("ours", "worker_hwm") + med("ours", "master_hwm")
    total_floor = med("hello", "worker_hwm") + med("hello", "master_hwm")
    rows = [
        Row("memory", f"decision path, worker VmHWM after {args.events} events", ours, floor,
            "MiB", ours / floor, f"<= {TARGET_MIB:.0f} MiB", ours <= TARGET_MIB),
        Row("memory", "decision path, master+worker VmHWM (double-counts shared)", total,
            total_floor, "MiB", total / total_floor, f"<= {TARGET_MIB:.0f} MiB",
            total <= TARGET_MIB),
    ]
    if not args.skip_vertex:
        vertex, sample_mib = med("ours-vertex", "worker_hwm"), med("sample", "worker_hwm")
        print(f"  vertex path: ours {vertex:.1f} MiB vs module-level sample {sample_mib:.1f} MiB")
        rows.append(Row("memory", "vertex path (+1 launch), worker VmHWM (floor: sample)", vertex,
                        sample_mib, "MiB", vertex / sample_mib, "info", None))
    print()
    print_rows(rows)
    write_rows(args.json, rows, {"medians": {v: {k: med(v, k) for k in results[v][0]}
                                             for v in variants}})
    finish(work, args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
