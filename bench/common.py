"""Shared helpers of the benchmarks: spawning servers, events, /proc memory readings, stats.

Nothing here measures; the scripts interleave variants and report ratios to a same-run floor.
"""

from __future__ import annotations

import base64
import copy
import http.client
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FIXTURES = ROOT / "tests" / "fixtures"
EXAMPLE_TEMPLATE = ROOT / "pipelines" / "example.yaml"
MAIN = ROOT / "main.py"
PYTHON = sys.executable
T0 = datetime(2026, 11, 1, tzinfo=UTC)

HELLO_SOURCE = '''\
import functions_framework


@functions_framework.cloud_event
def hello(e):
    return None
'''

CLOUDEVENT_HEADERS = {"Content-Type": "application/cloudevents+json"}
PUSH_HEADERS = {"Content-Type": "application/json", "User-Agent": "bench"}


# ----------------------------------------------------------------------------- reporting
def _first_field(path: str, key: str) -> str:
    """The value of the first `key: value` line of a /proc or /etc file ("" if none)."""
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                name, sep, value = line.partition(":" if path.startswith("/proc") else "=")
                if sep and name.strip() == key:
                    return value.strip().strip('"')
    except OSError:
        pass
    return ""


def machine_info() -> dict[str, str]:
    """CPU model, cores, RAM, OS and Python: what a published figure needs beside it."""
    ram_kib = _first_field("/proc/meminfo", "MemTotal").split()
    return {
        "cpu": _first_field("/proc/cpuinfo", "model name") or platform.processor() or "?",
        "cores": str(os.cpu_count() or 0),
        "ram": f"{int(ram_kib[0]) / 1024 ** 2:.1f} GiB" if ram_kib else "?",
        "os": (_first_field("/etc/os-release", "PRETTY_NAME") or platform.system())
        + f" (kernel {platform.release()})",
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
    }


def machine_banner(script: str, argv: Sequence[str]) -> None:
    """Print the machine and the command that reproduces this run."""
    from importlib.metadata import version

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        affinity = os.cpu_count() or 0
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    print(
        f"# machine: nproc={affinity} cpu_count={os.cpu_count()} "
        f"python={platform.python_version()} ({platform.python_implementation()}) "
        f"{platform.system()} {platform.machine()} "
        f"functions-framework={version('functions-framework')} gunicorn={version('gunicorn')} "
        f"loadavg={load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}"
    )
    print("# host: " + "; ".join(f"{k} {v}" for k, v in machine_info().items()))
    rel = os.path.relpath(PYTHON, ROOT) if PYTHON.startswith(str(ROOT)) else PYTHON
    print(f"# reproduce: cd {ROOT} && {rel} bench/{script} {shlex.join(argv)}".rstrip())
    sys.stdout.flush()


@dataclass
class Row:
    """One line of the summary: `value` vs `floor`, `ratio` checked against `target`."""

    bench: str
    metric: str
    value: float
    floor: float | None
    unit: str
    ratio: float | None
    target: str  # e.g. "<= 1.3x", ">= 0.7x", "<= 120 MiB"
    passed: bool | None  # None: informational

    def status(self) -> str:
        return "info" if self.passed is None else ("PASS" if self.passed else "MISS")


def write_rows(path: str | None, rows: Iterable[Row], extra: dict[str, Any] | None = None) -> None:
    if not path:
        return
    data = {"rows": [asdict(r) for r in rows], "extra": extra or {}}
    Path(path).write_text(json.dumps(data, indent=2), encoding="utf-8")


def print_rows(rows: Sequence[Row]) -> None:
    for row in rows:
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else "-"
        floor = f"{row.floor:.3f} {row.unit}" if row.floor is not None else "-"
        line = (f"{row.status():<4}  {row.bench}/{row.metric}: {row.value:.3f} {row.unit}"
                f"  floor {floor}  ratio {ratio}  target {row.target}")
        print(line)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of `values`."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return float(ordered[rank - 1])


def interleaved(rep: int, variants: Sequence[str]) -> list[str]:
    """A, B on even repetitions, B, A on odd ones: drift on a noisy machine hits both alike."""
    return list(variants) if rep % 2 == 0 else list(reversed(variants))


