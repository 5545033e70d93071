"""Test harness for Google's official Pub/Sub and Firestore emulators (installed with the gcloud
CLI). Both share `GcloudEmulator` (process group, readiness, stop); Firestore's notes are on
its class at the end.

`PubSubEmulator` starts `gcloud beta emulators pubsub start` in its own process group, waits
until it answers, hands out admin helpers bound to it, and kills the whole group on exit.

Measured here (gcloud 528, pubsub-emulator 0.8.20, Java 17, 2 vCPUs): the emulator answers
~1.6-1.7 s after launch when the disk cache is warm and ~3.8 s on the first start after boot;
stopping it (SIGTERM to the group) takes ~0.4 s. Share one instance per session (see
`tests/support/fixtures.py`) and give each test its own topic/subscription names.

Emulator behaviour the tests rely on (checked by `tests/test_pubsub_emulator.py`):

- Push deliveries are plain HTTP POSTs of the *wrapped* push body,
  `{"message": {"data", "messageId", "message_id", "publishTime", "publish_time",
  "attributes"}, "subscription"}` (`attributes` is `{}` when the message has none), with
  `Content-Type: application/json`, `User-Agent: Java/17...`: no `ce-*` CloudEvent headers and
  no `Authorization` header (no OIDC token).
- Only a 2xx answer acks; a 5xx or 4xx answer is redelivered with the same `messageId` and
  body, so permanent errors must be answered with a 2xx to stop redelivery.
  Without a retry policy the emulator redelivers about every 1 s; with one it stores the policy
  but spaces retries on its own coarse schedule (~1 s, then ~3 s or more), so tests that want
  fast redelivery should *not* set a retry policy.
- Resource names must be 3-255 characters starting with a letter (`t1` is rejected).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from google.cloud import pubsub_v1
    from google.pubsub_v1 import types as pubsub_types

NOT_FOUND_MESSAGE = "gcloud Pub/Sub emulator not found: install google-cloud-cli-pubsub-emulator"


# What gcloud prints when the component (or the Java it needs) is missing.
_MISSING_MARKERS = (
    "you need the [pubsub-emulator] component",
    "no pubsub-emulator directory found",
    "is not installed",
    "unable to execute the java",
    "java executable",
    "invalid choice: 'emulators'",
)


class EmulatorNotFoundError(RuntimeError):
    """gcloud or its Pub/Sub emulator component is not installed on this machine."""


class EmulatorStartError(RuntimeError):
    """The emulator was launched but did not become ready (its log tail is in the message)."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now (bind to port 0, then release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _group_members(pgid: int) -> list[int]:
    """Pids of live (non-zombie) processes in process group `pgid`, read from /proc."""
    members: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the command name (which may contain spaces) start after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        state, group = fields[0], int(fields[2])
        if group == pgid and state not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def _group_alive(pgid: int) -> bool:
    if Path("/proc/self/stat").exists():
        return bool(_group_members(pgid))
    try:  # pragma: no cover - non-Linux fallback (counts zombies as alive)
        os.killpg(pgid, 0)
    except ProcessLookupError:  # pragma: no cover
        return False
    return True  # pragma: no cover


