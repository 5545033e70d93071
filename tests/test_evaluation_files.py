"""on_evaluation_file end to end: a real functions-framework app (main.py) given saved-shape
storage CloudEvents, reading objects with google-cloud-storage from the gcp-storage-emulator."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from functions_framework import create_app

from tests.support.emulators import free_port
from triggers.cloud import wiring
from triggers.cloud.evaluation_files import MAX_OBJECT_BYTES
from triggers.state.sqlite import SQLiteStore

ROOT = Path(__file__).resolve().parent.parent
MAIN = str(ROOT / "main.py")
FIXTURE = (Path(__file__).parent / "fixtures" / "cloudevent_storage_finalized.json").read_text()
POLICIES = """
models:
  fraud-detector:
    pipeline: {template: %s}
    policies:
      - {name: accuracy-floor, metric: accuracy, direction: higher_is_better,
         absolute: {threshold: 0.5}}
"""


@pytest.fixture(scope="module")
def storage_emulator() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "gcp-storage-emulator"), "start", "--port",
         str(port), "--in-memory", "-q"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    host = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{host}/storage/v1/b?project=test-project", timeout=1)
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.2)
    yield host
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, storage_emulator: str) -> Iterator[Any]:
    from tests.conftest import EXAMPLE_TEMPLATE

    policy = tmp_path / "policies.yaml"
    policy.write_text(POLICIES % EXAMPLE_TEMPLATE)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", storage_emulator)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "test-project")
    monkeypatch.setenv("RETRAIN_POLICY_FILE", str(policy))
    monkeypatch.setenv("RETRAIN_STATE", f"sqlite:///{tmp_path}/state.db")
    monkeypatch.setenv("RETRAIN_LAUNCHER", "local")
    monkeypatch.setenv("RETRAIN_MANUAL_TOKEN", "t")
    monkeypatch.delenv("RETRAIN_DECISIONS_TOPIC", raising=False)
    monkeypatch.chdir(tmp_path)
    wiring.reset()
    import triggers.cloud.entry

    monkeypatch.setattr(triggers.cloud.entry, "_storage_reader", None)
    yield create_app("on_evaluation_file", MAIN, "cloudevent").test_client()
    wiring.reset()


def upload(bucket: str, name: str, data: bytes) -> dict[str, str]:
    from google.cloud import storage

    client = storage.Client(project="test-project")
    try:
        client.create_bucket(bucket)
    except Exception:  # noqa: BLE001 - created by an earlier test
        pass
    blob = client.bucket(bucket).blob(name)
    blob.upload_from_string(data, content_type="application/x-ndjson")
    blob.reload()
    return {"bucket": bucket, "name": name, "generation": str(blob.generation),
            "size": str(blob.size)}


def event(obj: dict[str, str]) -> str:
    return FIXTURE % obj


def post(client: Any, body: str) -> Any:
    return client.post("/", data=body, headers={"Content-Type": "application/cloudevents+json"})


def line(day: int, value: float) -> str:
    return json.dumps({"model": "fraud-detector", "metrics": {"accuracy": value},
                       "window_end": f"2026-11-{day:02d}T00:00:00Z"})


def test_each_line_is_an_event_bad_lines_are_rejected_by_number_redelivery_changes_nothing(
    app: Any, tmp_path: Path,
) -> None:
    body = "\n".join([line(1, 0.9), "{not json", line(2, 0.91),
                      json.dumps({"model": "fraud-detector"}), line(3, 0.92)]) + "\n"
    obj = upload("evals", "daily/2026-11-03.jsonl", body.encode())
    for _ in range(2):  # the notification delivered twice
        assert post(app, event(obj)).status_code == 200
    store = SQLiteStore(tmp_path / "state.db")
    points = store.points("fraud-detector", "overall", "accuracy")
    assert [p.value for p in points] == [0.9, 0.91, 0.92]
    rejected = sorted(store.rejected_events(), key=lambda r: r.field)
    assert [(r.field, r.source) for r in rejected] == [("line 2", "gcs"), ("metrics", "gcs")]
    assert "line 2" in rejected[0].reason
    assert len({p.message_id for p in points}) == 3
    store.close()


def test_csv_objects_are_read_with_the_publish_parser(app: Any, tmp_path: Path) -> None:
    csv = ("model,metric,value,window_end,examples\n"
           "fraud-detector,accuracy,0.93,2026-11-05T00:00:00Z,100\n"
           "fraud-detector,accuracy,zero,2026-11-06T00:00:00Z,100\n")
    obj = upload("evals", "daily/2026-11-05.csv", csv.encode())
    assert post(app, event(obj)).status_code == 200
    store = SQLiteStore(tmp_path / "state.db")
    assert [p.value for p in store.points("fraud-detector", "overall", "accuracy")] == [0.93]
    assert [r.field for r in store.rejected_events()] == ["line 3"]
    store.close()


def test_an_object_over_the_limit_is_refused_whole(app: Any, tmp_path: Path) -> None:
    obj = upload("evals", "huge.jsonl", b"x")
    obj["size"] = str(MAX_OBJECT_BYTES + 1)  # as the notification says
    assert post(app, event(obj)).status_code == 200
    store = SQLiteStore(tmp_path / "state.db")
    (refused,) = store.rejected_events()
    assert refused.field == "size" and "10 MiB" in refused.reason and "huge.jsonl" in refused.reason
    store.close()


def test_a_rewritten_object_is_read_again_the_same_generation_is_not(
    app: Any, tmp_path: Path,
) -> None:
    first = upload("evals", "daily/rewritten.jsonl", (line(7, 0.8) + "\n").encode())
    assert post(app, event(first)).status_code == 200
    assert post(app, event(first)).status_code == 200  # redelivered: same generation
    store = SQLiteStore(tmp_path / "state.db")
    assert [p.value for p in store.points("fraud-detector", "overall", "accuracy")] == [0.8]
    # The same name written again: a new generation, whose lines are new messages.
    # Line 1 again, now another event: read, since its message id names the new generation.
    second = upload("evals", "daily/rewritten.jsonl", (line(8, 0.85) + "\n").encode())
    assert second["generation"] != first["generation"]
    assert post(app, event(second)).status_code == 200
    assert post(app, event(second)).status_code == 200
    points = store.points("fraud-detector", "overall", "accuracy")
    assert [p.value for p in points] == [0.8, 0.85]
    assert len({p.message_id for p in points}) == 2
    store.close()


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "triggers", *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env})


def test_publish_uploads_a_file_that_on_evaluation_file_then_records(
    app: Any, tmp_path: Path, storage_emulator: str,
) -> None:
    """`publish FILE --bucket`: the file lands in the bucket; the notification the real
    Eventarc sends for that object (its metadata, as the emulator stores it) records each line."""
    from google.cloud import storage

    env = {"STORAGE_EMULATOR_HOST": storage_emulator, "GOOGLE_CLOUD_PROJECT": "test-project"}
    client = storage.Client(project="test-project")
    try:
        client.create_bucket("uploads")
    except Exception:  # noqa: BLE001 - created by an earlier test
        pass
    evaluations = tmp_path / "2026-11-12.csv"
    evaluations.write_text("model,metric,value,window_end\n"
                           "fraud-detector,accuracy,0.96,2026-11-12T00:00:00Z\n"
                           "fraud-detector,accuracy,0.97,2026-11-13T00:00:00Z\n")
    done = _cli("publish", str(evaluations), "--bucket", "gs://uploads/evals/", env=env)
    assert done.returncode == 0, done.stderr
    assert "gs://uploads/evals/2026-11-12.csv" in done.stdout and "2 events" in done.stdout
    blob = client.bucket("uploads").get_blob("evals/2026-11-12.csv")
    assert blob is not None and blob.content_type == "text/csv"
    obj = {"bucket": "uploads", "name": blob.name, "generation": str(blob.generation),
           "size": str(blob.size)}
    assert blob.download_as_bytes() == evaluations.read_bytes()
    assert post(app, event(obj)).status_code == 200
    store = SQLiteStore(tmp_path / "state.db")
    assert [p.value for p in store.points("fraud-detector", "overall", "accuracy")] == [0.96, 0.97]
    assert store.rejected_events() == []
    store.close()

    # Uploading it again would be a new generation, read again: refused, nothing written.
    again = _cli("publish", str(evaluations), "--bucket", "gs://uploads/evals", env=env)
    assert again.returncode == 1 and "already exists" in again.stderr, again.stderr
    after = client.bucket("uploads").get_blob("evals/2026-11-12.csv")
    assert after is not None and str(after.generation) == obj["generation"]


def test_publish_refuses_a_bad_or_oversized_file_before_uploading(
    tmp_path: Path, storage_emulator: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from google.cloud import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", storage_emulator)
    env = {"STORAGE_EMULATOR_HOST": storage_emulator, "GOOGLE_CLOUD_PROJECT": "test-project"}
    client = storage.Client(project="test-project")
    try:
        client.create_bucket("uploads")
    except Exception:  # noqa: BLE001 - created by an earlier test
        pass
    bad = tmp_path / "bad.jsonl"
    bad.write_text(line(1, 0.9) + "\n{not json\n")
    refused = _cli("publish", str(bad), "--bucket", "gs://uploads/refused/", env=env)
    assert refused.returncode == 1 and "bad.jsonl:2" in refused.stderr, refused.stderr
    big = tmp_path / "big.jsonl"
    big.write_bytes((line(1, 0.9) + "\n").encode() * (MAX_OBJECT_BYTES // 80 + 1))
    assert big.stat().st_size > MAX_OBJECT_BYTES
    too_big = _cli("publish", str(big), "--bucket", "gs://uploads/refused/", env=env)
    assert too_big.returncode == 1 and "10 MiB" in too_big.stderr, too_big.stderr
    assert list(client.list_blobs("uploads", prefix="refused/")) == []
