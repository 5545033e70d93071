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
