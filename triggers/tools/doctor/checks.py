"""Doctor's checks of one Google Cloud project: APIs, service accounts and their permissions,
templates, registry, Firestore, Pub/Sub; each failure names what is wrong and its fix."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from triggers.tools.doctor.firestore import INDEXES_FILE, check_firestore
from triggers.tools.doctor.google import GoogleApiError, GoogleApis, ImpersonationError
from triggers.tools.doctor.permissions import Account, Need, Resource, needs
from triggers.tools.doctor.report import Report

ROOT = Path(__file__).resolve().parents[3]
# What deploy/ enables (deploy/gcloud/deploy.sh), plus what doctor itself calls.
REQUIRED_APIS = (
    "aiplatform", "artifactregistry", "cloudbuild", "cloudfunctions", "cloudresourcemanager",
    "eventarc", "firestore", "iam", "iamcredentials", "logging", "pubsub", "run",
    "serviceusage", "storage",
)
SERVICE_PARAMETERS = ("model", "trigger_id", "reason", "champion_version")
_GS = re.compile(r"^gs://(?P<bucket>[^/]+)(?:/.*)?$")


@dataclass(frozen=True)
class DoctorSettings:
    """What to check: the project, its region, the policy file and the names deploy/ uses."""

    project: str
    location: str = "us-central1"
    policy_file: str = ""
    database: str = "retrain-trigger"
    runtime_account_id: str = "retrain-trigger"
    pipeline_account_id: str = "retrain-pipeline"
    metrics_topic: str = "model-metrics"
    metrics_dead_letter: str = "model-metrics-dead-letter"
    outcome_topic: str = "retrain-outcomes"
    outcome_dead_letter: str = "retrain-outcomes-dead-letter"
    evaluation_dead_letter: str = "retrain-evaluations-dead-letter"
    decisions_topic: str | None = None
    evaluation_bucket: str | None = None  # None: <project>-retrain-evaluations, as deploy/
    vertex_endpoint: str | None = None
    indexes_file: Path = INDEXES_FILE
    smoke: bool = False
    smoke_timeout: float = 900.0
    smoke_poll: float = 10.0

    def account(self, which: Account) -> str:
        account_id = self.runtime_account_id if which == "runtime" else self.pipeline_account_id
        return f"{account_id}@{self.project}.iam.gserviceaccount.com"

    def topic_path(self, topic: str) -> str:
        return topic if topic.startswith("projects/") else f"projects/{self.project}/topics/{topic}"


@dataclass
class Context:
    """What earlier checks learned that later ones use."""

    settings: DoctorSettings
    apis: GoogleApis
    report: Report
    config: Any = None  # triggers.config.ServiceConfig once the policy file loaded
    usable: set[str] = field(default_factory=set)  # accounts doctor could impersonate
    root_buckets: dict[str, set[str]] = field(default_factory=dict)  # bucket -> models
    template_buckets: dict[str, set[str]] = field(default_factory=dict)

    @property
    def p(self) -> str:
        return self.settings.project


def run_checks(settings: DoctorSettings, apis: GoogleApis) -> Report:
    """Every check, in order; a check whose prerequisite failed is reported as skipped."""
    ctx = Context(settings, apis, Report(settings.project))
    check_apis(ctx)
    check_policy_file(ctx)
    check_accounts(ctx)
    check_templates(ctx)
    check_permissions(ctx)
    check_registry(ctx)
    check_firestore(ctx)
    check_topics(ctx)
    if settings.smoke:
        from triggers.tools.doctor.smoke import check_smoke

        check_smoke(ctx)
    return ctx.report


# --- APIs ---------------------------------------------------------------------------------------


def check_apis(ctx: Context) -> None:
    enabled: set[str] = set()
    token: str | None = None
    try:
        while True:
            params = {"filter": "state:ENABLED", "pageSize": 200}
            if token:
                params["pageToken"] = token
            page = ctx.apis.call("GET", "serviceusage", f"/v1/projects/{ctx.p}/services",
                                 params=params)
            for service in page.get("services") or []:
                enabled.add(str((service.get("config") or {}).get("name")
                                or str(service.get("name", "")).rsplit("/", 1)[-1]))
            token = page.get("nextPageToken")
            if not token:
                break
    except GoogleApiError as exc:
        ctx.report.fail("apis", "list enabled services", f"Service Usage answered {exc}",
                        f"gcloud services enable serviceusage.googleapis.com --project={ctx.p}")
        return
    for api in REQUIRED_APIS:
        name = f"{api}.googleapis.com"
        if name in enabled:
            ctx.report.ok("apis", f"{name} enabled")
        else:
            ctx.report.fail("apis", f"{name} enabled", f"the {name} API is not enabled",
                            f"gcloud services enable {name} --project={ctx.p}")


# --- policy file and templates ------------------------------------------------------------------


def check_policy_file(ctx: Context) -> None:
    from triggers.config import load_policy_file
    from triggers.errors import RetrainError

    path = ctx.settings.policy_file
    if not path:
        ctx.report.fail("templates", "policy file", "no policy file: pass --policies or set "
                        "RETRAIN_POLICY_FILE", "export RETRAIN_POLICY_FILE=policies.yaml")
        return
    try:
        ctx.config = load_policy_file(path)
    except (RetrainError, OSError) as exc:
        ctx.report.fail("templates", f"policy file {path}", str(exc),
                        f"retrain-trigger validate {path}")
        return
    ctx.report.ok("templates", f"policy file {path}",
                  f"{len(ctx.config.models)} model(s): {', '.join(ctx.config.models)}")


def check_templates(ctx: Context) -> None:
    """Each model's template loads, declares every parameter the service passes, runs as the
    pipeline account and has a pipeline_root."""
    from pipeline_client.launching.templates import fetch_template
    from triggers.errors import RetrainError

    if ctx.config is None:
        return
    pipeline_account = ctx.settings.account("pipeline")
    for model in ctx.config.models.values():
        where = f"models.{model.name}.pipeline"
        check = f"{model.name}: template {model.pipeline.template}"
        if bucket := _bucket(model.pipeline.template):
            ctx.template_buckets.setdefault(bucket, set()).add(model.name)
        try:
            template = fetch_template(model.pipeline.template,
                                      storage_endpoint=ctx.apis.endpoints["storage"])
        except RetrainError as exc:
            ctx.report.fail("templates", check, str(exc),
                            f"upload the compiled pipeline: gcloud storage cp pipeline.yaml "
                            f"{model.pipeline.template} --project={ctx.p}"
                            if model.pipeline.template.startswith("gs://") else
                            f"compile the pipeline to {model.pipeline.template}")
            continue
        passed = {*SERVICE_PARAMETERS, *model.pipeline.parameters}
        if model.promotion is not None:
            passed.add("promotion")
        declared = set(template.input_parameters)
        undeclared = sorted(passed - declared)
        required = sorted(template.required_parameters - passed)
        if undeclared or required:
            problems = [f"the template does not declare input {name!r}" for name in undeclared]
            problems += [f"the template requires {name!r}, which nothing passes"
                         for name in required]
            fixes = [f"add `{name}: str = \"\"` to the inputs of pipeline {template.name!r}"
                     for name in undeclared if name != "promotion"]
            if "promotion" in undeclared:
                fixes.append(f"add `promotion: str = \"{{}}\"` to pipeline {template.name!r} "
                             "(the promotion: section is passed as `promotion`)")
            fixes += [f"set {where}.parameters.{name} in {ctx.settings.policy_file}"
                      for name in required]
            fixes.append(f"recompile and upload it to {model.pipeline.template}")
            ctx.report.fail("templates", check, f"{where}: " + "; ".join(problems),
                            "\n".join(fixes))
        else:
            ctx.report.ok("templates", check,
                          f"declares {', '.join(sorted(passed))}")
        if model.pipeline.service_account != pipeline_account:
            ctx.report.fail(
                "templates", f"{model.name}: runs as {pipeline_account}",
                f"{where}.service_account is {model.pipeline.service_account or 'not set'}; "
                "the runtime may act as the pipeline account only",
                f"set {where}.service_account: {pipeline_account} in "
                f"{ctx.settings.policy_file}")
        root = (model.pipeline.pipeline_root or template.runtime_config.get("gcsOutputDirectory")
                or template.default_pipeline_root)
        if not root or not _bucket(str(root)):
            ctx.report.fail("templates", f"{model.name}: pipeline_root",
                            f"{where}.pipeline_root is {root or 'not set'}: Vertex needs a "
                            "gs:// pipeline root",
                            f"set {where}.pipeline_root: gs://{ctx.p}-retrain-pipelines/root "
                            f"in {ctx.settings.policy_file}")
        else:
            ctx.root_buckets.setdefault(str(_bucket(str(root))), set()).add(model.name)


def _bucket(uri: str) -> str | None:
    match = _GS.match(uri)
    return match["bucket"] if match else None


# --- service accounts and permissions -----------------------------------------------------------


def check_accounts(ctx: Context) -> None:
    """Both accounts exist, and the operator may impersonate each (to test its permissions)."""
    for which in ("runtime", "pipeline"):
        account = ctx.settings.account(which)
        account_id = account.split("@", 1)[0]
        try:
            ctx.apis.call("GET", "iam", f"/v1/projects/{ctx.p}/serviceAccounts/{account}")
        except GoogleApiError as exc:
            if exc.status == 404:
                ctx.report.fail("accounts", f"{which} account {account} exists",
                                f"service account {account} does not exist",
                                f"gcloud iam service-accounts create {account_id} "
                                f"--project={ctx.p}")
            else:
                ctx.report.fail("accounts", f"{which} account {account} exists",
                                f"IAM answered {exc}",
                                f"gcloud services enable iam.googleapis.com --project={ctx.p}")
            continue
        ctx.report.ok("accounts", f"{which} account {account} exists")
        try:
            ctx.apis.token_for(account)
        except ImpersonationError as exc:
            ctx.report.fail(
                "accounts", f"impersonate {account}",
                f"cannot act as {account} to test its permissions ({exc}): you need "
                "Service Account Token Creator on it",
                f"gcloud iam service-accounts add-iam-policy-binding {account} "
                f"--member=\"user:$(gcloud config get-value account)\" "
                f"--role=roles/iam.serviceAccountTokenCreator --project={ctx.p}")
            continue
        ctx.usable.add(account)
        ctx.report.ok("accounts", f"impersonate {account}")


def check_permissions(ctx: Context) -> None:
    """testIamPermissions as each account, on every resource it uses (permissions.NEEDS)."""
    s = ctx.settings
    outcome_topics = {s.topic_path(s.outcome_topic)}
    if ctx.config is not None:
        for model in ctx.config.models.values():
            topic = model.pipeline.parameters.get("outcome_topic")
            if isinstance(topic, str) and topic and "://" not in topic:
                outcome_topics.add(s.topic_path(topic))
    for which in ("runtime", "pipeline"):
        account = s.account(which)
        if account not in ctx.usable:
            ctx.report.skip("permissions", f"{which} account permissions",
                            f"cannot act as {account} (see accounts)")
            continue
        _permissions(ctx, which, "project", f"project {ctx.p}", account)
        if which == "runtime":
            _permissions(ctx, which, "service_account", f"account {s.account('pipeline')}",
                         account, s.account("pipeline"))
        for bucket in sorted(ctx.template_buckets):
            _permissions(ctx, which, "template_bucket", f"templates gs://{bucket}",
                         account, bucket)
        for bucket in sorted(ctx.root_buckets):
            models = ", ".join(sorted(ctx.root_buckets[bucket]))
            _permissions(ctx, which, "root_bucket",
                         f"pipeline_root gs://{bucket} ({models}) writable", account, bucket)
        for topic in sorted(outcome_topics):
            _permissions(ctx, which, "outcome_topic", f"topic {topic.rsplit('/', 1)[-1]}",
                         account, topic)
        if which == "runtime":
            bucket = s.evaluation_bucket or f"{s.project}-retrain-evaluations"
            _permissions(ctx, which, "evaluation_bucket", f"evaluation files gs://{bucket}",
                         account, bucket)
        if s.decisions_topic:
            topic = s.topic_path(s.decisions_topic)
            _permissions(ctx, which, "decisions_topic", f"topic {topic.rsplit('/', 1)[-1]}",
                         account, topic)


def _permissions(ctx: Context, which: Account, resource: Resource, label: str, account: str,
                 target: str = "") -> None:
    wanted = needs(which, resource)
    if not wanted:
        return
    asked = sorted({n.permission for n in wanted})
    check = f"{account.split('@')[0]} on {label}"
    try:
        if resource == "project":
            answer = ctx.apis.call("POST", "resourcemanager", f"/v1/projects/{ctx.p}:"
                                   "testIamPermissions", body={"permissions": asked},
                                   as_account=account)
        elif resource == "service_account":
            answer = ctx.apis.call("POST", "iam", f"/v1/projects/{ctx.p}/serviceAccounts/"
                                   f"{target}:testIamPermissions",
                                   body={"permissions": asked}, as_account=account)
        elif resource in ("template_bucket", "root_bucket", "evaluation_bucket"):
            answer = ctx.apis.call("GET", "storage", f"/storage/v1/b/{quote(target, safe='')}"
                                   "/iam/testPermissions", params={"permissions": asked},
                                   as_account=account)
        else:
            if ("pubsub" in ctx.apis.endpoints.emulated
                    and ctx.apis.endpoints["pubsub_iam"] == "https://pubsub.googleapis.com"):
                ctx.report.skip("permissions", check, "the Pub/Sub emulator has no IAM; set "
                                "RETRAIN_PUBSUB_ENDPOINT to test topic permissions")
                return
            answer = ctx.apis.call("POST", "pubsub_iam", f"/v1/{target}:testIamPermissions",
                                   body={"permissions": asked}, as_account=account)
    except GoogleApiError as exc:
        if exc.status == 404 and resource in ("template_bucket", "root_bucket",
                                              "evaluation_bucket"):
            ctx.report.fail("permissions", check, f"bucket gs://{target} does not exist",
                            f"gcloud storage buckets create gs://{target} "
                            f"--location={ctx.settings.location} "
                            f"--uniform-bucket-level-access --project={ctx.p}")
        else:
            ctx.report.fail("permissions", check, f"testIamPermissions failed: {exc}",
                            "see the message; check the API is enabled (apis)")
        return
    held = set(answer.get("permissions") or [])
    missing = [n for n in wanted if n.permission not in held]
    if not missing:
        ctx.report.ok("permissions", check, f"{len(asked)} permission(s)")
        return
    names = ", ".join(sorted({n.permission for n in missing}))
    uses = "; ".join(sorted({n.why for n in missing}))
    ctx.report.fail("permissions", check, f"{account} lacks {names} (needed by {uses})",
                    "\n".join(_grant(ctx, resource, account, role, target)
                              for role in sorted({n.role for n in missing})))


def _grant(ctx: Context, resource: Resource, account: str, role: str, target: str) -> str:
    member = f"--member=serviceAccount:{account} --role={role}"
    if resource == "project":
        return (f"gcloud projects add-iam-policy-binding {ctx.p} {member} --condition=None")
    if resource == "service_account":
        return (f"gcloud iam service-accounts add-iam-policy-binding {target} {member} "
                f"--project={ctx.p}")
    if resource in ("template_bucket", "root_bucket", "evaluation_bucket"):
        return f"gcloud storage buckets add-iam-policy-binding gs://{target} {member}"
    return (f"gcloud pubsub topics add-iam-policy-binding {target.rsplit('/', 1)[-1]} {member} "
            f"--project={ctx.p}")


# --- model registry -----------------------------------------------------------------------------


def check_registry(ctx: Context) -> None:
    """Each model's registry (its `registry` parameter) has it with a `champion`, or has no
    version yet (the first run registers version 1 and promotes it: the first-model path)."""
    from pipeline_client.promotion.registries import VertexModelRegistry, open_registry
    from triggers.errors import RetrainError

    if ctx.config is None:
        return
    for model in ctx.config.models.values():
        uri = model.pipeline.parameters.get("registry")
        check = f"{model.name}: registry champion"
        if not isinstance(uri, str) or not uri:
            ctx.report.skip("registry", check, f"models.{model.name}.pipeline.parameters."
                            "registry is not set")
            continue
        try:
            registry = open_registry(uri)
            if isinstance(registry, VertexModelRegistry) and ctx.settings.vertex_endpoint:
                registry = VertexModelRegistry(registry.project, registry.location,
                                               endpoint=ctx.settings.vertex_endpoint)
            versions = registry.versions(model.name)
            champion = registry.champion(model.name) if versions else None
        except RetrainError as exc:
            ctx.report.fail("registry", check, f"registry {uri}: {exc}",
                            f"gcloud services enable aiplatform.googleapis.com --project={ctx.p}")
            continue
        if not versions:
            ctx.report.ok("registry", check, f"first-model path: {uri} has no version of "
                          f"{model.name} yet; the first run registers and promotes version 1")
        elif champion is None:
            latest = versions[-1].version
            ctx.report.fail(
                "registry", check,
                f"{uri} has {model.name} versions {[v.version for v in versions]} but none "
                "holds the `champion` alias: the gate has no champion to compare with",
                f"retrain-trigger rollback {model.name} --to {latest} "
                f"--policies {ctx.settings.policy_file}")
        else:
            ctx.report.ok("registry", check, f"champion is version {champion.version}")


# --- Pub/Sub ------------------------------------------------------------------------------------


def check_topics(ctx: Context) -> None:
    """The topics exist; each event topic has its Eventarc subscription with a dead-letter
    policy to its dead-letter topic; so has the evaluation files' trigger (a Cloud Storage
    trigger: its subscription is on a topic Eventarc made, found through the trigger)."""
    s = ctx.settings
    pairs = ((s.metrics_topic, s.metrics_dead_letter, "on-metric-event", "on_metric_event"),
             (s.outcome_topic, s.outcome_dead_letter, "on-run-outcome", "on_run_outcome"))
    existing: set[str] = set()
    told = [s.decisions_topic] if s.decisions_topic else []  # RETRAIN_DECISIONS_TOPIC
    for topic in _unique([s.metrics_topic, s.metrics_dead_letter, s.outcome_topic,
                          s.outcome_dead_letter, s.evaluation_dead_letter, *told]):
        path = s.topic_path(topic)
        try:
            ctx.apis.call("GET", "pubsub", f"/v1/{path}")
        except GoogleApiError as exc:
            name = path.rsplit("/", 1)[-1]
            ctx.report.fail("pubsub", f"topic {topic}",
                            "the topic does not exist" if exc.status == 404 else str(exc),
                            f"gcloud pubsub topics create {name} --project={ctx.p}")
            continue
        existing.add(topic)
        ctx.report.ok("pubsub", f"topic {topic}")
    for topic, dead_letter, function, entry in pairs:
        if topic not in existing:
            continue
        check = f"{topic}: Eventarc subscription"
        try:
            names = ctx.apis.call("GET", "pubsub", f"/v1/{s.topic_path(topic)}/subscriptions"
                                  ).get("subscriptions") or []
            subs = [ctx.apis.call("GET", "pubsub", f"/v1/{name}") for name in names
                    if name.rsplit("/", 1)[-1].startswith("eventarc-")]
        except GoogleApiError as exc:
            ctx.report.fail("pubsub", check, f"Pub/Sub answered {exc}", "see the message")
            continue
        if not subs:
            ctx.report.fail(
                "pubsub", check, f"no Eventarc subscription on {topic}: function {function} "
                "is not deployed with a trigger on it",
                f"gcloud functions deploy {function} --gen2 --region={s.location} "
                f"--runtime=python311 --source=. --entry-point={entry} --trigger-topic={topic} "
                f"--retry --run-service-account={s.account('runtime')} --project={ctx.p}\n"
                f"(or run deploy/gcloud/deploy.sh with PROJECT={ctx.p})")
            continue
        ctx.report.ok("pubsub", check, ", ".join(sub["name"].rsplit("/", 1)[-1] for sub in subs))
        _check_dead_letters(ctx, subs, dead_letter)
    _check_evaluation_trigger(ctx)


EVALUATION_FUNCTION = "on-evaluation-file"
"""The function deploy/ triggers on the evaluations bucket's finalized objects."""


