"""How this repository talks to Google APIs over REST: an aiplatform_v1 client at an endpoint,
and what a failed call means (already exists, not found, transient, permanent).

At the bottom beside `errors`: the launchers and the model registries both use it. SDKs are
imported inside each function, on first use.
"""

from __future__ import annotations

import threading
from typing import Any

# google.rpc.Code names for which a later retry (a Pub/Sub redelivery) may succeed.
TRANSIENT_CODES = frozenset(
    {"UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL", "RESOURCE_EXHAUSTED", "ABORTED", "UNKNOWN"}
)
TRANSIENT_HTTP_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


def rest_client(client_class: Any, endpoint: str, credentials: Any = None) -> Any:
    """An aiplatform_v1 service client over REST at `endpoint`; an `http://` endpoint (a local
    fake) gets anonymous credentials unless `credentials` are given."""
    if credentials is None and endpoint.startswith("http://"):
        from google.auth.credentials import AnonymousCredentials

        credentials = AnonymousCredentials()  # type: ignore[no-untyped-call,unused-ignore]
    return client_class(credentials=credentials, transport="rest",
                        client_options={"api_endpoint": endpoint})


def vertex_endpoint(location: str, endpoint: str | None = None) -> str:
    """`endpoint` (an override: another host, or a local fake's URL) or the regional Vertex AI
    endpoint `{location}-aiplatform.googleapis.com`, without a trailing slash."""
    return (endpoint or f"{location}-aiplatform.googleapis.com").rstrip("/")


class LazyRestClient:
    """One aiplatform_v1 service client (`class_name`, e.g. "ModelServiceClient") over REST at
    `endpoint`, built with `rest_client` on the first `get` — the SDK imported then, once
    across threads — or the `client` given (a test's)."""

    def __init__(self, class_name: str, endpoint: str, credentials: Any = None,
                 client: Any = None) -> None:
        self.class_name = class_name
        self.endpoint = endpoint
        self.credentials = credentials
        self._client = client
        self._lock = threading.Lock()

    def get(self) -> Any:
        with self._lock:
            if self._client is None:
                # The package __init__ runs whichever submodule is named: as light as it gets.
                from google.cloud import aiplatform_v1

                client_class = getattr(aiplatform_v1, self.class_name)
                self._client = rest_client(client_class, self.endpoint, self.credentials)
            return self._client


def classify(exc: BaseException) -> tuple[str, str]:
    """("already_exists" | "not_found" | "transient" | "permanent" | "other", detail)."""
    import requests
    from google.api_core import exceptions as api_exceptions
    from google.auth import exceptions as auth_exceptions

    if isinstance(exc, api_exceptions.GoogleAPICallError):
        code = rpc_code(exc)
        detail = f"{code or exc.code}: {exc.message}"
        if code == "ALREADY_EXISTS":
            return "already_exists", detail
        if code == "NOT_FOUND":
            return "not_found", detail
        if code in TRANSIENT_CODES or exc.code in TRANSIENT_HTTP_STATUSES:
            return "transient", detail
        return "permanent", detail
    if isinstance(exc, api_exceptions.RetryError):
        return "transient", str(exc)
    if isinstance(exc, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)):
        return "transient", f"{type(exc).__name__}: {exc}"
    if isinstance(exc, auth_exceptions.DefaultCredentialsError):
        return "permanent", f"Google credentials unusable: {exc}"
    if isinstance(exc, auth_exceptions.RefreshError):
        retryable = getattr(exc, "retryable", False)
        return ("transient" if retryable else "permanent"), f"credentials refresh failed: {exc}"
    if isinstance(exc, auth_exceptions.TransportError):
        return "transient", f"credentials transport failed: {exc}"
    return "other", str(exc)


def rpc_code(exc: Any) -> str | None:
    """The google.rpc.Code name of an API error.

    Over REST the exception class follows the HTTP status only (409 is `Conflict` for both
    ALREADY_EXISTS and ABORTED), so the JSON error's `status` decides when present.
    """
    response = getattr(exc, "response", None)
    if response is not None and hasattr(response, "json"):
        try:
            status = response.json()["error"]["status"]
        except (ValueError, KeyError, TypeError):
            status = None
        if isinstance(status, str) and status:
            return status
    grpc_code = getattr(exc, "grpc_status_code", None)
    if grpc_code is not None:
        return str(getattr(grpc_code, "name", grpc_code))
    if getattr(exc, "code", None) == 409:  # a bare 409 on create: the id is taken
        return "ALREADY_EXISTS"
    return None
