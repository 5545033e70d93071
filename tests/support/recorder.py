"""A tiny stdlib HTTP server for tests: records every request and answers with a chosen status.

Used as a Pub/Sub push endpoint (to watch deliveries and redeliveries) and as a fake service.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self


@dataclass
class RecordedRequest:
    """One request as the server saw it, plus the status it answered."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float = field(default_factory=time.monotonic)
    status: int = 0

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


# respond(request, requests so far including this one) -> (status, body as JSON or None)
Responder = Callable[[RecordedRequest, list[RecordedRequest]], tuple[int, Any]]


def _always_204(request: RecordedRequest, seen: list[RecordedRequest]) -> tuple[int, Any]:
    return 204, None


class _QuietServer(ThreadingHTTPServer):
    """Ignores clients that hang up (the emulator resets idle connections)."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class RecordingServer:
    """`with RecordingServer(respond) as server:` serves on `server.url` in a daemon thread."""

    def __init__(self, respond: Responder = _always_204) -> None:
        self.respond = respond
        self.requests: list[RecordedRequest] = []
        self._cond = threading.Condition()
        self._server = _QuietServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )  # a short poll interval makes shutdown quick

    @property
    def url(self) -> str:
        """`http://127.0.0.1:<port>` (no trailing slash)."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def snapshot(self) -> list[RecordedRequest]:
        """A copy of the requests recorded so far."""
        with self._cond:
            return list(self.requests)

    def wait_for(
        self, predicate: Callable[[list[RecordedRequest]], bool], timeout: float = 10.0
    ) -> bool:
        """Block until `predicate(requests)` holds (True) or `timeout` seconds pass (False)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.requests):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = RecordedRequest(self.command, self.path, dict(self.headers), body)
                with owner._cond:
                    owner.requests.append(request)
                    seen = list(owner.requests)
                status, answer = owner.respond(request, seen)
                payload = b"" if answer is None else json.dumps(answer).encode()
                with owner._cond:
                    request.status = status
                    owner._cond.notify_all()
                self.send_response(status)
                if payload:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_POST = do_GET = do_PUT = _handle  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        return Handler
