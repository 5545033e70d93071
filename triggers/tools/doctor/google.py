"""Doctor's HTTP access to Google APIs: each API's base URL (overridable by an environment
variable, for emulators and local fakes), the operator's session, and impersonated sessions.

Endpoints: `ENDPOINT_VARIABLES` below lists, per API, the variables that override its base URL
(first set wins) and the default; a `host:port` value means `http://host:port`. The emulators
answer what they implement: PUBSUB_EMULATOR_HOST serves topics and subscriptions but not IAM
(RETRAIN_PUBSUB_ENDPOINT does), FIRESTORE_EMULATOR_HOST serves documents but not the admin API
(databases, indexes, TTL: RETRAIN_FIRESTORE_ENDPOINT). Vertex AI: RETRAIN_VERTEX_ENDPOINT.
An `http://` endpoint is a local emulator or fake: the operator's calls go there without
credentials (impersonated calls still carry the token the IAM Credentials endpoint issued).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from triggers.errors import RetrainError

if TYPE_CHECKING:
    import requests

SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
TIMEOUT_SECONDS = 30.0
TOKEN_LIFETIME = "600s"

ENDPOINT_VARIABLES: dict[str, tuple[tuple[str, ...], str]] = {
    # api: (variables in order of precedence, default)
    "serviceusage": (("RETRAIN_SERVICEUSAGE_ENDPOINT",), "https://serviceusage.googleapis.com"),
    "resourcemanager": (("RETRAIN_RESOURCEMANAGER_ENDPOINT",),
                        "https://cloudresourcemanager.googleapis.com"),
    "iam": (("RETRAIN_IAM_ENDPOINT",), "https://iam.googleapis.com"),
    "iamcredentials": (("RETRAIN_IAMCREDENTIALS_ENDPOINT",),
                       "https://iamcredentials.googleapis.com"),
    "storage": (("RETRAIN_STORAGE_ENDPOINT", "STORAGE_EMULATOR_HOST"),
                "https://storage.googleapis.com"),
    "pubsub": (("PUBSUB_EMULATOR_HOST", "RETRAIN_PUBSUB_ENDPOINT"), "https://pubsub.googleapis.com"),
    "pubsub_iam": (("RETRAIN_PUBSUB_ENDPOINT",), "https://pubsub.googleapis.com"),
    "firestore_admin": (("RETRAIN_FIRESTORE_ENDPOINT",), "https://firestore.googleapis.com"),
    "eventarc": (("RETRAIN_EVENTARC_ENDPOINT",), "https://eventarc.googleapis.com"),
    "firestore": (("FIRESTORE_EMULATOR_HOST", "RETRAIN_FIRESTORE_ENDPOINT"),
                  "https://firestore.googleapis.com"),
}


class GoogleApiError(RetrainError):
    """A Google API call failed: `status` is the HTTP status (0: no answer), `code` the
    google.rpc code name when the answer carried one."""

    def __init__(self, url: str, status: int, code: str, message: str) -> None:
        self.url = url
        self.status = status
        self.code = code
        self.message = message
        super().__init__(f"{code or status}: {message}")


class ImpersonationError(GoogleApiError):
    """The operator may not mint tokens for a service account (no Token Creator role)."""


@dataclass(frozen=True)
class Endpoints:
    """The base URL of each API doctor calls (see the module docstring)."""

    urls: Mapping[str, str]
    emulated: frozenset[str] = frozenset()  # APIs answered by an emulator (*_EMULATOR_HOST)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Endpoints:
        env = os.environ if environ is None else environ
        urls: dict[str, str] = {}
        emulated: set[str] = set()
        for api, (variables, default) in ENDPOINT_VARIABLES.items():
            chosen = next(((v, env[v]) for v in variables if env.get(v)), None)
            value = chosen[1] if chosen else default
            if chosen and chosen[0].endswith("_EMULATOR_HOST"):
                emulated.add(api)
            urls[api] = (value if "://" in value else "http://" + value).rstrip("/")
        return cls(urls, frozenset(emulated))

    def __getitem__(self, api: str) -> str:
        return self.urls[api]


class GoogleApis:
    """JSON calls to Google APIs as the operator (application default credentials) or as a
    service account impersonated through IAM Credentials `generateAccessToken`.

    `credentials` replaces application default credentials; `http://` endpoints get none.
    """

    def __init__(self, endpoints: Endpoints, credentials: Any = None) -> None:
        self.endpoints = endpoints
        self._credentials = credentials
        self._operator: requests.Session | None = None
        self._plain: requests.Session | None = None
        self._tokens: dict[str, str] = {}

    def call(self, method: str, api: str, path: str, *, params: Any = None,
             body: Any = None, as_account: str | None = None) -> dict[str, Any]:
        """`method` on `endpoints[api] + path`; the JSON answer, or raises GoogleApiError."""
        import requests

        url = self.endpoints[api] + path
        session = self._session(url, as_account)
        headers = {}
        # an emulator has no IAM (and the Firestore one rejects tokens that are not JWTs)
        if as_account is not None and api not in self.endpoints.emulated:
            headers["Authorization"] = f"Bearer {self.token_for(as_account)}"
        try:
            response = session.request(method, url, params=params, json=body, headers=headers,
                                       timeout=TIMEOUT_SECONDS)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise GoogleApiError(url, 0, "UNAVAILABLE", f"no answer from {url}: {exc}") from exc
        if response.status_code >= 400:
            code, message = _error(response)
            raise GoogleApiError(url, response.status_code, code, message)
        if not response.content:
            return {}
        try:
            payload = response.json()
        except ValueError:
            return {"_text": response.text}
        return payload if isinstance(payload, dict) else {"_items": payload}

    def token_for(self, account: str) -> str:
        """An access token of `account`, minted with the operator's credentials (needs
        roles/iam.serviceAccountTokenCreator on it); cached for the run."""
        if account not in self._tokens:
            path = f"/v1/projects/-/serviceAccounts/{quote(account, safe='@.')}:generateAccessToken"
            try:
                answer = self.call("POST", "iamcredentials", path,
                                   body={"scope": list(SCOPES), "lifetime": TOKEN_LIFETIME})
            except GoogleApiError as exc:
                raise ImpersonationError(exc.url, exc.status, exc.code, exc.message) from exc
            token = answer.get("accessToken")
            if not isinstance(token, str) or not token:
                raise ImpersonationError(path, 200, "INTERNAL", "the answer has no accessToken")
            self._tokens[account] = token
        return self._tokens[account]

    def operator_credentials(self) -> Any:
        """The operator's credentials (application default credentials unless given)."""
        if self._credentials is None:
            import google.auth
            from google.auth import exceptions as auth_exceptions

            try:
                self._credentials, _ = google.auth.default(scopes=list(SCOPES))
            except auth_exceptions.DefaultCredentialsError as exc:
                raise GoogleApiError("google.auth.default", 0, "UNAUTHENTICATED",
                                     f"no Google credentials: {exc}; run "
                                     "`gcloud auth application-default login`") from exc
        return self._credentials

    def _session(self, url: str, as_account: str | None) -> requests.Session:
        import requests

        if as_account is not None or url.startswith("http://"):
            if self._plain is None:
                self._plain = requests.Session()
            return self._plain
        if self._operator is None:
            from google.auth.transport.requests import AuthorizedSession

            self._operator = AuthorizedSession(  # type: ignore[no-untyped-call,unused-ignore]
                self.operator_credentials())
        return self._operator


def _error(response: requests.Response) -> tuple[str, str]:
    try:
        error = response.json()["error"]
        return str(error.get("status") or ""), str(error.get("message") or "")
    except (ValueError, KeyError, TypeError, AttributeError):
        return "", (response.text or response.reason or "").strip()[:300]
