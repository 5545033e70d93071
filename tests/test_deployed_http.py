"""The three functions as deployed (`functions-framework --target X`, no `serve` in front):
errors echo nothing, malformed envelopes are 4xx, bodies are bounded, callers are verified."""

from __future__ import annotations

import base64
import copy
import http.client
import json
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from tests.conftest import FIXTURES, POLICY_YAML, vertex_ready_template
from tests.support.deployed import DeployedFunction, deployed
from triggers.cloud.http_guard import MAX_PUSH_BYTES
from triggers.cloud.routes import MAX_BODY_BYTES

TOKEN = "d3ployed-t0ken-7c1e"
SECRET = "Bearer SECRET-CREDENTIAL-4b8e0f"
"""An Authorization header no answer may ever carry back."""
MARKER = "BODY-MARKER-91d3"
"""A string inside request bodies no answer may ever carry back."""
CLOUDEVENT = json.loads((FIXTURES / "cloudevent_metric.json").read_text())


def base_env(workdir: Path) -> dict[str, str]:
    policy = workdir / "policies.yaml"
    # Compiled as for Vertex (some tests launch there; the local launcher ignores images).
    policy.write_text(POLICY_YAML % {"template": vertex_ready_template(workdir)})
    return {"RETRAIN_POLICY_FILE": str(policy), "RETRAIN_STATE": f"sqlite:///{workdir}/state.db",
            "RETRAIN_LAUNCHER": "local", "RETRAIN_MANUAL_TOKEN": TOKEN,
            "RETRAIN_TRUST_IAM": "false"}


@pytest.fixture(scope="module")
def functions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    workdir = tmp_path_factory.mktemp("deployed")
    with deployed(workdir, base_env(workdir)) as urls:
        yield urls


def assert_echoes_nothing(response: requests.Response, *secrets: str) -> None:
    assert response.headers["Content-Type"].startswith("application/json"), response.text
    answer = response.json()
    assert set(answer) >= {"error", "field"}, answer
    for secret in (SECRET, SECRET.split()[1], MARKER, *secrets):
        assert secret not in response.text, response.text


# ---------------------------------------------------------------- finding 4: error answers

MALFORMED_ENVELOPES = [
    json.dumps({"note": MARKER}).encode(),  # JSON, not a CloudEvent nor a push envelope
    json.dumps([MARKER]).encode(),
    json.dumps({"specversion": 1, "id": MARKER}).encode(),
    json.dumps({"specversion": "1.0", "id": 1, "source": MARKER, "type": "t"}).encode(),
    json.dumps({"specversion": "1.0", "id": "1", "source": "s", "type": "t",
                "data_base64": MARKER + "!!"}).encode(),
    b"[" * 5000 + MARKER.encode(),
    b"\xff\xfe" + MARKER.encode(),
    json.dumps({"message": {"data": MARKER + "!!"}}).encode(),
]


@pytest.mark.parametrize("target", ["on_metric_event", "on_run_outcome"])
def test_malformed_envelopes_answer_4xx_json_echoing_no_header_or_body(
    functions: dict[str, str], target: str
) -> None:
    for body in MALFORMED_ENVELOPES:
        response = requests.post(functions[target], data=body, timeout=30, headers={
            "Authorization": SECRET, "Content-Type": "application/json"})
        assert 400 <= response.status_code < 500, (body[:60], response.status_code)
        assert_echoes_nothing(response)


def test_framework_refusals_are_json_echoing_nothing(functions: dict[str, str]) -> None:
    manual = functions["manual_trigger"]
    for method, url in [("GET", manual + "/robots.txt"), ("GET", manual + "/favicon.ico"),
                        ("GET", functions["on_metric_event"] + "/"),
                        ("PUT", functions["on_run_outcome"] + f"/{MARKER}")]:
        response = requests.request(method, url, headers={"Authorization": SECRET},
                                    timeout=30)
        assert response.status_code in (404, 405), (url, response.status_code)
        assert_echoes_nothing(response)


