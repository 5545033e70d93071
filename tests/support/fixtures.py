"""Pytest fixtures around the emulator harness, for `tests/conftest.py` to import.

Use: `from tests.support.fixtures import pubsub_emulator, pubsub_env, unique_name  # noqa: F401`.
"""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.support.emulators import PubSubEmulator

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
