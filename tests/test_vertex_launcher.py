"""VertexLauncher and template loading, driving the real aiplatform_v1 REST client.

Every request goes over HTTP to the fakes in tests/fakes/vertex_server.py on 127.0.0.1.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import yaml
from requests.adapters import HTTPAdapter

from pipeline_client.launching.protocol import LaunchRequest
from pipeline_client.launching.templates import (
    STORAGE_EMULATOR_VARIABLE,
    TemplateError,
    fetch_template,
    load_template,
    without_caching,
)
from pipeline_client.launching.vertex import VertexLauncher
from tests.fakes.vertex_server import FakeGcsServer, FakeVertexServer, read_record
from triggers.errors import LaunchRejectedError, TransientError

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "fixtures" / "tiny_pipeline.yaml"
TINY_RELATIVE = "tests/fixtures/tiny_pipeline.yaml"
PROJECT, LOCATION = "acme-ml", "europe-west4"
PARENT = f"projects/{PROJECT}/locations/{LOCATION}"
AR_URL = "https://europe-west4-kfp.pkg.dev/acme-ml/pipelines/tiny-retrain/v3"
PARAMETERS = {
    "model": "fraud-detector",
    "trigger_id": "t-0123abcd",
    "reason": "accuracy-floor: 3 of 5 points below 0.95",
    "champion_version": "7",
    "training_days": 30,
}

pytestmark = pytest.mark.usefixtures("fresh_template_cache")


def tiny_spec() -> dict[str, Any]:
    spec = yaml.safe_load(TINY.read_text(encoding="utf-8"))
    assert isinstance(spec, dict)
    return spec


RUN_ID = "fraud-detector-accuracy-floor-1a2b"


def make_request(run_id: str = RUN_ID, **changes: Any) -> LaunchRequest:
    fields: dict[str, Any] = {
        "run_id": run_id,
        "model": "fraud-detector",
        "policy": "accuracy-floor",
        "trigger_id": "t-0123abcd",
        "template": str(TINY),
        "parameters": dict(PARAMETERS),
        "labels": {
            "model": "fraud-detector",
            "policy": "accuracy-floor",
            "trigger-id": "t-0123abcd",
        },
        "service_account": "retrain@acme-ml.iam.gserviceaccount.com",
        "pipeline_root": "gs://acme-ml-pipelines/root",
        "network": "projects/123456/global/networks/ml-vpc",
        "kms_key_name": "projects/acme-ml/locations/europe-west4/keyRings/ml/cryptoKeys/pipelines",
    }
    fields.update(changes)
    return LaunchRequest(**fields)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture()
def gcs() -> Iterator[FakeGcsServer]:
    with FakeGcsServer() as server:
        yield server


@pytest.fixture()
def launcher(vertex: FakeVertexServer) -> VertexLauncher:
    return VertexLauncher(PROJECT, LOCATION, endpoint=vertex.endpoint)


# --- import cost -------------------------------------------------------------------------------


def test_importing_the_launcher_loads_no_google_module() -> None:
    # The venv's namespace-package .pth files pre-create `google` and `google.cloud` at startup,
    # so compare with what was there before the import.
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import pipeline_client.launching.vertex, pipeline_client.launching.templates\n"
        "new = sorted(set(sys.modules) - before)\n"
        "print(any(m.startswith('google') for m in new))\n"
        "heavy = ('google', 'grpc', 'requests', 'yaml', 'kfp')\n"
        "print([m for m in new if m.split('.')[0] in heavy])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["False", "[]"]


def test_the_launcher_and_the_registry_share_one_way_of_building_their_rest_client(
    vertex: FakeVertexServer, launcher: VertexLauncher,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from pipeline_client.promotion.registries.vertex import VertexModelRegistry

    registry = VertexModelRegistry(PROJECT, LOCATION, endpoint=vertex.endpoint + "/")
    assert registry.endpoint == launcher.endpoint == vertex.endpoint
    default = VertexModelRegistry(PROJECT, LOCATION)
    assert default.endpoint == VertexLauncher(PROJECT, LOCATION).endpoint == (
        f"{LOCATION}-aiplatform.googleapis.com")
    for owner, name in ((launcher, "PipelineServiceClient"), (registry, "ModelServiceClient")):
        with ThreadPoolExecutor(8) as pool:  # built once, however many deliveries race
            clients = {id(c) for c in pool.map(lambda o: o._get_client(), [owner] * 16)}
        assert len(clients) == 1
        assert type(owner._get_client()).__name__ == name
    launcher.submit(make_request())
    assert vertex.create_requests[0].path == f"/v1/{PARENT}/pipelineJobs"
    assert registry.versions("fraud-detector") == []


# --- create ------------------------------------------------------------------------------------


def test_submit_sends_the_exact_create_request(
    vertex: FakeVertexServer, launcher: VertexLauncher
) -> None:
    result = launcher.submit(make_request())

    assert result.run_id == "fraud-detector-accuracy-floor-1a2b"
    assert result.resource_name == f"{PARENT}/pipelineJobs/fraud-detector-accuracy-floor-1a2b"
    assert result.already_existed is False
    [create] = vertex.create_requests
    assert create.path == f"/v1/{PARENT}/pipelineJobs"
    assert create.query["pipelineJobId"] == "fraud-detector-accuracy-floor-1a2b"
    assert create.headers["x-goog-request-params"] == f"parent={PARENT}"
    assert "authorization" not in create.headers  # anonymous credentials for http:// endpoints
    body = create.body
    assert body["displayName"] == "fraud-detector-accuracy-floor-1a2b"
    assert body["labels"] == {
        "model": "fraud-detector",
        "policy": "accuracy-floor",
        "trigger-id": "t-0123abcd",
    }
    assert body["runtimeConfig"] == {
        "gcsOutputDirectory": "gs://acme-ml-pipelines/root",
        "parameterValues": PARAMETERS,
    }
    assert body["serviceAccount"] == "retrain@acme-ml.iam.gserviceaccount.com"
    assert body["network"] == "projects/123456/global/networks/ml-vpc"
    assert body["encryptionSpec"] == {
        "kmsKeyName": "projects/acme-ml/locations/europe-west4/keyRings/ml/cryptoKeys/pipelines"
    }
    assert body["pipelineSpec"] == without_caching(tiny_spec())
    assert "templateUri" not in body
    assert vertex.created == {"fraud-detector-accuracy-floor-1a2b": body}


def test_optional_fields_are_left_out_when_not_configured(
    vertex: FakeVertexServer, launcher: VertexLauncher
) -> None:
    launcher.submit(make_request(service_account=None, network=None, kms_key_name=None, labels={}))
    body = vertex.create_requests[0].body
    for absent in ("serviceAccount", "network", "encryptionSpec", "labels"):
        assert absent not in body


def test_resubmitting_a_run_id_is_success_and_creates_nothing(
    vertex: FakeVertexServer, launcher: VertexLauncher
) -> None:
    first = launcher.submit(make_request())
    again = launcher.submit(make_request())

    assert (first.already_existed, again.already_existed) == (False, True)
    assert again.resource_name == first.resource_name
    assert vertex.create_calls == 2
    assert list(vertex.created) == ["fraud-detector-accuracy-floor-1a2b"]


def test_unavailable_is_transient_and_the_redelivery_launches_once(
    vertex: FakeVertexServer, launcher: VertexLauncher
) -> None:
    vertex.fail_next(2, 503)
    for _ in range(2):
        with pytest.raises(TransientError):
            launcher.submit(make_request())
    result = launcher.submit(make_request())

    assert result.already_existed is False
    assert vertex.create_calls == 3
    assert len(vertex.created) == 1


@pytest.mark.parametrize(
    "status", [500, 502, 503, 504, 429, "ABORTED", "RESOURCE_EXHAUSTED", "UNKNOWN"]
)
def test_retryable_failures_raise_transient_error(
    vertex: FakeVertexServer, launcher: VertexLauncher, status: int | str
) -> None:
    vertex.fail_next(1, status)
    with pytest.raises(TransientError):
        launcher.submit(make_request())
    assert vertex.created == {}


@pytest.mark.parametrize(
    "status", [400, 401, 403, 404, "FAILED_PRECONDITION", "PERMISSION_DENIED", "UNIMPLEMENTED"]
)
def test_permanent_failures_raise_launch_rejected(
    vertex: FakeVertexServer, launcher: VertexLauncher, status: int | str
) -> None:
    vertex.fail_next(1, status, message="the service says no")
    with pytest.raises(LaunchRejectedError) as caught:
        launcher.submit(make_request())
    assert caught.value.run_id == "fraud-detector-accuracy-floor-1a2b"
    if status != 401:  # on 401 the session first tries (and fails) to refresh the credentials
        assert "the service says no" in caught.value.reason


def test_a_lost_response_is_transient_and_the_retry_finds_the_job(
    vertex: FakeVertexServer,
) -> None:
    launcher = VertexLauncher(PROJECT, LOCATION, endpoint=vertex.endpoint, timeout=0.3)
    launcher.get_status("warm-up")  # the SDK import and first connection are not what we time
    vertex.delay_next(1, 3.0)  # the job is created, but the answer comes after the timeout

    started = time.monotonic()
    with pytest.raises(TransientError):
        launcher.submit(make_request())
    assert time.monotonic() - started < 2.5
    assert launcher.submit(make_request()).already_existed is True
    assert len(vertex.created) == 1


def test_connection_refused_is_transient() -> None:
    launcher = VertexLauncher(PROJECT, LOCATION, endpoint=f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(TransientError):
        launcher.submit(make_request())
    with pytest.raises(TransientError):
        launcher.get_status("fraud-detector-accuracy-floor-1a2b")


def test_invalid_run_id_is_rejected_before_any_request(
    vertex: FakeVertexServer, launcher: VertexLauncher
) -> None:
    with pytest.raises(LaunchRejectedError):
        launcher.submit(make_request(run_id="Not_Valid"))
    assert vertex.requests == []


# --- parameters --------------------------------------------------------------------------------


def test_unknown_parameter_is_rejected_before_any_request(
    vertex: FakeVertexServer, launcher: VertexLauncher
) -> None:
    with pytest.raises(LaunchRejectedError, match="learning_rate"):
        launcher.submit(make_request(parameters={**PARAMETERS, "learning_rate": 0.1}))
    assert vertex.requests == []


def test_missing_required_parameter_is_rejected(
    vertex: FakeVertexServer, launcher: VertexLauncher
) -> None:
    parameters = {k: v for k, v in PARAMETERS.items() if k != "trigger_id"}
    with pytest.raises(LaunchRejectedError, match="trigger_id"):
        launcher.submit(make_request(parameters=parameters))
    assert vertex.requests == []


def test_none_parameter_falls_back_to_the_pipeline_default(
    vertex: FakeVertexServer, launcher: VertexLauncher
) -> None:
    launcher.submit(make_request(parameters={**PARAMETERS, "champion_version": None}))
    values = vertex.create_requests[0].body["runtimeConfig"]["parameterValues"]
    assert "champion_version" not in values


def test_non_finite_parameter_is_rejected(launcher: VertexLauncher) -> None:
    with pytest.raises(LaunchRejectedError, match="finite"):
        launcher.submit(make_request(parameters={**PARAMETERS, "training_days": math.nan}))


def test_list_and_dict_parameters_travel_as_json_values(
    vertex: FakeVertexServer, launcher: VertexLauncher, tmp_path: Path
) -> None:
    spec = tiny_spec()
    declared = spec["root"]["inputDefinitions"]["parameters"]
    declared["slices"] = {"parameterType": "LIST", "isOptional": True, "defaultValue": []}
    declared["config"] = {"parameterType": "STRUCT", "isOptional": True, "defaultValue": {}}
    declared["fast"] = {"parameterType": "BOOLEAN", "isOptional": True, "defaultValue": False}
    template = tmp_path / "wide.yaml"
    template.write_text(yaml.safe_dump(spec), encoding="utf-8")
    extra = {
        "slices": ["overall", "eu"],
        "config": {"lr": 0.01, "layers": [64, 32], "name": "x"},
        "fast": True,
    }

    launcher.submit(make_request(template=str(template), parameters={**PARAMETERS, **extra}))

    values = vertex.create_requests[0].body["runtimeConfig"]["parameterValues"]
    assert values == {**PARAMETERS, **extra}


def test_unsupported_parameter_type_is_rejected(launcher: VertexLauncher) -> None:
    with pytest.raises(LaunchRejectedError, match="unsupported type"):
        launcher.submit(make_request(parameters={**PARAMETERS, "reason": object()}))


# --- pipeline root -----------------------------------------------------------------------------


def test_no_pipeline_root_anywhere_is_rejected(
    vertex: FakeVertexServer, launcher: VertexLauncher
) -> None:
    with pytest.raises(LaunchRejectedError, match="pipeline root"):
        launcher.submit(make_request(pipeline_root=None))
    assert vertex.requests == []


def test_compiled_default_pipeline_root_is_used_when_none_configured(
    vertex: FakeVertexServer, launcher: VertexLauncher, tmp_path: Path
) -> None:
    spec = {**tiny_spec(), "defaultPipelineRoot": "gs://compiled/root"}
    template = tmp_path / "rooted.yaml"
    template.write_text(yaml.safe_dump(spec), encoding="utf-8")

    launcher.submit(make_request(template=str(template), pipeline_root=None))

    body = vertex.create_requests[0].body
    assert body["runtimeConfig"]["gcsOutputDirectory"] == "gs://compiled/root"


# --- status ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vertex_state", "expected"),
    [
        ("PIPELINE_STATE_QUEUED", "pending"),
        ("PIPELINE_STATE_PENDING", "pending"),
        ("PIPELINE_STATE_RUNNING", "running"),
        ("PIPELINE_STATE_CANCELLING", "running"),
        ("PIPELINE_STATE_PAUSED", "running"),
        ("PIPELINE_STATE_SUCCEEDED", "succeeded"),
        ("PIPELINE_STATE_FAILED", "failed"),
        ("PIPELINE_STATE_CANCELLED", "cancelled"),
        ("PIPELINE_STATE_UNSPECIFIED", "unknown"),
    ],
)
def test_get_status_maps_pipeline_states(
    vertex: FakeVertexServer, launcher: VertexLauncher, vertex_state: str, expected: str
) -> None:
    launcher.submit(make_request())
    vertex.set_state("fraud-detector-accuracy-floor-1a2b", vertex_state)

    status = launcher.get_status("fraud-detector-accuracy-floor-1a2b")

    assert status.state == expected
    [get] = [r for r in vertex.requests if r.method == "GET"]
    assert get.path == f"/v1/{PARENT}/pipelineJobs/fraud-detector-accuracy-floor-1a2b"


def test_get_status_of_a_failed_run_carries_the_error(
    vertex: FakeVertexServer, launcher: VertexLauncher
) -> None:
    launcher.submit(make_request())
    vertex.set_state("fraud-detector-accuracy-floor-1a2b", "FAILED", "train step OOM")

    status = launcher.get_status("fraud-detector-accuracy-floor-1a2b")

    assert (status.state, status.message) == ("failed", "train step OOM")


def test_a_job_that_ended_keeps_its_end_time_when_marked_again(
    vertex: FakeVertexServer, launcher: VertexLauncher
) -> None:
    """The fake's own clock is what the storms' launcher timeline is checked against: a job
    ends once (Vertex never ends a job twice), so a harness that marks it ended again (a
    RunFinisher retrying an outcome push) must not move its endTime past later jobs."""
    launcher.submit(make_request())
    vertex.set_state("fraud-detector-accuracy-floor-1a2b", "SUCCEEDED")
    ended = vertex.jobs["fraud-detector-accuracy-floor-1a2b"]["endTime"]
    time.sleep(0.01)
    vertex.set_state("fraud-detector-accuracy-floor-1a2b", "SUCCEEDED")

    job = vertex.jobs["fraud-detector-accuracy-floor-1a2b"]
    assert job["endTime"] == ended and job["updateTime"] > ended
    assert launcher.get_status("fraud-detector-accuracy-floor-1a2b").state == "succeeded"


def test_get_status_of_a_missing_job_is_unknown(launcher: VertexLauncher) -> None:
    status = launcher.get_status("never-submitted")
    assert status.state == "unknown"
    assert "NOT_FOUND" in status.message


def test_get_status_transient_failure_raises(
    vertex: FakeVertexServer, launcher: VertexLauncher
) -> None:
    launcher.submit(make_request())
    vertex.fail_next(1, 503, op="get")
    with pytest.raises(TransientError):
        launcher.get_status("fraud-detector-accuracy-floor-1a2b")
    assert launcher.get_status("fraud-detector-accuracy-floor-1a2b").state == "pending"


# --- templates: local files --------------------------------------------------------------------


def test_local_template_relative_to_cwd_and_absolute(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    assert load_template(TINY_RELATIVE) == tiny_spec()
    assert load_template(str(TINY)) == tiny_spec()


def test_relative_template_path_through_the_launcher(
    vertex: FakeVertexServer, launcher: VertexLauncher, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    launcher.submit(make_request(template=TINY_RELATIVE))
    assert vertex.create_requests[0].body["pipelineSpec"] == without_caching(tiny_spec())


def test_second_yaml_document_platform_spec_is_ignored(tmp_path: Path) -> None:
    platform: dict[str, Any] = {"platforms": {"kubernetes": {"deploymentSpec": {"executors": {}}}}}
    path = tmp_path / "with_platform.yaml"
    path.write_text(yaml.safe_dump(tiny_spec()) + "---\n" + yaml.safe_dump(platform))
    assert load_template(str(path)) == tiny_spec()


def test_pipeline_job_json_gives_its_spec_and_runtime_defaults(
    vertex: FakeVertexServer, launcher: VertexLauncher, tmp_path: Path
) -> None:
    job = {
        "displayName": "tiny",
        "pipelineSpec": tiny_spec(),
        "runtimeConfig": {
            "gcsOutputDirectory": "gs://from-job-spec/root",
            "parameterValues": {"training_days": 90, "reason": "default reason"},
        },
    }
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job), encoding="utf-8")
    assert load_template(str(path)) == tiny_spec()

    parameters = {"model": "fraud-detector", "trigger_id": "t-1", "reason": "floor"}
    launcher.submit(make_request(template=str(path), parameters=parameters, pipeline_root=None))

    runtime = vertex.create_requests[0].body["runtimeConfig"]
    assert runtime["gcsOutputDirectory"] == "gs://from-job-spec/root"
    assert runtime["parameterValues"] == {**parameters, "training_days": 90}


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("", "empty"),
        ("just a string\n", "mapping"),
        ("a: [unclosed\n", "invalid YAML"),
        ('{"pipelineSpec": 3', "invalid JSON"),
        ("components: {}\n", "not a compiled KFP pipeline"),
        (
            "pipelineInfo: {name: old}\nroot: {}\nschemaVersion: 2.0.0\n",
            "recompile",
        ),
    ],
)
def test_bad_templates_raise_template_error(tmp_path: Path, content: str, reason: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(TemplateError, match=reason) as caught:
        load_template(str(path))
    assert caught.value.uri == str(path)


def test_missing_template_file_is_a_launch_rejection(
    vertex: FakeVertexServer, launcher: VertexLauncher, tmp_path: Path
) -> None:
    with pytest.raises(TemplateError, match="no such file"):
        load_template(str(tmp_path / "absent.yaml"))
    with pytest.raises(LaunchRejectedError, match="no such file"):
        launcher.submit(make_request(template=str(tmp_path / "absent.yaml")))
    assert vertex.requests == []


def test_local_template_is_cached_until_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY.read_text(encoding="utf-8"), encoding="utf-8")
    first = fetch_template(str(path))
    assert fetch_template(str(path)) is first

    changed = tiny_spec()
    changed["pipelineInfo"]["name"] = "tiny-retrain-v2"
    path.write_text(yaml.safe_dump(changed), encoding="utf-8")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))

    assert fetch_template(str(path)).name == "tiny-retrain-v2"


def test_load_template_returns_a_copy() -> None:
    load_template(str(TINY))["pipelineInfo"]["name"] = "mutated"
    assert load_template(str(TINY))["pipelineInfo"]["name"] == "tiny-retrain"


# --- templates: gs:// --------------------------------------------------------------------------


def test_gcs_template_is_downloaded_through_the_json_api_once(gcs: FakeGcsServer) -> None:
    gcs.put("acme-templates", "retrain/tiny pipeline.yaml", TINY.read_bytes())
    uri = "gs://acme-templates/retrain/tiny pipeline.yaml"

    assert load_template(uri, storage_endpoint=gcs.endpoint) == tiny_spec()
    assert load_template(uri, storage_endpoint=gcs.endpoint) == tiny_spec()

    [download] = gcs.requests
    assert download.method == "GET"
    assert download.path == "/storage/v1/b/acme-templates/o/retrain/tiny pipeline.yaml"
    assert download.query == {"alt": "media"}


def test_gcs_object_name_is_percent_encoded_as_one_path_segment(gcs: FakeGcsServer) -> None:
    gcs.put("b", "a/b/c.yaml", TINY.read_bytes())
    session = requests.Session()
    sent: list[str] = []
    session.hooks["response"].append(lambda response, **_: sent.append(response.request.url))

    fetch_template("gs://b/a/b/c.yaml", storage_endpoint=gcs.endpoint, session=session)

    assert sent == [f"{gcs.endpoint}/storage/v1/b/b/o/a%2Fb%2Fc.yaml?alt=media"]


def test_gcs_endpoint_from_storage_emulator_host(
    gcs: FakeGcsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    gcs.put("bucket", "tiny.yaml", TINY.read_bytes())
    monkeypatch.setenv(STORAGE_EMULATOR_VARIABLE, gcs.endpoint.removeprefix("http://"))
    assert load_template("gs://bucket/tiny.yaml") == tiny_spec()


def test_gcs_template_through_the_launcher(vertex: FakeVertexServer, gcs: FakeGcsServer) -> None:
    gcs.put("acme-templates", "tiny.yaml", TINY.read_bytes())
    launcher = VertexLauncher(
        PROJECT, LOCATION, endpoint=vertex.endpoint, storage_endpoint=gcs.endpoint
    )

    launcher.submit(make_request(template="gs://acme-templates/tiny.yaml"))

    assert vertex.create_requests[0].body["pipelineSpec"] == without_caching(tiny_spec())


def test_gcs_missing_object_is_a_template_error(
    vertex: FakeVertexServer, gcs: FakeGcsServer
) -> None:
    with pytest.raises(TemplateError, match="404"):
        load_template("gs://acme-templates/absent.yaml", storage_endpoint=gcs.endpoint)
    launcher = VertexLauncher(
        PROJECT, LOCATION, endpoint=vertex.endpoint, storage_endpoint=gcs.endpoint
    )
    with pytest.raises(LaunchRejectedError, match="No such object"):
        launcher.submit(make_request(template="gs://acme-templates/absent.yaml"))


def test_gcs_unavailable_is_transient_and_not_cached(gcs: FakeGcsServer) -> None:
    gcs.put("bucket", "tiny.yaml", TINY.read_bytes())
    gcs.fail_next(1, 503, op="get")
    with pytest.raises(TransientError):
        load_template("gs://bucket/tiny.yaml", storage_endpoint=gcs.endpoint)
    assert load_template("gs://bucket/tiny.yaml", storage_endpoint=gcs.endpoint) == tiny_spec()


def test_gcs_unreachable_is_transient() -> None:
    with pytest.raises(TransientError):
        load_template("gs://bucket/tiny.yaml", storage_endpoint=f"http://127.0.0.1:{closed_port()}")


# --- templates: Artifact Registry --------------------------------------------------------------


class _ToLocal(HTTPAdapter):  # type: ignore[misc,unused-ignore]
    """Sends https://…-kfp.pkg.dev requests to a local fake instead (same path and query)."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target

    def send(self, request: Any, **kwargs: Any) -> Any:
        parts = urlsplit(request.url)
        request.url = self.target + parts.path + (f"?{parts.query}" if parts.query else "")
        return super().send(request, **kwargs)