def test_a_store_that_is_down_still_answers_5xx_so_pubsub_redelivers(
    tmp_path: Path
) -> None:
    env = base_env(tmp_path)
    env["RETRAIN_STATE"] += "?timeout=0.2s"
    with deployed(tmp_path, env, ("on_metric_event",)) as urls:
        db = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
        db.execute("BEGIN EXCLUSIVE")  # another writer holds the database
        try:
            response = requests.post(urls["on_metric_event"], json=CLOUDEVENT, timeout=30,
                                     headers={"Authorization": SECRET})
        finally:
            db.execute("ROLLBACK")
            db.close()
        assert response.status_code == 503
        assert response.json()["retry"] is True
        assert_echoes_nothing(response)
        again = requests.post(urls["on_metric_event"], json=CLOUDEVENT, timeout=30)
        assert again.status_code == 200
    # the function's log says why it answered 503 (the store's own words, no request data)
    logged = [json.loads(line) for line in
              (tmp_path / "on_metric_event.log").read_text().splitlines()
              if line.startswith("{") and "transient failure" in line]
    assert logged and all("SQLite store" in entry.get("reason", "") for entry in logged)
    assert SECRET not in (tmp_path / "on_metric_event.log").read_text()


# ---------------------------------------------------------------- finding 4: bounded bodies

def raw_request(url: str, head: str, body_chunks: Iterator[bytes]) -> tuple[int, bytes]:
    """Send `head` and the chunks from a thread (the server may stop reading); the answer."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=60)

    def send() -> None:
        try:
            sock.sendall(head.encode())
            for chunk in body_chunks:
                sock.sendall(chunk)
        except OSError:
            pass  # the server answered and closed: what a bounded server does

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, response.read()
    finally:
        sock.close()
        sender.join(timeout=30)


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def big_chunks(total: int, chunked: bool) -> Iterator[bytes]:
    piece = b'{"message": {"data": "' + b"A" * (1024 * 1024 - 32)
    sent = 0
    while sent < total:
        part = piece[: total - sent]
        sent += len(part)
        yield (b"%x\r\n" % len(part) + part + b"\r\n") if chunked else part
    if chunked:
        yield b"0\r\n\r\n"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_30_mb_envelope_is_refused_without_growing_the_worker(
    tmp_path: Path, chunked: bool
) -> None:
    size = 30 * 1024 * 1024
    function = DeployedFunction("on_metric_event", tmp_path, base_env(tmp_path))
    function.start()
    try:
        assert requests.post(function.base, json=CLOUDEVENT, timeout=30).status_code == 200
        [worker] = function.worker_pids()
        before = peak_rss_kib(worker)
        framing = ("Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}")
        head = (f"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"{framing}\r\n\r\n")
        status, body = raw_request(function.base, head, big_chunks(size, chunked))
        grown = peak_rss_kib(worker) - before
    finally:
        function.stop()
    assert status == 413
    assert json.loads(body)["field"] == "body"
    assert grown < 16 * 1024, f"the worker's peak RSS grew {grown} KiB"


def test_the_manual_trigger_bounds_its_body_too(functions: dict[str, str]) -> None:
    url = functions["manual_trigger"] + "/retrain"
    body = json.dumps({"model": "fraud-detector", "reason": "x" * MAX_BODY_BYTES}).encode()
    response = requests.post(url, data=body, timeout=30, headers={
        "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.json()["field"] == "body"
    head = (f"POST /retrain HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n")
    status, answer = raw_request(url, head, big_chunks(4 * MAX_PUSH_BYTES, chunked=True))
    assert status == 413 and json.loads(answer)["field"] == "body"


def push_envelope(event: dict[str, Any]) -> dict[str, Any]:
    ce = copy.deepcopy(CLOUDEVENT)
    ce["data"]["message"]["data"] = base64.b64encode(json.dumps(event).encode()).decode()
    return ce


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# ---------------------------------------------------------------- finding 5: ID tokens

AUDIENCE = "https://us-central1-test-project.cloudfunctions.net/manual-trigger"
INVOKER = "ci-retrain@test-project.iam.gserviceaccount.com"
KEY_ID = "test-signing-key-1"


def rsa_key_and_cert() -> tuple[bytes, bytes]:
    """A fresh RSA private key (PEM) and a self-signed certificate of it (PEM)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-google-signer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    private = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return private, cert.public_bytes(serialization.Encoding.PEM)


