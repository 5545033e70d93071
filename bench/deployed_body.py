"""Peak RSS of a deployed function's worker (`functions-framework --target on_metric_event`)
receiving one large push body, against a hello-world function receiving the same body.

    python bench/deployed_body.py [--mib 30] [--root CHECKOUT]   # --root: measure another tree
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    EXAMPLE_TEMPLATE,
    FIXTURES,
    HELLO_SOURCE,
    ROOT,
    Row,
    machine_banner,
    print_rows,
    write_rows,
)

FRAMEWORK = Path(sys.executable).with_name("functions-framework")
POLICY = """
models:
  churn:
    pipeline: {template: %s}
    policies:
      - {name: ceiling, metric: logloss, direction: lower_is_better, absolute: {threshold: 0.3}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def function(root: Path, source: Path, target: str, env: dict[str, str],
             workdir: Path) -> Iterator[tuple[int, int]]:
    """(port, worker pid) of `functions-framework --target target` started from `root`."""
    port = free_port()
    proc = subprocess.Popen(
        [str(FRAMEWORK), "--target", target, "--source", str(source), "--host", "127.0.0.1",
         "--port", str(port), "--signature-type", "cloudevent"],
        cwd=workdir, env={**os.environ, "PYTHONPATH": str(root), **env},
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{target} did not start")
            time.sleep(0.1)
        out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True,
                             check=False).stdout.split()
        yield port, int(out[0])
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)


def peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def post(port: int, size: int, chunked: bool) -> int:
    """Send a `size`-byte JSON-looking body (from a thread: the server may stop reading)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=120)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
    piece = b'{"message": {"data": "' + b"A" * (1024 * 1024 - 23)

    def send() -> None:
        with contextlib.suppress(OSError):
            sock.sendall(f"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         f"{framing}\r\n\r\n".encode())
            sent = 0
            while sent < size:
                part = piece[: size - sent]
                sent += len(part)
                sock.sendall(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
            if chunked:
                sock.sendall(b"0\r\n\r\n")

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    import http.client

    response = http.client.HTTPResponse(sock)
    try:
        response.begin()
        response.read()
        return response.status
    except OSError:
        return 0
    finally:
        sock.close()
        sender.join(timeout=60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=30)
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to measure")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    machine_banner("deployed_body.py", sys.argv[1:] if argv is None else argv)
    size = args.mib * 1024 * 1024
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "policies.yaml").write_text(POLICY % EXAMPLE_TEMPLATE)
        (work / "hello.py").write_text(HELLO_SOURCE)
        env = {"RETRAIN_POLICY_FILE": str(work / "policies.yaml"),
               "RETRAIN_STATE": f"sqlite:///{work}/state.db", "RETRAIN_LAUNCHER": "local"}
        warm = json.loads((FIXTURES / "cloudevent_metric.json").read_text())
        for chunked in (False, True):
            mode = "chunked" if chunked else "content-length"
            peaks = {}
            for name, source, target in [("hello", work / "hello.py", "hello"),
                                         ("on_metric_event", args.root / "main.py",
                                          "on_metric_event")]:
                with function(args.root, source, target, env, work) as (port, worker):
                    import requests

                    requests.post(f"http://127.0.0.1:{port}", json=warm, timeout=30)
                    before = peak_kib(worker)
                    status = post(port, size, chunked)
                    peaks[name] = (before, peak_kib(worker), status)
                print(f"# {mode} {name}: status {status}, peak RSS {before / 1024:.1f} -> "
                      f"{peaks[name][1] / 1024:.1f} MiB")
            ours, hello = peaks["on_metric_event"][1], peaks["hello"][1]
            rows.append(Row("deployed_body", f"{args.mib}MiB_{mode}_peak_rss", ours / 1024,
                            hello / 1024, "MiB", ours / hello, "<= 0.5x",
                            ours / hello <= 0.5))  # hello reads the body whole: we must not
    print_rows(rows)
    write_rows(args.json, rows)
    return 0 if all(r.passed for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
