"""`retrain-trigger doctor` against Google's Pub/Sub and Firestore emulators (topics,
subscriptions, documents) plus wire-level fakes checked against the discovery documents for the
APIs without an emulator: a healthy project passes; each broken piece fails with its fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import requests

from pipeline_client.launching.templates import clear_template_cache
from pipeline_client.promotion.registries import VertexModelRegistry
from tests.fakes.google_apis import ALL_FAKES, FakeGoogleApi, FakeProject
from tests.fakes.google_discovery_rules import DiscoveryRules
from tests.fakes.vertex_server import FakeVertexServer
from tests.support.emulators import FirestoreEmulator, PubSubEmulator
from tests.support.fixtures import firestore_emulator  # noqa: F401
from triggers.tools.doctor import DoctorSettings, Endpoints, GoogleApis, Report, run_checks
from triggers.tools.doctor.checks import REQUIRED_APIS

ROOT = Path(__file__).resolve().parent.parent
LOCATION = "us-central1"
DATABASE = "retrain-trigger"
MODEL = "fraud-detector"
# What deploy/gcloud/deploy.sh grants, as the permissions Google documents for each
# predefined role (the subset doctor asks about).
ROLE_PERMISSIONS = {
    "roles/aiplatform.user": {"aiplatform.pipelineJobs.create", "aiplatform.pipelineJobs.get",
                              "aiplatform.models.upload", "aiplatform.models.get",
                              "aiplatform.models.list", "aiplatform.models.update"},
    "roles/logging.logWriter": {"logging.logEntries.create"},
    "roles/iam.serviceAccountUser": {"iam.serviceAccounts.actAs"},
    "roles/storage.objectAdmin": {"storage.objects.create", "storage.objects.get",
                                  "storage.objects.list", "storage.objects.delete"},
    "roles/storage.objectUser": {"storage.objects.create", "storage.objects.get",
                                 "storage.objects.list", "storage.objects.delete",
                                 "storage.objects.update"},
    "roles/storage.objectViewer": {"storage.objects.get", "storage.objects.list"},
    "roles/pubsub.publisher": {"pubsub.topics.publish"},
}


@dataclass
class Cloud:
    """A healthy project across the emulators and the fakes; tests break one piece."""

    project: str
    state: FakeProject
    fakes: dict[str, FakeGoogleApi]
    vertex: FakeVertexServer
    pubsub: PubSubEmulator
    firestore: FirestoreEmulator
    policy_file: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def runtime(self) -> str:
        return f"retrain-trigger@{self.project}.iam.gserviceaccount.com"

    @property
    def pipeline(self) -> str:
        return f"retrain-pipeline@{self.project}.iam.gserviceaccount.com"

    @property
    def bucket(self) -> str:
        return f"{self.project}-retrain-pipelines"

    def topic(self, name: str) -> str:
        return f"projects/{self.project}/topics/{name}"

    def settings(self, **changes: Any) -> DoctorSettings:
        base = DoctorSettings(project=self.project, location=LOCATION,
                              policy_file=str(self.policy_file), database=DATABASE,
                              vertex_endpoint=self.vertex.endpoint, smoke_poll=0.05,
                              smoke_timeout=20.0)
        return replace(base, **changes)

    def run(self, **changes: Any) -> Report:
        clear_template_cache()
        return run_checks(self.settings(**changes), GoogleApis(Endpoints.from_env(self.env)))

    def bind(self, account: str, resource: str, role: str) -> None:
        self.state.grant(account, resource, *ROLE_PERMISSIONS[role])

    def eventarc_subscription(self, topic: str, dead_letter: str | None) -> str:
        name = f"eventarc-{LOCATION}-{topic}-{uuid.uuid4().hex[:6]}-sub-1"
        body: dict[str, Any] = {"topic": self.topic(topic),
                                "pushConfig": {"pushEndpoint": "https://example.invalid/push"}}
        if dead_letter:
            body["deadLetterPolicy"] = {"deadLetterTopic": self.topic(dead_letter),
                                        "maxDeliveryAttempts": 10}
        url = f"http://{self.pubsub.host}/v1/projects/{self.project}/subscriptions/{name}"
        requests.put(url, json=body, timeout=10).raise_for_status()
        return name

    def evaluation_trigger(self, dead_letter: str | None) -> str:
        """on-evaluation-file's Eventarc trigger as Cloud Functions (2nd gen) creates it: its
        transport topic and subscription on the emulator (the subscription dead-lettering to
        `dead_letter`), and the trigger among others in the region. Its subscription's name."""
        suffix = uuid.uuid4().hex[:6]
        transport = f"eventarc-{LOCATION}-on-evaluation-file-{suffix}"
        requests.put(f"http://{self.pubsub.host}/v1/{self.topic(transport)}",
                     timeout=10).raise_for_status()
        name = self.eventarc_subscription(transport, dead_letter)
        where = f"projects/{self.project}/locations/{LOCATION}"
        self.state.triggers.setdefault(LOCATION, []).extend([
            {"name": f"{where}/triggers/on-metric-event-{suffix}",
             "destination": {"cloudRun": {"service": "on-metric-event", "region": LOCATION}},
             "transport": {"pubsub": {"topic": self.topic("model-metrics")}}},
            {"name": f"{where}/triggers/other-team-{suffix}",
             "destination": {"cloudFunction": f"{where}/functions/their-function"}},
            {"name": f"{where}/triggers/on-evaluation-file-{suffix}",
             "eventFilters": [{"attribute": "type",
                               "value": "google.cloud.storage.object.v1.finalized"},
                              {"attribute": "bucket",
                               "value": f"{self.project}-retrain-evaluations"}],
             "destination": {"cloudRun": {"service": "on-evaluation-file", "region": LOCATION}},
             "transport": {"pubsub": {"topic": self.topic(transport),
                                      "subscription": f"projects/{self.project}/"
                                                      f"subscriptions/{name}"}}},
        ])
        return name

    def delete_subscription(self, name: str) -> None:
        url = f"http://{self.pubsub.host}/v1/projects/{self.project}/subscriptions/{name}"
        requests.delete(url, timeout=10).raise_for_status()