class CertsServer:
    """Serves {key id: certificate} as Google's certs endpoint does; counts fetches."""

    def __init__(self, certs: dict[str, str]) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        body = json.dumps(certs).encode()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                server.fetches += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "public, max-age=300")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.fetches = 0
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/oauth2/v1/certs"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# A gen2 function answers on two URLs; deploy/ lists both in RETRAIN_AUDIENCE.
RUN_APP_AUDIENCE = "https://manual-trigger-123456789.us-central1.run.app"


def id_token(private_pem: bytes, key_id: str = KEY_ID, **claims: Any) -> str:
    from google.auth import crypt, jwt

    now = int(time.time())
    payload = {"iss": "https://accounts.google.com", "aud": AUDIENCE, "iat": now,
               "exp": now + 600, "sub": "1234567890", "email": INVOKER,
               "email_verified": True, **claims}
    signer = crypt.RSASigner.from_string(private_pem, key_id=key_id)
    return jwt.encode(signer, payload).decode()


@pytest.fixture(scope="module")
def iam_manual(
    tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, bytes, CertsServer]]:
    from tests.fakes.vertex_server import FakeVertexServer

    workdir = tmp_path_factory.mktemp("iam")
    private, cert = rsa_key_and_cert()
    certs = CertsServer({KEY_ID: cert.decode()})
    env = {**base_env(workdir), "RETRAIN_MANUAL_TOKEN": "", "RETRAIN_TRUST_IAM": "true",
           "RETRAIN_AUDIENCE": f"{AUDIENCE}, {RUN_APP_AUDIENCE}",
           "RETRAIN_ID_TOKEN_CERTS_URL": certs.url,
           "RETRAIN_INVOKERS": f"serviceAccount:{INVOKER}, user:Ops@Example.com"}
    try:
        with FakeVertexServer() as vertex:
            env.update(RETRAIN_LAUNCHER="vertex", RETRAIN_VERTEX_ENDPOINT=vertex.endpoint,
                       GOOGLE_CLOUD_PROJECT="test-project")
            with deployed(workdir, env, ("manual_trigger",)) as urls:
                yield urls["manual_trigger"], private, certs
    finally:
        certs.close()


def test_trusting_iam_still_verifies_the_callers_google_id_token(
    iam_manual: tuple[str, bytes, CertsServer]
) -> None:
    url, private, certs = iam_manual
    other_key, _ = rsa_key_and_cert()
    now = int(time.time())
    refused = {
        "no token": ({}, 401),
        "not a JWT": ({"Authorization": "Bearer not.a.jwt"}, 401),
        "another key": ({"Authorization": f"Bearer {id_token(other_key)}"}, 401),
        "unknown key id": ({"Authorization": f"Bearer {id_token(private, 'k2')}"}, 401),
        "wrong audience": ({"Authorization":
                            f"Bearer {id_token(private, aud='https://elsewhere.example')}"}, 401),
        "expired": ({"Authorization": "Bearer " + id_token(private, iat=now - 7200,
                                                           exp=now - 3600)}, 401),
        "not Google": ({"Authorization":
                        f"Bearer {id_token(private, iss='https://evil.example')}"}, 401),
        "not allowed": ({"Authorization":
                         f"Bearer {id_token(private, email='intruder@example.com')}"}, 403),
        "unverified email": ({"Authorization":
                              f"Bearer {id_token(private, email_verified=False)}"}, 403),
    }
    body = {"model": "churn", "reason": "refused", "force": True}
    for case, (headers, status) in refused.items():
        response = requests.post(url + "/retrain", json=body, headers=headers, timeout=30)
        assert response.status_code == status, (case, response.text)
        assert response.json()["field"] == "Authorization", case
    good = {"Authorization": f"Bearer {id_token(private)}"}
    response = requests.post(url + "/retrain", json={"model": "churn", "reason": "drift",
                                                     "force": True}, headers=good, timeout=30)
    assert response.status_code == 202, response.text
    run_app = {"Authorization": f"Bearer {id_token(private, aud=RUN_APP_AUDIENCE)}"}
    response = requests.post(url + "/retrain", json={"model": "churn", "reason": "look",
                                                     "dry_run": True}, headers=run_app, timeout=30)
    assert response.status_code == 200, response.text  # the function's other URL is its too
    user = {"Authorization": f"Bearer {id_token(private, email='ops@example.com')}"}
    event = {"model": "churn", "metrics": {"logloss": 0.1}, "examples": 1000,
             "window_end": "2026-01-01T00:00:00Z"}
    response = requests.post(url + "/events", json=event, headers=user, timeout=30)
    assert response.status_code == 200, response.text
    response = requests.post(url + "/events", json={"model": "churn"}, headers=user, timeout=30)
    assert response.status_code == 400, response.text
    decisions = requests.get(url + "/decisions", params={"model": "churn"}, headers=good,
                             timeout=30).json()["decisions"]
    callers = sorted((d["kind"], d["details"].get("caller")) for d in decisions)
    assert ("fired", INVOKER) in callers
    assert ("rejected", "ops@example.com") in callers
    assert [caller for kind, caller in callers if kind not in ("fired", "rejected")] != []
    assert {caller for kind, caller in callers if kind != "fired"} == {"ops@example.com"}
    assert certs.fetches == 1  # the certificates are cached, not fetched per request


