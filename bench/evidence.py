"""Issue 6 evidence in one run: cold start, peak memory and warm events/s of
main.py:on_metric_event (SQLite state, local launcher, healthy events: the decision path, no
launch) against two functions measured in the same run, interleaved:

- hello: a hello-world functions-framework CloudEvent function (the floor);
- sample: the common sample style, google.cloud.aiplatform, firestore and pubsub_v1 imported
  at module level, a handler that decodes the message and compares a threshold.

All three are started exactly alike, as Cloud Functions' Python runtime starts them: the
functions-framework CLI (gunicorn, WORKERS/THREADS from the environment, the same for all).
Each start yields every figure: Popen → first CloudEvent answered (cold start); the worker's
VmHWM after that first request; a warm burst of Pub/Sub push requests from a concurrent
client (events/s); the worker's VmHWM after the burst.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from bench.throughput import drive  # noqa: E402

COLD_TARGET = 1.3  # x hello world, decision path
MEMORY_TARGET_MIB = 120.0
THROUGHPUT_TARGET = 0.7  # x hello world
MIB = 1024.0
VARIANTS = ("hello", "sample", "ours")

# What public Cloud Functions samples look like: every client library imported when the module
# loads. The work is as trivial as the hello world's (decode, one comparison): the difference
# from the floor is the import style alone.
SAMPLE_SOURCE = '''\
import base64
import json

import functions_framework
from google.cloud import aiplatform  # noqa: F401  (module level, as public samples do)
from google.cloud import firestore  # noqa: F401
from google.cloud import pubsub_v1  # noqa: F401

THRESHOLD = 0.95


@functions_framework.cloud_event
def on_metric_event(cloud_event):
    event = json.loads(base64.b64decode(cloud_event.data["message"]["data"]))
    accuracy = event["metrics"].get("accuracy")
    if accuracy is not None and accuracy < THRESHOLD:
        print(f"would retrain {event['model']}: accuracy {accuracy}")
'''

MODES = {  # starts per variant, unmeasured starts, timed events, warm-up events per start
    "quick": {"repeat": 3, "warmup": 1, "count": 300, "warmup_events": 50},
    "default": {"repeat": 9, "warmup": 1, "count": 1500, "warmup_events": 200},
}


def memory_mib(server: common.Server) -> dict[str, float]:
    """Peak and current RSS of the one gunicorn worker, the master's peak, and PSS of both."""
    pids = server.workers()
    if len(pids) != 1:
        raise RuntimeError(f"expected one gunicorn worker, found {pids}")
    master, worker = server.proc.pid, pids[0]
    found = {f"worker_{key.lower()}": common.proc_status_kib(worker, key) / MIB
             for key in ("VmHWM", "VmRSS")}
    found["master_vmhwm"] = common.proc_status_kib(master, "VmHWM") / MIB
    found["pss_both"] = sum(common.pss_kib(pid) for pid in (master, worker)) / MIB
    return found


def start_and_measure(variant: str, n: int, args: argparse.Namespace, sources: dict[str, Path],
                      policy: Path, work: Path) -> dict[str, float]:
    """One server of `variant`: every figure of one repetition."""
    run = work / f"{variant}-{n}"
    run.mkdir()
    port = common.free_port()
    env = common.base_env(WORKERS=str(args.workers), THREADS=str(args.threads))
    if variant == "ours":
        env.update(RETRAIN_POLICY_FILE=str(policy), RETRAIN_STATE=f"sqlite:///{run}/state.db",
                   RETRAIN_LAUNCHER="local")
    target = "hello" if variant == "hello" else "on_metric_event"
    total = 1 + args.warmup_events + args.count
    # healthy hourly points over two models: every one recorded and evaluated, none launches
    first = common.cloudevent_body(common.healthy_event(0), message_id=f"e{n}-0")
    burst = [common.push_body(common.healthy_event(i), message_id=f"e{n}-{i}")
             for i in range(1, total)]
    command = common.ff_command(sources[variant], target, port)
    with common.Server(command, env, run, run / "server.log", port) as server:
        cold, status, data = common.first_answer(server, "/", first, common.CLOUDEVENT_HEADERS)
        if status != 200:
            raise RuntimeError(f"{variant}: HTTP {status} {data[:300]!r}\n{server.log_tail()}")
        after_first = memory_mib(server)
        drive(port, "/", burst[:args.warmup_events], args.concurrency)
        timed = drive(port, "/", burst[args.warmup_events:], args.concurrency)
        after_burst = memory_mib(server)
    if variant == "ours":
        counts = common.db_counts(run / "state.db")
        if counts["processed"] != total or counts["runs"] or counts["rejected"]:
            raise RuntimeError(f"ours did not take the decision path for every event: {counts}")
    return {"cold_s": cold, "hwm_first": after_first["worker_vmhwm"],
            "hwm_burst": after_burst["worker_vmhwm"], "master_hwm": after_burst["master_vmhwm"],
            "pss_both": after_burst["pss_both"], "events_per_s": timed["events_per_s"],
            "p50_ms": timed["p50_ms"], "p99_ms": timed["p99_ms"]}


