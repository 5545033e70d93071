"""Pytest fixtures around the emulator harness, for `tests/conftest.py` to import.

Use: `from tests.support.fixtures import pubsub_emulator, pubsub_env, unique_name  # noqa: F401`
(and `firestore_emulator, firestore_env` for the Firestore emulator).
"""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.support.emulators import FirestoreEmulator, PubSubEmulator

_counter = itertools.count(1)
_lock = threading.Lock()
_shared: PubSubEmulator | None = None
_users = 0


@pytest.fixture(scope="session")
def pubsub_emulator() -> Iterator[PubSubEmulator]:
    """One Pub/Sub emulator for the whole session (~1.7 s to start); killed at the end.

    Importing this fixture into several modules (or conftest and a module) still starts one
    emulator: the instance is shared and stopped when its last user finalises.
    It does not touch os.environ; tests whose code builds its own clients use `pubsub_env`.
    A missing gcloud/emulator fails the test with "gcloud Pub/Sub emulator not found: ...".
    """
    global _shared, _users
    with _lock:
        if _shared is None:
            emulator = PubSubEmulator()
            emulator.start()
            _shared = emulator
        _users += 1
        emulator = _shared
    try:
        yield emulator
    finally:
        with _lock:
            _users -= 1
            if _users == 0:
                _shared = None
                emulator.stop()


@pytest.fixture
def pubsub_env(pubsub_emulator: PubSubEmulator, monkeypatch: pytest.MonkeyPatch) -> PubSubEmulator:
    """The session emulator with PUBSUB_EMULATOR_HOST/PUBSUB_PROJECT_ID set for one test."""
    for key, value in pubsub_emulator.env().items():
        monkeypatch.setenv(key, value)
    return pubsub_emulator


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """Make Pub/Sub-valid names unique within the shared emulator: `unique_name("events")`."""
    run = uuid.uuid4().hex[:6]

    def make(prefix: str) -> str:
        return f"{prefix}-{run}-{next(_counter)}"

    return make


_firestore_lock = threading.Lock()
_firestore_shared: FirestoreEmulator | None = None
_firestore_users = 0


@pytest.fixture(scope="session")
def firestore_emulator() -> Iterator[FirestoreEmulator]:
    """One Firestore emulator for the whole session (~2 s to start); killed at the end.

    Shared like `pubsub_emulator` when imported into several modules. It does not touch
    os.environ (use `firestore_env`). A missing gcloud/emulator fails the test with
    "gcloud Firestore emulator not found: ...".
    """
    global _firestore_shared, _firestore_users
    with _firestore_lock:
        if _firestore_shared is None:
            emulator = FirestoreEmulator()
            emulator.start()
            _firestore_shared = emulator
        _firestore_users += 1
        emulator = _firestore_shared
    try:
        yield emulator
    finally:
        with _firestore_lock:
            _firestore_users -= 1
            if _firestore_users == 0:
                _firestore_shared = None
                emulator.stop()


@pytest.fixture
def firestore_env(
    firestore_emulator: FirestoreEmulator, monkeypatch: pytest.MonkeyPatch
) -> FirestoreEmulator:
    """The session emulator, emptied, with FIRESTORE_EMULATOR_HOST and GOOGLE_CLOUD_PROJECT
    set for one test."""
    firestore_emulator.reset()
    for key, value in firestore_emulator.env().items():
        monkeypatch.setenv(key, value)
    return firestore_emulator