def test_artifact_registry_template_sets_template_uri(
    vertex: FakeVertexServer, gcs: FakeGcsServer, launcher: VertexLauncher
) -> None:
    gcs.put_path(urlsplit(AR_URL).path, TINY.read_bytes())
    session = requests.Session()
    session.mount("https://europe-west4-kfp.pkg.dev/", _ToLocal(gcs.endpoint))

    template = fetch_template(AR_URL, session=session)  # warms the per-process cache
    assert template.template_uri == AR_URL
    assert template.pipeline_spec == tiny_spec()
    assert [r.path for r in gcs.requests] == ["/acme-ml/pipelines/tiny-retrain/v3"]

    launcher.submit(make_request(template=AR_URL))  # served from the cache: no credentials

    body = vertex.create_requests[0].body
    assert body["templateUri"] == AR_URL
    assert body["pipelineSpec"] == without_caching(tiny_spec())
    assert len(gcs.requests) == 1


@pytest.mark.parametrize(
    "uri",
    [
        "https://example.com/pipeline.yaml",
        "http://europe-west4-kfp.pkg.dev/p/r/pkg/v1",
        "https://europe-west4-kfp.pkg.dev/p/r/pkg",
    ],
)
def test_other_urls_are_template_errors(uri: str) -> None:
    with pytest.raises(TemplateError, match="Artifact Registry"):
        load_template(uri)