# key, label, unit, how ours is judged: ("ratio", limit, sense) or ("absolute", limit, sense)
FIGURES: tuple[tuple[str, str, str, tuple[str, float, str]], ...] = (
    ("cold_s", "cold start: Popen → first CloudEvent answered", "s",
     ("ratio", COLD_TARGET, "<=")),
    ("hwm_first", "peak RSS (worker VmHWM) after the first request", "MiB",
     ("absolute", MEMORY_TARGET_MIB, "<=")),
    ("hwm_burst", "peak RSS (worker VmHWM) after the warm burst", "MiB",
     ("absolute", MEMORY_TARGET_MIB, "<=")),
    ("events_per_s", "warm throughput", "ev/s", ("ratio", THROUGHPUT_TARGET, ">=")),
)
INFO = (("master_hwm", "master VmHWM after the burst (ff loads the module pre-fork)", "MiB"),
        ("pss_both", "PSS master+worker after the burst (≈ container memory)", "MiB"),
        ("p50_ms", "warm p50 latency", "ms"), ("p99_ms", "warm p99 latency", "ms"))


def summarise(results: dict[str, list[dict[str, float]]], args: argparse.Namespace
              ) -> tuple[list[common.Row], list[dict[str, Any]]]:
    """Rows (ours judged, the sample as information) and the printed table's lines."""
    def med(variant: str, key: str) -> float:
        return common.median([r[key] for r in results[variant]])

    def paired(variant: str, key: str) -> float:
        return common.median([o[key] / h[key] for o, h in
                              zip(results[variant], results["hello"], strict=True)])

    rows: list[common.Row] = []
    table: list[dict[str, Any]] = []
    for key, label, unit, rule in [*FIGURES, *((*info, None) for info in INFO)]:
        if key == "events_per_s":
            label += (f" ({args.count} events, {args.concurrency} clients, "
                      f"workers={args.workers} threads={args.threads})")
        ours, floor, sample = med("ours", key), med("hello", key), med("sample", key)
        target, passed = "info", None
        if rule is not None:
            kind, limit, sense = rule
            judged_value = ours / floor if kind == "ratio" else ours
            target = f"{sense} {limit:g}{'x' if kind == 'ratio' else ' ' + unit}"
            passed = judged_value <= limit if sense == "<=" else judged_value >= limit
        rows.append(common.Row("evidence", label, ours, floor, unit, ours / floor, target,
                               passed))
        rows.append(common.Row("evidence", f"{label} [sample: module-level SDKs]", sample,
                               floor, unit, sample / floor, "info", None))
        table.append({"key": key, "label": label, "unit": unit, "ours": ours, "hello": floor,
                      "sample": sample, "ratio_hello": ours / floor,
                      "paired_ratio_hello": paired("ours", key), "ratio_sample": ours / sample,
                      "target": target, "status": rows[-2].status(),
                      "range_ours": [min(r[key] for r in results["ours"]),
                                     max(r[key] for r in results["ours"])]})
    return rows, table


def show(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value * 1000:.0f} ms"
    return f"{value:,.0f} {unit}" if unit == "ev/s" else f"{value:.1f} {unit}"


def print_table(table: list[dict[str, Any]], repeat: int) -> None:
    print(f"\n## evidence (medians of {repeat} interleaved starts per variant)\n")
    print("| figure | ours | floor: hello world | ours / hello (paired) "
          "| module-level-SDK sample | ours / sample | target | result |")
    print("|---|---:|---:|---:|---:|---:|---|---|")
    for t in table:
        result = {"PASS": "PASS", "MISS": "**MISS**"}.get(t["status"], "info")
        print(f"| {t['label']} | {show(t['ours'], t['unit'])} | {show(t['hello'], t['unit'])} "
              f"| {t['ratio_hello']:.2f}x ({t['paired_ratio_hello']:.2f}x) "
              f"| {show(t['sample'], t['unit'])} | {t['ratio_sample']:.2f}x | {t['target']} "
              f"| {result} |")


