"""An outcome handler for local-launcher tests: appends each message as a JSON line.

The file is named by the RETRAIN_TEST_OUTCOME_SINK environment variable (inherited by the child).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

SINK_VARIABLE = "RETRAIN_TEST_OUTCOME_SINK"


def record(message: dict[str, Any]) -> None:
    """Appends `message` to the sink file, one line per call (O_APPEND: one write per line)."""
    line = json.dumps(message, sort_keys=True) + "\n"
    fd = os.open(os.environ[SINK_VARIABLE], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)


def read(path: Path) -> list[dict[str, Any]]:
    """Every message recorded in `path` so far."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
