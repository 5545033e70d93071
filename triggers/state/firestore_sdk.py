"""Every private name of google-cloud-firestore the Firestore store relies on, in one place:
the bounded claim transaction built on them, and `missing_private_names()` to check an SDK.

The store needs a read-write transaction whose BeginTransaction, Commit and Rollback RPCs
carry its own retry and timeout (the SDK's `Transaction._begin/_commit/_rollback` take
neither: up to 60 s each, retried), and whose retries keep their place in Firestore's lock
queue (`TransactionOptions.ReadWrite.retry_transaction`). The SDK exposes no public way to
do either, so `BoundedTransaction` calls the GAPIC client itself and feeds the SDK's reads
and writes through the transaction's private state. `PRIVATE_NAMES` lists each name used,
why, and the keywords passed to it; `tests/test_firestore_store.py` fails, naming the name
and the installed SDK version, when an upgrade drops or changes one. Written against
google-cloud-firestore 2.34.1 (pinned in requirements.txt). The SDK is imported on first
use only (cold start).
"""

from __future__ import annotations

import functools
import importlib
import inspect
from dataclasses import dataclass
from typing import Any

SDK_DISTRIBUTION = "google-cloud-firestore"
WRITTEN_FOR = "2.34.1"
_CLIENT = "google.cloud.firestore_v1.client.Client"
_TRANSACTION = "google.cloud.firestore_v1.transaction.Transaction"
_QUERY = "google.cloud.firestore_v1.base_query.BaseQuery"
_GAPIC = "google.cloud.firestore_v1.services.firestore.client.FirestoreClient"
_RPC_KEYWORDS = ("request", "metadata", "retry", "timeout")


@dataclass(frozen=True)
class PrivateName:
    """One SDK name outside its public API: where it lives, why we need it, and the keyword
    arguments we pass when we call it (checked against its signature)."""

    owner: str
    """Dotted path of the class that has it."""
    name: str
    why: str
    keywords: tuple[str, ...] = ()
    instance: bool = False
    """Set in `__init__` (checked on an instance, not on the class)."""


PRIVATE_NAMES: tuple[PrivateName, ...] = (
    PrivateName(
        _CLIENT, "_firestore_api",
        "the GAPIC FirestoreClient: BeginTransaction, Commit and Rollback are called on it "
        "directly so that each carries the store's retry and timeout and the begin carries "
        "retry_transaction (the SDK's Transaction methods pass neither)"),
    PrivateName(
        _CLIENT, "_database_string",
        "`projects/P/databases/D`, the `database` field of those three requests"),
    PrivateName(
        _CLIENT, "_rpc_metadata",
        "the metadata the SDK sends on every RPC (routing header, emulator credentials); "
        "our three calls must send the same"),
    PrivateName(
        _TRANSACTION, "_id", instance=True,
        why="the transaction id the SDK's transactional reads send (get_all, "
            "query.stream(transaction=...) read it through `id`/`in_progress`): set from our "
            "BeginTransaction's answer, cleared after commit or rollback"),
    PrivateName(
        _TRANSACTION, "_write_pbs", instance=True,
        why="the Write protos `create()`/`set()` buffered in the transaction: what our Commit "
            "sends, and how a read-only attempt is told apart (nothing to commit)"),
    PrivateName(
        _QUERY, "_to_protobuf",
        "the StructuredQuery a query runs: `FirestoreStore.executed_queries` records it so a "
        "test checks every query against deploy/firestore.indexes.json"),
)

GAPIC_CALLS: tuple[PrivateName, ...] = tuple(
    PrivateName(_GAPIC, rpc, f"the {rpc} RPC, reached through Client._firestore_api",
                keywords=_RPC_KEYWORDS)
    for rpc in ("begin_transaction", "commit", "rollback"))
"""Public methods, but of the object a private attribute hands us: their keywords are
checked too (the GAPIC surface changes with the SDK)."""


