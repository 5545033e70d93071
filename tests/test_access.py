"""Access to the manual trigger: bearer tokens (401/403, compared in constant time), default deny
without an auth mode, and no token, secret or payload in the logs, in-process and from `serve`."""

from __future__ import annotations

import base64
import hmac
import io
import json
import logging
import textwrap
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DESIGN_EVENT, POLICY_YAML
from tests.support.combined import TOKEN, App, combined_app
from tests.support.serve import serve_process
from triggers.cloud import routes as http_api
from triggers.cloud.logs import CloudLoggingFormatter

CHURN_BREACH = {"model": "churn", "metrics": {"logloss": 0.9},
                "window_end": "2026-11-02T00:00:00Z"}
ROUTES: list[tuple[str, str, Any]] = [
    ("POST", "/events", CHURN_BREACH),
    ("POST", "/retrain", {"model": "churn", "reason": "try"}),
    ("GET", "/decisions", None),
    ("GET", "/models/churn", None),
    ("GET", "/models/x", None),
    ("GET", "/nowhere", None),
    ("DELETE", "/events", None),
]


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    with combined_app(tmp_path) as running:
        yield running


def call(app: App, method: str, path: str, body: Any = None,
         authorization: str | None = f"Bearer {TOKEN}") -> Any:
    headers = {"Authorization": authorization} if authorization is not None else {}
    return app.client.open(path, method=method, json=body, headers=headers)


# --- tokens ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_a_missing_token_is_401_asking_for_a_bearer_token(
    app: App, method: str, path: str, body: Any
) -> None:
    response = call(app, method, path, body, authorization=None)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json["field"] == "Authorization"
    assert app.processed() == set() and app.launcher.submitted == []


@pytest.mark.parametrize("header", [
    "Basic dXNlcjpwdw==", "Bearer", "Bearer ", "Bearer   ", f"Bearer\t{TOKEN}",
    f"Token {TOKEN}", TOKEN, f"Bearer{TOKEN}", "",
], ids=["basic", "bearer-alone", "bearer-space", "bearer-spaces", "tab", "other-scheme",
        "no-scheme", "no-space", "empty"])
def test_a_malformed_authorization_is_401(app: App, header: str) -> None:
    response = call(app, "GET", "/decisions", authorization=header)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json["field"] == "Authorization" and response.json["error"]


WRONG_TOKENS = {
    "same-length": TOKEN[:-1] + ("0" if TOKEN[-1] != "0" else "1"),
    "prefix": TOKEN[:-1],
    "longer": TOKEN + "x",
    "upper-case": TOKEN.upper(),
    "one-character": "x",
    "non-ascii": TOKEN[:-1] + "é",
}


@pytest.mark.parametrize("token", WRONG_TOKENS.values(), ids=WRONG_TOKENS.keys())
def test_a_wrong_token_is_403(app: App, token: str) -> None:
    response = call(app, "POST", "/events", CHURN_BREACH, authorization=f"Bearer {token}")
    assert response.status_code == 403
    assert "WWW-Authenticate" not in response.headers
    assert response.json["field"] == "Authorization"
    assert app.processed() == set() and app.launcher.submitted == []


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_scheme_is_case_insensitive_the_token_is_not(app: App, scheme: str) -> None:
    """RFC 7235 section 2.1: the auth scheme is a case-insensitive token; the credential is
    compared exactly."""
    assert call(app, "GET", "/decisions", authorization=f"{scheme} {TOKEN}").status_code == 200
    wrong = call(app, "GET", "/decisions", authorization=f"{scheme} {TOKEN.upper()}")
    assert wrong.status_code == 403


@pytest.fixture
def digest_calls(monkeypatch: pytest.MonkeyPatch) -> Callable[[bool | None], list[tuple]]:
    """Record the calls of `hmac.compare_digest` as triggers.cloud.routes sees it (the stdlib
    function, wrapped); `force(True/False)` makes it answer that instead."""
    real = hmac.compare_digest
    calls: list[tuple] = []
    forced: list[bool | None] = [None]

    def recording(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b) if forced[0] is None else forced[0]

    monkeypatch.setattr(http_api.hmac, "compare_digest", recording)

    def force(answer: bool | None) -> list[tuple]:
        forced[0] = answer
        return calls

    return force


