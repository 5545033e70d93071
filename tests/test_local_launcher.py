"""LocalLauncher end to end: real kfp.local runs of the example pipeline in detached children.

Each run takes about a second here; every wait has a deadline so a hang fails instead of blocking.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline_client.launching.local import NEVER_STARTED, NOT_REPORTING, LocalLauncher
from pipeline_client.launching.protocol import TERMINAL_STATES, LaunchRequest, RunStatus
from tests import local_outcome_sink
from triggers.errors import LaunchRejectedError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "pipelines" / "example.yaml"
FAILING = ROOT / "tests" / "fixtures" / "failing_pipeline.yaml"
SINK_HANDLER = "tests.local_outcome_sink:record"
DEADLINE_SECONDS = 120.0


@pytest.fixture
def sink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "outcomes.jsonl"
    monkeypatch.setenv(local_outcome_sink.SINK_VARIABLE, str(path))
    return path


@pytest.fixture
def launcher(tmp_path: Path, sink: Path) -> LocalLauncher:
    return LocalLauncher(workdir=tmp_path / "runs", outcome_handler=SINK_HANDLER)


def make_request(
    run_id: str, template: Path | str = EXAMPLE, **extra_parameters: Any
) -> LaunchRequest:
    parameters = {
        "model": "fraud-detector",
        "trigger_id": f"trig-{run_id}",
        "reason": "accuracy 0.91 < 0.95 in 3 of 5 points",
        "champion_version": "7",
        "training_days": 2,
        **extra_parameters,
    }
    return LaunchRequest(
        run_id=run_id,
        model="fraud-detector",
        policy="accuracy-floor",
        trigger_id=f"trig-{run_id}",
        template=str(template),
        parameters=parameters,
        labels={"model": "fraud-detector", "policy": "accuracy-floor"},
    )


def wait_final(launcher: LocalLauncher, run_id: str) -> RunStatus:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline:
        status = launcher.get_status(run_id)
        if status.state in TERMINAL_STATES:
            return status
        time.sleep(0.1)
    pytest.fail(f"run {run_id} not finished after {DEADLINE_SECONDS} s")


def wait_delivered(sink: Path, count: int = 1) -> list[dict[str, Any]]:
    """The child writes its final state before calling the handler: wait for the handler too."""
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        messages = local_outcome_sink.read(sink)
        if len(messages) >= count:
            return messages
        time.sleep(0.05)
    return local_outcome_sink.read(sink)


def raw_status(launcher: LocalLauncher, run_id: str) -> dict[str, Any]:
    return json.loads((launcher.workdir / run_id / "status.json").read_text())


def wait_delivery(launcher: LocalLauncher, run_id: str) -> str:
    """The child records the handler's result in status.json after calling it."""
    deadline = time.monotonic() + 10.0
    while "delivery" not in (status := raw_status(launcher, run_id)):
        assert time.monotonic() < deadline, "delivery never recorded"
        time.sleep(0.05)
    return status["delivery"]


def test_example_run_succeeds_and_delivers_one_outcome(launcher: LocalLauncher, sink: Path) -> None:
    from pipelines.example import champion_version_for

    started = time.monotonic()
    result = launcher.submit(make_request("run-ok"))
    assert time.monotonic() - started < 2.0  # answers at once; the run goes on in the background
    assert result.run_id == "run-ok"
    assert not result.already_existed
    run_dir = Path(result.resource_name)
    assert run_dir == launcher.workdir / "run-ok"
    assert json.loads((run_dir / "request.json").read_text()) == make_request("run-ok").to_dict()
    assert raw_status(launcher, "run-ok")["state"] in ("pending", "running", "succeeded")

    status = wait_final(launcher, "run-ok")

    assert status.state == "succeeded", status
    assert status.outcome is not None
    assert status.outcome["decision"] == "promoted"
    assert status.outcome["champion_version"] == champion_version_for("trig-run-ok")
    report = status.outcome["report"]
    assert report["previous_champion_version"] == "7"
    assert report["training_rows"] == 48
    assert 0.5 < report["challenger_accuracy"] <= 1.0
    assert json.loads(Path(report["model_uri"]).read_text())["kind"] == "threshold"
    assert Path(report["model_uri"]).is_relative_to(run_dir / "artifacts")

    messages = wait_delivered(sink)
    assert messages == [
        {
            "model": "fraud-detector",
            "trigger_id": "trig-run-ok",
            "run_id": "run-ok",
            "decision": "promoted",
            "champion_version": champion_version_for("trig-run-ok"),
            "report": report,
        }
    ]
    assert wait_delivery(launcher, "run-ok") == "delivered"
    assert raw_status(launcher, "run-ok")["max_rss_kib"] > 0
    assert any((run_dir / "tmp").iterdir())  # kfp's per-step `mktemp -d` stays in the run dir


