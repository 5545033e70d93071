"""A real `retrain-trigger serve` process for tests: started in its own process group with
the given environment, waited for on /healthz, stopped with SIGINT (then SIGKILL)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.support.emulators import free_port
from triggers.quickstart import wait_healthy


@contextlib.contextmanager
def serve_process(
    workdir: Path, env: dict[str, str], workers: int = 1, threads: int = 8
) -> Iterator[str]:
    """Yield the base URL of a serve process running in `workdir` with `env` added."""
    port = free_port()
    full_env = {**os.environ, **env}
    log = workdir / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "triggers", "serve", "--port", str(port),
             "--workers", str(workers), "--threads", str(threads)],
            cwd=workdir, env=full_env, start_new_session=True, stdout=out, stderr=out,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_healthy(base, proc)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{log.read_text()}") from None
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)  # gunicorn's master stops its workers
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