def installed_version() -> str:
    from importlib import metadata

    try:
        return metadata.version(SDK_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "not installed"


def _resolve(dotted: str) -> Any:
    module, _, attribute = dotted.rpartition(".")
    return getattr(importlib.import_module(module), attribute)


def _sample_instances() -> dict[str, Any]:
    """A client (never connected) and a transaction on it, to check instance attributes."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import firestore

    client = firestore.Client(project="sdk-check",
                              credentials=AnonymousCredentials())  # type: ignore[no-untyped-call]
    return {_CLIENT: client, _TRANSACTION: _resolve(_TRANSACTION)(client)}


def missing_private_names(names: tuple[PrivateName, ...] = PRIVATE_NAMES + GAPIC_CALLS
                          ) -> list[str]:
    """What the installed SDK lacks of `names`, one sentence each naming the attribute and
    the SDK version (empty when everything is there)."""
    version = installed_version()
    found: list[str] = []
    instances: dict[str, Any] | None = None
    for entry in names:
        where = f"{entry.owner}.{entry.name}"
        suffix = (f"({SDK_DISTRIBUTION} {version} is installed; the store was written "
                  f"against {WRITTEN_FOR}; needed for: {entry.why})")
        try:
            owner: Any = _resolve(entry.owner)
        except (ImportError, AttributeError) as exc:
            found.append(f"{entry.owner} cannot be imported ({exc}) {suffix}")
            continue
        if entry.instance:
            instances = instances if instances is not None else _sample_instances()
            owner = instances.get(entry.owner, owner)
        if entry.instance:
            present = hasattr(owner, entry.name)
        else:
            present = any(entry.name in vars(klass) for klass in inspect.getmro(owner))
        if not present:
            found.append(f"{where} is missing {suffix}")
            continue
        if entry.keywords:
            try:
                parameters = inspect.signature(getattr(owner, entry.name)).parameters
            except (TypeError, ValueError) as exc:
                found.append(f"{where} has no readable signature ({exc}) {suffix}")
                continue
            takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
            lacking = [k for k in entry.keywords if k not in parameters and not takes_any]
            if lacking:
                found.append(f"{where} no longer takes keyword(s) {', '.join(lacking)} "
                             f"{suffix}")
    return found


def query_protobuf(query: Any) -> Any:
    """The StructuredQuery `query` runs (see PRIVATE_NAMES: `BaseQuery._to_protobuf`)."""
    return query._to_protobuf()


def bounded_transaction(client: Any, retry: Any, commit_retry: Any, timeout: float) -> Any:
    """A `BoundedTransaction` on `client` (the SDK is imported here, on first use)."""
    return _transaction_class()(client, retry, commit_retry, timeout)


@functools.cache
def _transaction_class() -> Any:
    """Defined on first use: the SDK is imported lazily."""
    from google.cloud.firestore_v1.transaction import Transaction
    from google.cloud.firestore_v1.types import common

    class BoundedTransaction(Transaction):
        """A read-write transaction whose RPCs carry our retry and timeout. Our own method
        names (not the SDK's `_begin/_commit/_rollback`): nothing in the SDK calls them."""

        def __init__(self, client: Any, retry: Any, commit_retry: Any, timeout: float) -> None:
            super().__init__(client, max_attempts=1)
            self._bounds = {"retry": retry, "timeout": timeout}
            self._commit_bounds = {"retry": commit_retry, "timeout": timeout}

        @property
        def has_writes(self) -> bool:
            return bool(self._write_pbs)

        def begin_bounded(self, retry_transaction: bytes | None = None) -> bytes:
            """BeginTransaction; `retry_transaction` (the id of the operation's first
            attempt, as `_Transactional.retry_id` in the SDK) keeps the operation's priority
            for the locks it waits on. Returns the new id."""
            client = self._client
            request: dict[str, Any] = {"database": client._database_string}
            if retry_transaction is not None:
                request["options"] = common.TransactionOptions(
                    read_write=common.TransactionOptions.ReadWrite(
                        retry_transaction=retry_transaction))
            response = client._firestore_api.begin_transaction(
                request=request, metadata=client._rpc_metadata, **self._bounds)
            self._id = response.transaction
            transaction_id: bytes = response.transaction
            return transaction_id

        def commit_bounded(self) -> list[Any]:
            client = self._client
            response = client._firestore_api.commit(
                request={"database": client._database_string, "writes": self._write_pbs,
                         "transaction": self._id},
                metadata=client._rpc_metadata, **self._commit_bounds)
            self._forget()
            self.write_results = list(response.write_results)
            self.commit_time = response.commit_time
            return self.write_results

        def rollback_quietly(self) -> None:
            """Best effort (bounded): an abandoned transaction expires on its own."""
            if not self.in_progress:
                return
            client = self._client
            try:
                client._firestore_api.rollback(
                    request={"database": client._database_string, "transaction": self._id},
                    metadata=client._rpc_metadata, **self._bounds)
            except Exception:  # noqa: BLE001 - the error that led here matters more
                pass
            finally:
                self._forget()

        def _forget(self) -> None:
            """No longer in progress, nothing buffered (what the SDK's `_clean_up` does)."""
            self._write_pbs = []
            self._id = None

    return BoundedTransaction