def test_compare_digest_alone_decides(app: App, digest_calls: Callable[..., list]) -> None:
    calls = digest_calls(None)
    assert call(app, "GET", "/decisions").status_code == 200
    assert calls == [(TOKEN.encode(), TOKEN.encode())]
    for token in WRONG_TOKENS.values():  # every length reaches it: no early length check
        calls.clear()
        assert call(app, "GET", "/decisions", authorization=f"Bearer {token}").status_code == 403
        assert calls == [(token.encode(), TOKEN.encode())]
    digest_calls(False)
    assert call(app, "GET", "/decisions").status_code == 403  # the right token, refused
    digest_calls(True)
    response = call(app, "GET", "/decisions", authorization="Bearer wrong")
    assert response.status_code == 200  # a wrong token, let in: nothing else compares


# --- default deny ------------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
@pytest.mark.parametrize("authorization", [None, f"Bearer {TOKEN}", "Bearer anything"])
def test_without_an_auth_mode_every_route_but_healthz_is_403(
    tmp_path: Path, method: str, path: str, body: Any, authorization: str | None
) -> None:
    with combined_app(tmp_path, token=None, trust_iam=False) as running:
        response = call(running, method, path, body, authorization=authorization)
        assert response.status_code == 403
        assert response.json["field"] == "RETRAIN_MANUAL_TOKEN"
        assert "RETRAIN_TRUST_IAM" in response.json["error"]
        assert running.processed() == set() and running.launcher.submitted == []
        assert call(running, "GET", "/healthz", authorization=None).status_code == 200


def test_trusting_iam_still_asks_for_a_google_id_token(tmp_path: Path) -> None:
    """Behind Cloud Run IAM the app checks the caller's ID token again (verified with real
    tokens in test_deployed_http); a request without one, or with a non-JWT, gets nowhere."""
    with combined_app(tmp_path, token=None, trust_iam=True) as running:
        for authorization in (None, "Bearer not-a-jwt", "Basic eDp5"):
            for method, path, body in [("GET", "/decisions", None),
                                       ("POST", "/events", CHURN_BREACH)]:
                response = call(running, method, path, body, authorization=authorization)
                assert response.status_code == 401, (authorization, response.json)
                assert response.json["field"] == "Authorization"
        assert running.processed() == set() and running.launcher.submitted == []


def test_pubsub_paths_take_no_token_as_documented(tmp_path: Path) -> None:
    """`serve`'s /pubsub/* paths stand for the Eventarc-triggered functions: no token, even
    without an auth mode (hence `serve` binds to loopback by default)."""
    with combined_app(tmp_path, token=None) as running:
        data = base64.b64encode(json.dumps(CHURN_BREACH).encode()).decode()
        envelope = {"subscription": "projects/p/subscriptions/s",
                    "message": {"messageId": "p-1", "data": data}}
        assert running.client.post("/pubsub/metrics", json=envelope).status_code == 200
        assert running.processed() == {"p-1"}


# --- secrets in logs ---------------------------------------------------------------------------

MARKER = f"MARK-{uuid.uuid4().hex}"
WRONG = f"wrong-{uuid.uuid4().hex}"


def marked_payloads() -> list[bytes]:
    """Events that carry MARKER past the 256 characters a rejection may log, in an unknown
    field's name and value and in a metric's name."""
    pad = "p" * 300
    unknown = (json.dumps(CHURN_BREACH)[:-1] + f', "padding": "{pad}", '
               f'"{pad}{MARKER}": "{MARKER}"}}').encode()
    metric = json.dumps({"model": "churn", "window_end": "2026-11-02T00:00:00Z",
                         "slice": "s" * 120, "model_version": "v" * 120,
                         "metrics": {f"{pad}{MARKER}": "not a number"}}).encode()
    return [unknown, metric]


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[[], str]]:
    """Everything logged meanwhile: the service's loggers (their own formatter, as in
    production) and every other logger (flask, werkzeug) through caplog."""
    caplog.set_level(logging.DEBUG)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(CloudLoggingFormatter())
    service = logging.getLogger("retrain")  # does not propagate to the root
    service.addHandler(handler)
    service.addHandler(caplog.handler)
    try:
        yield lambda: stream.getvalue() + "\n" + caplog.text
    finally:
        service.removeHandler(handler)
        service.removeHandler(caplog.handler)


