"""The Firestore SDK stays out of the cold start: not imported on the SQLite path at all, and on
the Firestore path not before the first store call (checked in fresh interpreters)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import EXAMPLE_TEMPLATE, POLICY_YAML, ROOT
from tests.support import fixtures
from tests.support.emulators import FirestoreEmulator

firestore_emulator = fixtures.firestore_emulator  # the session emulator (shared) and
firestore_env = fixtures.firestore_env  # its per-test reset with the environment set

CHECK = textwrap.dedent(
    """
    import json, sys
    import main  # the cold start: config validated, service and store built
    from triggers.cloud import wiring
    from triggers.events import Delivery

    loaded = lambda: "google.cloud.firestore" in sys.modules
    at_cold_start = loaded()
    event = {"model": "fraud-detector", "metrics": {"accuracy": 0.97},
             "window_end": "2026-11-02T00:00:00Z", "examples": 1000}
    result = wiring.service().handle_delivery(
        Delivery("import-check-1", json.dumps(event).encode(), "pubsub"))
    print(json.dumps({"store": type(wiring.service().store).__name__,
                      "cold_start": at_cold_start, "after_event": loaded(),
                      "status": result.status}))
    """
)


def cold_start(tmp_path: Path, **env: str) -> dict[str, object]:
    policy = tmp_path / "policies.yaml"
    policy.write_text(POLICY_YAML % {"template": EXAMPLE_TEMPLATE})
    result = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "RETRAIN_POLICY_FILE": str(policy),
             **env},
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return answer


def test_the_sqlite_path_never_imports_the_firestore_sdk(tmp_path: Path) -> None:
    answer = cold_start(tmp_path, RETRAIN_STATE=f"sqlite:///{tmp_path}/state.db")
    assert answer == {"store": "SQLiteStore", "cold_start": False, "after_event": False,
                      "status": "recorded"}


def test_the_firestore_path_imports_it_on_first_store_use(
    tmp_path: Path, firestore_env: FirestoreEmulator
) -> None:
    answer = cold_start(tmp_path, RETRAIN_STATE="firestore://", **firestore_env.env())
    assert answer == {"store": "FirestoreStore", "cold_start": False, "after_event": True,
                      "status": "recorded"}
