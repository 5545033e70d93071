"""Vertex AI Model Registry: one Vertex parent model per model name, versions uploaded under it,
aliases moved with merge_version_aliases (`vertex://projects/P/locations/L`).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline_client.google_api import LazyRestClient, vertex_endpoint
from pipeline_client.promotion.registries.protocol import (
    CHAMPION,
    PREVIOUS,
    VERSION_ID,
    InvalidRegistrationError,
    ModelVersion,
    NoPreviousVersionError,
    RegistryError,
    RegistryUnavailableError,
    VersionNotFoundError,
    check_expected,
    valid_metadata,
    valid_metrics,
    validate_model_name,
)

if TYPE_CHECKING:
    from google.cloud.aiplatform_v1 import Model, ModelServiceClient

DEFAULT_TIMEOUT_SECONDS = 30.0
UPLOAD_TIMEOUT_SECONDS = 600.0
MANAGED_BY_LABEL = ("managed-by", "retrain-trigger")
VERTEX_ENDPOINT_VARIABLE = "RETRAIN_VERTEX_ENDPOINT"
_VERTEX_MODEL_ID = re.compile(r"[a-z_][a-z0-9_-]{0,62}")
_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")

# The scikit-learn release the reference pipeline pins (requirements-pipeline.txt) and the
# prebuilt serving container of that major.minor. Google's "Prebuilt containers for inference"
# list names one container per release, `sklearn-cpu.MAJOR-MINOR` (scikit-learn 1.6 ->
# sklearn-cpu.1-6), and "Export model artifacts for inference" asks for the version the model
# was trained with; a pickle from another release may not load in the container. Each image
# sits in the us, europe and asia Artifact Registry mirrors. The container loads the one
# model.joblib or model.pkl of the version's artifact directory.
SKLEARN_SERVING_VERSION = "1.6"


def default_serving_image(location: str) -> str:
    """Vertex's prebuilt scikit-learn CPU serving container for SKLEARN_SERVING_VERSION, from
    the location's nearest mirror."""
    region = location.split("-")[0]
    mirror = region if region in ("europe", "asia") else "us"
    tag = SKLEARN_SERVING_VERSION.replace(".", "-")
    return f"{mirror}-docker.pkg.dev/vertex-ai/prediction/sklearn-cpu.{tag}:latest"


def vertex_model_id(model: str) -> str:
    """The Vertex model ID a model name maps to (a valid ID, stable across processes).

    A name that is already a valid ID (`[a-z_][a-z0-9_-]{0,62}`) is used as it is; any other
    name becomes a lower-case slug plus 8 hex digits of its SHA-256, so distinct names stay
    distinct (`Fraud.Detector` -> `fraud-detector-1c0ffee5`).
    """
    import hashlib

    validate_model_name(model)
    if _VERTEX_MODEL_ID.fullmatch(model):
        return model
    slug = re.sub(r"[^a-z0-9_-]+", "-", model.lower()).strip("-")[:50]
    if not slug or not re.match(r"[a-z_]", slug):
        slug = "m-" + slug if slug else "m"
    return f"{slug}-{hashlib.sha256(model.encode('utf-8')).hexdigest()[:8]}"