class GcloudEmulator:
    """One `gcloud ... emulators ... start` process in its own process group, as a context
    manager: started and waited for until `GET /` answers, stopped by killing the whole group
    (gcloud and java). Subclasses name the command and what a missing component prints."""

    label = "emulator"
    not_found_message = "gcloud emulator not found"
    missing_markers: tuple[str, ...] = ()

    def __init__(
        self,
        project: str = "test-project",
        port: int | None = None,
        start_timeout: float = 60.0,
        gcloud: str | None = None,
    ) -> None:
        self.project = project
        self.port = port or free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.start_timeout = start_timeout
        self.startup_seconds: float | None = None
        self._gcloud = gcloud
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._log_path: Path | None = None

    def command(self, gcloud: str, workdir: Path) -> list[str]:
        """The gcloud command line that starts this emulator (`workdir`: its own temp dir)."""
        raise NotImplementedError

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Launch the emulator and block until it answers HTTP on its port."""
        gcloud = self._gcloud or shutil.which("gcloud")
        if gcloud is None:
            raise EmulatorNotFoundError(self.not_found_message + " (no `gcloud` on PATH)")
        self._tmp = tempfile.TemporaryDirectory(
            prefix=self.label.lower().replace("/", "") + "-emulator-")
        workdir = Path(self._tmp.name)
        self._log_path = workdir / "emulator.log"
        cmd = self.command(gcloud, workdir)
        started = time.monotonic()
        try:
            with open(self._log_path, "wb") as log:
                self._proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,  # own process group: stop() kills gcloud and java
                )
        except OSError as exc:
            self.stop()
            raise EmulatorNotFoundError(
                f"{self.not_found_message} (cannot run {gcloud}: {exc})"
            ) from exc
        try:
            self._wait_ready(started)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started

    def _wait_ready(self, started: float) -> None:
        assert self._proc is not None
        deadline = started + self.start_timeout
        while True:
            if self._proc.poll() is not None:
                log = self.log_tail()
                if any(marker in log.lower() for marker in self.missing_markers):
                    raise EmulatorNotFoundError(f"{self.not_found_message}\n{log}")
                raise EmulatorStartError(
                    f"{self.label} emulator exited with status {self._proc.returncode} "
                    f"before answering on {self.host}:\n{log}"
                )
            try:
                with urllib.request.urlopen(f"http://{self.host}/", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                raise EmulatorStartError(
                    f"{self.label} emulator did not answer on {self.host} within "
                    f"{self.start_timeout:.0f}s:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def _close_clients(self) -> None:
        """Close whatever clients a subclass keeps (before the process goes)."""

    def stop(self, grace: float = 5.0) -> None:
        """Close the clients and kill the emulator's whole process group (gcloud and java)."""
        self._close_clients()
        proc, self._proc = self._proc, None
        if proc is not None:
            pgid = proc.pid  # start_new_session=True: the group id is the leader's pid
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, sig)
                deadline = time.monotonic() + grace
                while time.monotonic() < deadline and _group_alive(pgid):
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=0.05)  # reap gcloud so it is not a zombie member
                if not _group_alive(pgid):
                    break
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace)
            if _group_alive(pgid):
                raise RuntimeError(f"{self.label} emulator process group {pgid} survived SIGKILL")
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    @property
    def pid(self) -> int | None:
        """Pid of the gcloud launcher (also the process group id), while running."""
        return self._proc.pid if self._proc is not None else None

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the emulator's combined stdout/stderr."""
        if self._log_path is None or not self._log_path.exists():
            return ""
        text = self._log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


