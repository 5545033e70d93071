"""`retrain-trigger quickstart`: the service on its embedded defaults, fed a sample stream.

Starts `serve` (SQLite, local kfp launcher), posts examples/sample_stream.jsonl day by day,
waits for the triggered pipeline run to end, and prints what was decided and why.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "examples" / "policies.yaml"
STREAM = ROOT / "examples" / "sample_stream.jsonl"
MODEL = "fraud-detector"


def call(base: str, token: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One JSON request to the manual trigger; returns (status, JSON answer)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        base + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def fresh_workdir(workdir: Path, owner: str) -> None:
    """Empties `workdir` for a new run of `owner` (demo, quickstart) — only if it is missing,
    empty, or one of that command's own work directories: never a user's folder."""
    marker = workdir / f".retrain-{owner}"
    if workdir.exists() and any(workdir.iterdir()) and not marker.exists():
        raise FileExistsError(f"{workdir} is not empty and not a {owner} work directory; "
                              "choose another --workdir")
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    marker.write_text(f"created by retrain-trigger {owner}; emptied by its next run\n")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(
    workdir: Path, token: str, port: int, policies: Path = POLICIES
) -> subprocess.Popen[bytes]:
    """`serve` on SQLite in `workdir` with the local launcher, in its own session."""
    env = dict(os.environ)
    env.update(
        RETRAIN_POLICY_FILE=str(policies),
        RETRAIN_STATE=f"sqlite:///{(workdir / 'state.db').resolve()}",
        RETRAIN_LAUNCHER="local",
        RETRAIN_MANUAL_TOKEN=token,
    )
    log = open(workdir / "server.log", "wb")  # noqa: SIM115 - lives as long as the server
    return subprocess.Popen(
        [sys.executable, "-m", "triggers", "serve", "--port", str(port)],
        cwd=workdir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_healthy(base: str, server: subprocess.Popen[bytes], deadline: float = 60) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if server.poll() is not None:
            raise RuntimeError("the server exited at start; see server.log")
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("the server did not answer /healthz in time")


def run_quickstart(workdir: Path, keep_serving: bool = False) -> int:
    try:
        fresh_workdir(workdir, "quickstart")
    except FileExistsError as exc:
        print(f"quickstart: {exc}", file=sys.stderr)
        return 2
    token = secrets.token_urlsafe(16)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    print(f"retrain-trigger quickstart: policies {POLICIES.relative_to(ROOT)}, "
          f"state {workdir}/state.db, local kfp launcher, server {base}")
    server = start_server(workdir, token, port)
    try:
        wait_healthy(base, server)
        launched: list[str] = []
        print("\nday         accuracy  auc     decision")
        for line in STREAM.read_text().splitlines():
            event = json.loads(line)
            status, answer = call(base, token, "POST", "/events", event)
            if status != 200:
                print(f"  event refused ({status}): {answer}")
                return 1
            summary = summarize(answer["decisions"])
            print(f"{event['window_end'][:10]}  {event['metrics']['accuracy']:.3f}     "
                  f"{event['metrics']['auc']:.3f}   {summary}")
            for d in answer["decisions"]:
                if d["kind"] == "fired":
                    print(f"            └ {d['policy']}: {d['reason']}")
            launched += answer["launched"]
        if not launched:
            print("\nno run was launched")
            return 1
        print(f"\nlaunched {launched[0]} with the local kfp launcher; waiting for it to end…")
        outcome = wait_for_outcome(base, token, launched[0], server)
        if outcome is None:
            print("the run did not end within 5 minutes; see", workdir / "runs")
            return 1
        print(f"run ended: {outcome['state']}; "
              f"champion is now {outcome['champion']} (was 7)")
        _, trail = call(base, token, "GET", f"/decisions?model={MODEL}&limit=12")
        print("\nlatest decisions (newest first):")
        for d in trail["decisions"]:
            if d["kind"] != "ok":
                print(f"  {d['kind']:<18} {d['policy'] or '-':<18} {d['reason'][:110]}")
        print(f"\naudit trail: python -m triggers decisions --state "
              f"sqlite:///{(workdir / 'state.db').resolve()}")
        if keep_serving:
            print(f"serving on {base} (token {token}); Ctrl-C stops")
            server.wait()
        return 0
    finally:
        stop_server(server)


def stop_server(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM the gunicorn master (it stops its workers); SIGKILL the group if it hangs."""
    if server.poll() is None:
        os.kill(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def summarize(decisions: list[dict[str, Any]]) -> str:
    """One day's decisions in a few words: what fired, what was held back, what waits."""
    parts = []
    for kind, label in (("fired", "FIRED"), ("suppressed", "held back"),
                        ("champion", "champion"), ("insufficient_data", "need more points")):
        names = sorted({d["policy"] or d["reason"].split(" ")[1] for d in decisions
                        if d["kind"] == kind})
        if names:
            parts.append(f"{label}: {', '.join(names)}")
    return "; ".join(parts) or "all policies ok"


def wait_for_outcome(
    base: str, token: str, run_id: str, server: subprocess.Popen[bytes], deadline: float = 300
) -> dict[str, Any] | None:
    end = time.monotonic() + deadline
    while time.monotonic() < end and server.poll() is None:
        _, status = call(base, token, "GET", f"/models/{MODEL}")
        runs = {r["run_id"]: r for r in status["recent_runs"]}
        run = runs.get(run_id)
        if run and run["state"] not in ("launching", "launched", "running"):
            return {"state": run["state"], "champion": status["champion_version"]}
        time.sleep(1)
    return None
