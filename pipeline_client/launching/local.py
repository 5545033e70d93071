"""The local launcher: runs a compiled KFP pipeline with kfp.local in a detached child process.

A run lives in `workdir/{run_id}/` (request.json, status.json, log.txt, artifacts/); no kfp here.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline_client.errors import LaunchRejectedError, TransientError
from pipeline_client.launching.protocol import LaunchRequest, LaunchResult, RunStatus

if TYPE_CHECKING:
    import subprocess  # imported on the first launch: not at cold start

logger = logging.getLogger(__name__)

DEFAULT_OUTCOME_HANDLER = "triggers.cloud.wiring:deliver_outcome"
REQUEST_FILE = "request.json"
STATUS_FILE = "status.json"
LOG_FILE = "log.txt"
LOCK_FILE = ".lock"
CHILD_MODULE = "pipeline_client.launching.local_run"
NOT_REPORTING = "local run process exited without reporting"
NEVER_STARTED = "local run process never started"
# A run left `pending` without a pid (the submitter died before starting the child) for this
# long is reported as failed instead of pending forever.
START_GRACE_SECONDS = 60.0
_RUN_ID = re.compile(r"[a-z][a-z0-9-]{0,127}")
_REMOTE_PREFIXES = ("gs://", "http://", "https://")
_PROJECT_ROOT = Path(__file__).resolve().parents[2]


class LocalLauncher:
    """Runs each request's compiled template via kfp.local, in a detached child process.

    `submit` answers at once; the child writes status.json and, when `outcome_handler`
    ("module:function") is set, calls it with the run's outcome message. `child_env`: variables
    the child gets beyond this process's own (the settings its outcome handler reads).
    """

    name = "local"

    def __init__(
        self,
        workdir: Path = Path(".retrain/runs"),
        outcome_handler: str | None = DEFAULT_OUTCOME_HANDLER,
        python: str = sys.executable,
        child_env: Mapping[str, str] | None = None,
    ) -> None:
        if outcome_handler is not None and not _is_handler_ref(outcome_handler):
            raise ValueError(f"outcome_handler must be 'module:function', got {outcome_handler!r}")
        self.workdir = Path(workdir).resolve()
        self.outcome_handler = outcome_handler
        self.python = python
        self.child_env = dict(child_env or {})

    def submit(self, request: LaunchRequest) -> LaunchResult:
        """Starts the run unless `workdir/{run_id}` exists already (then `already_existed`)."""
        run_dir = self._run_dir(request.run_id)
        if run_dir.exists():
            return LaunchResult(request.run_id, str(run_dir), already_existed=True)
        template = _check_template(request)
        try:
            payload = json.dumps(request.to_dict(), indent=2, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise LaunchRejectedError(request.run_id, f"request is not JSON: {exc}") from exc
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            os.mkdir(run_dir)
        except FileExistsError:
            return LaunchResult(request.run_id, str(run_dir), already_existed=True)
        except OSError as exc:
            raise TransientError(f"cannot create run directory {run_dir}: {exc}") from exc
        try:
            _write_json_atomic(run_dir / REQUEST_FILE, payload)
            with _locked(run_dir):
                _write_status(run_dir, {"state": "pending", "pid": None, "template": template})
            child = self._start_child(run_dir)
        except OSError as exc:
            # The directory exists, so a retry reports already_existed; get_status turns a
            # pid-less pending run into `failed` after START_GRACE_SECONDS.
            raise TransientError(f"cannot start local run {request.run_id}: {exc}") from exc
        # Reap the child when it ends (no zombie, no "still running" warning at collection);
        # the session is its own, so it outlives this process if need be.
        threading.Thread(target=child.wait, name=f"reap-{request.run_id}", daemon=True).start()
        with _locked(run_dir):
            current = _read_status(run_dir) or {}
            if current.get("state") == "pending":
                _write_status(run_dir, {**current, "pid": child.pid})
        logger.info(
            "local run started",
            extra={"run_id": request.run_id, "model": request.model, "pid": child.pid},
        )
        return LaunchResult(request.run_id, str(run_dir), already_existed=False)

    def get_status(self, run_id: str) -> RunStatus:
        """The run's state from status.json; a vanished process without a final state is failed."""
        try:
            run_dir = self._run_dir(run_id)
        except LaunchRejectedError:
            return RunStatus("unknown", message=f"invalid run id {run_id!r}")
        status = _read_status(run_dir)
        if status is None:
            if run_dir.is_dir():
                return _pending_or_never_started(run_dir)
            return RunStatus("unknown", message=f"no local run {run_id}")
        state = status.get("state", "unknown")
        if state in ("pending", "running"):
            pid = status.get("pid")
            if pid is None:
                if state == "pending":
                    return _pending_or_never_started(run_dir)
                return RunStatus("failed", message=NOT_REPORTING)
            if not _child_alive(int(pid)):
                # The child writes its final state before it exits: read once more.
                status = _read_status(run_dir) or status
                state = status.get("state", "unknown")
                if state == "pending":
                    # Not yet "running": between fork and exec the pid still shows the parent's
                    # command line, so it is not judged dead before the start grace is over.
                    return _pending_or_never_started(run_dir)
                if state == "running":
                    return RunStatus("failed", message=NOT_REPORTING)
        outcome = status.get("outcome")
        return RunStatus(state, outcome, str(status.get("message", "")))

    def _run_dir(self, run_id: str) -> Path:
        if not _RUN_ID.fullmatch(run_id):
            raise LaunchRejectedError(run_id, "run id must match [a-z][a-z0-9-]{0,127}")
        return self.workdir / run_id

    def _start_child(self, run_dir: Path) -> subprocess.Popen[bytes]:
        import subprocess

        argv = [self.python, "-m", CHILD_MODULE, str(run_dir)]
        if self.outcome_handler:
            argv += ["--outcome-handler", self.outcome_handler]
        tmp = run_dir / "tmp"
        tmp.mkdir()
        env = {**os.environ, **self.child_env}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_PROJECT_ROOT), env.get("PYTHONPATH", "")) if p
        )
        env["TMPDIR"] = str(tmp)  # where kfp's step wrapper writes its `mktemp -d` programs
        env["PYTHONUNBUFFERED"] = "1"  # the run's and its steps' output interleave in order
        with open(run_dir / LOG_FILE, "ab") as log:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=os.getcwd(),
                env=env,
            )


