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

from tests.conftest import EXAMPLE_TEMPLATE, FIXTURES, POLICY_YAML
from tests.support.deployed import DeployedFunction, deployed
from triggers.http_api import MAX_BODY_BYTES
from triggers.http_guard import MAX_PUSH_BYTES

TOKEN = "d3ployed-t0ken-7c1e"
SECRET = "Bearer SECRET-CREDENTIAL-4b8e0f"
"""An Authorization header no answer may ever carry back."""
MARKER = "BODY-MARKER-91d3"
"""A string inside request bodies no answer may ever carry back."""
CLOUDEVENT = json.loads((FIXTURES / "cloudevent_metric.json").read_text())


def base_env(workdir: Path) -> dict[str, str]:
    policy = workdir / "policies.yaml"
    policy.write_text(POLICY_YAML % {"template": EXAMPLE_TEMPLATE})
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