def policy_yaml(project: str, template: Path) -> str:
    return f"""
models:
  {MODEL}:
    pipeline:
      template: {template}
      parameters:
        training_days: 30
        registry: vertex://projects/{project}/locations/{LOCATION}
        outcome_topic: projects/{project}/topics/retrain-outcomes
      service_account: retrain-pipeline@{project}.iam.gserviceaccount.com
      pipeline_root: gs://{project}-retrain-pipelines/root
    policies:
      - {{name: accuracy-floor, metric: accuracy, direction: higher_is_better,
         absolute: {{threshold: 0.95}}}}
    promotion:
      primary: {{metric: accuracy, min_improvement: 0.0, confidence: 0.95}}
"""


@pytest.fixture
def cloud(tmp_path: Path, pubsub_emulator: PubSubEmulator,
          firestore_emulator: FirestoreEmulator) -> Iterator[Cloud]:  # noqa: F811
    project = f"doctor-{uuid.uuid4().hex[:8]}"
    state = FakeProject(project)
    state.enabled_services = {f"{api}.googleapis.com" for api in REQUIRED_APIS}
    runtime = f"retrain-trigger@{project}.iam.gserviceaccount.com"
    pipeline = f"retrain-pipeline@{project}.iam.gserviceaccount.com"
    state.service_accounts = {runtime, pipeline}
    state.token_creator_on = {runtime, pipeline}
    state.buckets = {f"{project}-retrain-pipelines", f"{project}-retrain-evaluations"}
    state.databases = {DATABASE}
    indexes = json.loads((ROOT / "deploy" / "firestore.indexes.json").read_text())
    db = f"projects/{project}/databases/{DATABASE}"
    state.indexes[DATABASE] = [
        {"name": f"{db}/collectionGroups/{index['collectionGroup']}/indexes/CICAg{n}",
         "queryScope": index["queryScope"], "state": "READY",
         "fields": [*index["fields"], {"fieldPath": "__name__", "order": "DESCENDING"}]}
        for n, index in enumerate(indexes["indexes"])]
    state.fields[DATABASE] = [
        {"name": f"{db}/collectionGroups/{o['collectionGroup']}/fields/{o['fieldPath']}",
         "ttlConfig": {"state": "ACTIVE"}}
        for o in indexes["fieldOverrides"] if o.get("ttl")]
    policy_file = tmp_path / "policies.yaml"
    policy_file.write_text(policy_yaml(project, ROOT / "pipelines" / "retrain.yaml"))
    with ExitStack() as stack:
        fakes = {var: stack.enter_context(cls(state)) for var, cls in ALL_FAKES.items()}
        vertex = stack.enter_context(FakeVertexServer())
        c = Cloud(project, state, fakes, vertex, pubsub_emulator, firestore_emulator,
                  policy_file)
        c.env = {var: fake.endpoint for var, fake in fakes.items()}
        c.env.update(PUBSUB_EMULATOR_HOST=pubsub_emulator.host,
                     FIRESTORE_EMULATOR_HOST=firestore_emulator.host,
                     RETRAIN_VERTEX_ENDPOINT=vertex.endpoint)
        # IAM as deploy/gcloud/deploy.sh binds it
        p = f"projects/{project}"
        for role in ("roles/aiplatform.user", "roles/logging.logWriter"):
            c.bind(runtime, p, role)
            c.bind(pipeline, p, role)
        c.bind(runtime, f"{p}/serviceAccounts/{pipeline}", "roles/iam.serviceAccountUser")
        c.bind(pipeline, c.topic("retrain-outcomes"), "roles/pubsub.publisher")
        c.bind(runtime, f"b/{c.bucket}", "roles/storage.objectViewer")
        c.bind(pipeline, f"b/{c.bucket}", "roles/storage.objectUser")
        c.bind(runtime, f"b/{project}-retrain-evaluations", "roles/storage.objectViewer")
        for topic in ("model-metrics", "model-metrics-dead-letter", "retrain-outcomes",
                      "retrain-outcomes-dead-letter", "retrain-evaluations-dead-letter"):
            requests.put(f"http://{pubsub_emulator.host}/v1/{c.topic(topic)}",
                         timeout=10).raise_for_status()
        c.eventarc_subscription("model-metrics", "model-metrics-dead-letter")
        c.eventarc_subscription("retrain-outcomes", "retrain-outcomes-dead-letter")
        c.evaluation_trigger("retrain-evaluations-dead-letter")
        vertex.add_model_version(project, LOCATION, MODEL, MODEL, "gs://b/m/1")
        VertexModelRegistry(project, LOCATION, endpoint=vertex.endpoint).promote(MODEL, "1")
        yield c


