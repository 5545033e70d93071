"""Loads compiled KFP pipeline specs from a local file, gs:// or Artifact Registry, for launchers.

Downloads use google-auth and requests only (no cloud SDK); loaded templates are cached per process.
"""

from __future__ import annotations

import copy
import json
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from pipeline_client.errors import RetrainError, TransientError
from pipeline_client.google_api import TRANSIENT_HTTP_STATUSES

if TYPE_CHECKING:
    import requests

DEFAULT_STORAGE_ENDPOINT = "https://storage.googleapis.com"
# The variable google-cloud-storage honours for emulators; honoured here too (e.g. end-to-end runs).
STORAGE_EMULATOR_VARIABLE = "STORAGE_EMULATOR_HOST"
DOWNLOAD_TIMEOUT_SECONDS = 30.0
MIN_SCHEMA_VERSION = (2, 1, 0)  # the first IR schema whose inputs are runtimeConfig.parameterValues
# The base image pipelines/components.py compiles with when RETRAIN_PIPELINE_IMAGE is unset:
# kfp.local ignores images, but on Vertex AI it lacks every package the steps import.
PLACEHOLDER_IMAGE = "python:3.11-slim"

_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
_GS_URI = re.compile(r"^gs://(?P<bucket>[^/]+)/(?P<object>.+)$")
# https://{region}-kfp.pkg.dev/{project}/{repository}/{package}/{tag or sha256:version}
_AR_URL = re.compile(r"^https://[\w-]+-kfp\.pkg\.dev/[^/]+/[^/]+/[^/]+/[^/]+$", re.IGNORECASE)

_cache: dict[tuple[Any, ...], PipelineTemplate] = {}
_cache_lock = threading.Lock()
_session: requests.Session | None = None
_session_lock = threading.Lock()


class TemplateError(RetrainError):
    """A pipeline template cannot be loaded or is not a compiled KFP pipeline (permanent)."""

    def __init__(self, uri: str, reason: str) -> None:
        self.uri = uri
        self.reason = reason
        super().__init__(f"template {uri}: {reason}")


@dataclass(frozen=True)
class PipelineTemplate:
    """A loaded template: the pipeline spec plus what a PipelineJob JSON file adds around it.

    Treat the dicts as read-only: the instance is shared through the per-process cache.
    """

    uri: str
    pipeline_spec: dict[str, Any]
    # `runtimeConfig` of a PipelineJob JSON file (camelCase, as written); {} for a bare spec.
    runtime_config: dict[str, Any] = field(default_factory=dict)
    # Set for Artifact Registry templates, as the official SDK sets PipelineJob.template_uri.
    template_uri: str | None = None

    @property
    def name(self) -> str:
        return str(self.pipeline_spec["pipelineInfo"]["name"])

    @property
    def input_parameters(self) -> dict[str, dict[str, Any]]:
        """The pipeline's declared input parameters (`root.inputDefinitions.parameters`)."""
        root = self.pipeline_spec.get("root") or {}
        params = (root.get("inputDefinitions") or {}).get("parameters") or {}
        return dict(params)

    @property
    def required_parameters(self) -> frozenset[str]:
        """Declared inputs without a default value."""
        return frozenset(
            name
            for name, spec in self.input_parameters.items()
            if not spec.get("isOptional") and "defaultValue" not in spec
        )

    @property
    def default_pipeline_root(self) -> str | None:
        """The pipeline root compiled into the spec, if any."""
        root = self.pipeline_spec.get("defaultPipelineRoot")
        return str(root) if root else None


def placeholder_images(spec: Mapping[str, Any]) -> list[str]:
    """The executors (`deploymentSpec.executors`, nested components' included) whose container
    still names `PLACEHOLDER_IMAGE`, sorted: such a spec runs under kfp.local only."""
    executors = ((spec.get("deploymentSpec") or {}).get("executors")) or {}
    return sorted(
        label
        for label, executor in executors.items()
        if isinstance(executor, Mapping)
        and ((executor.get("container") or {}).get("image") or "").strip() == PLACEHOLDER_IMAGE
    )


