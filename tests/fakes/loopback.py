"""The HTTP server under every wire-level fake: a ThreadingHTTPServer on loopback that hands each
request, whatever its verb, to one `serve(handler)` callable, started and stopped in a thread."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class LoopbackServer:
    """Serves GET/POST/PATCH/PUT/DELETE on `host:port` (0: a free port) with `serve`."""

    def __init__(self, serve: Callable[[BaseHTTPRequestHandler], None], name: str,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                serve(self)

            do_POST = do_PATCH = do_PUT = do_DELETE = do_GET

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.name = name
        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                            name=self.name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self.httpd.server_close()