def failed(report: Report, check_contains: str) -> Any:
    found = [f for f in report.failures if check_contains in f.check]
    assert found, f"no failed check like {check_contains!r}:\n{report.to_table()}"
    return found[0]


def test_a_healthy_project_passes_every_check(cloud: Cloud) -> None:
    report = cloud.run()
    assert report.passed, report.to_table()
    checks = {f.check: f for f in report.findings}
    assert all(f.status == "ok" for f in report.findings), report.to_table()
    assert f"{cloud.runtime.split('@')[0]} on project {cloud.project}" in checks
    assert any("pipeline_root gs://" in c and "writable" in c for c in checks)
    assert checks[f"{MODEL}: registry champion"].message == "champion is version 1"
    assert any(c.startswith("index retrain_points(") for c in checks)
    assert "TTL retrain_points.expire_at" in checks
    assert any("dead letters to model-metrics-dead-letter" in c for c in checks)
    assert any("dead letters to retrain-outcomes-dead-letter" in c for c in checks)
    assert "retrain-trigger writes and reads retrain-trigger" in checks
    for fake in cloud.fakes.values():
        assert fake.violations == [], fake.violations
    # permissions were asked as each account (its impersonated token), not as the operator
    project_tests = [c for c in cloud.fakes["RETRAIN_RESOURCEMANAGER_ENDPOINT"].calls]
    assert {c.caller for c in project_tests} == {cloud.runtime, cloud.pipeline}
    bucket_tests = cloud.fakes["RETRAIN_STORAGE_ENDPOINT"].calls
    # templates are local here; the runtime reads the evaluations bucket
    assert sorted(c.caller for c in bucket_tests) == sorted([cloud.pipeline, cloud.runtime])
    # the probe document was deleted again
    listed = requests.get(f"http://{cloud.firestore.host}/v1/projects/{cloud.project}/databases/"
                          f"{DATABASE}/documents/retrain_doctor", timeout=10).json()
    assert not listed.get("documents")


def test_disabled_api_fails_with_the_enable_command(cloud: Cloud) -> None:
    cloud.state.enabled_services.discard("eventarc.googleapis.com")
    finding = failed(cloud.run(), "eventarc.googleapis.com enabled")
    assert finding.message == "the eventarc.googleapis.com API is not enabled"
    assert finding.fix == ("gcloud services enable eventarc.googleapis.com "
                           f"--project={cloud.project}")