class VertexModelRegistry:
    """Vertex AI Model Registry through `aiplatform_v1.ModelServiceClient` (REST).

    A model name maps to one Vertex parent model: `projects/P/locations/L/models/<model_id>`
    with `vertex_model_id(name)`, created (display name = the model name) by the first
    `register`; failing that ID, an existing model whose display name equals the name (one made
    by another tool) is adopted. Each `register` uploads a new version under it (`upload_model`
    with `parent_model`, waiting for the long-running operation); Vertex numbers versions 1, 2,
    3. Metrics and metadata travel as JSON in `versionDescription`; metadata entries that are
    valid labels also become labels, beside `managed-by=retrain-trigger`.

    Aliases move with `merge_version_aliases`, which Vertex applies atomically to one version and
    which takes an alias off whichever version held it, so an alias names at most one version.
    Moving two aliases takes two calls; their order makes a crash between them harmless:

    - promote: first `previous` onto the old champion, then `champion` onto the new version. In
      between, the old champion holds both: still exactly one champion, and calling promote
      again finishes the move. `previous()` answers None while `previous` sits on the champion.
    - rollback: first `champion` onto the previous version, then `previous` onto the demoted
      one. In between, the rollback has taken effect (one champion) and only `previous` lags.

    `endpoint` overrides `{location}-aiplatform.googleapis.com`; an `http://` endpoint means
    anonymous credentials (local fakes only). Calls use a bounded `timeout` and no client-side
    retries; transient failures raise `RegistryUnavailableError` (a `TransientError`).
    `register` is not idempotent: retrying one whose answer was lost may add an extra version,
    which no alias points to.
    """

    name = "vertex"

    def __init__(
        self,
        project: str,
        location: str,
        endpoint: str | None = None,
        credentials: Any = None,
        *,
        serving_image: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        upload_timeout: float = UPLOAD_TIMEOUT_SECONDS,
        client: Any = None,
    ) -> None:
        if not project or not location:
            raise ValueError("VertexModelRegistry needs a project and a location")
        self.project = project
        self.location = location
        self.parent = f"projects/{project}/locations/{location}"
        self.endpoint = vertex_endpoint(location, endpoint)
        self.credentials = credentials
        self.serving_image = serving_image or default_serving_image(location)
        self.timeout = timeout
        self.upload_timeout = upload_timeout
        self._client = LazyRestClient("ModelServiceClient", self.endpoint, credentials, client)
        self._resolved: dict[str, str] = {}
        self._lock = threading.Lock()

    def model_resource_name(self, model: str) -> str:
        """The parent model this registry creates for `model` (see `vertex_model_id`)."""
        return f"{self.parent}/models/{vertex_model_id(model)}"

    # -- reading --

    def get(self, model: str, version: str) -> ModelVersion | None:
        resource = self._resolve(model)
        if resource is None or not VERSION_ID.fullmatch(version):
            return None
        found = self._call(model, version, "get_model", name=f"{resource}@{version}")
        return None if found is None else self._to_version(model, found)

    def champion(self, model: str) -> ModelVersion | None:
        return self._by_alias(model, CHAMPION)

    def previous(self, model: str) -> ModelVersion | None:
        found = self._by_alias(model, PREVIOUS)
        if found is not None and found.is_champion:
            return None  # a promote stopped between its two alias moves: no distinct previous
        return found

    def versions(self, model: str) -> list[ModelVersion]:
        from google.cloud.aiplatform_v1 import ListModelVersionsRequest

        resource = self._resolve(model)
        if resource is None:
            return []
        request = ListModelVersionsRequest(name=resource)
        found = self._call(model, None, "list_model_versions", materialize=True, request=request)
        versions = [self._to_version(model, item) for item in found or []]
        return sorted(versions, key=lambda v: (len(v.version), v.version))

    # -- writing --

    def register(
        self,
        model: str,
        artifact: str | Path,
        metrics: Mapping[str, float],
        metadata: Mapping[str, str] | None = None,
    ) -> ModelVersion:
        from google.cloud.aiplatform_v1 import Model, ModelContainerSpec

        validate_model_name(model)
        artifact_uri = str(artifact)
        if artifact_uri.startswith("/gcs/"):  # a step's view of gs:// through Cloud Storage FUSE
            artifact_uri = "gs://" + artifact_uri[len("/gcs/"):]
            artifact = artifact_uri
        if isinstance(artifact, Path) or not artifact_uri.startswith("gs://"):
            raise InvalidRegistrationError(
                model, f"Vertex AI needs a gs:// artifact URI, got {artifact_uri!r}"
            )
        checked_metrics = valid_metrics(model, metrics)
        checked_metadata = valid_metadata(model, metadata)
        description = json.dumps(
            {"metrics": checked_metrics, "metadata": checked_metadata}, sort_keys=True
        )
        labels = dict([MANAGED_BY_LABEL, ("retrain-model", vertex_model_id(model))])
        for key, value in checked_metadata.items():
            if _LABEL_KEY.fullmatch(key) and _LABEL_VALUE.fullmatch(value):
                labels.setdefault(key, value)
        body = Model(
            display_name=model,
            artifact_uri=artifact_uri,
            container_spec=ModelContainerSpec(image_uri=self.serving_image),
            labels=labels,
            version_description=description,
        )
        uploaded = self._upload(model, body, self._resolve(model))
        with self._lock:
            self._resolved[model] = uploaded.model
        version_id = uploaded.model_version_id
        found = self._call(model, version_id, "get_model", name=f"{uploaded.model}@{version_id}")
        if found is None:
            raise RegistryError(model, "the uploaded version is not readable", version_id)
        return self._to_version(model, found)

    def promote(
        self, model: str, version: str, expected_champion: str | None = None
    ) -> ModelVersion:
        """Moves the aliases (see the class docstring). Vertex has no compare-and-set on
        aliases: `expected_champion` is checked on a read just before the first move."""
        target = self.get(model, version)
        if target is None:
            raise VersionNotFoundError(model, "no such version to promote", version)
        if target.is_champion:
            return target
        current = self.champion(model)
        check_expected(model, version, current.version if current else None,
                        expected_champion)
        if current is not None:
            self._merge(model, current.version, [PREVIOUS])  # first: see the class docstring
            moves = [CHAMPION]
        else:
            moves = [CHAMPION] + ([f"-{PREVIOUS}"] if PREVIOUS in target.aliases else [])
        return self._to_version(model, self._merge(model, version, moves))

    def rollback(self, model: str) -> ModelVersion:
        current = self.champion(model)
        if current is None:
            raise NoPreviousVersionError(model, "there is no champion to roll back")
        previous = self.previous(model)
        if previous is None:
            raise NoPreviousVersionError(
                model, f"champion {current.version} has no previous version to roll back to"
            )
        restored = self._merge(model, previous.version, [CHAMPION])  # first: see class docstring
        self._merge(model, current.version, [PREVIOUS])
        champion = self._to_version(model, restored)
        return replace(champion, aliases=tuple(a for a in champion.aliases if a != PREVIOUS))

    # -- internals --

    def _resolve(self, model: str) -> str | None:
        """The parent model's resource name, or None when the model has no version yet."""
        from google.cloud.aiplatform_v1 import ListModelsRequest

        validate_model_name(model)
        with self._lock:
            cached = self._resolved.get(model)
        if cached is not None:
            return cached
        name = self.model_resource_name(model)
        if self._call(model, None, "get_model", name=name) is None:
            quoted = model.replace("\\", "\\\\").replace('"', '\\"')
            request = ListModelsRequest(parent=self.parent, filter=f'display_name="{quoted}"')
            listed = self._call(model, None, "list_models", materialize=True, request=request)
            names = sorted({item.name for item in listed or []})
            if len(names) > 1:
                raise RegistryError(
                    model, f"{len(names)} Vertex models have this display name: {names}"
                )
            if not names:
                return None
            name = names[0]
        with self._lock:
            self._resolved[model] = name
        return name

    def _upload(self, model: str, body: Model, parent_model: str | None) -> Any:
        """Uploads `body` as a new version (a new model when `parent_model` is None)."""
        from google.cloud.aiplatform_v1 import UploadModelRequest

        from pipeline_client.google_api import classify

        if parent_model:
            request = UploadModelRequest(parent=self.parent, parent_model=parent_model, model=body)
        else:
            request = UploadModelRequest(
                parent=self.parent, model_id=vertex_model_id(model), model=body
            )
        try:
            operation: Any = self._get_client().upload_model(
                request=request, retry=None, timeout=self.timeout
            )
            return operation.result(timeout=self.upload_timeout)
        except Exception as exc:
            kind, detail = classify(exc)
            if kind == "already_exists" and not parent_model:
                # Another register created the model first: add this version under it.
                return self._upload(model, body, self.model_resource_name(model))
            if kind == "other":
                raise
            raise _registry_error(kind, detail, model, None) from exc

    def _merge(self, model: str, version: str, aliases: list[str]) -> Model:
        resource = self._resolve(model)
        merged: Model | None = None
        if resource is not None:
            merged = self._call(
                model,
                version,
                "merge_version_aliases",
                name=f"{resource}@{version}",
                version_aliases=aliases,
            )
        if merged is None:
            raise VersionNotFoundError(model, "no such version", version)
        return merged

    def _by_alias(self, model: str, alias: str) -> ModelVersion | None:
        resource = self._resolve(model)
        if resource is None:
            return None
        found = self._call(model, None, "get_model", name=f"{resource}@{alias}")
        return None if found is None else self._to_version(model, found)

    def _call(
        self, model: str, version: str | None, method: str, materialize: bool = False, **kwargs: Any
    ) -> Any:
        """One client call; None on NOT_FOUND; other failures as RegistryError subclasses."""
        from pipeline_client.google_api import classify

        try:
            result = getattr(self._get_client(), method)(**kwargs, retry=None, timeout=self.timeout)
            return list(result) if materialize else result  # a pager fetches pages here
        except Exception as exc:
            kind, detail = classify(exc)
            if kind == "not_found":
                return None
            if kind == "other":
                raise  # not an API failure: a bug, surfaced as it is
            raise _registry_error(kind, detail, model, version) from exc

    @staticmethod
    def _to_version(model: str, found: Model) -> ModelVersion:
        try:
            described = json.loads(found.version_description or "{}")
        except ValueError:
            described = {}
        if not isinstance(described, dict):
            described = {}
        created = found.version_create_time
        return ModelVersion(
            model=model,
            version=found.version_id,
            artifact_uri=found.artifact_uri,
            metrics={str(k): float(v) for k, v in (described.get("metrics") or {}).items()},
            created=created.timestamp() if created else 0.0,
            aliases=tuple(found.version_aliases),
            metadata={str(k): str(v) for k, v in (described.get("metadata") or {}).items()},
        )

    def _get_client(self) -> ModelServiceClient:
        client: ModelServiceClient = self._client.get()
        return client


def _registry_error(kind: str, detail: str, model: str, version: str | None) -> RegistryError:
    if kind == "transient":
        return RegistryUnavailableError(model, f"Vertex AI unavailable: {detail}", version)
    return RegistryError(model, f"Vertex AI refused: {detail}", version)
