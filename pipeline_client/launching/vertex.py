"""Vertex AI Pipelines launcher: creates PipelineJobs with the low-level GAPIC client (REST).

The SDK (`google.cloud.aiplatform_v1`, ~1 s and ~100 MiB) is imported on first use, never here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pipeline_client.errors import LaunchRejectedError, TransientError
from pipeline_client.google_api import LazyRestClient, classify, vertex_endpoint
from pipeline_client.launching.protocol import LaunchRequest, LaunchResult, RunState, RunStatus
from pipeline_client.launching.templates import (
    PLACEHOLDER_IMAGE,
    PipelineTemplate,
    TemplateError,
    fetch_template,
    placeholder_images,
    without_caching,
)

if TYPE_CHECKING:
    from google.cloud.aiplatform_v1 import PipelineJob, PipelineServiceClient

DEFAULT_TIMEOUT_SECONDS = 30.0
RUN_ID_PATTERN = re.compile(r"[a-z][a-z0-9-]{0,127}")

_STATES: dict[str, RunState] = {
    "PIPELINE_STATE_QUEUED": "pending",
    "PIPELINE_STATE_PENDING": "pending",
    "PIPELINE_STATE_RUNNING": "running",
    "PIPELINE_STATE_CANCELLING": "running",
    "PIPELINE_STATE_PAUSED": "running",
    "PIPELINE_STATE_SUCCEEDED": "succeeded",
    "PIPELINE_STATE_FAILED": "failed",
    "PIPELINE_STATE_CANCELLED": "cancelled",
}



class VertexLauncher:
    """Submits runs to Vertex AI Pipelines under the run id; "already exists" is success.

    `endpoint` overrides `{location}-aiplatform.googleapis.com`; an `http://` endpoint means
    anonymous credentials (local fakes only). `client` replaces the PipelineServiceClient.
    Every call uses the REST transport with a bounded `timeout` and no client-side retries:
    a `TransientError` goes back to Pub/Sub, whose redelivery re-submits the same run id.
    """

    name = "vertex"

    def __init__(
        self,
        project: str,
        location: str,
        endpoint: str | None = None,
        client: Any = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        storage_endpoint: str | None = None,
    ) -> None:
        if not project or not location:
            raise ValueError("VertexLauncher needs a project and a location")
        self.project = project
        self.location = location
        self.parent = f"projects/{project}/locations/{location}"
        self.endpoint = vertex_endpoint(location, endpoint)
        self.timeout = timeout
        self.storage_endpoint = storage_endpoint
        self._client = LazyRestClient("PipelineServiceClient", self.endpoint, client=client)

    def job_name(self, run_id: str) -> str:
        """The PipelineJob resource name of a run."""
        return f"{self.parent}/pipelineJobs/{run_id}"

    def submit(self, request: LaunchRequest) -> LaunchResult:
        run_id = request.run_id
        if not RUN_ID_PATTERN.fullmatch(run_id):
            raise LaunchRejectedError(run_id, "run id is not a valid PipelineJob id")
        try:
            template = fetch_template(request.template, storage_endpoint=self.storage_endpoint)
        except TemplateError as exc:
            raise LaunchRejectedError(run_id, str(exc)) from exc
        job = self.build_pipeline_job(request, template)
        try:
            created = self._get_client().create_pipeline_job(
                parent=self.parent,
                pipeline_job=job,
                pipeline_job_id=run_id,
                retry=None,
                timeout=self.timeout,
            )
        except Exception as exc:
            kind, detail = classify(exc)
            if kind == "already_exists":
                return LaunchResult(run_id, self.job_name(run_id), already_existed=True)
            if kind == "transient":
                raise TransientError(f"run {run_id}: Vertex AI unavailable: {detail}") from exc
            if kind in ("permanent", "not_found"):
                raise LaunchRejectedError(run_id, f"Vertex AI refused the job: {detail}") from exc
            raise
        return LaunchResult(run_id, created.name or self.job_name(run_id), already_existed=False)

    def get_status(self, run_id: str) -> RunStatus:
        """The run's state; `unknown` (why: `message`) when Vertex has no such job or won't say."""
        try:
            job = self._get_client().get_pipeline_job(
                name=self.job_name(run_id), retry=None, timeout=self.timeout
            )
        except Exception as exc:
            kind, detail = classify(exc)
            if kind == "transient":
                raise TransientError(f"run {run_id}: Vertex AI unavailable: {detail}") from exc
            if kind in ("not_found", "permanent", "already_exists"):
                return RunStatus("unknown", message=detail)
            raise
        state_name = getattr(job.state, "name", str(job.state))
        message = job.error.message if job.error and job.error.message else state_name
        return RunStatus(_STATES.get(state_name, "unknown"), message=message)

    def build_pipeline_job(self, request: LaunchRequest, template: PipelineTemplate) -> PipelineJob:
        """The PipelineJob message for a request (no network; raises LaunchRejectedError)."""
        from google.cloud.aiplatform_v1 import EncryptionSpec, PipelineJob

        run_id = request.run_id
        pipeline_root = (
            request.pipeline_root
            or template.runtime_config.get("gcsOutputDirectory")
            or template.default_pipeline_root
        )
        if not pipeline_root:
            raise LaunchRejectedError(
                run_id,
                "no pipeline root: set pipeline.pipeline_root in the policy file "
                "(or compile the pipeline with a default pipeline_root)",
            )
        job = PipelineJob(
            display_name=run_id,
            labels=dict(request.labels),
            pipeline_spec=(
                template.pipeline_spec
                if request.enable_caching
                else without_caching(template.pipeline_spec)
            ),
            runtime_config=PipelineJob.RuntimeConfig(
                gcs_output_directory=pipeline_root,
                parameter_values=_parameter_values(request, template),
            ),
        )
        if request.service_account:
            job.service_account = request.service_account
        if request.network:
            job.network = request.network
        if request.kms_key_name:
            job.encryption_spec = EncryptionSpec(kms_key_name=request.kms_key_name)
        if template.template_uri:
            job.template_uri = template.template_uri
        return job

    def _get_client(self) -> PipelineServiceClient:
        client: PipelineServiceClient = self._client.get()
        return client


def placeholder_problem(template: PipelineTemplate) -> str | None:
    """Why Vertex AI cannot run `template` (steps compiled on the placeholder image), or None."""
    executors = placeholder_images(template.pipeline_spec)
    if not executors:
        return None
    return (
        f"pipeline {template.name!r} was compiled with the placeholder image "
        f"{PLACEHOLDER_IMAGE} (executors {', '.join(executors)}), which holds none of the "
        "steps' packages; build pipelines/Dockerfile and compile with "
        "RETRAIN_PIPELINE_IMAGE=<image> python -m pipelines.retrain"
    )


def _parameter_values(request: LaunchRequest, template: PipelineTemplate) -> dict[str, Any]:
    """Template defaults from a job spec, then the request's values; None means "use default"."""
    values: dict[str, Any] = dict(template.runtime_config.get("parameterValues") or {})
    values.update(request.parameters)
    values = {name: value for name, value in values.items() if value is not None}
    declared = template.input_parameters
    unknown = sorted(set(values) - set(declared))
    if unknown:
        raise LaunchRejectedError(
            request.run_id,
            f"parameters {unknown} are not inputs of pipeline {template.name!r} "
            f"(inputs: {sorted(declared)})",
        )
    missing = sorted(template.required_parameters - set(values))
    if missing:
        raise LaunchRejectedError(
            request.run_id, f"pipeline {template.name!r} needs parameters {missing}"
        )
    for name, value in values.items():
        _check_json_value(value, name, request.run_id)
    return values


def _check_json_value(value: Any, path: str, run_id: str) -> None:
    """Only what a protobuf Value holds: str, finite number, bool, None, list, str-keyed dict."""
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise LaunchRejectedError(run_id, f"parameter {path} is not a finite number")
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_json_value(item, f"{path}[{index}]", run_id)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise LaunchRejectedError(run_id, f"parameter {path} has a non-string key {key!r}")
            _check_json_value(item, f"{path}.{key}", run_id)
        return
    raise LaunchRejectedError(
        run_id, f"parameter {path} has unsupported type {type(value).__name__}"
    )
