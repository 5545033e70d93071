"""Model registries: numbered versions of a model and the `champion`/`previous` aliases.

In memory (tests), on a local file system (crash-safe alias moves) or Vertex AI Model Registry;
`open_registry` picks one from a URI. The contract is in `protocol`, each registry in its module.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

from pipeline_client.promotion.registries.local import (
    ALIAS_STEPS,
    ALIASES_FILE,
    REGISTER_STEPS,
    VERSION_FILE,
    LocalModelRegistry,
)
from pipeline_client.promotion.registries.memory import InMemoryRegistry
from pipeline_client.promotion.registries.protocol import (
    CHAMPION,
    MAX_MODEL_NAME_LENGTH,
    PREVIOUS,
    ChampionChangedError,
    InvalidModelNameError,
    InvalidRegistrationError,
    ModelRegistry,
    ModelVersion,
    NoPreviousVersionError,
    RegistryError,
    RegistryUnavailableError,
    RegistryUriError,
    VersionNotFoundError,
    validate_model_name,
)
from pipeline_client.promotion.registries.vertex import (
    DEFAULT_TIMEOUT_SECONDS,
    MANAGED_BY_LABEL,
    SKLEARN_SERVING_VERSION,
    UPLOAD_TIMEOUT_SECONDS,
    VERTEX_ENDPOINT_VARIABLE,
    VertexModelRegistry,
    default_serving_image,
    vertex_model_id,
)

__all__ = [
    "ALIASES_FILE",
    "ALIAS_STEPS",
    "CHAMPION",
    "DEFAULT_TIMEOUT_SECONDS",
    "MANAGED_BY_LABEL",
    "MAX_MODEL_NAME_LENGTH",
    "PREVIOUS",
    "REGISTER_STEPS",
    "SKLEARN_SERVING_VERSION",
    "UPLOAD_TIMEOUT_SECONDS",
    "VERSION_FILE",
    "VERTEX_ENDPOINT_VARIABLE",
    "ChampionChangedError",
    "InMemoryRegistry",
    "InvalidModelNameError",
    "InvalidRegistrationError",
    "LocalModelRegistry",
    "ModelRegistry",
    "ModelVersion",
    "NoPreviousVersionError",
    "RegistryError",
    "RegistryUnavailableError",
    "RegistryUriError",
    "VersionNotFoundError",
    "VertexModelRegistry",
    "default_serving_image",
    "open_registry",
    "validate_model_name",
    "vertex_model_id",
]

_VERTEX_URI = re.compile(
    r"vertex://projects/(?P<project>[^/?#]+)/locations/(?P<location>[^/?#]+)/?"
)

# --- opening by URI ----------------------------------------------------------------------------


def open_registry(uri: str) -> ModelRegistry:
    """A registry from a URI.

    `memory://` (a new, empty InMemoryRegistry), `file:///abs/path` or a plain path
    (LocalModelRegistry; relative to the working directory), `vertex://projects/P/locations/L`
    (VertexModelRegistry; API endpoint from RETRAIN_VERTEX_ENDPOINT when set).
    """
    if not isinstance(uri, str) or not uri.strip():
        raise RegistryUriError(str(uri), "empty; use memory://, file:///path or vertex://...")
    if uri in ("memory://", "memory:"):
        return InMemoryRegistry()
    if uri.startswith("vertex://"):
        match = _VERTEX_URI.fullmatch(uri)
        if match is None:
            raise RegistryUriError(uri, "expected vertex://projects/PROJECT/locations/LOCATION")
        endpoint = os.environ.get(VERTEX_ENDPOINT_VARIABLE) or None
        return VertexModelRegistry(match["project"], match["location"], endpoint=endpoint)
    if uri.startswith("file:"):
        parts = urlsplit(uri)
        if not uri.startswith("file://") or parts.netloc not in ("", "localhost"):
            raise RegistryUriError(uri, "expected file:///absolute/path (no host)")
        if parts.query or parts.fragment or not parts.path.startswith("/"):
            raise RegistryUriError(uri, "expected file:///absolute/path")
        return LocalModelRegistry(Path(unquote(parts.path)))
    if "://" in uri:
        scheme = uri.split(":", 1)[0]
        raise RegistryUriError(
            uri, f"unknown scheme {scheme!r}; use memory://, file:///path, a path or vertex://"
        )
    return LocalModelRegistry(Path(uri))
