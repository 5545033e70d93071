"""Two processes, one SQLite file, two different breaching events for one model at the same
moment: exactly one run is launched and the other trigger is recorded as suppressed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE_TEMPLATE, POLICY_YAML, ROOT
from triggers.state.sqlite import SQLiteStore

WORKER = textwrap.dedent(
    """
    import json, sys, time
    from pipeline_client.launching.protocol import FakeLauncher
    from triggers.config import load_policy_file
    from triggers.events import Delivery
    from triggers.service import RetrainService
    from triggers.state.sqlite import SQLiteStore

    policy, db, start_at, message_id, event = sys.argv[1:6]

    class SlowLauncher(FakeLauncher):
        def submit(self, request):
            time.sleep(0.05)  # widen the window between claim and submit
            return super().submit(request)

    service = RetrainService(load_policy_file(policy), SQLiteStore(db), SlowLauncher())
    while time.time() < float(start_at):
        pass
    result = service.handle_delivery(Delivery(message_id, event.encode(), "pubsub"))
    print(json.dumps({"launched": result.launched,
                      "kinds": sorted(d.kind for d in result.decisions)}))
    """
)


def event(day: int, value: float) -> str:
    return json.dumps({"model": "fraud-detector", "metrics": {"accuracy": value},
                       "window_end": f"2026-11-{day + 1:02d}T00:00:00Z", "examples": 1000})


@pytest.mark.parametrize("same_message", [False, True], ids=["two-events", "one-message-twice"])
@pytest.mark.parametrize("attempt", range(4))
def test_two_processes_one_run_one_suppressed(
    tmp_path: Path, attempt: int, same_message: bool
) -> None:
    """Two breaching events at once: one fires, the other is suppressed. The same message
    delivered to both at once (Pub/Sub may): one fires, the other is a duplicate."""
    policy = tmp_path / "policies.yaml"
    policy.write_text(POLICY_YAML % {"template": EXAMPLE_TEMPLATE})
    db = tmp_path / "state.db"
    from pipeline_client.launching.protocol import FakeLauncher
    from tests.test_service import DEGRADING, FIRST_FIRE
    from triggers.config import load_policy_file
    from triggers.events import Delivery
    from triggers.service import RetrainService

    warmup = RetrainService(load_policy_file(policy), SQLiteStore(db), FakeLauncher())
    for day in range(FIRST_FIRE):
        warmup.handle_delivery(Delivery(f"w{day}", event(day, DEGRADING[day]).encode(), "x"))
    start_at = time.time() + 2.0
    days = (FIRST_FIRE, FIRST_FIRE) if same_message else (FIRST_FIRE, FIRST_FIRE + 1)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(policy), str(db), str(start_at), f"m{day}",
             event(day, DEGRADING[day])],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, text=True,
        )
        for day in days
    ]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    launched = [o["launched"] for o in outputs if o["launched"]]
    if same_message:  # both may submit it: the same run id, which the launcher dedupes
        assert {run for ids in launched for run in ids} == {launched[0][0]}, outputs
    else:
        assert len(launched) == 1, outputs
    store = SQLiteStore(db)
    runs = store.runs("fraud-detector")
    assert len(runs) == 1 and runs[0].state == "launched"
    kinds = [d.kind for d in store.decisions("fraud-detector", limit=100)
             if d.kind in ("fired", "suppressed")]
    assert sorted(kinds) == (["fired"] if same_message else ["fired", "suppressed"]), outputs