class PubSubEmulator(GcloudEmulator):
    """The gcloud Pub/Sub emulator as a context manager, with admin helpers bound to it.

    The helpers build their own insecure gRPC channels to the emulator, so nothing here reads
    or writes `PUBSUB_EMULATOR_HOST`; code under test that builds its own clients needs
    `env()` applied (e.g. `monkeypatch.setenv`).
    """

    label = "Pub/Sub"
    not_found_message = NOT_FOUND_MESSAGE
    missing_markers = _MISSING_MARKERS

    def __init__(
        self,
        project: str = "test-project",
        port: int | None = None,
        start_timeout: float = 60.0,
        gcloud: str | None = None,
    ) -> None:
        super().__init__(project, port, start_timeout, gcloud)
        self._publisher: pubsub_v1.PublisherClient | None = None
        self._subscriber: pubsub_v1.SubscriberClient | None = None

    def command(self, gcloud: str, workdir: Path) -> list[str]:
        data_dir = workdir / "data"
        data_dir.mkdir()
        return [
            gcloud, "beta", "emulators", "pubsub", "start",
            f"--host-port={self.host}", f"--project={self.project}", f"--data-dir={data_dir}",
            "--quiet",
        ]  # fmt: skip

    def _close_clients(self) -> None:
        for client in (self._publisher, self._subscriber):
            if client is not None:
                with contextlib.suppress(Exception):
                    client.transport.close()
        self._publisher = self._subscriber = None

    def env(self) -> dict[str, str]:
        """Environment that points google-cloud-pubsub clients at this emulator."""
        return {"PUBSUB_EMULATOR_HOST": self.host, "PUBSUB_PROJECT_ID": self.project}

    @contextlib.contextmanager
    def environ(self) -> Iterator[dict[str, str]]:
        """Apply `env()` to os.environ for the duration of a `with` block, then restore it."""
        saved = {key: os.environ.get(key) for key in self.env()}
        os.environ.update(self.env())
        try:
            yield self.env()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    # -- clients ---------------------------------------------------------------------------

    @property
    def publisher(self) -> pubsub_v1.PublisherClient:
        """A PublisherClient on an insecure channel to this emulator (independent of env)."""
        if self._publisher is None:
            import grpc
            from google.cloud import pubsub_v1
            from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

            transport = PublisherGrpcTransport(channel=grpc.insecure_channel(self.host))
            self._publisher = pubsub_v1.PublisherClient(transport=transport)
        return self._publisher

    @property
    def subscriber(self) -> pubsub_v1.SubscriberClient:
        """A SubscriberClient on an insecure channel to this emulator (independent of env)."""
        if self._subscriber is None:
            import grpc
            from google.cloud import pubsub_v1
            from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

            transport = SubscriberGrpcTransport(channel=grpc.insecure_channel(self.host))
            self._subscriber = pubsub_v1.SubscriberClient(transport=transport)
        return self._subscriber

    # -- admin helpers ---------------------------------------------------------------------

    def topic_path(self, name: str) -> str:
        """`projects/<project>/topics/<name>`; a full path is returned unchanged."""
        return name if name.startswith("projects/") else f"projects/{self.project}/topics/{name}"

    def subscription_path(self, name: str) -> str:
        """`projects/<project>/subscriptions/<name>`; a full path is returned unchanged."""
        if name.startswith("projects/"):
            return name
        return f"projects/{self.project}/subscriptions/{name}"

    def create_topic(self, name: str) -> str:
        """Create a topic (name or full path) and return its full path."""
        path = self.topic_path(name)
        self.publisher.create_topic(name=path)
        return path

    def create_push_subscription(
        self,
        name: str,
        topic: str,
        push_endpoint: str,
        ack_deadline: int = 10,
        min_backoff: float | None = None,
        max_backoff: float | None = None,
        attributes: dict[str, str] | None = None,
    ) -> str:
        """Create a push subscription to `push_endpoint`; return its full path.

        `min_backoff`/`max_backoff` (seconds) set a retry policy; the emulator accepts and
        stores it but schedules redeliveries coarsely (see the module docstring).
        `attributes` sets push_config attributes (e.g. {"x-goog-version": "v1"}).
        """
        path = self.subscription_path(name)
        push_config: dict[str, Any] = {"push_endpoint": push_endpoint}
        if attributes:
            push_config["attributes"] = attributes
        request: dict[str, Any] = {
            "name": path,
            "topic": self.topic_path(topic),
            "ack_deadline_seconds": ack_deadline,
            "push_config": push_config,
        }
        if min_backoff is not None or max_backoff is not None:
            policy: dict[str, Any] = {}
            if min_backoff is not None:
                policy["minimum_backoff"] = _duration(min_backoff)
            if max_backoff is not None:
                policy["maximum_backoff"] = _duration(max_backoff)
            request["retry_policy"] = policy
        self.subscriber.create_subscription(request=request)
        return path

    def create_pull_subscription(self, name: str, topic: str, ack_deadline: int = 10) -> str:
        """Create a pull subscription; return its full path."""
        path = self.subscription_path(name)
        self.subscriber.create_subscription(
            request={
                "name": path,
                "topic": self.topic_path(topic),
                "ack_deadline_seconds": ack_deadline,
            }
        )
        return path

    def pull(
        self,
        subscription: str,
        max_messages: int = 10,
        timeout: float = 5.0,
        ack: bool = True,
    ) -> list[pubsub_types.PubsubMessage]:
        """Pull until `max_messages` arrived or `timeout` seconds passed; ack them by default.

        Returns the messages in arrival order (fewer than asked if the timeout ran out).
        """
        from google.api_core import exceptions as gexc

        path = self.subscription_path(subscription)
        received: list[pubsub_types.PubsubMessage] = []
        deadline = time.monotonic() + timeout
        while len(received) < max_messages:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                response = self.subscriber.pull(
                    request={"subscription": path, "max_messages": max_messages - len(received)},
                    timeout=max(0.5, min(remaining, 5.0)),
                    retry=None,
                )
            except (gexc.DeadlineExceeded, gexc.ServiceUnavailable):
                continue
            if not response.received_messages:
                time.sleep(0.05)
                continue
            if ack:
                self.subscriber.acknowledge(
                    request={
                        "subscription": path,
                        "ack_ids": [m.ack_id for m in response.received_messages],
                    }
                )
            received.extend(m.message for m in response.received_messages)
        return received


