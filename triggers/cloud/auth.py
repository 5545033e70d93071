"""Who called the manual trigger: a Google-signed ID token (audience = the function's URL)
from an allowed invoker, checked behind Cloud Run IAM. google-auth loads on first use.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from triggers.errors import RequestError, TransientError

GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
"""Where Google publishes the certificates that sign its ID tokens."""
GOOGLE_ISSUERS = ("accounts.google.com", "https://accounts.google.com")
CLOCK_SKEW_SECONDS = 10


class IdTokenVerifier(Protocol):
    """Checks an ID token's signature, issuer, audience and expiry; returns its claims."""

    def verify(self, token: str) -> Mapping[str, Any]:
        """Raises RequestError(401) for a bad token, TransientError when keys are unreachable."""
        ...


@dataclass
class GoogleIdTokenVerifier:
    """Google's ID tokens, verified with google-auth against certificates fetched from
    `certs_url` (kept as long as their Cache-Control allows, refetched for an unknown key)."""

    audience: str
    certs_url: str = GOOGLE_CERTS_URL
    clock: Callable[[], float] = time.time
    _certs: _CachedCerts = field(init=False)

    def __post_init__(self) -> None:
        self._certs = _CachedCerts(self.certs_url)

    def verify(self, token: str) -> Mapping[str, Any]:
        _check_header(token)  # before any certificate is fetched for it
        from google.auth import exceptions
        from google.oauth2 import id_token

        for attempt in (0, 1):
            try:
                claims: Mapping[str, Any] = id_token.verify_token(
                    token, self._certs,  # type: ignore[arg-type]  # google-auth calls it
                    audience=audiences(self.audience), certs_url=self.certs_url,
                    clock_skew_in_seconds=CLOCK_SKEW_SECONDS)
                break
            except exceptions.TransportError as exc:
                raise TransientError(f"cannot fetch Google's certificates: {exc}") from None
            except (ValueError, exceptions.GoogleAuthError) as exc:
                if attempt == 0 and "not found" in str(exc) and self._certs.forget():
                    continue  # keys rotated since they were cached: fetch them once more
                raise RequestError(401, f"invalid ID token: {_reason(exc)}",
                                   "Authorization") from None
        if claims.get("iss") not in GOOGLE_ISSUERS:
            raise RequestError(401, "the ID token was not issued by Google", "Authorization")
        return claims


def _check_header(token: str) -> None:
    """Refuse what is not a JWT signed with RS256 under a key id, as Google's ID tokens are."""
    parts = token.split(".")
    try:
        if len(parts) != 3:
            raise ValueError("segments")
        padded = parts[0] + "=" * (-len(parts[0]) % 4)
        header = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, UnicodeError):
        raise RequestError(401, "invalid ID token: not a JWT", "Authorization") from None
    if not isinstance(header, dict) or header.get("alg") != "RS256" or not header.get("kid"):
        raise RequestError(401, "invalid ID token: not signed with RS256 under a key id",
                           "Authorization")


_REASONS = (("expired", "expired"), ("too early", "not valid yet"), ("audience", "wrong audience"),
            ("signature", "bad signature"), ("not found", "unknown signing key"),
            ("segments", "not a JWT"))


def _reason(exc: Exception) -> str:
    """What is wrong with a token, without quoting it (google-auth's messages quote claims)."""
    text = str(exc).lower()
    return next((reason for needle, reason in _REASONS if needle in text), "malformed")


class _CachedCerts:
    """A google-auth transport (`request(url, method, ...)`) that serves one certs URL from
    memory while its Cache-Control max-age lasts (at least a minute, at most an hour)."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url
        self.timeout = timeout
        self._lock = threading.Lock()
        self._body: bytes | None = None
        self._fetched = 0.0
        self._expires = 0.0

    def forget(self) -> bool:
        """Drop the cached certificates unless fetched in the last 30 s; whether dropped."""
        with self._lock:
            if time.monotonic() - self._fetched < 30:
                return False
            self._body = None
            return True

    def __call__(self, url: str, method: str = "GET", body: Any = None,
                 headers: Any = None, timeout: Any = None, **kwargs: Any) -> Any:
        import urllib.error  # (not at cold start: only the manual trigger behind IAM needs it)
        import urllib.request

        from google.auth import exceptions

        with self._lock:
            now = time.monotonic()
            if url != self.url or self._body is None or now >= self._expires:
                try:
                    with urllib.request.urlopen(url, timeout=self.timeout) as answer:
                        data = answer.read(1024 * 1024)
                        max_age = _max_age(answer.headers.get("Cache-Control", ""))
                except (OSError, urllib.error.URLError) as exc:
                    raise exceptions.TransportError(str(exc)) from None  # type: ignore[no-untyped-call]
                if url != self.url:
                    return _Answer(data)
                self._body, self._fetched = data, now
                self._expires = now + min(max(max_age, 60), 3600)
            return _Answer(self._body)


@dataclass
class _Answer:
    data: bytes
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)


def _max_age(cache_control: str) -> int:
    for part in cache_control.split(","):
        name, _, value = part.strip().partition("=")
        if name.lower() == "max-age" and value.isdigit():
            return int(value)
    return 0


def caller_of(claims: Mapping[str, Any], invokers: frozenset[str]) -> str:
    """The verified caller's email if the allowlist names it; else RequestError(403)."""
    email = claims.get("email")
    if not isinstance(email, str) or claims.get("email_verified") is not True:
        raise RequestError(403, "the ID token carries no verified email (request it with "
                           "format=full from the metadata server)", "Authorization")
    if email.lower() not in invokers:
        raise RequestError(403, f"{email} is not in RETRAIN_INVOKERS", "Authorization")
    return email.lower()


def audiences(text: str) -> list[str]:
    """RETRAIN_AUDIENCE: one URL, or several separated by commas (a gen2 function answers on
    its cloudfunctions.net and its run.app URL; a token naming either is for this function)."""
    return [url.strip() for url in text.split(",") if url.strip()]


def parse_invokers(text: str) -> frozenset[str]:
    """RETRAIN_INVOKERS: comma-separated emails, each optionally `serviceAccount:` or `user:`
    prefixed as in IAM bindings. Raises ValueError naming a bad entry."""
    emails = set()
    for entry in text.split(","):
        entry = entry.strip()
        if not entry:
            continue
        kind, sep, email = entry.partition(":")
        if not sep:
            email = entry
        elif kind not in ("serviceAccount", "user"):
            raise ValueError(f"{entry!r}: only serviceAccount: and user: members are allowed")
        if email.count("@") != 1 or email.startswith("@") or email.endswith("@"):
            raise ValueError(f"{entry!r} is not an email")
        emails.add(email.lower())
    return frozenset(emails)
