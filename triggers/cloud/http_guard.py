"""What every function's app checks before its function runs, as deployed or under `serve`:
the body read whole, bounded in size and time; envelopes the framework would crash on refused;
errors answered as JSON `{"error", "field"}` that never echo a header or the body.
"""

from __future__ import annotations

import base64
import contextlib
import heapq
import io
import itertools
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from triggers.cloud.routes import MAX_BODY_BYTES, json_response
from triggers.errors import TransientError
from triggers.logs import log_event

logger = logging.getLogger("retrain.http")

MAX_PUSH_BYTES = 1024 * 1024
"""Largest Pub/Sub push body read: a 64 KiB event in base64 plus its envelope and attributes."""
DRAIN_BYTES = 1024 * 1024
"""After a 413, at most this much more of the body is read (and dropped) so that the client,
still sending, sees the answer; a longer body is cut off when the connection closes."""
BODY_TIMEOUT = 10.0
"""Seconds a client has to send its whole body (slowloris: a body that never ends)."""
_CHUNK = 64 * 1024

Refusal = tuple[int, str, str]
"""(status, error, field) of a request answered before its function sees it."""


def install(app: Any = None) -> None:
    """Guard `app` (by default the app functions-framework is loading main.py into): read and
    check each body before the function, answer every error as JSON naming the field."""
    import flask
    from werkzeug.exceptions import HTTPException

    if app is None:
        if not flask.has_app_context():
            return  # main.py imported outside functions-framework (a script, a test)
        app = flask.current_app._get_current_object()  # type: ignore[attr-defined]
    app.before_request(_guard)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _crash)


def _guard() -> Any:
    import flask

    environ = flask.request.environ
    push = "cloudevent" in flask.current_app.view_functions
    refused = read_body(environ, MAX_PUSH_BYTES if push else MAX_BODY_BYTES)
    if refused is None and push and flask.request.method == "POST":
        refused = unreadable_envelope(environ)
    if refused is None:
        return None
    status, error, field = refused
    environ["wsgi.input"] = io.BytesIO()  # functions-framework reads what is left after
    environ["CONTENT_LENGTH"] = "0"  # its answer: nothing is (the connection closes)
    headers = {"Connection": "close"} if status in (408, 413) else {}
    return json_response({"error": error, "field": field}, status, headers)


_HTTP_ERRORS = {
    400: ("not a CloudEvent, nor a Pub/Sub push envelope", "body"),
    404: ("no such path", "path"),
    405: ("method not allowed", "method"),
    413: ("body too large", "body"),
    415: ("unsupported Content-Type", "Content-Type"),
}


def _http_error(error: Any) -> Any:
    """The framework's refusals, in our format; never its description (functions-framework
    puts every request header, Authorization too, and the body in its 400's)."""
    code = error.code or 500
    message, field = _HTTP_ERRORS.get(code, (error.name, None))
    return json_response({"error": message, "field": field}, code, {})


def _crash(error: Exception) -> Any:
    """An exception out of a function or the framework: a dependency that is down answers 503
    (Pub/Sub redelivers), an envelope the CloudEvents SDK cannot read 400, anything else 500;
    no answer carries the exception's text."""
    from cloudevents.exceptions import GenericException

    if isinstance(error, TransientError):
        # the reason is our own text about a dependency (store, launcher), never a request's
        # header or body: it says why deliveries are answered 503
        log_event(logger, logging.WARNING, "transient failure; the caller should retry",
                  error=type(error).__name__, reason=str(error)[:500])
        return json_response({"error": "temporarily unavailable; retry", "field": None,
                              "retry": True}, 503, {"Retry-After": "5"})
    if isinstance(error, (GenericException, RecursionError, UnicodeDecodeError)):
        return json_response({"error": "not a readable CloudEvent", "field": "body"}, 400, {})
    logger.exception("unexpected %s", type(error).__name__)
    return json_response({"error": "internal error", "field": None}, 500, {})


def read_body(environ: dict[str, Any], limit: int, timeout: float = BODY_TIMEOUT
              ) -> Refusal | None:
    """Read the whole body before anyone parses it, handing it on in memory: refuse one larger
    than `limit` (413, without holding it: functions-framework reads every body whole) or one
    that takes longer than `timeout` seconds to arrive (408). A chunked body too."""
    length = _content_length(environ)
    stream = environ["wsgi.input"]
    sock = environ.get("gunicorn.socket")
    if length is not None and length > limit:
        with _READS.watch(sock, timeout):
            _drain(stream, DRAIN_BYTES)
        return 413, f"body is {length} bytes; the limit is {limit}", "body"
    if length is None and not environ.get("wsgi.input_terminated"):
        return None  # werkzeug reads no body at all from such a request
    with _READS.watch(sock, timeout) as watch:
        try:
            body = _read(stream, limit + 1 if length is None else length)
        except OSError:  # the client went away, or the watchdog shut the socket
            body = None
        if body is not None and len(body) > limit:
            _drain(stream, DRAIN_BYTES)
    if watch.expired:
        return 408, f"the body did not arrive within {timeout:g} seconds", "body"
    if body is None or (length is not None and len(body) < length):
        return 400, "the body ended before its Content-Length", "body"
    if len(body) > limit:
        return 413, f"body is larger than {limit} bytes", "body"
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    return None


@dataclass(eq=False)
class _Watch:
    sock: Any
    deadline: float
    done: bool = False
    expired: bool = False


class _Watchdog:
    """One thread per process that shuts the reading side of a socket whose body read ran
    past its deadline (a per-recv timeout would not stop a client sending a byte at a time)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Watch]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def watch(self, sock: Any, timeout: float) -> Iterator[_Watch]:
        watch = _Watch(sock, time.monotonic() + timeout)
        if sock is None:  # not under gunicorn (a test client): nothing to time out
            yield watch
            return
        with self._cond:
            heapq.heappush(self._heap, (watch.deadline, next(self._order), watch))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="body-watchdog",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()
        try:
            yield watch
        finally:
            with self._cond:
                watch.done = True

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._heap and self._heap[0][2].done:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                delay = self._heap[0][0] - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                watch = heapq.heappop(self._heap)[2]
                watch.expired = True
                with contextlib.suppress(OSError):
                    watch.sock.shutdown(socket.SHUT_RD)  # the blocked read returns at once


_READS = _Watchdog()


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