@pytest.mark.parametrize("missing,variable", [
    ({"RETRAIN_AUDIENCE": ""}, "RETRAIN_AUDIENCE"),
    ({"RETRAIN_INVOKERS": ""}, "RETRAIN_INVOKERS"),
    ({"RETRAIN_INVOKERS": "group:admins@example.com"}, "RETRAIN_INVOKERS"),
])
def test_trusting_iam_without_an_audience_or_invokers_fails_at_cold_start(
    tmp_path: Path, missing: dict[str, str], variable: str
) -> None:
    env = {**base_env(tmp_path), "RETRAIN_MANUAL_TOKEN": "", "RETRAIN_TRUST_IAM": "true",
           "RETRAIN_AUDIENCE": AUDIENCE, "RETRAIN_INVOKERS": INVOKER, **missing}
    function = DeployedFunction("manual_trigger", tmp_path, env)
    with pytest.raises(RuntimeError, match=variable):
        function.start()
    function.stop()


# ---------------------------------------------------------------- finding 6a: duplicate keys

def test_duplicate_json_keys_are_refused_as_ambiguous(functions: dict[str, str]) -> None:
    url = functions["manual_trigger"]
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    retrain = b'{"model": "churn", "reason": "dup", "dry_run": true, "dry_run": false}'
    response = requests.post(url + "/retrain", data=retrain, headers=headers, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == "dry_run" and "ambiguous" in response.json()["error"]
    event = (b'{"model": "churn", "metrics": {"logloss": 0.9, "logloss": 0.1}, '
             b'"examples": 1000, "window_end": "2026-01-01T00:00:00Z"}')
    response = requests.post(url + "/events", data=event, headers=headers, timeout=30)
    assert response.status_code == 400, response.text
    answer = response.json()
    assert answer["status"] == "rejected" and answer["field"] == "logloss", answer
    assert "ambiguous" in answer["error"]
    decisions = requests.get(url + "/decisions", params={"model": "churn"}, headers=headers,
                             timeout=30).json()["decisions"]
    assert any(d["kind"] == "rejected" and d["details"]["field"] == "logloss"
               for d in decisions), decisions


# ---------------------------------------------------------------- finding 6b: slowloris

def test_serve_closes_a_body_that_never_finishes_and_keeps_serving(tmp_path: Path) -> None:
    from tests.support.serve import served
    from triggers.cloud.http_guard import BODY_TIMEOUT

    with served(tmp_path, base_env(tmp_path), workers=1, threads=2) as server:
        parts = urlsplit(server.base)
        slow = socket.create_connection((parts.hostname, parts.port), timeout=60)
        started = time.monotonic()
        slow.sendall(f"POST /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n".encode()
                     + b'{"model": "churn", ')
        time.sleep(0.5)
        healthy = requests.get(server.base + "/healthz", timeout=5)  # others are served
        assert healthy.status_code == 200
        answer = b""
        while chunk := slow.recv(65536):  # until the server closes the connection
            answer += chunk
        elapsed = time.monotonic() - started
        slow.close()
        assert elapsed < BODY_TIMEOUT + 5, f"the connection stayed open {elapsed:.1f} s"
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b'"field": "body"' in answer
        assert requests.get(server.base + "/healthz", timeout=5).status_code == 200
