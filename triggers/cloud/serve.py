"""One local server for every entry point, as functions-framework serves one: gunicorn.

Routes: /pubsub/metrics (on_metric_event), /pubsub/outcomes (on_run_outcome), the rest
(manual_trigger: /events, /retrain, /models/M, /decisions, /healthz).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from triggers.cloud.http_guard import DRAIN_BYTES, MAX_PUSH_BYTES

__all__ = ["DRAIN_BYTES", "MAX_PUSH_BYTES", "create_combined_app", "serve"]

MAIN = Path(__file__).resolve().parents[2] / "main.py"
METRICS_PATH = "/pubsub/metrics"
OUTCOMES_PATH = "/pubsub/outcomes"


def create_combined_app(source: str | Path = MAIN) -> Any:
    """A WSGI app dispatching by path to the three functions-framework apps of `main.py`
    (each guarded by main.py itself: bounded bodies, JSON errors; see `cloud.http_guard`)."""
    from functions_framework import create_app

    manual = create_app("manual_trigger", str(source), "http")  # type: ignore[no-untyped-call]
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
                environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + prefix
                environ["PATH_INFO"] = path[len(prefix) :] or "/"
                return app(environ, start_response)
        return manual(environ, start_response)

    return dispatch


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