# ----------------------------------------------------------------------------- events
def compare(
    measure: Callable[[str], float], floor: str, repeat: int, warmup: int
) -> tuple[float, float, float]:
    """Time `floor` and "ours" alternately (`warmup` unmeasured rounds, then `repeat`);
    returns the medians of the floor and of ours, and the median of the paired ratios."""
    times: dict[str, list[float]] = {floor: [], "ours": []}
    for _ in range(warmup):
        for variant in times:
            measure(variant)
    for rep in range(repeat):
        for variant in interleaved(rep, (floor, "ours")):
            times[variant].append(measure(variant))
        print(f"  rep {rep + 1}: {floor} {times[floor][-1]:.3f}s  ours {times['ours'][-1]:.3f}s"
              f"  ({times['ours'][-1] / times[floor][-1]:.2f}x)", flush=True)
    paired = median([o / f for o, f in zip(times["ours"], times[floor], strict=True)])
    return median(times[floor]), median(times["ours"]), paired


def metric_event(model: str, day: float, metrics: dict[str, float], version: str | None = "7",
                 examples: int = 1000, window_hours: float = 24) -> dict[str, Any]:
    end = T0 + timedelta(days=day)
    event: dict[str, Any] = {
        "model": model,
        "metrics": metrics,
        "window_start": (end - timedelta(hours=window_hours)).isoformat().replace("+00:00", "Z"),
        "window_end": end.isoformat().replace("+00:00", "Z"),
        "examples": examples,
    }
    if version is not None:
        event["model_version"] = version
    return event


def healthy_event(i: int) -> dict[str, Any]:
    """The i-th event of a stream of healthy values over both models of POLICY_YAML (hourly)."""
    day = 1 + (i // 2) / 24
    if i % 2 == 0:
        return metric_event("fraud-detector", day, {"accuracy": 0.97 + (i % 7) * 0.001},
                            window_hours=1)
    return metric_event("churn", day, {"logloss": 0.20 + (i % 5) * 0.01}, window_hours=1)


def _encode(event: dict[str, Any]) -> str:
    return base64.b64encode(json.dumps(event).encode("utf-8")).decode("ascii")


def cloudevent_body(event: dict[str, Any] | None = None, message_id: str | None = None) -> bytes:
    """tests/fixtures/cloudevent_metric.json (structured mode), optionally with another event."""
    ce = json.loads((FIXTURES / "cloudevent_metric.json").read_text(encoding="utf-8"))
    ce = copy.deepcopy(ce)
    if event is not None:
        ce["data"]["message"]["data"] = _encode(event)
        ce["data"]["message"]["attributes"] = {"model": event["model"]}
    if message_id is not None:
        ce["id"] = message_id
        ce["data"]["message"]["messageId"] = message_id
    return json.dumps(ce).encode("utf-8")


def fixture_event() -> dict[str, Any]:
    ce = json.loads((FIXTURES / "cloudevent_metric.json").read_text(encoding="utf-8"))
    return dict(json.loads(base64.b64decode(ce["data"]["message"]["data"])))


def push_body(event: dict[str, Any], message_id: str) -> bytes:
    """A Pub/Sub push request body, as the push subscription (or emulator) sends it."""
    body = {
        "subscription": "projects/bench/subscriptions/metrics-push",
        "message": {
            "data": _encode(event),
            "messageId": message_id,
            "publishTime": "2026-11-26T13:20:15.127Z",
            "attributes": {"model": event["model"]},
        },
    }
    return json.dumps(body).encode("utf-8")


def policy_text(template: Path = EXAMPLE_TEMPLATE, yaml_text: str | None = None) -> str:
    """POLICY_YAML of tests/conftest.py (or `yaml_text`) with the template filled in."""
    if yaml_text is None:
        from tests.conftest import POLICY_YAML

        yaml_text = POLICY_YAML
    return textwrap.dedent(yaml_text) % {"template": template}


# ----------------------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_env(**extra: str) -> dict[str, str]:
    """os.environ without settings that would change what the servers do, plus `extra`."""
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("RETRAIN_", "FUNCTION_", "GUNICORN_"))
        and k not in ("GOOGLE_CLOUD_PROJECT", "STORAGE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST",
                      "WORKERS", "THREADS", "PORT", "DEBUG")
    }
    env.update(extra)
    return env


