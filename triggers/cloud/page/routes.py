"""The page's routes behind the manual trigger's authentication: `GET /` (the models) and
`GET /models/{m}` asked for as HTML; a browser logs in once with `?token=` (a cookie)."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any
from urllib.parse import quote

from triggers.cloud.auth import IdTokenVerifier
from triggers.cloud.environment import Environment
from triggers.errors import RequestError
from triggers.service import RetrainService

COOKIE = "retrain_page"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                               "form-action 'self'; frame-ancestors 'none'",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def wants_html(request: Any) -> bool:
    """Whether the request's Accept header prefers HTML to JSON (a browser's does)."""
    from werkzeug.datastructures import MIMEAccept
    from werkzeug.http import parse_accept_header

    accept = parse_accept_header(request.headers.get("Accept") or "", MIMEAccept)
    return accept.best_match(["application/json", "text/html"]) == "text/html"


def is_page(request: Any, path: str) -> bool:
    """`GET /` or `GET /models/{m}` asking for HTML (JSON otherwise), or the page's login."""
    return request.method == "GET" and (path == "/" or path.startswith("/models/")) and (
        wants_html(request) or request.args.get("token") is not None)


def cookie_value(token: str) -> str:
    """The page's session cookie for a bearer token: derived, so the cookie is no bearer."""
    return hmac.new(token.encode(), b"retrain-trigger page", hashlib.sha256).hexdigest()


def page_caller(request: Any, env: Environment, verifier: IdTokenVerifier | None) -> str:
    """The manual trigger's authentication, or (with RETRAIN_MANUAL_TOKEN) the page cookie."""
    from triggers.cloud.routes import check_auth

    cookie = (request.cookies.get(COOKIE) if hasattr(request, "cookies") else None) or ""
    if env.manual_token and cookie and hmac.compare_digest(
            cookie.encode(), cookie_value(env.manual_token).encode()):
        return "page-cookie"
    try:
        return check_auth(request, env, verifier)
    except RequestError as exc:
        if exc.status == 401 and env.manual_token:
            raise RequestError(401, "open the page once as /?token=<RETRAIN_MANUAL_TOKEN> "
                               "(it sets a cookie), or send Authorization: Bearer <token>",
                               "Authorization") from None
        raise


def answer_page(request: Any, path: str, service: RetrainService, env: Environment,
                verifier: IdTokenVerifier | None) -> tuple[str, int, dict[str, str]]:
    """(HTML, status, headers) of a page request; RequestError for a refused one."""
    token = request.args.get("token")
    if token is not None:  # the login: check, set the cookie, drop the token from the URL
        if not env.manual_token or not hmac.compare_digest(token.encode(),
                                                           env.manual_token.encode()):
            raise RequestError(403, "wrong token", "token")
        return "", 303, {"Location": quote(path),
                         "Set-Cookie": f"{COOKIE}={cookie_value(env.manual_token)}; "
                                       "HttpOnly; SameSite=Strict; Path=/"}
    page_caller(request, env, verifier)
    from triggers.cloud.page import html
    from triggers.cloud.page.data import gather_model, gather_models

    if path == "/":
        return html.models_page(gather_models(service)), 200, dict(SECURITY_HEADERS)
    name = path[len("/models/"):]
    page = gather_model(service, name, request.args.get("from") or None,
                        request.args.get("to") or None)
    return html.model_page(page), 200, dict(SECURITY_HEADERS)