def without_caching(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `spec` with execution caching off on every task, as the Vertex AI SDK's
    `PipelineJob(enable_caching=False)` rewrites it: each task of the root DAG and of every
    component with a DAG (dsl.If / dsl.ParallelFor / nested pipelines) gets
    `cachingOptions: {enableCache: false}` (a compiled `cacheKey` goes too)."""
    copied = copy.deepcopy(dict(spec))
    dags = [copied.get("root") or {}]
    dags.extend((copied.get("components") or {}).values())
    for component in dags:
        if not isinstance(component, dict) or not isinstance(component.get("dag"), dict):
            continue
        for task in (component["dag"].get("tasks") or {}).values():
            if isinstance(task, dict):
                task["cachingOptions"] = {"enableCache": False}
    return copied


def fetch_template(
    uri: str,
    *,
    storage_endpoint: str | None = None,
    session: requests.Session | None = None,
) -> PipelineTemplate:
    """Loads (once per process) the template at `uri`: a local path, gs://... or an AR URL.

    `storage_endpoint` replaces https://storage.googleapis.com (default: $STORAGE_EMULATOR_HOST);
    an http:// endpoint is used without credentials, for local fakes. `session` replaces the
    authorized session for downloads. Raises `TemplateError` (permanent) or `TransientError`.
    Artifact Registry tags are cached too: a warm instance keeps the version it first loaded.
    """
    uri = uri.strip()
    if not uri:
        raise TemplateError(uri, "the template location is empty")
    if uri.startswith("gs://"):
        endpoint = _storage_endpoint(storage_endpoint)
        return _cached(("gs", uri, endpoint), lambda: _load_gcs(uri, endpoint, session))
    if uri.lower().startswith(("https://", "http://")):
        if not _AR_URL.match(uri):
            raise TemplateError(
                uri,
                "only Artifact Registry URLs (https://REGION-kfp.pkg.dev/PROJECT/REPO/PACKAGE/"
                "TAG_OR_VERSION) are supported over https",
            )
        return _cached(("ar", uri), lambda: _load_artifact_registry(uri, session))
    return _load_local(uri)


def load_template(
    uri: str,
    *,
    storage_endpoint: str | None = None,
    session: requests.Session | None = None,
) -> dict[str, Any]:
    """The compiled KFP pipeline spec at `uri` as a dict (a copy; see `fetch_template`)."""
    template = fetch_template(uri, storage_endpoint=storage_endpoint, session=session)
    return copy.deepcopy(template.pipeline_spec)


def clear_template_cache() -> None:
    """Forgets every loaded template (tests; a process that must pick up a moved tag)."""
    with _cache_lock:
        _cache.clear()


def parse_template(text: str, uri: str, template_uri: str | None = None) -> PipelineTemplate:
    """Parses a compiled pipeline: YAML (first document) or JSON, a spec or a PipelineJob spec."""
    document = _parse_document(text, uri)
    if not isinstance(document, Mapping):
        raise TemplateError(uri, f"expected a mapping at the top, got {type(document).__name__}")
    runtime_config: Any = {}
    spec: Any = document
    if "pipelineSpec" in document:  # a PipelineJob JSON file (as `kfp` v1.8 wrote them)
        spec = document["pipelineSpec"]
        runtime_config = document.get("runtimeConfig") or {}
        if not isinstance(runtime_config, Mapping):
            raise TemplateError(uri, "runtimeConfig is not a mapping")
    if not isinstance(spec, Mapping):
        raise TemplateError(uri, "pipelineSpec is not a mapping")
    info = spec.get("pipelineInfo")
    if (
        not isinstance(info, Mapping)
        or not info.get("name")
        or not isinstance(spec.get("root"), Mapping)
    ):
        raise TemplateError(
            uri, "not a compiled KFP pipeline spec (pipelineInfo.name and root are required)"
        )
    version = _schema_version(spec.get("schemaVersion"), uri)
    if version < MIN_SCHEMA_VERSION:
        raise TemplateError(
            uri,
            f"schemaVersion {spec.get('schemaVersion')} predates runtime parameterValues (2.1.0); "
            "recompile the pipeline with kfp 2",
        )
    return PipelineTemplate(uri, dict(spec), dict(runtime_config), template_uri)


def _parse_document(text: str, uri: str) -> Any:
    stripped = text.lstrip()
    if stripped.startswith("{"):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise TemplateError(uri, f"invalid JSON: {exc}") from exc
    import yaml  # lazily: the service imports this module at cold start

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        # A compiled YAML may carry a second document (the platform spec): the first is the IR.
        for document in yaml.load_all(text, Loader=loader):
            if document is not None:
                return document
    except yaml.YAMLError as exc:
        raise TemplateError(uri, f"invalid YAML: {exc}") from exc
    raise TemplateError(uri, "the file is empty")


def _schema_version(value: Any, uri: str) -> tuple[int, ...]:
    if not isinstance(value, str) or not re.fullmatch(r"\d+(\.\d+)*", value):
        raise TemplateError(uri, f"missing or invalid schemaVersion {value!r}")
    return tuple(int(part) for part in value.split("."))


def _cached(key: tuple[Any, ...], load: Any) -> PipelineTemplate:
    with _cache_lock:
        hit = _cache.get(key)
    if hit is not None:
        return hit
    template: PipelineTemplate = load()  # outside the lock: a slow download blocks no one else
    with _cache_lock:
        return _cache.setdefault(key, template)


def _load_local(uri: str) -> PipelineTemplate:
    path = Path(uri).expanduser()
    path = path if path.is_absolute() else Path.cwd() / path
    try:
        stat = path.stat()
    except FileNotFoundError as exc:
        raise TemplateError(uri, f"no such file: {path}") from exc
    except OSError as exc:
        raise TemplateError(uri, f"cannot read {path}: {exc}") from exc

    def load() -> PipelineTemplate:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TemplateError(uri, f"cannot read {path}: {exc}") from exc
        return parse_template(text, uri)

    # Keyed by modification time too, so an edited local file is picked up by a warm process.
    return _cached(("file", str(path.resolve()), stat.st_mtime_ns, stat.st_size), load)


def _storage_endpoint(override: str | None) -> str:
    endpoint = override or os.environ.get(STORAGE_EMULATOR_VARIABLE) or DEFAULT_STORAGE_ENDPOINT
    if "://" not in endpoint:  # STORAGE_EMULATOR_HOST may be written as host:port
        endpoint = "http://" + endpoint
    return endpoint.rstrip("/")


def _load_gcs(uri: str, endpoint: str, session: requests.Session | None) -> PipelineTemplate:
    match = _GS_URI.match(uri)
    if match is None:
        raise TemplateError(uri, "expected gs://BUCKET/OBJECT")
    url = (
        f"{endpoint}/storage/v1/b/{quote(match['bucket'], safe='')}"
        f"/o/{quote(match['object'], safe='')}?alt=media"
    )
    if session is None:
        session = _plain_session() if endpoint.startswith("http://") else _authorized_session(uri)
    return parse_template(_download(session, url, uri), uri)


def _load_artifact_registry(uri: str, session: requests.Session | None) -> PipelineTemplate:
    # As the official SDK does: GET the version URL with a bearer token; keep it as template_uri.
    text = _download(session or _authorized_session(uri), uri, uri)
    return parse_template(text, uri, template_uri=uri)


def _download(session: requests.Session, url: str, uri: str) -> str:
    import requests
    from google.auth import exceptions as auth_exceptions

    try:
        response = session.get(url, timeout=DOWNLOAD_TIMEOUT_SECONDS)
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise TransientError(f"template {uri}: download failed: {exc}") from exc
    except auth_exceptions.RefreshError as exc:
        if getattr(exc, "retryable", False):
            raise TransientError(f"template {uri}: credentials refresh failed: {exc}") from exc
        raise TemplateError(uri, f"credentials refresh failed: {exc}") from exc
    except auth_exceptions.TransportError as exc:
        raise TransientError(f"template {uri}: credentials refresh failed: {exc}") from exc
    if response.status_code == 200:
        response.encoding = response.encoding or "utf-8"
        return str(response.text)
    detail = _error_message(response)
    if response.status_code in TRANSIENT_HTTP_STATUSES:
        raise TransientError(f"template {uri}: HTTP {response.status_code}: {detail}")
    raise TemplateError(uri, f"download failed with HTTP {response.status_code}: {detail}")


def _error_message(response: requests.Response) -> str:
    try:
        payload = response.json()
        return str(payload["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return (response.text or response.reason or "").strip()[:300]


def _plain_session() -> requests.Session:
    import requests

    return requests.Session()


def _authorized_session(uri: str) -> requests.Session:
    """One AuthorizedSession (application default credentials) per process."""
    global _session
    with _session_lock:
        if _session is None:
            import google.auth
            from google.auth import exceptions as auth_exceptions
            from google.auth.transport.requests import AuthorizedSession

            try:
                credentials, _ = google.auth.default(scopes=list(_SCOPES))
            except auth_exceptions.DefaultCredentialsError as exc:
                raise TemplateError(uri, f"no Google credentials to download it: {exc}") from exc
            _session = AuthorizedSession(credentials)  # type: ignore[no-untyped-call,unused-ignore]
        return _session