def noise_report(table: list[dict[str, Any]], load_before: float) -> dict[str, Any]:
    """Say when the run is too noisy to judge: a busy machine (load above its cores), or a
    ratio of medians that disagrees with the median of paired ratios by more than 15 %."""
    cores = len(os.sched_getaffinity(0))
    load = max(load_before, os.getloadavg()[0])
    unsteady = [t["label"] for t in table if t["target"] != "info"
                and abs(t["ratio_hello"] / t["paired_ratio_hello"] - 1) > 0.15]
    print(f"# load average {load_before:.2f} at start, {os.getloadavg()[0]:.2f} at end, "
          f"{cores} cores")
    if load > cores or unsteady:
        print("# NOISY RUN: " + ("; ".join(f"ratio of medians and paired ratio disagree: {u}"
                                            for u in unsteady) or "the machine was busy")
              + ". Judge again on a quiet machine or with more --repeat.")
    return {"load_before": load_before, "load_after": os.getloadavg()[0], "cores": cores,
            "unsteady": unsteady}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="few repeats and a short burst (under a minute)")
    parser.add_argument("--repeat", type=int, help="measured starts per variant (default 9, "
                        "quick 3)")
    parser.add_argument("--warmup", type=int, help="unmeasured starts per variant (default 1)")
    parser.add_argument("--count", type=int, help="timed events per start (default 1500, "
                        "quick 300)")
    parser.add_argument("--warmup-events", type=int, help="untimed events before the burst "
                        "(default 200, quick 50)")
    parser.add_argument("--concurrency", type=int, default=4, help="client threads")
    parser.add_argument("--threads", type=int, default=1,
                        help="gunicorn THREADS of all three (WORKERS is 1)")
    parser.add_argument("--json", help="write the summary rows to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (server logs)")
    args = parser.parse_args(argv)
    for key, value in MODES["quick" if args.quick else "default"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.workers = 1  # as deployed (one worker per instance); the memory figures read it
    common.machine_banner("evidence.py", argv)
    print(f"# functions-framework CLI for all three: WORKERS={args.workers} "
          f"THREADS={args.threads}; {args.repeat} starts per variant (+{args.warmup} unmeasured),"
          f" order alternating; per start {args.warmup_events} warm-up + {args.count} timed "
          f"Pub/Sub push requests from {args.concurrency} client threads", flush=True)

    load_before = os.getloadavg()[0]
    work = common.tempdir("evidence")
    sources = {"hello": work / "hello.py", "sample": work / "sample.py", "ours": common.MAIN}
    sources["hello"].write_text(common.HELLO_SOURCE, encoding="utf-8")
    sources["sample"].write_text(SAMPLE_SOURCE, encoding="utf-8")
    policy = work / "policy.yaml"
    policy.write_text(common.policy_text(), encoding="utf-8")
    from triggers.config import compile_policy_file

    compile_policy_file(policy)  # shipped compiled, as a deploy does (see cold_start.py)
    counter = iter(range(1_000_000))
    results: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    for rep in range(-args.warmup, args.repeat):
        for variant in common.interleaved(rep, VARIANTS):
            measured = start_and_measure(variant, next(counter), args, sources, policy, work)
            if rep >= 0:
                results[variant].append(measured)
        if rep < 0:
            continue
        print(f"  rep {rep + 1}: " + "   ".join(
            f"{v} {results[v][-1]['cold_s'] * 1000:.0f} ms {results[v][-1]['hwm_burst']:.0f} MiB"
            f" {results[v][-1]['events_per_s']:.0f}/s" for v in VARIANTS), flush=True)

    rows, table = summarise(results, args)
    print_table(table, args.repeat)
    misses = [t for t in table if t["status"] == "MISS"]
    print("\n" + ("\n".join(f"MISS: {t['label']}: {t['ratio_hello']:.2f}x hello world, "
                            f"target {t['target']}" for t in misses) or "all targets met"))
    noise = noise_report(table, load_before)
    common.write_rows(args.json, rows, {"machine": common.machine_info(), "table": table,
                                        "noise": noise, "runs": results,
                                        "settings": {k: v for k, v in vars(args).items()
                                                     if k not in ("json", "keep")}})
    common.finish(work, args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