def test_missing_project_permission_names_it_and_the_role_to_grant(cloud: Cloud) -> None:
    cloud.state.revoke(cloud.runtime, f"projects/{cloud.project}", "aiplatform.pipelineJobs.create")
    report = cloud.run()
    finding = failed(report, f"retrain-trigger on project {cloud.project}")
    assert "lacks aiplatform.pipelineJobs.create" in finding.message
    assert "create_pipeline_job" in finding.message
    assert finding.fix == (f"gcloud projects add-iam-policy-binding {cloud.project} "
                           f"--member=serviceAccount:{cloud.runtime} --role=roles/aiplatform.user "
                           "--condition=None")
    assert len(report.failures) == 1, report.to_table()


def test_missing_act_as_on_the_pipeline_account(cloud: Cloud) -> None:
    cloud.state.revoke(cloud.runtime, f"projects/{cloud.project}/serviceAccounts/{cloud.pipeline}",
                       "iam.serviceAccounts.actAs")
    finding = failed(cloud.run(), f"on account {cloud.pipeline}")
    assert "lacks iam.serviceAccounts.actAs" in finding.message
    assert finding.fix == (f"gcloud iam service-accounts add-iam-policy-binding {cloud.pipeline} "
                           f"--member=serviceAccount:{cloud.runtime} "
                           f"--role=roles/iam.serviceAccountUser --project={cloud.project}")


def test_without_token_creator_the_account_cannot_be_checked(cloud: Cloud) -> None:
    cloud.state.token_creator_on.discard(cloud.pipeline)
    report = cloud.run()
    finding = failed(report, f"impersonate {cloud.pipeline}")
    assert "Service Account Token Creator" in finding.message
    assert finding.fix == (f"gcloud iam service-accounts add-iam-policy-binding {cloud.pipeline} "
                           "--member=\"user:$(gcloud config get-value account)\" "
                           f"--role=roles/iam.serviceAccountTokenCreator --project={cloud.project}")
    skipped = [f for f in report.findings if f.status == "skip"]
    assert [f.check for f in skipped] == ["pipeline account permissions"]


def test_template_missing_a_parameter(cloud: Cloud) -> None:
    tiny = ROOT / "tests" / "fixtures" / "tiny_pipeline.yaml"  # no registry, no promotion input
    cloud.policy_file.write_text(policy_yaml(cloud.project, tiny))
    finding = failed(cloud.run(), f"{MODEL}: template")
    assert "the template does not declare input 'registry'" in finding.message
    assert "the template does not declare input 'promotion'" in finding.message
    assert "add `registry: str = \"\"` to the inputs of pipeline 'tiny-retrain'" in finding.fix
    assert "(the promotion: section is passed as `promotion`)" in finding.fix


def test_pipeline_root_not_writable_by_the_pipeline_account(cloud: Cloud) -> None:
    cloud.state.revoke(cloud.pipeline, f"b/{cloud.bucket}", "storage.objects.create")
    finding = failed(cloud.run(), f"pipeline_root gs://{cloud.bucket}")
    assert finding.check.startswith("retrain-pipeline on pipeline_root")
    assert "lacks storage.objects.create" in finding.message
    assert finding.fix == (f"gcloud storage buckets add-iam-policy-binding gs://{cloud.bucket} "
                           f"--member=serviceAccount:{cloud.pipeline} "
                           "--role=roles/storage.objectUser")


def test_runtime_cannot_read_the_evaluations_bucket(cloud: Cloud) -> None:
    bucket = f"{cloud.project}-retrain-evaluations"
    cloud.state.grants.pop((cloud.runtime, f"b/{bucket}"), None)
    finding = failed(cloud.run(), f"on evaluation files gs://{bucket}")
    assert "storage.objects.get" in finding.message and "on_evaluation_file" in finding.message
    assert finding.fix == (f"gcloud storage buckets add-iam-policy-binding gs://{bucket} "
                           f"--member=serviceAccount:{cloud.runtime} "
                           "--role=roles/storage.objectViewer")


def test_missing_pipeline_root_bucket(cloud: Cloud) -> None:
    cloud.state.buckets.clear()
    finding = failed(cloud.run(), f"pipeline_root gs://{cloud.bucket}")
    assert finding.message == f"bucket gs://{cloud.bucket} does not exist"
    assert finding.fix.startswith(f"gcloud storage buckets create gs://{cloud.bucket} ")


def test_champion_alias_missing(cloud: Cloud) -> None:
    url = (f"{cloud.vertex.endpoint}/v1/projects/{cloud.project}/locations/{LOCATION}/models/"
           f"{MODEL}@1:mergeVersionAliases")
    requests.post(url, json={"versionAliases": ["-champion"]}, timeout=10).raise_for_status()
    finding = failed(cloud.run(), f"{MODEL}: registry champion")
    assert "versions ['1'] but none holds the `champion` alias" in finding.message
    assert finding.fix == f"retrain-trigger rollback {MODEL} --to 1 --policies {cloud.policy_file}"


