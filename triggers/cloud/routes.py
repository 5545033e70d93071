"""The manual HTTPS trigger: authentication and routing of /events, /retrain, /models, /decisions.

Framework-neutral: takes a werkzeug-style request, returns (JSON body, status, headers).
"""

from __future__ import annotations

import hmac
import json
import logging
import math
from typing import Any, Protocol

from triggers.cloud.auth import GoogleIdTokenVerifier, IdTokenVerifier, caller_of
from triggers.cloud.environment import Environment
from triggers.errors import (
    InvalidEventError,
    ModelNotConfiguredError,
    RequestError,
    TransientError,
)
from triggers.events import MAX_EVENT_BYTES, delivery_from_https
from triggers.logs import log_event
from triggers.service import RetrainService

logger = logging.getLogger("retrain.http")

MAX_BODY_BYTES = MAX_EVENT_BYTES


class Html(str):
    """An answer's body that is a page (triggers.cloud.page), not JSON."""


Response = tuple[dict[str, Any] | Html, int, dict[str, str]]


class Request(Protocol):
    method: str
    path: str
    headers: Any
    args: Any
    content_length: int | None

    def get_data(self, cache: bool = ..., as_text: bool = ..., parse_form_data: bool = ...) -> Any:
        ...

RETRAIN_STATUS_CODES = {"fired": 202, "suppressed": 409, "launch_failed": 502}
"""The manual trigger's HTTP status for each outcome of a retrain request (a dry run: 200)."""


def check_auth(request: Request, env: Environment,
               verifier: IdTokenVerifier | None = None) -> str:
    """Default deny: a bearer token compared in constant time, or (trusting Cloud Run IAM) a
    Google-signed ID token of an allowed invoker, checked again here. Returns the caller."""
    if env.manual_token:
        token = _bearer(request)
        if not hmac.compare_digest(token.encode(), env.manual_token.encode()):
            raise RequestError(403, "wrong token", "Authorization")
        return "bearer-token"
    if env.trust_iam:
        token = _bearer(request)
        if verifier is None:
            assert env.audience is not None  # Environment requires it with trust-IAM
            verifier = GoogleIdTokenVerifier(env.audience, env.certs_url)
        return caller_of(verifier.verify(token), env.invokers)
    raise RequestError(
        403,
        "the manual trigger refuses every request: set RETRAIN_MANUAL_TOKEN, or "
        "RETRAIN_TRUST_IAM=true when Cloud Run IAM authenticates callers",
        "RETRAIN_MANUAL_TOKEN",
    )


def _bearer(request: Request) -> str:
    header: str | None = request.headers.get("Authorization")
    if not header:
        raise RequestError(401, "missing Authorization: Bearer <token>", "Authorization")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise RequestError(401, "Authorization must be 'Bearer <token>'", "Authorization")
    return token.strip()


def handle(request: Request, service: RetrainService, env: Environment,
           verifier: IdTokenVerifier | None = None) -> Response:
    """Answer one request to the manual trigger; never raises for a client's mistake."""
    try:
        return _route(request, service, env, verifier)
    except RequestError as exc:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
        return {"error": exc.error, "field": exc.field}, exc.status, headers
    except ModelNotConfiguredError as exc:
        return {"error": str(exc), "field": exc.field}, 404, {}
    except TransientError as exc:
        log_event(logger, logging.WARNING, f"transient failure: {exc}", path=request.path)
        return {"error": "temporarily unavailable; retry", "field": None, "retry": True}, 503, {
            "Retry-After": "5"
        }