def _check_evaluation_trigger(ctx: Context) -> None:
    """The Eventarc trigger of on-evaluation-file, and its transport subscription's
    dead-letter policy (a file that always fails would otherwise be retried for a week)."""
    s = ctx.settings
    check = f"{EVALUATION_FUNCTION}: Eventarc trigger"
    try:
        triggers = _eventarc_triggers(ctx)
    except GoogleApiError as exc:
        ctx.report.fail("pubsub", check, f"Eventarc answered {exc}", "see the message")
        return
    ours = [t for t in triggers if _destination_function(t) == EVALUATION_FUNCTION]
    if not ours:
        ctx.report.fail(
            "pubsub", check, f"no Eventarc trigger in {s.location} sends to "
            f"{EVALUATION_FUNCTION}: evaluation files are not read",
            f"PROJECT={ctx.p} REGION={s.location} bash deploy/gcloud/deploy.sh")
        return
    subs = []
    for trigger in ours:
        name = ((trigger.get("transport") or {}).get("pubsub") or {}).get("subscription")
        if not name:
            ctx.report.fail("pubsub", check, f"trigger {trigger['name']} has no Pub/Sub "
                            "subscription (yet?)", "wait a minute and run doctor again")
            continue
        try:
            subs.append(ctx.apis.call("GET", "pubsub", f"/v1/{name}"))
        except GoogleApiError as exc:
            ctx.report.fail("pubsub", check, f"subscription {name}: Pub/Sub answered {exc}",
                            "see the message")
    if subs:
        ctx.report.ok("pubsub", check, ", ".join(t["name"].rsplit("/", 1)[-1] for t in ours))
        _check_dead_letters(ctx, subs, s.evaluation_dead_letter)


