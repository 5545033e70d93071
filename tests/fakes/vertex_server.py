"""Wire-level fakes of the Vertex AI Pipelines and Model Registry REST APIs and of GCS downloads.

Real HTTP servers on 127.0.0.1 (threads); `python -m tests.fakes.vertex_server` runs one alone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from tests.fakes import prebuilt
from tests.fakes.discovery import request_schema, validate_body, validate_query
from tests.fakes.loopback import LoopbackServer
from tests.fakes.pipeline_cache import EXECUTION_STATES, TASK_STATES, plan_tasks

# PipelineState enum values, in order (the index is the number sent with enum-encoding=int).
PIPELINE_STATES = (
    "PIPELINE_STATE_UNSPECIFIED",
    "PIPELINE_STATE_QUEUED",
    "PIPELINE_STATE_PENDING",
    "PIPELINE_STATE_RUNNING",
    "PIPELINE_STATE_SUCCEEDED",
    "PIPELINE_STATE_FAILED",
    "PIPELINE_STATE_CANCELLING",
    "PIPELINE_STATE_CANCELLED",
    "PIPELINE_STATE_PAUSED",
)
# google.rpc.Code name -> HTTP status, as Google's JSON APIs map them.
RPC_HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "INTERNAL": 500,
    "UNKNOWN": 500,
    "DATA_LOSS": 500,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
# HTTP status -> the code a fault with that status reports (409 as a fault means ABORTED).
HTTP_RPC_CODE = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_TERMINAL_STATES = frozenset(PIPELINE_STATES[i] for i in (4, 5, 7))
JOB_ID_PATTERN = re.compile(r"^[a-z][a-z0-9-]{0,127}$")
_LOCATION = r"^/v1/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"
_JOBS_PATH = re.compile(_LOCATION + r"/pipelineJobs$")
_JOB_PATH = re.compile(_LOCATION + r"/pipelineJobs/(?P<job>[^/:]+)$")
_MODELS_PATH = re.compile(_LOCATION + r"/models$")
_UPLOAD_PATH = re.compile(_LOCATION + r"/models:upload$")
_MODEL_PATH = re.compile(_LOCATION + r"/models/(?P<model>[^/:@]+)(?:@(?P<ref>[^/:@]+))?$")
_VERSIONS_PATH = re.compile(_LOCATION + r"/models/(?P<model>[^/:@]+):listVersions$")
_MERGE_PATH = re.compile(
    _LOCATION + r"/models/(?P<model>[^/:@]+)(?:@(?P<ref>[^/:@]+))?:mergeVersionAliases$"
)
# The REST operations client of aiplatform_v1 polls through the API's `/ui/` binding first.
_OPERATION_PATH = re.compile(
    r"^/(?:v1|ui)/(?P<name>projects/[^/]+/locations/[^/]+/models/[^/:@]+/operations/[^/:]+)$"
)
_MODEL_ID = re.compile(r"[a-z_][a-z0-9_-]{0,62}")
_ALIAS = re.compile(r"[a-z][a-zA-Z0-9-]{0,126}[a-z0-9-]")
_FILTER_TERM = re.compile(
    r"^\s*(?P<field>display_name|displayName|model|labels\.[a-z][a-z0-9_-]*)\s*=\s*"
    r'(?:"(?P<quoted>(?:[^"\\]|\\.)*)"|(?P<bare>[^\s"]+))\s*$'
)
_TYPE_PREFIX = "type.googleapis.com/google.cloud.aiplatform.v1."
_GCS_MEDIA_PATH = re.compile(r"^(?:/download)?/storage/v1/b/(?P<bucket>[^/]+)/o/(?P<object>[^/]+)$")
# Google Cloud labels: a key starts with a lowercase letter (international ones included), keys
# and values hold lowercase letters, digits, `_` and `-`, at most 63 characters (a value may be
# empty); at most 64 labels on a resource.
_LABEL_KEY = re.compile(r"[^\W\d_A-Z][\w-]{0,62}")
_LABEL_VALUE = re.compile(r"[\w-]{0,63}")
MAX_LABELS = 64
DISCOVERY = "aiplatform.v1"
_METHOD = "aiplatform.projects.locations."
# (HTTP method, path) -> the discovery method id a request calls
_ROUTES = (
    ("POST", _JOBS_PATH, _METHOD + "pipelineJobs.create"),
    ("GET", _JOB_PATH, _METHOD + "pipelineJobs.get"),
    ("POST", _UPLOAD_PATH, _METHOD + "models.upload"),
    ("POST", _MERGE_PATH, _METHOD + "models.mergeVersionAliases"),
    ("GET", _OPERATION_PATH, _METHOD + "models.operations.get"),
    ("GET", _VERSIONS_PATH, _METHOD + "models.listVersions"),
    ("GET", _MODELS_PATH, _METHOD + "models.list"),
    ("GET", _MODEL_PATH, _METHOD + "models.get"),
)

Reply = tuple[int, dict[str, str], bytes]
Answer = tuple[int, dict[str, str], bytes, float]  # a reply and the seconds to wait before it


@dataclass(frozen=True)
class RecordedRequest:
    """One request as it reached a fake: `query` keeps the last value of each parameter."""

    method: str
    path: str
    query: dict[str, str]
    body: Any  # parsed JSON, the raw text when not JSON, None when empty
    headers: dict[str, str]  # lower-case names


@dataclass
class _Fault:
    op: str  # "create" | "get" | a model-service op (see FakeVertexServer) | "any"
    remaining: int
    status: int = 0  # 0: answer normally (after `delay`)
    code: str = ""
    message: str = ""
    delay: float = 0.0
    skip: int = 0  # matching requests to let through before the first fault


@dataclass
class Chaos:
    """Random faults on PipelineService calls: each call draws once from its op's seeded
    sequence; with probability `rate` it gets one of `kinds`, counted in `injected`.

    - "503": answered UNAVAILABLE before any work is done;
    - "timeout": the work is done but the answer comes after `delay` seconds (past the client's
      timeout, so the caller never hears);
    - "close": the work is done, then the connection is closed without an answer.
    """

    rate: float
    seed: int = 0
    kinds: tuple[str, ...] = ("503", "timeout", "close")
    ops: tuple[str, ...] = ("create", "get")
    delay: float = 3.0
    injected: dict[str, int] = field(default_factory=dict)
    by_op: dict[str, int] = field(default_factory=dict)
    calls: int = 0

    def __post_init__(self) -> None:
        # one sequence per op: the n-th create's fate does not depend on how gets interleave
        self._random = {op: random.Random(f"{self.seed}-{op}") for op in self.ops}

    def draw(self, op: str) -> str | None:
        if op not in self.ops:
            return None
        self.calls += 1
        rng = self._random[op]
        if rng.random() >= self.rate:
            return None
        kind = rng.choice(self.kinds)
        self.injected[kind] = self.injected.get(kind, 0) + 1
        self.by_op[op] = self.by_op.get(op, 0) + 1
        return kind


def google_error(status: int, code: str, message: str) -> Reply:
    """A reply in Google's JSON error format."""
    body = {"error": {"code": status, "message": message, "status": code}}
    return status, {"Content-Type": "application/json"}, json.dumps(body).encode("utf-8")