def test_champion_version_is_deterministic_and_differs_per_trigger() -> None:
    from pipelines.example import champion_version_for

    assert champion_version_for("a") == champion_version_for("a")
    assert champion_version_for("a") != champion_version_for("b")


def test_submitting_the_same_run_twice_starts_one_process(
    launcher: LocalLauncher, sink: Path, tmp_path: Path
) -> None:
    request = make_request("run-twice")
    first = launcher.submit(request)
    pid = raw_status(launcher, "run-twice")["pid"]
    second = launcher.submit(request)
    # Another launcher over the same directory (another process, a redelivery) agrees.
    other = LocalLauncher(workdir=tmp_path / "runs", outcome_handler=SINK_HANDLER)
    third = other.submit(request)

    assert not first.already_existed
    assert second.already_existed and third.already_existed
    assert first.resource_name == second.resource_name == third.resource_name
    assert wait_final(launcher, "run-twice").state == "succeeded"
    assert wait_delivered(sink) and len(local_outcome_sink.read(sink)) == 1
    time.sleep(0.5)  # a second child, had one started, would have delivered by now
    assert len(local_outcome_sink.read(sink)) == 1
    assert raw_status(launcher, "run-twice")["pid"] == pid
    log = (Path(first.resource_name) / "log.txt").read_text()
    assert log.count("local run started") == 1


def test_concurrent_submits_of_one_run_id_create_it_once(launcher: LocalLauncher) -> None:
    request = make_request("run-race")
    results = []
    barrier = threading.Barrier(6)

    def submit() -> None:
        barrier.wait()
        results.append(launcher.submit(request))

    threads = [threading.Thread(target=submit) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(r.already_existed for r in results) == [False] + [True] * 5
    assert wait_final(launcher, "run-race").state == "succeeded"


def test_failing_pipeline_reports_failed_and_delivers_a_failed_outcome(
    launcher: LocalLauncher, sink: Path
) -> None:
    from tests.fixtures.failing_pipeline import ERROR_TEXT

    launcher.submit(make_request("run-fails", template=FAILING))

    status = wait_final(launcher, "run-fails")

    assert status.state == "failed"
    assert ERROR_TEXT in status.message
    assert status.outcome is not None
    assert status.outcome["decision"] == "failed"
    assert status.outcome["champion_version"] is None
    assert "'train'" in status.outcome["report"]["error"]
    assert "\x1b[" not in status.outcome["report"]["error"]
    assert status.outcome["report"]["step_error"] == f"RuntimeError: {ERROR_TEXT}"
    messages = wait_delivered(sink)
    assert len(messages) == 1
    assert messages[0]["decision"] == "failed"
    assert messages[0]["run_id"] == "run-fails"
    assert messages[0]["model"] == "fraud-detector"
    assert messages[0]["trigger_id"] == "trig-run-fails"
    assert messages[0]["report"] == status.outcome["report"]


def test_parameter_the_template_does_not_declare_fails_clearly(
    launcher: LocalLauncher, sink: Path
) -> None:
    launcher.submit(make_request("run-undeclared", learning_rate=0.1))

    status = wait_final(launcher, "run-undeclared")

    assert status.state == "failed"
    assert "does not declare input(s) learning_rate" in status.message
    messages = wait_delivered(sink)
    assert [m["decision"] for m in messages] == ["failed"]
    assert "learning_rate" in messages[0]["report"]["error"]


def test_failing_outcome_handler_keeps_the_run_state(tmp_path: Path) -> None:
    launcher = LocalLauncher(tmp_path / "runs", outcome_handler="tests.local_outcome_sink:nope")
    launcher.submit(make_request("run-bad-handler"))

    assert wait_final(launcher, "run-bad-handler").state == "succeeded"
    assert wait_delivery(launcher, "run-bad-handler").startswith("failed: AttributeError")


def test_killed_child_is_reported_failed(launcher: LocalLauncher, sink: Path) -> None:
    launcher.submit(make_request("run-killed"))
    deadline = time.monotonic() + 10.0
    while raw_status(launcher, "run-killed")["state"] != "running":
        assert time.monotonic() < deadline, "child never reported running"
        time.sleep(0.005)
    pid = raw_status(launcher, "run-killed")["pid"]
    try:
        # The child writes `running` before importing kfp (~0.5 s), so it is still mid-run.
        os.kill(pid, signal.SIGKILL)
        status = wait_final(launcher, "run-killed")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)  # any step it had started

    assert status == RunStatus("failed", None, NOT_REPORTING)
    time.sleep(0.3)
    assert local_outcome_sink.read(sink) == []


