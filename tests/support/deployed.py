"""The three functions as Cloud Functions runs them: each one `functions-framework --target X
--source main.py` in its own process group, waited for, stopped by process group.

Not `serve`: no combined app, no dispatch in front; only what main.py itself installs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.emulators import free_port

ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS = {
    "manual_trigger": "http",
    "on_metric_event": "cloudevent",
    "on_run_outcome": "cloudevent",
}
FRAMEWORK = Path(sys.executable).with_name("functions-framework")


@dataclass
class DeployedFunction:
    """One functions-framework process serving `target` on `port`."""

    target: str
    workdir: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / f"{self.target}.log"

    def start(self, timeout: float = 60.0) -> str:
        command = [str(FRAMEWORK), "--target", self.target, "--source", str(ROOT / "main.py"),
                   "--host", "127.0.0.1", "--port", str(self.port)]
        if FUNCTIONS[self.target] == "cloudevent":
            command += ["--signature-type", "cloudevent"]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                command, cwd=self.workdir, env={**os.environ, "PYTHONPATH": str(ROOT), **self.env},
                start_new_session=True, stdout=out, stderr=out,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.target} exited {self.proc.returncode}:\n"
                                   f"{self.log.read_text()}")
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=1):
                return self.base
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.target} did not listen within {timeout}s:\n"
                           f"{self.log.read_text()}")

    def worker_pids(self) -> list[int]:
        """The gunicorn workers under this function's master."""
        assert self.proc is not None
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True,
                             text=True, check=False).stdout
        return [int(pid) for pid in out.split()]

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None


@contextlib.contextmanager
def deployed(workdir: Path, env: dict[str, str],
             targets: tuple[str, ...] = tuple(FUNCTIONS)) -> Iterator[dict[str, str]]:
    """Start each of `targets` as deployed; yield {target: base URL}; stop them all."""
    started: list[DeployedFunction] = []
    try:
        for target in targets:
            function = DeployedFunction(target, workdir, env)
            function.start()
            started.append(function)
        yield {f.target: f.base for f in started}
    finally:
        for function in started:
            function.stop()