def json_reply(payload: Any, status: int = 200) -> Reply:
    return status, {"Content-Type": "application/json"}, json.dumps(payload).encode("utf-8")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _LocalServer:
    """A ThreadingHTTPServer on 127.0.0.1 that hands every request to `self._handle`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.requests: list[RecordedRequest] = []
        self._lock = threading.RLock()
        self._faults: list[_Fault] = []
        self.chaos: Chaos | None = None
        self._http = LoopbackServer(self._serve, type(self).__name__, host, port)

    @property
    def port(self) -> int:
        return self._http.port

    @property
    def endpoint(self) -> str:
        return self._http.endpoint

    def start(self) -> None:
        self._http.start()

    def stop(self) -> None:
        self._http.stop()

    def __enter__(self) -> Any:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def fail_next(
        self,
        n: int = 1,
        status: int | str = 503,
        *,
        op: str = "create",
        message: str = "",
        skip: int = 0,
    ) -> None:
        """Answers the next `n` requests of `op` ("create", "get", "any", ...) with an error.

        `status` is an HTTP status (503) or a google.rpc.Code name ("FAILED_PRECONDITION");
        `skip` lets that many matching requests through first (fail the second merge, say).
        """
        if isinstance(status, str):
            code, http_status = status, RPC_HTTP_STATUS[status]
        else:
            code, http_status = HTTP_RPC_CODE.get(status, "UNKNOWN"), status
        text = message or f"fake {code} (injected)"
        with self._lock:
            self._faults.append(_Fault(op, n, http_status, code, text, skip=skip))

    def delay_next(self, n: int, seconds: float, *, op: str = "create") -> None:
        """Handles the next `n` requests of `op` normally but answers only after `seconds`.

        Models a response lost to a client timeout: the work is done, the caller never hears.
        """
        with self._lock:
            self._faults.append(_Fault(op, n, delay=seconds))

    def _take_fault(self, op: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.op in (op, "any") and fault.remaining > 0:
                    if fault.skip > 0:
                        fault.skip -= 1
                        return None
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        split = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        body: Any = None
        if raw:
            text = raw.decode("utf-8", errors="replace")
            try:
                body = json.loads(text)
            except ValueError:
                body = text
        recorded = RecordedRequest(
            method=handler.command,
            path=unquote(split.path),
            query=dict(parse_qsl(split.query, keep_blank_values=True)),
            body=body,
            headers={name.lower(): value for name, value in handler.headers.items()},
        )
        with self._lock:
            self.requests.append(recorded)
            chaos = self.chaos.draw(self._chaos_op(recorded)) if self.chaos else None
        if chaos == "503":
            status, headers, payload = google_error(503, "UNAVAILABLE", "fake chaos: unavailable")
            delay = 0.0
        else:
            try:
                status, headers, payload, delay = self._dispatch(recorded, split.path)
            except Exception as exc:  # a bug in the fake: say so instead of hanging the client
                status, headers, payload = google_error(500, "INTERNAL", f"fake crashed: {exc!r}")
                delay = 0.0
        if chaos == "timeout":
            assert self.chaos is not None
            delay = max(delay, self.chaos.delay)
        if chaos == "close":  # the work is done; the caller sees the connection drop
            handler.close_connection = True
            with contextlib.suppress(OSError):
                handler.connection.shutdown(socket.SHUT_RDWR)
            return
        if delay:
            time.sleep(delay)
        try:
            handler.send_response(status)
            for name, value in headers.items():
                handler.send_header(name, value)
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout): the work stays done

    def _dispatch(self, request: RecordedRequest, raw_path: str) -> Answer:
        raise NotImplementedError

    def _chaos_op(self, request: RecordedRequest) -> str:
        """The fault op a request counts as for `chaos` ("create", "get", ...)."""
        return "any"


class FakeVertexServer(_LocalServer):
    """The PipelineService and ModelService REST surfaces the launcher and the registry use.

    Pipelines: create and get PipelineJobs. Execution caching as Vertex does it: a container
    task whose cache key (see tests.fakes.pipeline_cache) matches a task of an earlier job that
    SUCCEEDED here is served from the cache, unless the task's `cachingOptions.enableCache` is
    off; `jobDetail.taskDetails` lists each task, a cache hit as state SKIPPED with an execution
    in state CACHED (`cached_tasks(run_id)` names them). `created` maps each distinct created
    run id to the exact create body; `create_calls` counts every create attempt (retries,
    duplicates and faults included). With `record`, each created job is appended to that file
    as a JSON line, so another process can count creates.

    Model Registry: `models:upload` (a long-running operation, done when first fetched), get of
    `models/ID`, `models/ID@VERSION` and `models/ID@ALIAS`, list models with a `display_name`,
    `model` or `labels.KEY` filter, `:listVersions` and `:mergeVersionAliases`. Aliases follow
    Vertex: one version of a model per alias (adding moves it), `-alias` removes, the first
    version gets `default`, which cannot be removed. `models[ID]["versions"]` holds each version
    as the REST JSON. Fault ops: "upload", "get_operation", "get_model", "list_models",
    "list_versions", "merge_aliases".

    Test hooks are also reachable over HTTP under `/__fake__/` (see `_control`).
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, record: str | Path | None = None
    ) -> None:
        super().__init__(host, port)
        self.created: dict[str, Any] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.create_calls = 0
        self.record_path = Path(record) if record else None
        self.models: dict[str, dict[str, Any]] = {}
        self.operations: dict[str, dict[str, Any]] = {}
        self._next_numeric_id = 8_000_000_000_000_000_000
        # cache key -> the job whose successful task produced it
        self.execution_cache: dict[str, str] = {}
        self._task_keys: dict[str, dict[str, str]] = {}  # job id -> {task id: cache key}

    def __enter__(self) -> FakeVertexServer:
        self.start()
        return self

    @property
    def create_requests(self) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.method == "POST" and _JOBS_PATH.match(r.path)]

    def set_state(self, run_id: str, state: str, error_message: str | None = None) -> None:
        """Moves a job to `state` ("PIPELINE_STATE_SUCCEEDED", or just "SUCCEEDED")."""
        if not state.startswith("PIPELINE_STATE_"):
            state = "PIPELINE_STATE_" + state.upper()
        if state not in PIPELINE_STATES:
            raise ValueError(f"unknown pipeline state {state}")
        with self._lock:
            job = self.jobs[run_id]
            ended = job["state"] in _TERMINAL_STATES
            job["state"] = state
            job["updateTime"] = _now()
            if state in _TERMINAL_STATES and not ended:
                # a job ends once: marking an ended job again keeps its end time (a harness
                # that re-marked one made a later job look created while it ran)
                job["endTime"] = job["updateTime"]
                self._finish_tasks(run_id, state, job["updateTime"])
            if error_message is not None:
                job["error"] = {"code": 2, "message": error_message}

    def cached_tasks(self, run_id: str) -> list[str]:
        """The names of the tasks of job `run_id` that were served from the execution cache."""
        with self._lock:
            details = self.jobs[run_id].get("jobDetail", {}).get("taskDetails", [])
            return [d["taskName"] for d in details if d.get("state") == "SKIPPED"]

    def task_states(self, run_id: str) -> dict[str, str]:
        """Each task of job `run_id` (by name) and its state."""
        with self._lock:
            details = self.jobs[run_id].get("jobDetail", {}).get("taskDetails", [])
            return {d["taskName"]: d["state"] for d in details}

    def _plan(self, job_id: str, name: str, body: dict[str, Any], now: str) -> dict[str, Any]:
        """The job's `jobDetail`: its tasks, cache hits served at once. Hold the lock."""
        details = []
        keys: dict[str, str] = {}
        for task in plan_tasks(body, job_id, name):
            detail: dict[str, Any] = {
                "taskId": str(task.task_id),
                "taskName": task.name,
                "createTime": now,
                "state": "PENDING",
            }
            if task.parent_task_id is not None:
                detail["parentTaskId"] = str(task.parent_task_id)
            producer = self.execution_cache.get(task.key)
            if task.container and task.enable_cache and producer is not None:
                detail.update(state="SKIPPED", startTime=now, endTime=now)
                detail["execution"] = {"state": "CACHED",
                                       "metadata": {"cached_from_job": producer}}
            elif task.container:
                keys[detail["taskId"]] = task.key
            details.append(detail)
        self._task_keys[job_id] = keys
        return {"taskDetails": details}

    def _finish_tasks(self, job_id: str, state: str, now: str) -> None:
        """A job ended: its tasks that ran end the same way; successful ones feed the cache."""
        job = self.jobs[job_id]
        end = {"PIPELINE_STATE_SUCCEEDED": ("SUCCEEDED", "COMPLETE"),
               "PIPELINE_STATE_FAILED": ("FAILED", "FAILED"),
               "PIPELINE_STATE_CANCELLED": ("CANCELLED", "CANCELLED")}[state]
        keys = self._task_keys.get(job_id, {})
        for detail in job.get("jobDetail", {}).get("taskDetails", []):
            if detail["state"] == "SKIPPED":
                continue
            detail.update(state=end[0], endTime=now)
            detail.setdefault("startTime", detail["createTime"])
            if detail["taskId"] in keys:
                detail["execution"] = {"state": end[1]}
                if end[0] == "SUCCEEDED":
                    self.execution_cache.setdefault(keys[detail["taskId"]], job_id)

    def _dispatch(self, request: RecordedRequest, raw_path: str) -> Answer:
        path = request.path
        if path.startswith("/__fake__/"):
            return (*self._control(request), 0.0)
        violations = invalid_request(request)
        if violations:
            if request.method == "POST" and _JOBS_PATH.match(path):
                with self._lock:
                    self.create_calls += 1
            return (*bad_request(violations), 0.0)
        if request.method == "POST" and (match := _JOBS_PATH.match(path)):
            return self._create(request, match["project"], match["location"])
        if request.method == "GET" and (match := _JOB_PATH.match(path)):
            return self._get(request, match["project"], match["location"], match["job"])
        model_answer = self._dispatch_model_service(request)
        if model_answer is not None:
            return model_answer
        message = f"fake Vertex: no route {request.method} {path}"
        return (*google_error(404, "NOT_FOUND", message), 0.0)

    def _chaos_op(self, request: RecordedRequest) -> str:
        if request.method == "POST" and _JOBS_PATH.match(request.path):
            return "create"
        if request.method == "GET" and _JOB_PATH.match(request.path):
            return "get"
        return _model_op(request) or "other"

    def _create(self, request: RecordedRequest, project: str, location: str) -> Answer:
        with self._lock:
            self.create_calls += 1
        fault = self._take_fault("create")
        if fault is not None and fault.status:
            return (*google_error(fault.status, fault.code, fault.message), 0.0)
        delay = fault.delay if fault is not None else 0.0
        body = request.body
        if not isinstance(body, dict):
            return (*google_error(400, "INVALID_ARGUMENT", "the body is not a PipelineJob"), delay)
        job_id = request.query.get("pipelineJobId") or f"fake-{uuid.uuid4().hex[:12]}"
        problem = _invalid_job(job_id, body)
        if problem:
            return (*google_error(400, "INVALID_ARGUMENT", problem), delay)
        name = f"projects/{project}/locations/{location}/pipelineJobs/{job_id}"
        with self._lock:
            if job_id in self.jobs:
                message = f"PipelineJob {name} already exists."
                return (*google_error(409, "ALREADY_EXISTS", message), delay)
            now = _now()
            job = {
                **body,
                "name": name,
                "state": "PIPELINE_STATE_PENDING",
                "createTime": now,
                "updateTime": now,
            }
            job["jobDetail"] = self._plan(job_id, name, body, now)
            self.jobs[job_id] = job
            self.created[job_id] = body
            if self.record_path is not None:
                line = json.dumps({"run_id": job_id, "name": name, "time": now, "body": body})
                with self.record_path.open("a", encoding="utf-8") as handle:
                    handle.write(line + "\n")
            return (*self._job_reply(job, request), delay)

    def _get(self, request: RecordedRequest, project: str, location: str, job_id: str) -> Answer:
        fault = self._take_fault("get")
        if fault is not None and fault.status:
            return (*google_error(fault.status, fault.code, fault.message), 0.0)
        delay = fault.delay if fault is not None else 0.0
        name = f"projects/{project}/locations/{location}/pipelineJobs/{job_id}"
        with self._lock:
            job = self.jobs.get(job_id)
            if job is None or job["name"] != name:
                return (*google_error(404, "NOT_FOUND", f"PipelineJob {name} not found."), delay)
            return (*self._job_reply(job, request), delay)

    @staticmethod
    def _job_reply(job: dict[str, Any], request: RecordedRequest) -> Reply:
        payload = json.loads(json.dumps(job))
        # GAPIC REST clients ask `$alt=json;enum-encoding=int`: answer enums as numbers then.
        if "enum-encoding=int" in request.query.get("$alt", ""):
            payload["state"] = PIPELINE_STATES.index(job["state"])
            for detail in payload.get("jobDetail", {}).get("taskDetails", []):
                detail["state"] = TASK_STATES.index(detail["state"])
                if "execution" in detail:
                    execution = detail["execution"]
                    execution["state"] = EXECUTION_STATES.index(execution["state"])
        return json_reply(payload)

    # --- Model Registry (ModelService) ---------------------------------------------------------

    def model_requests(self, op: str | None = None) -> list[RecordedRequest]:
        """Recorded ModelService requests, in order; `op` as in the class docstring."""
        with self._lock:
            recorded = list(self.requests)
        return [r for r in recorded if (kind := _model_op(r)) and (op is None or kind == op)]

    def add_model_version(
        self,
        project: str,
        location: str,
        model_id: str | None,
        display_name: str,
        artifact_uri: str = "",
        labels: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Adds a version as another tool would (a new model when `model_id` is unknown or None)."""
        body: dict[str, Any] = {"displayName": display_name, "artifactUri": artifact_uri}
        if labels:
            body["labels"] = dict(labels)
        with self._lock:
            if model_id is None:
                model_id = self._new_numeric_id()
            return self._add_version(project, location, model_id, body)

    def _dispatch_model_service(self, request: RecordedRequest) -> Answer | None:
        op = _model_op(request)
        if op is None:
            return None
        fault = self._take_fault(op)
        if fault is not None and fault.status:
            return (*google_error(fault.status, fault.code, fault.message), 0.0)
        delay = fault.delay if fault is not None else 0.0
        path = request.path
        reply: Reply
        if op == "upload" and (match := _UPLOAD_PATH.match(path)):
            reply = self._upload(request, match["project"], match["location"])
        elif op == "get_operation" and (match := _OPERATION_PATH.match(path)):
            reply = self._get_operation(match["name"])
        elif op == "get_model" and (match := _MODEL_PATH.match(path)):
            reply = self._get_model(
                match["project"], match["location"], match["model"], match["ref"]
            )
        elif op == "list_models" and (match := _MODELS_PATH.match(path)):
            reply = self._list_models(request, match["project"], match["location"])
        elif op == "list_versions" and (match := _VERSIONS_PATH.match(path)):
            reply = self._list_versions(
                request, match["project"], match["location"], match["model"]
            )
        elif op == "merge_aliases" and (match := _MERGE_PATH.match(path)):
            reply = self._merge_aliases(
                request, match["project"], match["location"], match["model"], match["ref"]
            )
        else:  # pragma: no cover - _model_op and the routes agree
            reply = google_error(404, "NOT_FOUND", f"fake Vertex: no route {path}")
        return (*reply, delay)

    def _new_numeric_id(self) -> str:
        self._next_numeric_id += 1
        return str(self._next_numeric_id)

    def _add_version(
        self, project: str, location: str, model_id: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        """Stores a new version of `model_id` (creating the model); the caller holds the lock."""
        name = f"projects/{project}/locations/{location}/models/{model_id}"
        entry = self.models.setdefault(model_id, {"name": name, "versions": {}, "next": 1})
        version_id = str(entry["next"])
        entry["next"] += 1
        now = _now()
        first: dict[str, Any] = next(iter(entry["versions"].values()), {})
        version = {
            **body,
            "name": name,
            "versionId": version_id,
            "versionCreateTime": now,
            "versionUpdateTime": now,
            "createTime": first.get("createTime", now),
            "updateTime": now,
        }
        aliases = ["default"] if not entry["versions"] else []
        entry["versions"][version_id] = version
        for alias in body.get("versionAliases") or []:
            self._move_alias(entry, alias, version_id)
        version["versionAliases"] = sorted(set(version.get("versionAliases", [])) | set(aliases))
        return version

    @staticmethod
    def _move_alias(entry: dict[str, Any], alias: str, version_id: str) -> None:
        """Puts `alias` on `version_id` only (Vertex: an alias names one version of a model)."""
        for other_id, other in entry["versions"].items():
            held = other.get("versionAliases", [])
            if other_id == version_id:
                other["versionAliases"] = sorted(set(held) | {alias})
            elif alias in held:
                other["versionAliases"] = [a for a in held if a != alias]
                other["versionUpdateTime"] = _now()

    def _upload(self, request: RecordedRequest, project: str, location: str) -> Reply:
        body = request.body
        if not isinstance(body, dict) or not isinstance(body.get("model"), dict):
            return google_error(400, "INVALID_ARGUMENT", "the body is not an UploadModelRequest")
        model = body["model"]
        problem = _invalid_model(model)
        if problem:
            return google_error(400, "INVALID_ARGUMENT", problem)
        refused = prebuilt.refusal(self, model)  # a prebuilt serving image's artifact rules
        if refused is not None:
            return google_error(400, *refused)
        location_name = f"projects/{project}/locations/{location}"
        with self._lock:
            parent_model = body.get("parentModel")
            if parent_model:
                if body.get("modelId"):
                    message = "model_id and parent_model cannot both be set"
                    return google_error(400, "INVALID_ARGUMENT", message)
                prefix = f"{location_name}/models/"
                model_id = parent_model.removeprefix(prefix)
                if not parent_model.startswith(prefix) or model_id not in self.models:
                    message = f"Parent model {parent_model} not found."
                    return google_error(404, "NOT_FOUND", message)
            else:
                model_id = body.get("modelId") or self._new_numeric_id()
                if not _MODEL_ID.fullmatch(model_id):
                    message = f"model_id {model_id!r} must match [a-z_][a-z0-9_-]{{0,62}}"
                    return google_error(400, "INVALID_ARGUMENT", message)
                if model_id in self.models:
                    message = f"Model {location_name}/models/{model_id} already exists."
                    return google_error(409, "ALREADY_EXISTS", message)
            version = self._add_version(project, location, model_id, model)
            operation_name = f"{version['name']}/operations/{len(self.operations) + 1}"
            now = _now()
            metadata = {
                "@type": _TYPE_PREFIX + "UploadModelOperationMetadata",
                "genericMetadata": {"createTime": now, "updateTime": now},
            }
            self.operations[operation_name] = {
                "name": operation_name,
                "metadata": metadata,
                "done": True,
                "response": {
                    "@type": _TYPE_PREFIX + "UploadModelResponse",
                    "model": version["name"],
                    "modelVersionId": version["versionId"],
                },
            }
        # Not done yet in the first answer, so the client fetches the operation once.
        return json_reply({"name": operation_name, "metadata": metadata})

    def _get_operation(self, name: str) -> Reply:
        with self._lock:
            operation = self.operations.get(name)
            if operation is None:
                return google_error(404, "NOT_FOUND", f"Operation {name} not found.")
            return json_reply(operation)

    def _find_version(
        self, project: str, location: str, model_id: str, ref: str | None
    ) -> tuple[dict[str, Any] | None, str]:
        """(the version `ref` names, or None; the resource name asked for). Hold the lock."""
        name = f"projects/{project}/locations/{location}/models/{model_id}"
        asked = f"{name}@{ref}" if ref else name
        entry = self.models.get(model_id)
        if entry is None or entry["name"] != name:
            return None, asked
        versions: dict[str, dict[str, Any]] = entry["versions"]
        if ref is None:
            ref = "default"
        if ref.isdigit():
            return versions.get(ref), asked
        for version in versions.values():
            if ref in version.get("versionAliases", []):
                return version, asked
        return None, asked

    def _get_model(self, project: str, location: str, model_id: str, ref: str | None) -> Reply:
        with self._lock:
            version, asked = self._find_version(project, location, model_id, ref)
            if version is None:
                return google_error(404, "NOT_FOUND", f"Model {asked} not found.")
            return json_reply(version)

    def _list_models(self, request: RecordedRequest, project: str, location: str) -> Reply:
        try:
            wanted = _parse_filter(request.query.get("filter", ""))
        except ValueError as exc:
            return google_error(400, "INVALID_ARGUMENT", str(exc))
        prefix = f"projects/{project}/locations/{location}/models/"
        with self._lock:
            matching = []
            for model_id, entry in sorted(self.models.items()):
                default, _ = self._find_version(project, location, model_id, None)
                if default is None or not entry["name"].startswith(prefix):
                    continue
                if all(_model_field(default, model_id, key) == value for key, value in wanted):
                    matching.append(default)
        return json_reply(_page(matching, request, "models"))

    def _list_versions(
        self, request: RecordedRequest, project: str, location: str, model_id: str
    ) -> Reply:
        name = f"projects/{project}/locations/{location}/models/{model_id}"
        with self._lock:
            entry = self.models.get(model_id)
            if entry is None or entry["name"] != name:
                return google_error(404, "NOT_FOUND", f"Model {name} not found.")
            versions = list(entry["versions"].values())
        return json_reply(_page(versions, request, "models"))

    def _merge_aliases(
        self, request: RecordedRequest, project: str, location: str, model_id: str, ref: str | None
    ) -> Reply:
        if not ref or not ref.isdigit():
            message = "the model name must include a version id (models/ID@VERSION)"
            return google_error(400, "INVALID_ARGUMENT", message)
        body = request.body if isinstance(request.body, dict) else {}
        requested = body.get("versionAliases")
        if not isinstance(requested, list) or not requested:
            return google_error(400, "INVALID_ARGUMENT", "versionAliases is required")
        for item in requested:
            alias = str(item).removeprefix("-")
            if not _ALIAS.fullmatch(alias) or alias.isdigit():
                return google_error(400, "INVALID_ARGUMENT", f"invalid version alias {item!r}")
            if item == "-default":
                message = "the default alias cannot be removed; move it to another version"
                return google_error(400, "FAILED_PRECONDITION", message)
        added = {a for a in requested if not a.startswith("-")}
        removed = {a[1:] for a in requested if a.startswith("-")}
        added, removed = added - removed, removed - added  # adding and removing cancel out
        with self._lock:
            version, asked = self._find_version(project, location, model_id, ref)
            if version is None:
                return google_error(404, "NOT_FOUND", f"Model {asked} not found.")
            entry = self.models[model_id]
            version["versionAliases"] = [
                a for a in version.get("versionAliases", []) if a not in removed
            ]
            for alias in sorted(added):
                self._move_alias(entry, alias, ref)
            version["versionUpdateTime"] = _now()
            return json_reply(version)

    def _control(self, request: RecordedRequest) -> Reply:
        """`GET /__fake__/created`; `POST /__fake__/fail_next {n, status, op}`;
        `POST /__fake__/delay_next {n, seconds, op}`; `POST /__fake__/state {run_id, state}`."""
        action = request.path.removeprefix("/__fake__/")
        args = request.body if isinstance(request.body, dict) else {}
        if action == "created":
            with self._lock:
                return json_reply(
                    {
                        "created": sorted(self.created),
                        "create_calls": self.create_calls,
                        "states": {run_id: job["state"] for run_id, job in self.jobs.items()},
                    }
                )
        n, op = int(args.get("n", 1)), str(args.get("op", "create"))
        if action == "fail_next":
            self.fail_next(n, args.get("status", 503), op=op)
        elif action == "delay_next":
            self.delay_next(n, float(args["seconds"]), op=op)
        elif action == "state":
            try:
                self.set_state(str(args["run_id"]), str(args["state"]), args.get("error_message"))
            except KeyError as exc:
                return google_error(404, "NOT_FOUND", f"no job {exc}")
        else:
            return google_error(404, "NOT_FOUND", f"no control action {action}")
        return json_reply({"ok": True})


def invalid_request(request: RecordedRequest) -> list[str]:
    """What the real API answers INVALID_ARGUMENT to before any work: a body or query that
    breaks the aiplatform v1 discovery document, or a label that breaks Google's rules."""
    routes = (m for verb, path, m in _ROUTES if request.method == verb and path.match(request.path))
    method_id = next(routes, None)
    if method_id is None:
        return []
    problems = validate_query(DISCOVERY, method_id, request.query)
    schema = request_schema(DISCOVERY, method_id)
    if schema is None:
        if request.body not in (None, "", {}):
            problems.append(f"{method_id} takes no request body")
        return problems
    if not isinstance(request.body, dict):
        return [*problems, f"the body is not a JSON object ({schema})"]
    problems.extend(validate_body(DISCOVERY, schema, request.body))
    labelled = request.body.get("model") if schema.endswith("UploadModelRequest") else request.body
    if isinstance(labelled, dict) and isinstance(labelled.get("labels"), dict):
        problems.extend(label_problems(labelled["labels"]))
    return problems


def label_problems(labels: dict[str, Any]) -> list[str]:
    """How `labels` break Google Cloud's label rules."""
    problems = []
    if len(labels) > MAX_LABELS:
        problems.append(f"labels: {len(labels)} labels; at most {MAX_LABELS} are allowed")
    for key, value in labels.items():
        if not _LABEL_KEY.fullmatch(key) or key.lower() != key:
            problems.append(
                f"labels.{key}: a label key starts with a lowercase letter and holds at most "
                "63 lowercase letters, digits, '_' and '-'"
            )
        if not isinstance(value, str) or not _LABEL_VALUE.fullmatch(value) or (
            value.lower() != value
        ):
            problems.append(
                f"labels.{key}: a label value holds at most 63 lowercase letters, digits, "
                "'_' and '-'"
            )
    return problems


def bad_request(violations: list[str]) -> Reply:
    """INVALID_ARGUMENT in Google's JSON error shape, with a google.rpc.BadRequest detail."""
    fields = []
    for violation in violations:
        field, _, description = violation.partition(": ")
        fields.append({"field": field, "description": description or violation})
    body = {
        "error": {
            "code": 400,
            "message": "Invalid JSON payload received. " + "; ".join(violations),
            "status": "INVALID_ARGUMENT",
            "details": [
                {"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": fields}
            ],
        }
    }
    return 400, {"Content-Type": "application/json"}, json.dumps(body).encode("utf-8")


def _invalid_job(job_id: str, body: dict[str, Any]) -> str | None:
    """What the real service would reject with INVALID_ARGUMENT (the checks that matter here)."""
    if not JOB_ID_PATTERN.match(job_id):
        return f"pipelineJobId {job_id!r} must match [a-z][a-z0-9-]{{0,127}}"
    spec = body.get("pipelineSpec")
    if not isinstance(spec, dict) and not body.get("templateUri"):
        return "pipelineSpec or templateUri is required"
    runtime = body.get("runtimeConfig") or {}
    if not runtime.get("gcsOutputDirectory"):
        return "runtimeConfig.gcsOutputDirectory is required"
    if isinstance(spec, dict):
        declared = ((spec.get("root") or {}).get("inputDefinitions") or {}).get("parameters") or {}
        unknown = sorted(set(runtime.get("parameterValues") or {}) - set(declared))
        if unknown:
            return f"runtime parameters {unknown} are not declared by the pipeline"
    for key, value in (body.get("labels") or {}).items():
        if not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(str(value)):
            return f"invalid label {key}={value}"
    return None


def _model_op(request: RecordedRequest) -> str | None:
    """The ModelService method a request calls (a fault op name), or None."""
    path, method = request.path, request.method
    if method == "POST" and _UPLOAD_PATH.match(path):
        return "upload"
    if method == "POST" and _MERGE_PATH.match(path):
        return "merge_aliases"
    if method == "GET":
        if _OPERATION_PATH.match(path):
            return "get_operation"
        if _VERSIONS_PATH.match(path):
            return "list_versions"
        if _MODELS_PATH.match(path):
            return "list_models"
        if _MODEL_PATH.match(path):
            return "get_model"
    return None


def _invalid_model(model: dict[str, Any]) -> str | None:
    """What the real service would reject in an uploaded Model (the checks that matter here)."""
    if not model.get("displayName"):
        return "model.display_name is required"
    if not (model.get("containerSpec") or {}).get("imageUri"):
        return "model.container_spec.image_uri is required"
    artifact_uri = model.get("artifactUri", "")
    if artifact_uri and not artifact_uri.startswith("gs://"):
        return f"model.artifact_uri must be a gs:// URI, got {artifact_uri!r}"
    for key, value in (model.get("labels") or {}).items():
        if not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(str(value)):
            return f"invalid label {key}={value}"
    return None


def _parse_filter(text: str) -> list[tuple[str, str]]:
    """`display_name="x" AND labels.k="v"` as [(field, value)]; ValueError for anything else."""
    terms: list[tuple[str, str]] = []
    if not text.strip():
        return terms
    for term in re.split(r"\s+AND\s+", text):
        match = _FILTER_TERM.match(term)
        if match is None:
            raise ValueError(f"unsupported filter term {term!r}")
        field = "display_name" if match["field"] == "displayName" else match["field"]
        quoted = match["quoted"]
        value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else match["bare"]
        terms.append((field, value))
    return terms


def _model_field(version: dict[str, Any], model_id: str, field: str) -> str | None:
    if field == "display_name":
        return str(version.get("displayName", ""))
    if field == "model":
        return model_id
    labels = version.get("labels") or {}
    value = labels.get(field.removeprefix("labels."))
    return None if value is None else str(value)


def _page(items: list[dict[str, Any]], request: RecordedRequest, key: str) -> dict[str, Any]:
    """One page of `items` as a List*Response (`pageSize`, `pageToken` = an offset)."""
    size = int(request.query.get("pageSize") or 0) or 100
    start = int(request.query.get("pageToken") or 0)
    page: dict[str, Any] = {}
    if items[start : start + size]:
        page[key] = items[start : start + size]
    if start + size < len(items):
        page["nextPageToken"] = str(start + size)
    return page


class FakeGcsServer(_LocalServer):
    """GCS JSON API media downloads (`GET /storage/v1/b/B/o/O?alt=media`) plus raw paths.

    `put(bucket, name, data)` stores an object; `put_path(path, data)` serves any other path
    (for Artifact Registry style downloads reached through a redirecting session).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.objects: dict[tuple[str, str], bytes] = {}
        self.paths: dict[str, bytes] = {}

    def __enter__(self) -> FakeGcsServer:
        self.start()
        return self

    def put(self, bucket: str, name: str, data: bytes | str) -> None:
        with self._lock:
            self.objects[(bucket, name)] = data.encode("utf-8") if isinstance(data, str) else data

    def put_path(self, path: str, data: bytes | str) -> None:
        with self._lock:
            self.paths[path] = data.encode("utf-8") if isinstance(data, str) else data

    def _dispatch(self, request: RecordedRequest, raw_path: str) -> Answer:
        fault = self._take_fault("get")
        if fault is not None and fault.status:
            return (*google_error(fault.status, fault.code, fault.message), 0.0)
        delay = fault.delay if fault is not None else 0.0
        with self._lock:
            match = _GCS_MEDIA_PATH.match(raw_path)
            if request.method == "GET" and match:
                bucket, name = unquote(match["bucket"]), unquote(match["object"])
                data = self.objects.get((bucket, name))
                if data is None:
                    message = f"No such object: {bucket}/{name}"
                    return (*google_error(404, "NOT_FOUND", message), delay)
                if request.query.get("alt") == "media":
                    return 200, {"Content-Type": "application/octet-stream"}, data, delay
                meta = {"kind": "storage#object", "bucket": bucket, "name": name}
                meta["size"] = str(len(data))
                return (*json_reply(meta), delay)
            data = self.paths.get(request.path)
            if request.method == "GET" and data is not None:
                return 200, {"Content-Type": "application/octet-stream"}, data, delay
        return (*google_error(404, "NOT_FOUND", f"not found: {request.path}"), delay)


def read_record(path: str | Path) -> list[dict[str, Any]]:
    """The created jobs a `--record` file holds so far (one JSON object per line)."""
    file = Path(path)
    if not file.exists():
        return []
    return [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fake Vertex AI Pipelines REST API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--record", help="append each created job to this file (JSON lines)")
    args = parser.parse_args(argv)
    server = FakeVertexServer(args.host, args.port, record=args.record)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server.start()
    # The first line of stdout tells a parent process where to connect.
    print(json.dumps({"endpoint": server.endpoint, "port": server.port}), flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
