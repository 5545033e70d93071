"""A functions-framework CloudEvent function served by `triggers.cloud.serve.serve` itself, so the
throughput floor runs under exactly the gunicorn options of `python -m triggers serve`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", required=True, help="the function's file")
    parser.add_argument("--target", default="hello")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args(argv)

    from triggers.cloud import serve as server

    def hello_app(source: Any = None) -> Any:  # built in each worker, as serve() builds ours
        from functions_framework import create_app

        return create_app(args.target, args.source, "cloudevent")  # type: ignore[no-untyped-call]

    server.create_combined_app = hello_app  # serve()'s load() looks it up at call time
    server.serve(args.host, args.port, workers=args.workers, threads=args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
