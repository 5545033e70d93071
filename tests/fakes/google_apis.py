"""Wire-level fakes of the Google APIs `retrain-trigger doctor` calls that have no emulator:
Service Usage, Resource Manager, IAM, IAM Credentials, Cloud Storage (bucket IAM), Pub/Sub IAM,
the Firestore admin API and Eventarc (triggers). One HTTP server per API, all reading one
`FakeProject`; each request is matched to its method and checked against the API's discovery
document first (a broken request is answered 400 and kept in `violations`).

Identity: IAM Credentials issues `fake-token-for:<account>` (only for accounts in
`FakeProject.token_creator_on`); a testIamPermissions call answers what `grants` give the
account its bearer token names, on that resource ("projects/P", "projects/P/serviceAccounts/A",
"b/BUCKET", "projects/P/topics/T").
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.fakes.google_discovery_rules import DiscoveryRules, Method
from tests.fakes.loopback import LoopbackServer

TOKEN_PREFIX = "fake-token-for:"


@dataclass
class FakeProject:
    """The state of one project as the fakes show it."""

    project: str
    enabled_services: set[str] = field(default_factory=set)
    service_accounts: set[str] = field(default_factory=set)
    token_creator_on: set[str] = field(default_factory=set)
    grants: dict[tuple[str, str], set[str]] = field(default_factory=dict)  # (account, resource)
    buckets: set[str] = field(default_factory=set)
    databases: set[str] = field(default_factory=set)
    indexes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # database -> list
    fields: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # database -> list
    triggers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # location -> list

    def grant(self, account: str, resource: str, *permissions: str) -> None:
        self.grants.setdefault((account, resource), set()).update(permissions)

    def revoke(self, account: str, resource: str, permission: str) -> None:
        self.grants.get((account, resource), set()).discard(permission)


@dataclass(frozen=True)
class Call:
    method_id: str
    path: str
    query: dict[str, list[str]]
    body: Any
    caller: str | None  # the account of the bearer token, None for the operator


Reply = tuple[int, Any]


def error(status: int, code: str, message: str) -> Reply:
    return status, {"error": {"code": status, "message": message, "status": code}}


class FakeGoogleApi:
    """One API's fake: an HTTP server on 127.0.0.1 whose methods come from `document`."""

    document = ""

    def __init__(self, state: FakeProject) -> None:
        self.state = state
        self.rules = DiscoveryRules(self.document)
        self.calls: list[Call] = []
        self.violations: list[str] = []
        self._lock = threading.Lock()
        self._http = LoopbackServer(self._serve, type(self).__name__)

    @property
    def endpoint(self) -> str:
        return self._http.endpoint

    def __enter__(self) -> FakeGoogleApi:
        self._http.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._http.stop()

    def handle(self, method: Method, call: Call) -> Reply:
        raise NotImplementedError

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        split = urlsplit(handler.path)
        path = unquote(split.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        query = parse_qs(split.query, keep_blank_values=True)
        auth = handler.headers.get("Authorization") or ""
        caller = auth.split(TOKEN_PREFIX, 1)[1] if TOKEN_PREFIX in auth else None
        method = self.rules.match(handler.command, path)
        if method is None:
            status, payload = error(404, "NOT_FOUND", f"no method for {handler.command} {path}")
            with self._lock:
                self.violations.append(f"{handler.command} {path}: no such method")
        else:
            call = Call(method.id, path, query, body, caller)
            problems = self.rules.problems(method, path, query, body)
            with self._lock:
                self.calls.append(call)
                self.violations += [f"{method.id}: {p}" for p in problems]
            if problems:
                status, payload = error(400, "INVALID_ARGUMENT", "; ".join(problems))
            else:
                status, payload = self.handle(method, call)
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _test(self, call: Call, resource: str, asked: list[str]) -> Reply:
        held = self.state.grants.get((call.caller or "operator", resource), set())
        return 200, {"permissions": [p for p in asked if p in held]} if any(
            p in held for p in asked) else {}


class FakeServiceUsage(FakeGoogleApi):
    document = "serviceusage.v1.json"

    def handle(self, method: Method, call: Call) -> Reply:
        parent = call.path.split("/v1/", 1)[1].rsplit("/services", 1)[0]
        if parent != f"projects/{self.state.project}":
            return error(403, "PERMISSION_DENIED", f"no access to {parent}")
        services = [{"name": f"{parent}/services/{s}", "config": {"name": s},
                     "state": "ENABLED", "parent": parent}
                    for s in sorted(self.state.enabled_services)]
        if call.query.get("filter") != ["state:ENABLED"]:
            return error(400, "INVALID_ARGUMENT", "this fake lists enabled services only")
        size = int(call.query.get("pageSize", ["50"])[0])
        start = int(call.query.get("pageToken", ["0"])[0] or 0)
        page: dict[str, Any] = {"services": services[start:start + size]}
        if start + size < len(services):
            page["nextPageToken"] = str(start + size)
        return 200, page


class FakeResourceManager(FakeGoogleApi):
    document = "cloudresourcemanager.v1.json"

    def handle(self, method: Method, call: Call) -> Reply:
        project = call.path.split("/v1/projects/", 1)[1].split(":", 1)[0]
        if project != self.state.project:
            return error(403, "PERMISSION_DENIED", f"no access to project {project}")
        return self._test(call, f"projects/{project}", call.body.get("permissions") or [])


class FakeIam(FakeGoogleApi):
    document = "iam.v1.json"

    def handle(self, method: Method, call: Call) -> Reply:
        name = call.path.split("/v1/", 1)[1].split(":", 1)[0]
        email = name.rsplit("/", 1)[1]
        if email not in self.state.service_accounts:
            return error(404, "NOT_FOUND", f"Unknown service account {email}")
        if method.id == "iam.projects.serviceAccounts.get":
            return 200, {"name": name, "email": email, "projectId": self.state.project}
        return self._test(call, name, call.body.get("permissions") or [])


class FakeIamCredentials(FakeGoogleApi):
    document = "iamcredentials.v1.json"

    def handle(self, method: Method, call: Call) -> Reply:
        email = call.path.split("/serviceAccounts/", 1)[1].split(":", 1)[0]
        if email not in self.state.token_creator_on:
            return error(403, "PERMISSION_DENIED", "Permission 'iam.serviceAccounts."
                         "getAccessToken' denied on resource (or it may not exist).")
        return 200, {"accessToken": TOKEN_PREFIX + email, "expireTime": "2099-01-01T00:00:00Z"}


class FakeStorage(FakeGoogleApi):
    document = "storage.v1.json"

    def handle(self, method: Method, call: Call) -> Reply:
        bucket = call.path.split("/b/", 1)[1].split("/", 1)[0]
        if bucket not in self.state.buckets:
            return error(404, "NOT_FOUND", "The specified bucket does not exist.")
        held = self.state.grants.get((call.caller or "operator", f"b/{bucket}"), set())
        return 200, {"kind": "storage#testIamPermissionsResponse",
                     "permissions": [p for p in call.query["permissions"] if p in held]}


class FakePubSubIam(FakeGoogleApi):
    document = "pubsub.v1.json"

    def handle(self, method: Method, call: Call) -> Reply:
        if method.id != "pubsub.projects.topics.testIamPermissions":
            return error(501, "UNIMPLEMENTED", f"{method.id}: use the Pub/Sub emulator")
        topic = call.path.split("/v1/", 1)[1].split(":", 1)[0]
        return self._test(call, topic, call.body.get("permissions") or [])


class FakeFirestoreAdmin(FakeGoogleApi):
    document = "firestore.v1.json"

    def handle(self, method: Method, call: Call) -> Reply:
        rest = call.path.split(f"/v1/projects/{self.state.project}/databases/", 1)
        if len(rest) != 2:
            return error(403, "PERMISSION_DENIED", "another project")
        database = rest[1].split("/", 1)[0]
        if database not in self.state.databases:
            return error(404, "NOT_FOUND", f"Database {database} not found")
        name = f"projects/{self.state.project}/databases/{database}"
        if method.id == "firestore.projects.databases.get":
            return 200, {"name": name, "type": "FIRESTORE_NATIVE"}
        if method.id == "firestore.projects.databases.collectionGroups.indexes.list":
            return 200, {"indexes": self.state.indexes.get(database, [])}
        if method.id == "firestore.projects.databases.collectionGroups.fields.list":
            if call.query.get("filter") not in (["ttlConfig:*"],
                                                ["indexConfig.usesAncestorConfig:false"]):
                return error(400, "INVALID_ARGUMENT", "ListFields supports only overridden "
                             "fields: filter ttlConfig:* or indexConfig.usesAncestorConfig:false")
            return 200, {"fields": self.state.fields.get(database, [])}
        return error(501, "UNIMPLEMENTED", method.id)


class FakeEventarc(FakeGoogleApi):
    """Eventarc's triggers, read only (ListTriggers), paged: "the service may send fewer"
    than `pageSize` (default here: 2, so callers must follow `nextPageToken`)."""

    document = "eventarc.v1.json"
    page_size = 2

    def handle(self, method: Method, call: Call) -> Reply:
        if method.id != "eventarc.projects.locations.triggers.list":
            return error(501, "UNIMPLEMENTED", method.id)
        rest = call.path.split(f"/v1/projects/{self.state.project}/locations/", 1)
        if len(rest) != 2:
            return error(403, "PERMISSION_DENIED", "another project")
        location = rest[1].split("/", 1)[0]
        triggers = self.state.triggers.get(location, [])
        size = min(int((call.query.get("pageSize") or ["0"])[0]) or self.page_size,
                   self.page_size)
        start = int((call.query.get("pageToken") or ["0"])[0] or 0)
        page: dict[str, Any] = {"triggers": triggers[start:start + size]}
        if start + size < len(triggers):
            page["nextPageToken"] = str(start + size)
        return 200, page


ALL_FAKES: dict[str, type[FakeGoogleApi]] = {
    "RETRAIN_SERVICEUSAGE_ENDPOINT": FakeServiceUsage,
    "RETRAIN_RESOURCEMANAGER_ENDPOINT": FakeResourceManager,
    "RETRAIN_IAM_ENDPOINT": FakeIam,
    "RETRAIN_IAMCREDENTIALS_ENDPOINT": FakeIamCredentials,
    "RETRAIN_STORAGE_ENDPOINT": FakeStorage,
    "RETRAIN_PUBSUB_ENDPOINT": FakePubSubIam,
    "RETRAIN_FIRESTORE_ENDPOINT": FakeFirestoreAdmin,
    "RETRAIN_EVENTARC_ENDPOINT": FakeEventarc,
}
