"""One local server for every entry point, as functions-framework serves one: gunicorn.

Routes: /pubsub/metrics (on_metric_event), /pubsub/outcomes (on_run_outcome), the rest
(manual_trigger: /events, /retrain, /models/M, /decisions, /healthz).
"""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from triggers.http_api import MAX_BODY_BYTES, json_response

MAIN = Path(__file__).resolve().parent.parent / "main.py"
METRICS_PATH = "/pubsub/metrics"
OUTCOMES_PATH = "/pubsub/outcomes"
MAX_PUSH_BYTES = 1024 * 1024
"""Largest Pub/Sub push body read: a 64 KiB event in base64 plus its envelope and attributes."""
DRAIN_BYTES = 1024 * 1024
"""After a 413, at most this much more of the body is read (and dropped) so that the client,
still sending, sees the answer; a longer body is cut off when the connection closes."""
_CHUNK = 64 * 1024


def create_combined_app(source: str | Path = MAIN) -> Any:
    """A WSGI app dispatching by path to the three functions-framework apps of `main.py`."""
    from functions_framework import create_app
    from werkzeug.exceptions import HTTPException

    manual = create_app("manual_trigger", str(source), "http")  # type: ignore[no-untyped-call]
    # the framework's own refusals (a path its routing cannot match, /robots.txt) in the
    # manual trigger's format too: JSON naming the field
    manual.register_error_handler(HTTPException, _json_http_error)
    mounts = {
        METRICS_PATH: create_app(  # type: ignore[no-untyped-call]
            "on_metric_event", str(source), "cloudevent"
        ),
        OUTCOMES_PATH: create_app(  # type: ignore[no-untyped-call]
            "on_run_outcome", str(source), "cloudevent"
        ),
    }

    def dispatch(environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        for prefix, app in mounts.items():
            if path == prefix or path.startswith(prefix + "/"):
                refused = bounded_body(environ, MAX_PUSH_BYTES) or unreadable_envelope(environ)
                if refused is not None:
                    return _refuse(refused, start_response)
                environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + prefix
                environ["PATH_INFO"] = path[len(prefix) :] or "/"
                return app(environ, start_response)
        refused = bounded_body(environ, MAX_BODY_BYTES)
        if refused is not None:
            return _refuse(refused, start_response)
        return manual(environ, start_response)

    return dispatch


def _json_http_error(error: Any) -> Any:
    field = {404: "path", 405: "method", 413: "body"}.get(error.code)
    return json_response({"error": error.description or error.name, "field": field},
                         error.code, {})


Refusal = tuple[int, str, str]
"""(status, error, field) of a request answered before any app sees it."""


def bounded_body(environ: dict[str, Any], limit: int) -> Refusal | None:
    """Refuse a body larger than `limit` without reading it into memory (functions-framework
    reads every body whole, even after the answer); a body without Content-Length (chunked)
    is read here, at most `limit` + 1 bytes, and handed on with its length."""
    length = _content_length(environ)
    if length is not None:
        if length > limit:
            _drain(environ["wsgi.input"], DRAIN_BYTES)
            return 413, f"body is {length} bytes; the limit is {limit}", "body"
        return None
    if not environ.get("wsgi.input_terminated"):
        return None  # werkzeug reads no body at all from such a request
    stream = environ["wsgi.input"]
    body = _read(stream, limit + 1)
    if len(body) > limit:
        _drain(stream, DRAIN_BYTES)
        return 413, f"body is larger than {limit} bytes", "body"
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    return None


def unreadable_envelope(environ: dict[str, Any]) -> Refusal | None:
    """A push body functions-framework would crash on (a 500, which Pub/Sub redelivers):
    JSON nested deeper than `MAX_DEPTH`; and — except in a binary CloudEvent, whose data
    reaches the function as it is — a body that is not UTF-8, or JSON but not an object."""
    body = _read(environ["wsgi.input"], _content_length(environ) or 0)
    environ["wsgi.input"] = io.BytesIO(body)
    if nested_deeper_than(body, MAX_DEPTH):
        return 400, f"JSON nested deeper than {MAX_DEPTH} levels", "body"
    if _binary_cloudevent(environ):
        return None  # the function rejects (and stores) whatever its data is
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return 400, "not UTF-8", "body"
    # The framework parses the body itself: parse here only what it would crash on — a body
    # that is not an object, or a structured CloudEvent — not every push envelope again.
    if text.lstrip().startswith("{") and "specversion" not in text and "\\u" not in text:
        return None  # an object with no specversion, not even one spelt with escapes
    try:
        data = json.loads(text)
    except ValueError:
        return None  # not JSON: the framework answers 400 or 415 itself
    if not isinstance(data, dict):
        return 400, f"must be a JSON object, got {type(data).__name__}", "body"
    return _bad_structured_cloudevent(data)


def _bad_structured_cloudevent(data: dict[str, Any]) -> Refusal | None:
    """What in a structured CloudEvent (a JSON object with `specversion`) the CloudEvents SDK
    raises on instead of refusing: a specversion that is not a string, a required attribute
    that is not one, `data_base64` that is not base64."""
    if "specversion" not in data:
        return None
    if not isinstance(data["specversion"], str):
        return 400, "a CloudEvent's specversion must be a string", "specversion"
    if data["specversion"] not in ("1.0", "0.3"):
        return None  # the framework refuses other versions itself
    for name in ("id", "source", "type"):
        if not isinstance(data.get(name), str):
            return 400, f"a CloudEvent's {name} must be a string", name
    if "data_base64" in data:
        try:
            base64.b64decode(data["data_base64"], validate=True)
        except (TypeError, ValueError):
            return 400, "a CloudEvent's data_base64 must be base64", "data_base64"
    return None


def _binary_cloudevent(environ: dict[str, Any]) -> bool:
    """A binary-mode CloudEvent the framework hands on (others it re-parses as JSON)."""
    required = ("HTTP_CE_ID", "HTTP_CE_SOURCE", "HTTP_CE_TYPE")
    return (environ.get("HTTP_CE_SPECVERSION") in ("1.0", "0.3")
            and all(environ.get(name) for name in required))


MAX_DEPTH = 64
"""Deepest JSON nesting passed to functions-framework (an envelope has 3 levels); Python's
parser gives up near 1,000, and the framework answers that with a 500."""
_TOKEN = re.compile(rb'\\.|["\[\]{}]')


def nested_deeper_than(body: bytes, limit: int) -> bool:
    """Whether the arrays and objects of a JSON text nest more than `limit` levels (brackets
    inside strings do not count): one linear scan, no parse."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    depth = 0
    in_string = False
    for match in _TOKEN.finditer(body):
        token = match.group()
        if token == b'"':
            in_string = not in_string
        elif in_string or len(token) == 2:  # inside a string, or an escape outside one
            continue
        elif token in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def _content_length(environ: dict[str, Any]) -> int | None:
    try:
        return max(0, int(environ["CONTENT_LENGTH"]))
    except (KeyError, ValueError):
        return None


def _read(stream: Any, limit: int) -> bytes:
    """At most `limit` bytes of `stream`, fewer if it ends first."""
    parts, size = [], 0
    while size < limit:
        part = stream.read(min(_CHUNK, limit - size))
        if not part:
            break
        parts.append(part)
        size += len(part)
    return b"".join(parts)


def _drain(stream: Any, limit: int) -> None:
    """Read and drop up to `limit` bytes (constant memory)."""
    left = limit
    while left > 0:
        part = stream.read(min(_CHUNK, left))
        if not part:
            return
        left -= len(part)


def _refuse(refused: Refusal, start_response: Callable[..., Any]) -> list[bytes]:
    status, error, field = refused
    body = (json.dumps({"error": error, "field": field}) + "\n").encode()
    reason = {400: "Bad Request", 413: "Content Too Large"}[status]
    start_response(f"{status} {reason}", [("Content-Type", "application/json"),
                                          ("Content-Length", str(len(body)))])
    return [body]


def serve(host: str, port: int, workers: int = 1, threads: int = 1) -> None:
    """Run the combined app under gunicorn; each worker builds its own app after the fork."""
    from gunicorn.app.base import BaseApplication

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            options = {
                "bind": f"{host}:{port}",
                "workers": workers,
                "threads": threads,
                "timeout": 0,
                "graceful_timeout": 5,
                "loglevel": "warning",
                "accesslog": None,
            }
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return create_combined_app()

    Server().run()