# --- the fake as a separate process ------------------------------------------------------------


def test_fake_runs_as_a_script_and_records_creates(tmp_path: Path) -> None:
    record = tmp_path / "creates.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.vertex_server", "--port", "0", "--record", str(record)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        endpoint = json.loads(process.stdout.readline())["endpoint"]
        launcher = VertexLauncher(PROJECT, LOCATION, endpoint=endpoint)

        launcher.submit(make_request())
        launcher.submit(make_request())
        launcher.submit(make_request(run_id="another-run"))
        requests.post(
            f"{endpoint}/__fake__/state",
            json={"run_id": "another-run", "state": "SUCCEEDED"},
            timeout=5,
        )
        requests.post(f"{endpoint}/__fake__/fail_next", json={"n": 1, "status": 503}, timeout=5)
        with pytest.raises(TransientError):
            launcher.submit(make_request(run_id="third-run"))
        summary = requests.get(f"{endpoint}/__fake__/created", timeout=5).json()

        assert [line["run_id"] for line in read_record(record)] == [
            "fraud-detector-accuracy-floor-1a2b",
            "another-run",
        ]
        assert summary["created"] == ["another-run", "fraud-detector-accuracy-floor-1a2b"]
        assert summary["create_calls"] == 4
        assert launcher.get_status("another-run").state == "succeeded"
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0


def test_tiny_pipeline_fixture_matches_its_source(tmp_path: Path) -> None:
    from tests.fixtures.tiny_pipeline import compile_pipeline

    compiled = compile_pipeline(tmp_path / "tiny.yaml")
    assert yaml.safe_load(compiled.read_text(encoding="utf-8")) == tiny_spec(), (
        "recompile with `python -m tests.fixtures.tiny_pipeline`"
    )