def read_run_status(run_dir: Path) -> dict[str, Any] | None:
    """The raw status.json of a run directory (None when absent or unreadable)."""
    return _read_status(run_dir)


def write_run_status(run_dir: Path, status: Mapping[str, Any]) -> None:
    """Replaces a run's status.json atomically, under the run's lock (used by the child)."""
    with _locked(run_dir):
        _write_status(run_dir, status)


def _check_template(request: LaunchRequest) -> str:
    template = request.template
    if template.startswith(_REMOTE_PREFIXES):
        raise LaunchRejectedError(
            request.run_id, f"the local launcher runs local templates only, got {template!r}"
        )
    path = Path(template)
    if not path.is_file():
        raise LaunchRejectedError(request.run_id, f"pipeline template {template!r} not found")
    return str(path.resolve())


def _is_handler_ref(ref: str) -> bool:
    module, sep, function = ref.partition(":")
    return bool(sep and module and function)


def _pending_or_never_started(run_dir: Path) -> RunStatus:
    try:
        age = time.time() - run_dir.stat().st_mtime
    except OSError:
        age = 0.0
    if age > START_GRACE_SECONDS:
        return RunStatus("failed", message=NEVER_STARTED)
    return RunStatus("pending")


def _child_alive(pid: int) -> bool:
    """True while `pid` is a live (not zombie) local-run process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc") / str(pid)
    if not proc.is_dir():  # no procfs (macOS): trust kill(0)
        return True
    try:
        stat = (proc / "stat").read_text()
        cmdline = (proc / "cmdline").read_bytes()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X") and CHILD_MODULE.encode() in cmdline


@contextlib.contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    with open(run_dir / LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_status(run_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((run_dir / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_status(run_dir: Path, status: Mapping[str, Any]) -> None:
    _write_json_atomic(run_dir / STATUS_FILE, json.dumps(dict(status), indent=2, sort_keys=True))


def _write_json_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, path)
