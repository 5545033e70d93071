"""Doctor's Firestore checks: the database, every index the store's queries need
(deploy/firestore.indexes.json) and a probe document written, queried and deleted."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from triggers.tools.doctor.google import GoogleApiError

if TYPE_CHECKING:
    from triggers.tools.doctor.checks import Context

ROOT = Path(__file__).resolve().parents[3]
INDEXES_FILE = ROOT / "deploy" / "firestore.indexes.json"
PROBE_COLLECTION = "retrain_doctor"


def check_firestore(ctx: Context) -> None:
    s = ctx.settings
    db = f"projects/{ctx.p}/databases/{s.database}"
    flags = f"--database={s.database} --project={ctx.p}"
    try:
        ctx.apis.call("GET", "firestore_admin", f"/v1/{db}")
    except GoogleApiError as exc:
        fix = (f"gcloud firestore databases create --database={s.database} "
               f"--location={s.location} --type=firestore-native --project={ctx.p}")
        ctx.report.fail("firestore", f"database {s.database}",
                        "the database does not exist" if exc.status == 404 else str(exc), fix)
        return
    ctx.report.ok("firestore", f"database {s.database}")
    expected = json.loads(s.indexes_file.read_text(encoding="utf-8"))
    try:
        indexes = _list_all(ctx, f"/v1/{db}/collectionGroups/-/indexes", "indexes")
        fields = _list_all(ctx, f"/v1/{db}/collectionGroups/-/fields", "fields",
                           {"filter": "ttlConfig:*"})
    except GoogleApiError as exc:
        ctx.report.fail("firestore", "indexes and TTL policies", f"Firestore admin: {exc}",
                        f"gcloud firestore indexes composite list {flags}")
        return
    for index in expected.get("indexes", []):
        _check_index(ctx, index, indexes, flags)
    ttl_states = {_field_key(f["name"]): (f.get("ttlConfig") or {}).get("state", "")
                  for f in fields}
    for override in expected.get("fieldOverrides", []):
        if not override.get("ttl"):
            continue
        key = (override["collectionGroup"], override["fieldPath"])
        state = ttl_states.get(key)
        check = f"TTL {key[0]}.{key[1]}"
        fix = (f"gcloud firestore fields ttls update {key[1]} --collection-group={key[0]} "
               f"--enable-ttl {flags}")
        if state == "ACTIVE":
            ctx.report.ok("firestore", check, "ACTIVE")
        elif state == "CREATING":
            ctx.report.fail("firestore", check, "the TTL policy is still being applied "
                            "(CREATING); old documents are not deleted yet",
                            f"wait, then check: gcloud firestore fields ttls list {flags}")
        else:
            ctx.report.fail("firestore", check, f"the TTL policy is {state or 'not set'}, "
                            "not ACTIVE", fix)
    _probe_documents(ctx, db)


def _check_index(ctx: Context, index: Mapping[str, Any], listed: list[dict[str, Any]],
                 flags: str) -> None:
    group = index["collectionGroup"]
    scope = index.get("queryScope", "COLLECTION")
    want = [(f["fieldPath"], f.get("order") or f.get("arrayConfig")) for f in index["fields"]]
    label = f"index {group}(" + ", ".join(f"{p} {o.lower()}" for p, o in want) + ")"
    found = None
    for item in listed:
        got = [(f.get("fieldPath"), f.get("order") or f.get("arrayConfig"))
               for f in item.get("fields") or []]
        if got and got[-1][0] == "__name__" and "__name__" not in {p for p, _ in want}:
            got = got[:-1]  # Firestore lists the implicit __name__ ordering too
        if (item.get("name", "").split("/collectionGroups/")[-1].split("/")[0] == group
                and item.get("queryScope", "COLLECTION") == scope and got == want):
            found = item
            break
    field_flags = " ".join(
        f"--field-config=field-path={p},"
        + (f"order={o.lower()}" if o in ("ASCENDING", "DESCENDING")
           else f"array-config={o.lower()}")
        for p, o in want)
    create = (f"gcloud firestore indexes composite create --collection-group={group} "
              f"--query-scope={scope.lower().replace('_', '-')} {field_flags} {flags}")
    if found is None:
        ctx.report.fail("firestore", label, "the composite index does not exist", create)
    elif found.get("state") == "READY":
        ctx.report.ok("firestore", label, "READY")
    elif found.get("state") == "CREATING":
        ctx.report.fail("firestore", label, "the index is still building (CREATING): "
                        "queries that need it fail until it is READY",
                        f"wait, then check: gcloud firestore indexes composite list {flags}")
    else:
        ctx.report.fail("firestore", label, f"the index is {found.get('state')}, not READY",
                        f"gcloud firestore indexes composite delete {found.get('name', '')} "
                        f"{flags}\n{create}")


def _field_key(name: str) -> tuple[str, str]:
    # projects/P/databases/D/collectionGroups/G/fields/F
    parts = name.split("/")
    return parts[-3], parts[-1]


def _list_all(ctx: Context, path: str, key: str,
              params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    token = None
    while True:
        query = dict(params or {})
        if token:
            query["pageToken"] = token
        page = ctx.apis.call("GET", "firestore_admin", path, params=query)
        items += page.get(key) or []
        token = page.get("nextPageToken")
        if not token:
            return items


def _probe_documents(ctx: Context, db: str) -> None:
    """Writes, queries and deletes one document as the runtime account: proves the database
    answers and that the account holds datastore.entities.* on it (conditions included)."""
    account = ctx.settings.account("runtime")
    check = f"{account.split('@')[0]} writes and reads {ctx.settings.database}"
    if account not in ctx.usable:
        ctx.report.skip("firestore", check, f"cannot act as {account} (see accounts)")
        return
    doc_id = f"probe-{uuid.uuid4().hex[:12]}"
    documents = f"/v1/{db}/documents"
    try:
        ctx.apis.call("POST", "firestore", f"{documents}/{PROBE_COLLECTION}",
                      params={"documentId": doc_id},
                      body={"fields": {"by": {"stringValue": "retrain-trigger doctor"}}},
                      as_account=account)
        ctx.apis.call("POST", "firestore", f"{documents}:runQuery", as_account=account,
                      body={"structuredQuery": {"from": [{"collectionId": PROBE_COLLECTION}],
                                                "limit": 1}})
        ctx.apis.call("DELETE", "firestore", f"{documents}/{PROBE_COLLECTION}/{doc_id}",
                      as_account=account)
    except GoogleApiError as exc:
        ctx.report.fail(
            "firestore", check, f"{account} cannot use the database: {exc}",
            f"gcloud projects add-iam-policy-binding {ctx.p} --member=serviceAccount:{account} "
            "--role=roles/datastore.user --condition='expression=resource.name == "
            f"\"{db}\",title=retrain-trigger-database-only'")
        return
    ctx.report.ok("firestore", check, "create, query, delete")