def _eventarc_triggers(ctx: Context) -> list[dict[str, Any]]:
    """Every Eventarc trigger in the project's region (all pages)."""
    s = ctx.settings
    path = f"/v1/projects/{s.project}/locations/{s.location}/triggers"
    found: list[dict[str, Any]] = []
    token = None
    while True:
        page = ctx.apis.call("GET", "eventarc", path,
                             params={"pageToken": token} if token else None)
        found += page.get("triggers") or []
        token = page.get("nextPageToken")
        if not token:
            return found


def _destination_function(trigger: Mapping[str, Any]) -> str | None:
    """The function (or the Cloud Run service of a 2nd gen one) a trigger sends to."""
    destination = trigger.get("destination") or {}
    if destination.get("cloudFunction"):
        return str(destination["cloudFunction"]).rsplit("/", 1)[-1]
    service = (destination.get("cloudRun") or {}).get("service")
    return str(service) if service else None


def _check_dead_letters(ctx: Context, subs: Iterable[Mapping[str, Any]],
                        dead_letter: str) -> None:
    """Each subscription's dead-letter policy names `dead_letter`."""
    want = ctx.settings.topic_path(dead_letter)
    for sub in subs:
        short = sub["name"].rsplit("/", 1)[-1]
        got = (sub.get("deadLetterPolicy") or {}).get("deadLetterTopic")
        label = f"{short}: dead letters to {dead_letter}"
        if got == want:
            ctx.report.ok("pubsub", label)
        else:
            ctx.report.fail(
                "pubsub", label,
                f"subscription {short} " + (f"dead-letters to {got}" if got else
                                            "has no dead-letter policy")
                + f": a message that always fails is retried forever instead of moving to "
                f"{dead_letter}",
                f"gcloud pubsub subscriptions update {short} --dead-letter-topic={want} "
                f"--max-delivery-attempts=10 --project={ctx.p}")


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


__all__ = ["Context", "DoctorSettings", "Need", "REQUIRED_APIS", "run_checks"]