def ff_command(source: Path, target: str, port: int) -> list[str]:
    """How Cloud Functions' Python runtime starts a function: the functions-framework CLI."""
    return [PYTHON, "-m", "functions_framework", "--target", target, "--source", str(source),
            "--signature-type", "cloudevent", "--host", "127.0.0.1", "--port", str(port)]


class Server:
    """A server process in its own session; its log goes to a file."""

    def __init__(self, cmd: list[str], env: dict[str, str], cwd: Path, log: Path,
                 port: int) -> None:
        self.cmd = cmd
        self.port = port
        self.log = log
        self._log = open(log, "wb")  # noqa: SIM115
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")[-n:]
        except OSError:
            return ""

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{shlex.join(self.cmd)} exited {self.proc.returncode}:\n"
                               f"{self.log_tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            # SIGTERM to the master only, as Cloud Run does: killpg(SIGINT) also signals the
            # gthread worker directly, which deadlocks it now and then (1 in ~25 stops here).
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self._log.close()

    def workers(self) -> list[int]:
        return children(self.proc.pid)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def first_answer(server: Server, path: str, body: bytes, headers: dict[str, str],
                 timeout: float = 120.0) -> tuple[float, int, bytes]:
    """Seconds from the server's Popen to the end of the first answer to POST `path`.

    Connects in a 2 ms retry loop (refused until gunicorn binds); once connected the request
    waits in the listen backlog until a worker takes it.
    """
    deadline = server.started + timeout
    while True:
        server.check_alive()
        if time.perf_counter() > deadline:
            raise TimeoutError(f"no answer within {timeout}s:\n{server.log_tail()}")
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
        try:
            conn.connect()
        except (ConnectionRefusedError, ConnectionResetError):
            conn.close()
            time.sleep(0.002)
            continue
        try:
            conn.request("POST", path, body, headers)
            response = conn.getresponse()
            data = response.read()
        except (ConnectionResetError, http.client.RemoteDisconnected, BrokenPipeError):
            conn.close()  # accepted by a master that is still booting: retry
            time.sleep(0.002)
            continue
        elapsed = time.perf_counter() - server.started
        conn.close()
        return elapsed, response.status, data


def wait_ready(server: Server, path: str, body: bytes, headers: dict[str, str]) -> None:
    _, status, data = first_answer(server, path, body, headers)
    if status != 200:
        raise RuntimeError(f"first answer {status}: {data[:500]!r}\n{server.log_tail()}")


def children(pid: int) -> list[int]:
    """Pids whose parent is `pid`, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry))
    return sorted(found)


def proc_status_kib(pid: int, key: str) -> int:
    """A `kB` field of /proc/PID/status (VmHWM: peak RSS, VmRSS: current RSS)."""
    with open(f"/proc/{pid}/status", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def pss_kib(pid: int) -> int:
    """Proportional set size (shared pages split between the processes sharing them)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tempdir(prefix: str) -> Path:
    """A work dir for one script run; left in place if the run fails (its logs explain why)."""
    return Path(tempfile.mkdtemp(prefix=f"retrain-bench-{prefix}-"))


def finish(work: Path, keep: bool) -> None:
    """Remove a successful run's work dir unless asked to keep it."""
    if keep:
        print(f"# work dir (server logs): {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


def db_counts(path: Path) -> dict[str, int]:
    """Rows per table of a state database (to check what a run really did)."""
    import sqlite3

    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {
            table: int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
            for table in ("processed", "decisions", "runs", "rejected", "points")
        }
    finally:
        conn.close()


def verdict_kinds(path: Path) -> dict[str, int]:
    """Decisions per kind in a state database: a benchmark of the decision path checks that
    its policies really judged (`ok`), not that they waited for a missing window."""
    import sqlite3

    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {str(kind): int(n) for kind, n in
                conn.execute("SELECT kind, COUNT(*) FROM decisions GROUP BY kind")}
    finally:
        conn.close()
