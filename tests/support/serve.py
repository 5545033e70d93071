"""A real `retrain-trigger serve` process for tests: started in its own process group with
the given environment, waited for on /healthz, stopped with SIGTERM (then SIGKILL)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.support.emulators import free_port
from triggers.tools.quickstart import wait_healthy


class ServeProcess:
    """One serve process on a fixed port; `kill()` (SIGKILL to the whole process group, as a
    crashed instance) and `start()` again bring it back on the same address."""

    def __init__(self, workdir: Path, env: dict[str, str], workers: int = 1,
                 threads: int = 8) -> None:
        self.workdir = workdir
        self.env = {**os.environ, **env}
        self.workers = workers
        self.threads = threads
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "triggers", "serve", "--port", str(self.port),
                 "--workers", str(self.workers), "--threads", str(self.threads)],
                cwd=self.workdir, env=self.env, start_new_session=True, stdout=out, stderr=out,
            )
        try:
            wait_healthy(self.base, self.proc)
        except RuntimeError as exc:
            self.kill()
            raise RuntimeError(f"{exc}\n{self.log.read_text()}") from None
        return self.base

    def kill(self) -> None:
        """SIGKILL to the master and every worker at once: no cleanup runs."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGTERM)  # gunicorn's master stops its workers
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()
        self.proc = None


@contextlib.contextmanager
def serve_process(
    workdir: Path, env: dict[str, str], workers: int = 1, threads: int = 8
) -> Iterator[str]:
    """Yield the base URL of a serve process running in `workdir` with `env` added."""
    with served(workdir, env, workers, threads) as server:
        yield server.base


@contextlib.contextmanager
def served(
    workdir: Path, env: dict[str, str], workers: int = 1, threads: int = 8
) -> Iterator[ServeProcess]:
    """A started `ServeProcess`, stopped (or its group killed) at the end."""
    server = ServeProcess(workdir, env, workers, threads)
    server.start()
    try:
        yield server
    finally:
        server.stop()