def _route(request: Request, service: RetrainService, env: Environment,
           verifier: IdTokenVerifier | None) -> Response:
    path = "/" + request.path.strip("/")
    if path == "/healthz":
        return {"status": "ok"}, 200, {}
    from triggers.cloud.page.routes import answer_page, is_page

    if is_page(request, path):  # the page: HTML for a browser (same authentication)
        text, status, headers = answer_page(request, path, service, env, verifier)
        return Html(text), status, headers
    caller = check_auth(request, env, verifier)
    if path == "/events":
        _method(request, "POST")
        body = _body(request)
        delivery = delivery_from_https(body)
        duplicate = duplicate_key(body)
        if duplicate is not None:  # ambiguous: stored as rejected, like any bad event
            result = service.reject(delivery, InvalidEventError(
                duplicate, "appears twice in one object: ambiguous"), caller)
        else:
            result = service.handle_delivery(delivery, caller=caller)
        status = 400 if result.status == "rejected" else 200
        return result.to_json(), status, {}
    if path == "/retrain":
        _method(request, "POST")
        retrain = _parse_retrain(_body(request))
        retrained = service.request_retrain(
            retrain.model, retrain.reason, dry_run=retrain.dry_run, force=retrain.force,
            caller=caller,
        )
        status = RETRAIN_STATUS_CODES[retrained.status] if retrained.status else 200
        answer = retrained.to_json()
        if status >= 400:
            answer = {"error": retrained.reason, "field": None, **answer}
        return answer, status, {}
    if path == "/":  # the models list, as JSON (a browser gets the page above)
        _method(request, "GET")
        from triggers.cloud.page.data import gather_models

        return {"models": [m.to_json() for m in gather_models(service)]}, 200, {}
    if path.startswith("/models/"):
        _method(request, "GET")
        return service.model_status(path[len("/models/") :]), 200, {}
    if path == "/decisions":
        _method(request, "GET")
        model = request.args.get("model") or None
        limit = _limit(request.args.get("limit"))
        decisions = service.decisions(model, limit)
        return {"decisions": [d.to_json() for d in decisions]}, 200, {}
    raise RequestError(
        404, f"no route {path}; use /events, /retrain, /models/MODEL or /decisions", "path"
    )


def _method(request: Request, expected: str) -> None:
    if request.method != expected:
        raise RequestError(405, f"{request.path} takes {expected}, not {request.method}", "method")


def _body(request: Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise RequestError(
            413, f"body is {request.content_length} bytes; the limit is {MAX_BODY_BYTES}", "body"
        )
    data: bytes = request.get_data(cache=True)
    if len(data) > MAX_BODY_BYTES:
        raise RequestError(413, f"body is larger than {MAX_BODY_BYTES} bytes", "body")
    return data


def _parse_retrain(body: bytes) -> Any:
    try:
        data = json.loads(body.decode("utf-8"), object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        raise RequestError(400, f"{exc.key!r} appears twice in the body: ambiguous",
                           exc.key) from None
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise RequestError(400, f"body is not valid JSON: {exc}", "body") from None
    if not isinstance(data, dict):
        raise RequestError(400, "body must be a JSON object", "body")
    from pydantic import ValidationError

    from triggers.outcomes import RetrainRequest

    try:
        return RetrainRequest.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"]) or "body"
        message = "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
        raise RequestError(400, message, field) from None


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json's object_pairs_hook refusing a key given twice (json keeps the last silently)."""
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise _DuplicateKey(key)
        data[key] = value
    return data


def duplicate_key(body: bytes) -> str | None:
    """The first key a JSON body gives twice in one object (None if none, or not JSON)."""
    try:
        json.loads(body.decode("utf-8"), object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        return exc.key
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None  # the event's parser names what is wrong with it
    return None


def _limit(text: str | None) -> int:
    if text is None or text == "":
        return 50
    if not (text.isascii() and text.isdigit() and len(text) <= 4):  # int() takes "1_0", "５"
        raise RequestError(400, "limit must be a whole number from 1 to 1000", "limit")
    value = int(text)
    if not 1 <= value <= 1000:
        raise RequestError(400, "limit must be a whole number from 1 to 1000", "limit")
    return value


def json_response(body: dict[str, Any] | Html, status: int, headers: dict[str, str]) -> Any:
    """A Flask response for `handle`'s answer."""
    import flask

    if isinstance(body, Html):
        page = flask.Response(body.encode("utf-8"), status=status, mimetype="text/html")
        page.headers.update(headers)
        return page
    try:
        text = json.dumps(body, default=str, ensure_ascii=False, allow_nan=False)
    except ValueError:  # NaN or infinity (a pipeline's report, say): not JSON, so null
        text = json.dumps(_finite(body), default=str, ensure_ascii=False)
    response = flask.Response(
        (text + "\n").encode("utf-8", errors="replace"),  # a lone surrogate cannot be UTF-8
        status=status,
        mimetype="application/json",
    )
    for key, value in headers.items():
        response.headers[key] = value
    return response


def _finite(value: Any) -> Any:
    """`value` (JSON-like) with NaN and infinities replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value
