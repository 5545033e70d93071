"""The strict fake: requests are checked against Google's aiplatform v1 discovery document.

First the generic validator (tests/fakes/discovery.py), then the fake's 400 INVALID_ARGUMENT
answers over HTTP, then that every request our launcher and registry send is a valid one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from pipeline_client.launching.protocol import LaunchRequest
from pipeline_client.launching.vertex import VertexLauncher
from pipeline_client.promotion.registries import VertexModelRegistry
from tests.fakes import prebuilt
from tests.fakes.discovery import load_document, request_schema, validate_body, validate_query
from tests.fakes.vertex_server import _ROUTES, FakeGcsServer, FakeVertexServer, invalid_request
from triggers.errors import LaunchRejectedError

ROOT = Path(__file__).resolve().parents[1]
PROJECT, LOCATION = "acme-ml", "europe-west4"
PARENT = f"projects/{PROJECT}/locations/{LOCATION}"
JOB = "GoogleCloudAiplatformV1PipelineJob"
CREATE = "aiplatform.projects.locations.pipelineJobs.create"
# A create body as Google's REST reference documents PipelineJob (camelCase, proto3 JSON).
DOCUMENTED_JOB: dict[str, Any] = {
    "displayName": "retrain-7",
    "labels": {"model": "fraud-detector", "trigger-id": "t-0123abcd"},
    "pipelineSpec": {
        "pipelineInfo": {"name": "retrain"},
        "root": {"inputDefinitions": {"parameters": {
            "model": {"parameterType": "STRING"},
            "training_days": {"parameterType": "NUMBER_INTEGER"},
        }}},
        "schemaVersion": "2.1.0",
    },
    "runtimeConfig": {
        "gcsOutputDirectory": "gs://acme-ml-pipelines/root",
        "parameterValues": {"model": "fraud-detector", "training_days": 30},
        "failurePolicy": "PIPELINE_FAILURE_POLICY_FAIL_FAST",
    },
    "serviceAccount": "retrain@acme-ml.iam.gserviceaccount.com",
    "encryptionSpec": {"kmsKeyName": f"{PARENT}/keyRings/k/cryptoKeys/c"},
    "pscInterfaceConfig": {
        "networkAttachment": "projects/acme-ml/regions/europe-west4/networkAttachments/a"
    },
    "reservedIpRanges": ["vertex-ai-range"],
}

pytestmark = pytest.mark.usefixtures("fresh_template_cache")


@pytest.fixture()
def vertex() -> Iterator[FakeVertexServer]:
    with FakeVertexServer() as server, FakeGcsServer() as storage:
        # Uploads under the prebuilt scikit-learn image need a model.joblib in the directory.
        prebuilt.serve_artifacts_from(server, storage)
        for version in ("1", "2"):
            storage.put("acme-models", f"fraud/{version}/model.joblib", b"model")
        yield server
        prebuilt.serve_artifacts_from(server, None)


# --- the validator -----------------------------------------------------------------------------


def test_a_documented_request_passes() -> None:
    assert validate_body("aiplatform.v1", JOB, DOCUMENTED_JOB) == []
    assert request_schema("aiplatform.v1", CREATE) == JOB


def test_a_request_serialized_by_the_official_types_passes() -> None:
    from google.cloud.aiplatform_v1 import PipelineJob

    job = PipelineJob(
        display_name="retrain-7",
        labels={"model": "fraud-detector"},
        pipeline_spec={"root": {"dag": {"tasks": {}}}},
        runtime_config=PipelineJob.RuntimeConfig(
            gcs_output_directory="gs://b/root", parameter_values={"seed": 3},
            failure_policy="PIPELINE_FAILURE_POLICY_FAIL_SLOW",
        ),
        state="PIPELINE_STATE_RUNNING",
    )
    # GAPIC's REST transport writes enums as numbers; parsers take names too
    body = PipelineJob.to_dict(job, use_integers_for_enums=True)
    assert body["state"] == 3
    assert validate_body("aiplatform.v1", JOB, body) == []
    assert validate_body("aiplatform.v1", JOB, PipelineJob.to_dict(job)) == []


def test_an_unknown_field_is_caught_at_any_depth() -> None:
    body = {**DOCUMENTED_JOB, "runtimeConfig": {**DOCUMENTED_JOB["runtimeConfig"],
                                                "enableCaching": False}}
    assert validate_body("aiplatform.v1", JOB, body) == [
        "runtimeConfig.enableCaching: unknown field 'enableCaching'"
    ]
    assert validate_body("aiplatform.v1", JOB, {"encryptionSpec": {"kmsKey": "k"}}) == [
        "encryptionSpec.kmsKey: unknown field 'kmsKey'"
    ]
    # pipelineSpec is a Struct (type "any"): anything goes inside it
    struct = {"pipelineSpec": {"whatever": [1, {"x": None}]}}
    assert validate_body("aiplatform.v1", JOB, struct) == []
    # proto3 JSON parsers accept a field's own proto name too
    assert validate_body("aiplatform.v1", JOB, {"display_name": "x"}) == []


def test_a_wrong_enum_value_is_caught() -> None:
    body = {"runtimeConfig": {"failurePolicy": "FAIL_FAST"}}
    [problem] = validate_body("aiplatform.v1", JOB, body)
    assert problem.startswith("runtimeConfig.failurePolicy: 'FAIL_FAST' is not one of ")
    assert validate_body("aiplatform.v1", JOB, {"state": 99}) == [
        "state: 99 is not a value of the enum"
    ]


def test_json_types_follow_proto3_json() -> None:
    task = "GoogleCloudAiplatformV1PipelineTaskDetail"
    assert validate_body("aiplatform.v1", task, {"taskId": "123", "parentTaskId": 7}) == []
    assert validate_body("aiplatform.v1", task, {"taskId": "12x"}) == [
        "taskId: expected an integer (int64), got the string '12x'"
    ]
    assert validate_body("aiplatform.v1", task, {"createTime": "2026-11-02T00:00:00Z"}) == []
    assert validate_body("aiplatform.v1", task, {"createTime": "yesterday"}) == [
        "createTime: 'yesterday' is not an RFC 3339 timestamp"
    ]
    assert validate_body("aiplatform.v1", JOB, {"displayName": 3}) == [
        "displayName: expected a string, got the number 3"
    ]
    assert validate_body("aiplatform.v1", JOB, {"labels": {"model": 1}}) == [
        "labels.model: expected a string, got the number 1"
    ]
    assert validate_body("aiplatform.v1", JOB, {"reservedIpRanges": "r"}) == [
        "reservedIpRanges: expected an array, got the string 'r'"
    ]
    assert validate_body("aiplatform.v1", JOB, []) == ["(body): expected an object, got an array"]


def test_query_parameters_are_checked() -> None:
    assert validate_query("aiplatform.v1", CREATE, {"pipelineJobId": "x",
                                                    "$alt": "json;enum-encoding=int"}) == []
    assert validate_query("aiplatform.v1", CREATE, {"jobId": "x"}) == [
        "jobId: unknown query parameter"
    ]
    listing = "aiplatform.projects.locations.models.list"
    assert validate_query("aiplatform.v1", listing, {"pageSize": "ten"}) == [
        "pageSize: 'ten' is not an integer"
    ]


def test_any_bundled_document_can_be_named() -> None:
    assert validate_body("pubsub.v1", "PubsubMessage", {"data": "aGk=", "attrs": {}}) == [
        "attrs: unknown field 'attrs'"
    ]
    with pytest.raises(FileNotFoundError):
        load_document("nosuchapi.v9")


# --- the fake answers 400 INVALID_ARGUMENT as the real API does --------------------------------


def post_job(vertex: FakeVertexServer, body: Any, job_id: str = "retrain-7") -> requests.Response:
    return requests.post(f"{vertex.endpoint}/v1/{PARENT}/pipelineJobs",
                         params={"pipelineJobId": job_id}, json=body, timeout=10)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"runtimeConfig": {"gcsOutputDirectory": "gs://b/r", "enableCaching": False}},
         "runtimeConfig.enableCaching"),
        ({"displayName": ["retrain"]}, "displayName"),
        ({"runtimeConfig": {"gcsOutputDirectory": "gs://b/r", "failurePolicy": "ALWAYS"}},
         "runtimeConfig.failurePolicy"),
        ({"labels": {"Model": "fraud"}}, "labels.Model"),
        ({"labels": {"model": "Fraud"}}, "labels.model"),
        ({"labels": {"1model": "fraud"}}, "labels.1model"),
        ({"labels": {"model": "f" * 64}}, "labels.model"),
        ({"labels": {"model": "fraud.detector"}}, "labels.model"),
        ({"labels": {f"k{i}": "v" for i in range(65)}}, "labels"),
    ],
)
def test_an_invalid_create_gets_invalid_argument(
    vertex: FakeVertexServer, change: dict[str, Any], field: str
) -> None:
    response = post_job(vertex, {**DOCUMENTED_JOB, **change})

    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["status"]) == (400, "INVALID_ARGUMENT")
    [detail] = error["details"]
    assert detail["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    assert field in [v["field"] for v in detail["fieldViolations"]]
    assert vertex.created == {}


@pytest.mark.parametrize("job_id", ["Retrain-7", "7-retrain", "retrain_7", "r" * 129, "retrain.7"])
def test_an_invalid_pipeline_job_id_gets_invalid_argument(
    vertex: FakeVertexServer, job_id: str
) -> None:
    response = post_job(vertex, DOCUMENTED_JOB, job_id)
    assert response.status_code == 400
    assert response.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert post_job(vertex, DOCUMENTED_JOB, "r" + "-7" * 63).status_code == 200  # 127 chars


def test_the_valid_limits_are_accepted(vertex: FakeVertexServer) -> None:
    labels = {f"k{i}": "" for i in range(63)} | {"k" * 63: "v" * 63}
    response = post_job(vertex, {**DOCUMENTED_JOB, "labels": labels})
    assert response.status_code == 200, response.text


def test_invalid_model_service_requests_get_invalid_argument(vertex: FakeVertexServer) -> None:
    upload = requests.post(
        f"{vertex.endpoint}/v1/{PARENT}/models:upload",
        json={"model": {"displayName": "m", "containerSpec": {"imageUri": "i"},
                        "versionAlias": ["champion"]}},
        timeout=10,
    )
    assert upload.status_code == 400
    assert upload.json()["error"]["details"][0]["fieldViolations"][0]["field"] == (
        "model.versionAlias")
    merge = requests.post(f"{vertex.endpoint}/v1/{PARENT}/models/m@1:mergeVersionAliases",
                          json={"versionAliases": "champion"}, timeout=10)
    assert merge.status_code == 400
    listing = requests.get(f"{vertex.endpoint}/v1/{PARENT}/models", params={"limit": "5"},
                           timeout=10)
    assert listing.status_code == 400
    assert listing.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_the_launcher_hears_invalid_argument_as_a_rejection(vertex: FakeVertexServer) -> None:
    launcher = VertexLauncher(PROJECT, LOCATION, endpoint=vertex.endpoint)
    request = LaunchRequest(
        run_id="fraud-detector-manual-1a2b", model="fraud-detector", policy="manual",
        trigger_id="t-1", template=str(ROOT / "tests" / "fixtures" / "tiny_pipeline.yaml"),
        parameters={"model": "fraud-detector", "trigger_id": "t-1", "reason": "r",
                    "champion_version": ""},
        labels={"model": "Fraud-Detector"}, pipeline_root="gs://b/root",
    )
    with pytest.raises(LaunchRejectedError, match="INVALID_ARGUMENT.*labels.model"):
        launcher.submit(request)


# --- everything we send is valid ---------------------------------------------------------------


def test_every_request_our_launcher_and_registry_send_is_valid(vertex: FakeVertexServer) -> None:
    launcher = VertexLauncher(PROJECT, LOCATION, endpoint=vertex.endpoint)
    request = LaunchRequest(
        run_id="fraud-detector-accuracy-floor-1a2b", model="fraud-detector",
        policy="accuracy-floor", trigger_id="t-0123abcd",
        template=str(ROOT / "pipelines" / "retrain.yaml"),
        parameters={"model": "fraud-detector", "trigger_id": "t-0123abcd", "reason": "floor",
                    "champion_version": "7", "training_days": 30, "promotion": "{}"},
        labels={"model": "fraud-detector", "policy": "accuracy-floor",
                "trigger-id": "t-0123abcd"},
        service_account="retrain@acme-ml.iam.gserviceaccount.com",
        pipeline_root="gs://acme-ml-pipelines/root",
        network="projects/123456/global/networks/ml-vpc",
        kms_key_name="projects/acme-ml/locations/europe-west4/keyRings/ml/cryptoKeys/p",
    )
    launcher.submit(request)
    launcher.submit(request)  # already exists
    vertex.set_state(request.run_id, "SUCCEEDED")
    assert launcher.get_status(request.run_id).state == "succeeded"
    assert launcher.get_status("no-such-run").state == "unknown"

    registry = VertexModelRegistry(PROJECT, LOCATION, endpoint=vertex.endpoint)
    first = registry.register("fraud-detector", "gs://acme-models/fraud/1", {"accuracy": 0.9},
                              {"trigger_id": "t-0123abcd", "gate": "first champion"})
    second = registry.register("fraud-detector", "gs://acme-models/fraud/2", {"accuracy": 0.93})
    registry.promote("fraud-detector", first.version)
    registry.promote("fraud-detector", second.version, expected_champion=first.version)
    registry.versions("fraud-detector")
    registry.previous("fraud-detector")
    registry.get("fraud-detector", "1")
    registry.rollback("fraud-detector")

    called = set()
    for recorded in vertex.requests:
        assert invalid_request(recorded) == [], (recorded.method, recorded.path, recorded.body)
        called |= {m for verb, path, m in _ROUTES
                   if recorded.method == verb and path.match(recorded.path)}
    sent_by_us = {m.rsplit(".", 2)[-2] + "." + m.rsplit(".", 1)[-1] for m in called}
    assert {"pipelineJobs.create", "pipelineJobs.get", "models.upload",
            "models.mergeVersionAliases", "operations.get", "models.get",
            "models.list"} <= sent_by_us