def test_no_model_yet_is_the_first_model_path(cloud: Cloud) -> None:
    cloud.vertex.models.clear()
    report = cloud.run()
    assert report.passed, report.to_table()
    finding = next(f for f in report.findings if f.check == f"{MODEL}: registry champion")
    assert finding.message.startswith("first-model path:")


def test_index_not_ready(cloud: Cloud) -> None:
    cloud.state.indexes[DATABASE][3]["state"] = "CREATING"  # retrain_runs(model, created_at)
    finding = failed(cloud.run(), "index retrain_runs(model ascending, created_at descending)")
    assert "still building (CREATING)" in finding.message
    assert finding.fix == ("wait, then check: gcloud firestore indexes composite list "
                           f"--database={DATABASE} --project={cloud.project}")


def test_missing_index_gets_the_create_command(cloud: Cloud) -> None:
    del cloud.state.indexes[DATABASE][0]
    finding = failed(cloud.run(), "index retrain_points(")
    assert finding.fix == (
        "gcloud firestore indexes composite create --collection-group=retrain_points "
        "--query-scope=collection-group --field-config=field-path=model,order=ascending "
        "--field-config=field-path=window_end,order=descending "
        "--field-config=field-path=metric,order=ascending "
        f"--database={DATABASE} --project={cloud.project}")


def test_ttl_not_active(cloud: Cloud) -> None:
    cloud.state.fields[DATABASE][1]["ttlConfig"]["state"] = "NEEDS_REPAIR"
    finding = failed(cloud.run(), "TTL retrain_processed.expire_at")
    assert finding.message == "the TTL policy is NEEDS_REPAIR, not ACTIVE"
    assert finding.fix == ("gcloud firestore fields ttls update expire_at "
                           "--collection-group=retrain_processed --enable-ttl "
                           f"--database={DATABASE} --project={cloud.project}")


def test_dead_letter_policy_missing(cloud: Cloud) -> None:
    listed = requests.get(f"http://{cloud.pubsub.host}/v1/{cloud.topic('retrain-outcomes')}"
                          "/subscriptions", timeout=10).json()["subscriptions"]
    cloud.delete_subscription(listed[0].rsplit("/", 1)[1])
    bare = cloud.eventarc_subscription("retrain-outcomes", None)
    finding = failed(cloud.run(), f"{bare}: dead letters to retrain-outcomes-dead-letter")
    assert f"subscription {bare} has no dead-letter policy" in finding.message
    assert finding.fix == (f"gcloud pubsub subscriptions update {bare} --dead-letter-topic="
                           f"{cloud.topic('retrain-outcomes-dead-letter')} "
                           f"--max-delivery-attempts=10 --project={cloud.project}")


def test_evaluation_trigger_without_a_dead_letter_policy(cloud: Cloud) -> None:
    assert "on-evaluation-file: Eventarc trigger" in {f.check for f in cloud.run().findings}
    cloud.state.triggers.clear()
    bare = cloud.evaluation_trigger(None)
    report = cloud.run()
    finding = failed(report, f"{bare}: dead letters to retrain-evaluations-dead-letter")
    assert f"subscription {bare} has no dead-letter policy" in finding.message
    assert finding.fix == (f"gcloud pubsub subscriptions update {bare} --dead-letter-topic="
                           f"{cloud.topic('retrain-evaluations-dead-letter')} "
                           f"--max-delivery-attempts=10 --project={cloud.project}")
    assert cloud.fakes["RETRAIN_EVENTARC_ENDPOINT"].violations == []


def test_evaluation_trigger_missing(cloud: Cloud) -> None:
    cloud.state.triggers.clear()
    finding = failed(cloud.run(), "on-evaluation-file: Eventarc trigger")
    assert f"no Eventarc trigger in {LOCATION} sends to on-evaluation-file" in finding.message
    assert "deploy/gcloud/deploy.sh" in finding.fix


def test_missing_dead_letter_topic(cloud: Cloud) -> None:
    requests.delete(f"http://{cloud.pubsub.host}/v1/{cloud.topic('model-metrics-dead-letter')}",
                    timeout=10).raise_for_status()
    report = cloud.run()
    finding = failed(report, "topic model-metrics-dead-letter")
    assert finding.fix == f"gcloud pubsub topics create model-metrics-dead-letter " \
                          f"--project={cloud.project}"