def test_no_token_secret_or_payload_is_logged(
    app: App, logs: Callable[[], str], capfd: pytest.CaptureFixture[str]
) -> None:
    sent: list[bytes] = []

    def post(path: str, body: bytes, token: str = TOKEN) -> int:
        sent.append(body)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        return app.client.post(path, data=body, headers=headers).status_code

    # a launch that fails for now (503), then its redelivery: success, a run
    app.launcher.transient_failures = 1
    assert post("/events", json.dumps(CHURN_BREACH).encode()) == 503
    assert post("/events", json.dumps(CHURN_BREACH).encode()) == 200
    assert len(app.launcher.runs) == 1
    # rejections, over HTTPS and over Pub/Sub
    for payload in marked_payloads():
        assert post("/events", payload) == 400
        envelope = {"subscription": "projects/p/subscriptions/s", "message": {
            "messageId": uuid.uuid4().hex, "data": base64.b64encode(payload).decode()}}
        assert post("/pubsub/metrics", json.dumps(envelope).encode()) == 200
    # a launch refused for good
    app.launcher.reject = True
    retrain = {"model": "fraud-detector", "reason": "manual"}
    assert post("/retrain", json.dumps(retrain).encode()) == 502
    # refusals, with a wrong token
    assert post("/events", json.dumps(DESIGN_EVENT).encode(), token=WRONG) == 403

    captured = logs() + capfd.readouterr().err
    assert "rejected event" in captured and "launch refused" in captured  # logging works
    assert "transient failure" in captured
    for secret in (TOKEN, WRONG, MARKER):
        assert secret not in captured, secret
    for body in sent:
        assert body.decode() not in captured


def test_serve_logs_no_token_secret_or_payload_and_binds_loopback(tmp_path: Path) -> None:
    policy = tmp_path / "policies.yaml"  # a template that does not exist: launches fail
    policy.write_text(textwrap.dedent(POLICY_YAML) % {"template": tmp_path / "missing.yaml"})
    env = {"RETRAIN_POLICY_FILE": str(policy), "RETRAIN_STATE": f"sqlite:///{tmp_path}/s.db",
           "RETRAIN_LAUNCHER": "local", "RETRAIN_MANUAL_TOKEN": TOKEN}
    with serve_process(tmp_path, env, threads=2) as base:
        port = int(base.rsplit(":", 1)[1])
        assert listening_addresses(port) == {"127.0.0.1"}

        def post(path: str, body: bytes, token: str | None = TOKEN) -> int:
            request = urllib.request.Request(base + path, data=body, method="POST",
                                             headers={"Content-Type": "application/json"})
            if token is not None:
                request.add_header("Authorization", f"Bearer {token}")
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    return int(response.status)
            except urllib.error.HTTPError as exc:
                return int(exc.code)

        event = {**CHURN_BREACH, "metrics": {"logloss": 0.1}}
        assert post("/events", json.dumps(event).encode()) == 200
        for payload in marked_payloads():
            assert post("/events", payload) == 400
            envelope = {"subscription": "projects/p/subscriptions/s", "message": {
                "messageId": uuid.uuid4().hex, "data": base64.b64encode(payload).decode()}}
            assert post("/pubsub/metrics", json.dumps(envelope).encode(), token=None) == 200
        retrain = json.dumps({"model": "churn", "reason": "manual"}).encode()
        assert post("/retrain", retrain) == 502  # launch refused: the template is missing
        assert post("/retrain", retrain, token=WRONG) == 403
    log = (tmp_path / "server.log").read_text()
    assert "rejected event" in log and "launch refused" in log  # it logs, to this file
    for secret in (TOKEN, WRONG, MARKER):
        assert secret not in log, secret


def listening_addresses(port: int) -> set[str]:
    """The local IPv4/IPv6 addresses with a socket listening on `port` (Linux /proc)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(_address(address))
    return found


def _address(hex_address: str) -> str:
    if len(hex_address) == 8:  # IPv4, little-endian
        return ".".join(str(b) for b in reversed(bytes.fromhex(hex_address)))
    return "ipv6:" + hex_address