def _duration(seconds: float) -> dict[str, int]:
    whole = int(seconds)
    return {"seconds": whole, "nanos": round((seconds - whole) * 1e9)}


# ----------------------------------------------------------------------------- Firestore
FIRESTORE_NOT_FOUND_MESSAGE = (
    "gcloud Firestore emulator not found: install google-cloud-cli-firestore-emulator "
    "(it needs Java 11+)"
)
_FIRESTORE_MISSING_MARKERS = (
    "you need the [cloud-firestore-emulator] component",
    "no cloud-firestore-emulator directory found",
    "is not installed",
    "unable to execute the java",
    "java executable",
    "invalid choice: 'emulators'",
    "invalid choice: 'firestore'",
)


class FirestoreEmulator(GcloudEmulator):
    """The gcloud Firestore emulator (native mode) as a context manager.

    `gcloud emulators firestore start` in its own process group; ready once `GET /` answers
    "Ok" (~2 s here); `reset()` deletes every document of a database between tests; `stop()`
    kills the group (gcloud and java). Measured on this machine (gcloud 528, emulator 1.19.9,
    Java 17): a transaction that loses a write-write race on a document or query range waits
    ~2 s before it is aborted and retried, so contention tests stay small.
    Nothing here touches os.environ: apply `env()` (FIRESTORE_EMULATOR_HOST,
    GOOGLE_CLOUD_PROJECT) for code under test that builds its own client.
    """

    label = "Firestore"
    not_found_message = FIRESTORE_NOT_FOUND_MESSAGE
    missing_markers = _FIRESTORE_MISSING_MARKERS

    def command(self, gcloud: str, workdir: Path) -> list[str]:
        return [gcloud, "emulators", "firestore", "start", f"--host-port={self.host}", "--quiet"]

    def reset(self, database: str = "(default)") -> None:
        """Delete every document of `database` (the emulator's own reset endpoint)."""
        url = (f"http://{self.host}/emulator/v1/projects/{self.project}/databases/"
               f"{database}/documents")
        request = urllib.request.Request(url, method="DELETE")
        with urllib.request.urlopen(request, timeout=10) as resp:
            if resp.status != 200:
                raise EmulatorStartError(f"Firestore emulator reset answered {resp.status}")

    def env(self) -> dict[str, str]:
        """Environment that points google-cloud-firestore clients at this emulator."""
        return {"FIRESTORE_EMULATOR_HOST": self.host, "GOOGLE_CLOUD_PROJECT": self.project}
