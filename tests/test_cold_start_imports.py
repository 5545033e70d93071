"""What the decision path's cold start leaves out: the ID-token fetch (urllib.request) is for
the manual trigger behind IAM, the child process (subprocess) for the local launcher's runs,
and the records of runs (made dataclasses on first use, `thresholds.records`)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import EXAMPLE_TEMPLATE, POLICY_YAML, ROOT

CHECK = textwrap.dedent(
    """
    import json, sys
    import main  # the cold start: config validated, service and store built
    from triggers.cloud import entry
    from triggers.events import Delivery

    # (and a policy file of absolute rules loads no fit: the trend and Theil–Sen modules)
    # (nor the incidents module, for a metric event)
    unused = ("urllib.request", "subprocess", "thresholds.trend", "thresholds.theil_sen",
              "triggers.incidents")
    at_cold_start = sorted(m for m in unused if m in sys.modules)
    event = {"model": "fraud-detector", "metrics": {"accuracy": 0.97},
             "window_end": "2026-11-02T00:00:00Z", "examples": 1000}
    body = {"message": {"data": __import__("base64").b64encode(json.dumps(event).encode())
                        .decode(), "messageId": "cold-1"}}
    class CloudEvent(dict):
        data = body
    result = entry.metric_cloud_event(CloudEvent(id="cold-1"))
    # the records of runs and launches: made dataclasses only when a run is (thresholds.records)
    import dataclasses
    from pipeline_client.launching.protocol import LaunchRequest, LaunchResult
    from triggers.state.protocol import Claim, RunRecord, RunUpdate
    built = sorted(c.__name__ for c in (LaunchRequest, LaunchResult, Claim, RunRecord, RunUpdate)
                   if dataclasses.is_dataclass(c))
    print(json.dumps({"cold_start": at_cold_start,
                      "after_event": sorted(m for m in unused if m in sys.modules),
                      "status": result.status, "run_records_built": built}))
    """
)


def test_the_decision_path_imports_neither_urllib_request_nor_subprocess(
        tmp_path: Path) -> None:
    policy = tmp_path / "policies.yaml"
    policy.write_text(POLICY_YAML % {"template": EXAMPLE_TEMPLATE})
    result = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "RETRAIN_POLICY_FILE": str(policy),
             "RETRAIN_STATE": f"sqlite:///{tmp_path}/state.db", "RETRAIN_LAUNCHER": "local"},
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer == {"cold_start": [], "after_event": [], "status": "recorded",
                      "run_records_built": []}