def test_missing_decisions_topic(cloud: Cloud) -> None:
    """With RETRAIN_DECISIONS_TOPIC set, the topic must exist (publishing would fail)."""
    report = cloud.run(decisions_topic="retrain-decisions")
    (finding,) = [f for f in report.failures
                  if f.area == "pubsub" and f.check == "topic retrain-decisions"]
    assert "does not exist" in finding.message
    assert finding.fix == f"gcloud pubsub topics create retrain-decisions --project={cloud.project}"
    requests.put(f"http://{cloud.pubsub.host}/v1/{cloud.topic('retrain-decisions')}",
                 timeout=10).raise_for_status()
    report = cloud.run(decisions_topic=cloud.topic("retrain-decisions"))
    assert [f for f in report.failures if "retrain-decisions" in f.check
            and f.area == "pubsub"] == []


def _finish_smoke(vertex: FakeVertexServer, state: str, message: str | None) -> threading.Thread:
    def finish() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if vertex.jobs:
                time.sleep(0.2)  # let doctor see it pending first
                vertex.set_state(next(iter(vertex.jobs)), state, message)
                return
            time.sleep(0.02)

    thread = threading.Thread(target=finish, daemon=True)
    thread.start()
    return thread


def test_smoke_run_that_fails_is_reported_with_its_error(cloud: Cloud) -> None:
    thread = _finish_smoke(cloud.vertex, "FAILED", "The service account does not have "
                           "storage.objects.create access to the pipeline root")
    report = cloud.run(smoke=True)
    thread.join(5)
    finding = failed(report, "smoke run")
    assert "the smoke run ended failed: The service account does not have" in finding.message
    assert finding.fix.startswith("gcloud logging read 'resource.labels.pipeline_job_id=")
    body = next(iter(cloud.vertex.created.values()))
    assert body["serviceAccount"] == cloud.pipeline
    assert body["runtimeConfig"]["gcsOutputDirectory"] == f"gs://{cloud.bucket}/root"


def test_smoke_run_that_succeeds(cloud: Cloud) -> None:
    thread = _finish_smoke(cloud.vertex, "SUCCEEDED", None)
    report = cloud.run(smoke=True)
    thread.join(5)
    assert report.passed, report.to_table()
    assert report.findings[-1].area == "smoke" and report.findings[-1].message == "SUCCEEDED"


def test_cli_exit_status_and_outputs(cloud: Cloud) -> None:
    env = {**os.environ, **cloud.env, "PYTHONPATH": str(ROOT),
           "RETRAIN_POLICY_FILE": str(cloud.policy_file),
           "RETRAIN_STATE": f"firestore://{DATABASE}"}
    command = [sys.executable, "-m", "triggers", "doctor", "--project", cloud.project,
               "--region", LOCATION]
    passed = subprocess.run([*command, "--json"], env=env, capture_output=True, text=True,
                            timeout=120, check=False)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    document = json.loads(passed.stdout)
    assert document["ok"] is True and document["counts"]["fail"] == 0
    cloud.state.enabled_services.discard("pubsub.googleapis.com")
    broken = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120,
                            check=False)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "FAIL  apis" in broken.stdout
    assert f"gcloud services enable pubsub.googleapis.com --project={cloud.project}" \
        in broken.stdout
    no_project = subprocess.run([sys.executable, "-m", "triggers", "doctor"],
                                env={k: v for k, v in env.items()
                                     if k != "GOOGLE_CLOUD_PROJECT"},
                                capture_output=True, text=True, timeout=60, check=False)
    assert no_project.returncode == 2
    assert "pass --project or set GOOGLE_CLOUD_PROJECT" in no_project.stderr


def test_fakes_refuse_requests_their_discovery_document_forbids() -> None:
    rules = DiscoveryRules("storage.v1.json")
    path = "/storage/v1/b/bucket/iam/testPermissions"
    method = rules.match("GET", path)
    assert method is not None and method.id == "storage.buckets.testIamPermissions"
    assert rules.problems(method, path, {}, None) == ["query parameter permissions is required"]
    rules = DiscoveryRules("iamcredentials.v1.json")
    path = "/v1/projects/-/serviceAccounts/a@p.iam.gserviceaccount.com:generateAccessToken"
    method = rules.match("POST", path)
    assert method is not None
    problems = rules.problems(method, path, {}, {"scope": "x", "lifetime": "ten"})
    assert [p.split(":")[0] for p in problems] == ["scope", "lifetime"], problems