def test_run_never_started_is_failed_after_the_grace_period(launcher: LocalLauncher) -> None:
    run_dir = launcher.workdir / "run-orphan"
    run_dir.mkdir(parents=True)
    (run_dir / "status.json").write_text(json.dumps({"state": "pending", "pid": None}))

    assert launcher.get_status("run-orphan") == RunStatus("pending")
    old = time.time() - 3600
    os.utime(run_dir, (old, old))
    assert launcher.get_status("run-orphan") == RunStatus("failed", None, NEVER_STARTED)


def test_a_pending_child_between_fork_and_exec_is_not_judged_dead(
    launcher: LocalLauncher,
) -> None:
    # Right after the fork the child's pid still shows the parent's command line (here: this
    # very process): a `pending` run with that pid is pending, not failed, until the grace.
    run_dir = launcher.workdir / "run-forking"
    run_dir.mkdir(parents=True)
    (run_dir / "status.json").write_text(json.dumps({"state": "pending", "pid": os.getpid()}))

    assert launcher.get_status("run-forking") == RunStatus("pending")
    old = time.time() - 3600
    os.utime(run_dir, (old, old))
    assert launcher.get_status("run-forking") == RunStatus("failed", None, NEVER_STARTED)


def test_unknown_and_invalid_run_ids(launcher: LocalLauncher) -> None:
    assert launcher.get_status("no-such-run").state == "unknown"
    assert launcher.get_status("../etc").state == "unknown"
    with pytest.raises(LaunchRejectedError):
        launcher.submit(make_request("Bad_Id"))


@pytest.mark.parametrize(
    "template", ["gs://bucket/retrain.yaml", "https://x/retrain.yaml", "/nonexistent/p.yaml"]
)
def test_unusable_template_is_rejected_before_anything_starts(
    launcher: LocalLauncher, template: str
) -> None:
    with pytest.raises(LaunchRejectedError) as caught:
        launcher.submit(make_request("run-rejected", template=template))
    assert caught.value.run_id == "run-rejected"
    assert not (launcher.workdir / "run-rejected").exists()


def _normalised(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    document.pop("sdkVersion", None)
    return document


@pytest.mark.parametrize(
    ("module", "compiled"),
    [("pipelines.example", EXAMPLE), ("tests.fixtures.failing_pipeline", FAILING),
     ("pipelines.retrain", ROOT / "pipelines" / "retrain.yaml")],
)
def test_compiled_templates_are_up_to_date(module: str, compiled: Path, tmp_path: Path) -> None:
    fresh = tmp_path / compiled.name
    subprocess.run([sys.executable, "-m", module, str(fresh)], cwd=ROOT, check=True)
    assert _normalised(fresh) == _normalised(compiled), (
        f"{compiled} is stale: run `python -m {module}`"
    )


def test_importing_the_local_launcher_does_not_import_kfp() -> None:
    code = (
        "import sys, pipeline_client.launching.local; "
        "heavy = sorted(m for m in sys.modules if m == 'kfp' or m.startswith('kfp.')); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
