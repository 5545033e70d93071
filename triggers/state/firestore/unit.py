"""The Firestore store's unit of work (`atomic()`: buffered writes committed in one batch) and
the mapping of google-cloud errors to the store's.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from pipeline_client.errors import ConfigError, TransientError
from triggers.state.firestore.documents import PROCESSED

if TYPE_CHECKING:
    from triggers.state.firestore.store import FirestoreStore


# ---------------------------------------------------------------------- unit of work
@dataclass
class Write:
    """One buffered write; `finishing` writes go in the last batch of a commit."""

    kind: Literal["set", "merge", "create", "update"]
    path: str
    data: dict[str, Any]
    update_time: Any = None  # "update": the precondition
    finishing: bool = False


class UnitOfWork:
    """The writes of one `atomic()` block (per thread), the documents they leave (`overlay`)
    and the model documents as first read in it (`read`: data or None, update time)."""

    def __init__(self) -> None:
        self.depth = 0
        self.writes: dict[str, Write] = {}
        self.overlay: dict[str, tuple[dict[str, Any] | None, Any]] = {}
        self.read: dict[str, tuple[dict[str, Any] | None, Any]] = {}

    def add(self, write: Write) -> None:
        """Later writes of one document replace earlier ones; writes of the same kind merge
        (the first one's precondition stays); a second create of one processed marker is the
        same create (the first stands)."""
        old = self.writes.get(write.path)
        marker = write.path.startswith(PROCESSED + "/")
        if old is not None and old.kind == write.kind and write.kind != "set":
            if write.kind == "create" and marker:
                return
            write = Write(write.kind, write.path, {**old.data, **write.data}, old.update_time,
                           old.finishing or write.finishing)
        if write.kind == "create" and marker:
            self.overlay[write.path] = (write.data, None)
        self.writes[write.path] = write


class Atomic:
    """`FirestoreStore.atomic()`: nested blocks join the outermost (a class: it is hot)."""

    def __init__(self, store: FirestoreStore) -> None:
        self.store = store

    def __enter__(self) -> UnitOfWork:
        unit = self.store._scope()
        if unit is None:
            unit = UnitOfWork()
            self.store._local.unit = unit
        unit.depth += 1
        return unit

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        unit = self.store._scope()
        assert unit is not None
        unit.depth -= 1
        if unit.depth:
            return
        self.store._local.unit = None
        if exc is not None:
            return  # discarded: nothing of the unit was committed (a claim commits itself)
        writes = list(unit.writes.values())
        for round_ in range(2):
            try:
                self.store._commit(writes, "atomic")
                return
            except Exists as exists:
                if self.store._finished_elsewhere(writes):
                    # a concurrent delivery of the message finished it: its unit stands
                    self.store._keep_decisions(writes)
                    return
                error: Exception = exists
                why = "a document this unit of work creates was created meanwhile"
            except Conflict as conflict:
                error = conflict
                why = ("a document this unit of work read (a run, or the model's champion "
                       "state) changed before it committed")
            remaining = self.store._rebased(writes, unit) if not round_ else None
            if remaining is None:
                raise TransientError(f"Firestore: {why} ({error}); retry the message") from error
            writes = remaining


class UnitTooLargeError(RuntimeError):
    """A unit of work holds more writes than one atomic commit takes (a bug or a policy file
    far beyond what one message should decide): never split, never half-applied."""


class Exists(Exception):
    """A `create` met an existing document (processed marker, rejected event, model)."""


class Conflict(Exception):
    """A conditional update met a document changed since it was read."""


def is_aborted(exc: BaseException) -> bool:
    """True when `exc` (or what caused it) is Firestore aborting a transaction for contention."""
    from google.api_core import exceptions

    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, exceptions.Aborted):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class Errors:
    """Maps google-cloud errors to the store's: transient ones to TransientError (a class:
    it is hot; the SDK's exception classes are imported only once an error happens)."""

    def __init__(self, operation: str, commit: bool = False) -> None:
        self.operation = operation
        self.commit = commit

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None or isinstance(exc, (TransientError, ConfigError, Exists, Conflict)):
            return
        from google.api_core import exceptions
        from google.auth import exceptions as auth_exceptions

        if self.commit and isinstance(exc, exceptions.AlreadyExists):
            raise Exists(str(exc)) from exc
        if self.commit and isinstance(exc, exceptions.FailedPrecondition):
            raise Conflict(str(exc)) from exc
        transient = (
            exceptions.ServiceUnavailable, exceptions.DeadlineExceeded, exceptions.Aborted,
            exceptions.InternalServerError, exceptions.ResourceExhausted, exceptions.Unknown,
            exceptions.GatewayTimeout, exceptions.Cancelled, exceptions.RetryError,
            auth_exceptions.TransportError,
        )
        if isinstance(exc, transient):
            raise TransientError(f"Firestore {self.operation} unavailable: {exc}") from exc
