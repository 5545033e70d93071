"""Firestore implementation of the state store, for `RETRAIN_STATE=firestore://[database]`:
the shared, serverless state of a service that scales out (every instance sees one store).

URL: `firestore://` ("(default)" database) or `firestore://DATABASE`, with optional
`?retention=400d` (how long points, processed markers, decisions and rejected events are
kept: their `expire_at` field, which a Firestore TTL policy deletes; `none` — and only
`none` — keeps them forever, `0` is an error; keep it longer than the oldest point a policy
reads — a baseline's reference points are its champion's first ones, however old) and
`?timeout=10s` (per RPC, transaction begin/commit/rollback included; retries stop within it
too). Processed-message markers are kept at least 31 days whatever `retention` says: Pub/Sub
keeps a message (and may redeliver it, or replay it with seek) for at most 31 days — the
topic retention's maximum — and a marker that expired earlier would let a redelivery launch
again. The project is GOOGLE_CLOUD_PROJECT (or what google.auth finds); FIRESTORE_EMULATOR_HOST
is honoured by the client. `google.cloud.firestore` is imported and the client built on the
first store call, never at import or construction (cold start); a setup that cannot build it
(no credentials, no project, SDK missing) raises ConfigError naming RETRAIN_STATE there.

Document layout (ids are deterministic, so a retried write lands on the same document):

- `retrain_models/{model}`: champion state; also the claim lock (see below).
- `retrain_models/{model}/retrain_series/{slice,metric}/retrain_points/{window_end}`: one
  series per subcollection, so the hot query (latest N points of a series by event time, or a
  window of them) is a range on `window_end` served by the automatic single-field index.
  `latest_points(model)` is a collection-group query (composite index).
- `retrain_runs/{run_id}`, `retrain_decisions/{decision_id}`: top level, queried by `model`
  and time; decisions carry `written_ns` so equal times come back newest write first.
- `retrain_processed/{sha256(message_id)}`, `retrain_rejected/{sha256(message_id)}`: created
  with `create()`, so a second delivery gets AlreadyExists.
Every query and its index is declared in `deploy/firestore.indexes.json` (a test checks it).

The run claim is ONE transaction: it reads the run's document and the model's document,
queries the model's in-flight runs and its runs inside the guard window, checks the guards
and writes the run (`create`) and the model document (`claim_last_*` fields). Every claim of a
model reads and writes that one model document, so two concurrent claims always conflict and
Firestore serialises them (one retries and then sees the other's run) — whether or not the
backend also locks query ranges. Two instances handling breaching events at once launch one run.
A plain read answers first what needs no write (the run exists, a guard blocks), so the
breaching events that follow a launch cost no transaction; a transaction aborted by contention
is retried after a random pause (the emulator aborts every party of a write-write race after
~2 s, and immediate retries would collide again in lockstep), and every retry's
BeginTransaction names the claim's first attempt (`retry_transaction`, as the SDK's own retry
does) so the claim keeps the priority for the locks it had when it began (the SDK internals
this takes are isolated in `state.firestore_sdk`). Lock priority decides who waits, never
what a claim sees: each attempt reads afresh inside its own transaction.
A run the model's run queries already hold (another delivery of the same message claimed it
between our reads) is resumed, never reported as blocked by itself.

The claim also checks the champion: on SQLite the champion read, the evaluation and the claim
see one state (one lock); here a promotion can commit in between. So the claim's reads compare
the model document's `champion_version` and `history_start` with the state the evaluation used
— what `model_state` returned inside the current `atomic()` unit, or else the run request's
`parameters.champion_version` ("" meaning none) — and raise TransientError when they differ
(5xx → redelivery re-evaluates on the new state). A champion the unit adopts (first version
seen) is written by the claim's own transaction when the unit claims a run, so a run is never
committed for a champion that is not committed with it.

What `atomic()` means here. Firestore cannot hold a lock over arbitrary reads and writes the
way SQLite's `BEGIN IMMEDIATE` does, so `atomic()` is a *unit of work*, not a lock:

- Writes that finish something — decisions, model state, run updates, the processed marker —
  are buffered and committed in ONE batch when the outermost `atomic()` exits (discarded if it
  raises). A run update carries a precondition on the run document's update time, and so does
  a champion change after `model_state` was read in the unit (`create` if the model document
  was missing then): the batch is a compare-and-set, and a concurrent change fails it
  (TransientError → 5xx → redelivery, which then sees the winner). An outcome's run end,
  champion, audit and ack are therefore all or nothing, as on SQLite. Reads inside the unit
  see its buffered documents and the model state as first read (repeatable); queries see only
  committed data. A unit is one batch or nothing: more than 500 writes raise
  UnitTooLargeError rather than being split into batches that are not atomic together.
- Points are written through at once, never buffered: a delivery writes its point before it
  reads the series, so of two concurrent deliveries at least one sees both points (what
  SQLite's lock gave us; the service re-evaluates later points after a late one).
- `claim_run` commits its own transaction at once: the claim must be durable before the
  launch it guards, which the service submits after `atomic()`.
Exactly once then rests on: deterministic run ids (a redelivery resumes the same claim and
resubmits the same id; "already exists" is success), the transactional claim, and the
processed marker created last — in the same batch as the message's decisions, so a message is
never marked processed without them. A crash before that batch leaves the message
unprocessed: Pub/Sub redelivers it and it is processed again, idempotently. Two concurrent
deliveries of one message may both get this far: the second batch fails on AlreadyExists and
is dropped when — and only when — its processed marker now exists (the first already wrote
the same decisions); any other AlreadyExists is a TransientError, never acknowledged.

Transient Firestore errors (Unavailable, DeadlineExceeded, Aborted after the transaction's
retries, ResourceExhausted, Internal, timeouts) raise `triggers.errors.TransientError`; the
rest (PermissionDenied, a missing index, ...) propagate as they are, loudly.

Modules: `store` (FirestoreStore, the StateStore methods), `claim` (the run claim transaction),
`unit` (the unit of work and error mapping), `documents` (layout, encoding, retention).
"""

from __future__ import annotations

from triggers.state.firestore.documents import (
    COLLECTION_GROUPS,
    DECISIONS,
    DEFAULT_RETENTION,
    EXPIRING,
    INCIDENTS,
    MODELS,
    OUTBOX,
    POINTS,
    PROCESSED,
    PROCESSED_MIN_RETENTION,
    REJECTED,
    RUNS,
    SERIES,
    doc_id_of,
    key_of,
    point_path,
)
from triggers.state.firestore.settings import DEFAULT_DATABASE, DEFAULT_TIMEOUT
from triggers.state.firestore.store import MAX_BATCH_WRITES, FirestoreStore
from triggers.state.firestore.unit import UnitTooLargeError

__all__ = [
    "COLLECTION_GROUPS",
    "DECISIONS",
    "DEFAULT_DATABASE",
    "DEFAULT_RETENTION",
    "DEFAULT_TIMEOUT",
    "EXPIRING",
    "INCIDENTS",
    "MAX_BATCH_WRITES",
    "MODELS",
    "OUTBOX",
    "POINTS",
    "PROCESSED",
    "PROCESSED_MIN_RETENTION",
    "REJECTED",
    "RUNS",
    "SERIES",
    "FirestoreStore",
    "UnitTooLargeError",
    "doc_id_of",
    "key_of",
    "point_path",
]
