"""The fake Model Registry's artifact rules for Vertex AI's prebuilt serving containers: an
upload naming a prebuilt image is refused unless its artifact directory holds that model file.

Rules (Google's "Export model artifacts for inference" and "Prebuilt containers for inference"
pages): scikit-learn serves `model.joblib` or `model.pkl`, XGBoost `model.bst`, `model.joblib`
or `model.pkl`, TensorFlow a SavedModel (`saved_model.pb`, or `saved_model.pbtxt`) — exactly
one of them directly in the directory. Vertex refuses the upload otherwise with 400
FAILED_PRECONDITION "Model directory gs://… is expected to contain exactly one of: [...]" (the
form users report from `Model.upload`). Other images (custom containers, PyTorch) are not
checked. The fake reads the directory from the FakeGcsServer given to `serve_artifacts_from`;
with none, every directory is empty, as a bucket the model was never written to.
"""

from __future__ import annotations

import re
import threading
import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.fakes.vertex_server import FakeGcsServer, FakeVertexServer

# REGION-docker.pkg.dev/vertex-ai[-restricted]/prediction/FRAMEWORK-{cpu,gpu}.VERSION[:tag]
PREBUILT_IMAGE = re.compile(
    r"^(?:us|europe|asia)-docker\.pkg\.dev/vertex-ai(?:-restricted)?/prediction/"
    r"(?P<framework>[a-z0-9]+)-(?:cpu|gpu)\.(?P<version>[0-9]+-[0-9]+)(?::[\w.-]+)?$"
)
# The model files each prebuilt framework loads, in the order Vertex's error message lists them.
MODEL_FILES: dict[str, tuple[str, ...]] = {
    "sklearn": ("model.pkl", "model.joblib"),
    "xgboost": ("model.bst", "model.pkl", "model.joblib"),
    "tf": ("saved_model.pb", "saved_model.pbtxt"),
    "tf2": ("saved_model.pb", "saved_model.pbtxt"),
}
_GCS_URI = re.compile(r"^gs://(?P<bucket>[^/]+)/?(?P<prefix>.*)$")

_storage: weakref.WeakKeyDictionary[FakeVertexServer, FakeGcsServer] = (
    weakref.WeakKeyDictionary()
)
_lock = threading.Lock()


def serve_artifacts_from(vertex: FakeVertexServer, storage: FakeGcsServer | None) -> None:
    """Makes `vertex` read uploaded artifact directories from `storage` (None: from nothing)."""
    with _lock:
        if storage is None:
            _storage.pop(vertex, None)
        else:
            _storage[vertex] = storage


def required_files(image_uri: str) -> tuple[str, ...] | None:
    """The model files a prebuilt image loads (one of them, exactly); None for other images."""
    match = PREBUILT_IMAGE.match(image_uri or "")
    return MODEL_FILES.get(match["framework"]) if match else None


def directory_files(storage: FakeGcsServer | None, artifact_uri: str) -> set[str]:
    """Names of the objects directly under `artifact_uri` (a gs:// directory) in `storage`."""
    match = _GCS_URI.match(artifact_uri or "")
    if storage is None or match is None:
        return set()
    prefix = match["prefix"].rstrip("/")
    prefix = f"{prefix}/" if prefix else ""
    objects = list(storage.objects)  # a snapshot of (bucket, name) keys
    return {
        name[len(prefix):]
        for bucket, name in objects
        if bucket == match["bucket"] and name.startswith(prefix) and "/" not in name[len(prefix):]
    }


def refusal(vertex: FakeVertexServer, model: dict[str, Any]) -> tuple[str, str] | None:
    """(google.rpc code, message) when Vertex would refuse uploading `model` (the REST Model
    JSON) for its prebuilt image's artifact rules; None when it would accept it."""
    needed = required_files(str((model.get("containerSpec") or {}).get("imageUri", "")))
    if needed is None:
        return None
    artifact_uri = str(model.get("artifactUri") or "")
    with _lock:
        storage = _storage.get(vertex)
    present = directory_files(storage, artifact_uri) & set(needed)
    if len(present) == 1:
        return None
    directory = artifact_uri.rstrip("/") or "(empty artifact_uri)"
    message = (f"Model directory {directory} is expected to contain exactly one of: "
               f"[{', '.join(needed)}]")
    return "FAILED_PRECONDITION", message
