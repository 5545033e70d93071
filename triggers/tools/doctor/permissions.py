"""What the runtime and pipeline service accounts must be allowed to do, in one table derived
from the calls our code makes, with the role that grants each permission (for the fix)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Account = Literal["runtime", "pipeline"]
# project: Resource Manager; service_account: the pipeline account (IAM); template_bucket:
# each gs:// template's bucket; root_bucket: each pipeline_root's bucket; outcome_topic:
# retrain-outcomes (or the models' outcome_topic parameter); decisions_topic:
# RETRAIN_DECISIONS_TOPIC when set; evaluation_bucket: the bucket on_evaluation_file reads.
Resource = Literal["project", "service_account", "template_bucket", "root_bucket",
                   "outcome_topic", "decisions_topic", "evaluation_bucket"]


@dataclass(frozen=True)
class Need:
    account: Account
    resource: Resource
    permission: str
    role: str  # the predefined role deploy/ grants for it
    why: str  # the call of ours that needs it


NEEDS: tuple[Need, ...] = (
    # runtime: pipeline_client/launching/vertex.py VertexLauncher
    Need("runtime", "project", "aiplatform.pipelineJobs.create", "roles/aiplatform.user",
         "VertexLauncher.submit (create_pipeline_job)"),
    Need("runtime", "project", "aiplatform.pipelineJobs.get", "roles/aiplatform.user",
         "VertexLauncher.get_status (get_pipeline_job)"),
    Need("runtime", "project", "logging.logEntries.create", "roles/logging.logWriter",
         "structured logs (triggers/cloud/logs.py)"),
    Need("runtime", "service_account", "iam.serviceAccounts.actAs",
         "roles/iam.serviceAccountUser", "PipelineJob.service_account = the pipeline account"),
    Need("runtime", "template_bucket", "storage.objects.get", "roles/storage.objectViewer",
         "pipeline_client/launching/templates.py fetch_template (gs://)"),
    Need("runtime", "decisions_topic", "pubsub.topics.publish", "roles/pubsub.publisher",
         "decisions outbox (RETRAIN_DECISIONS_TOPIC)"),
    Need("runtime", "evaluation_bucket", "storage.objects.get", "roles/storage.objectViewer",
         "on_evaluation_file reads each finalized object (triggers/cloud/evaluation_files.py)"),
    # pipeline: pipelines/components.py through pipeline_client/promotion/registries.py
    # and outcome.py
    Need("pipeline", "project", "aiplatform.models.upload", "roles/aiplatform.user",
         "VertexModelRegistry.register (upload_model)"),
    Need("pipeline", "project", "aiplatform.models.get", "roles/aiplatform.user",
         "VertexModelRegistry.get/champion (get_model)"),
    Need("pipeline", "project", "aiplatform.models.list", "roles/aiplatform.user",
         "VertexModelRegistry.versions (list_models, list_model_versions)"),
    Need("pipeline", "project", "aiplatform.models.update", "roles/aiplatform.user",
         "VertexModelRegistry.promote/rollback (merge_version_aliases)"),
    Need("pipeline", "project", "logging.logEntries.create", "roles/logging.logWriter",
         "pipeline step logs"),
    Need("pipeline", "root_bucket", "storage.objects.create", "roles/storage.objectUser",
         "Vertex writes run artifacts under pipeline_root"),
    Need("pipeline", "root_bucket", "storage.objects.get", "roles/storage.objectUser",
         "steps read their inputs under pipeline_root"),
    Need("pipeline", "root_bucket", "storage.objects.list", "roles/storage.objectUser",
         "Vertex lists artifacts under pipeline_root"),
    Need("pipeline", "outcome_topic", "pubsub.topics.publish", "roles/pubsub.publisher",
         "the pipeline's last step publishes the outcome"),
)
# Firestore: deploy/ grants roles/datastore.user on the state database only (an IAM
# condition), which a project-level testIamPermissions does not see; doctor proves
# datastore.entities.{create,get,list,delete} by writing, querying and deleting one document
# as the runtime account instead.
FIRESTORE_PROBE_PERMISSIONS = ("datastore.entities.create", "datastore.entities.get",
                               "datastore.entities.list", "datastore.entities.delete")


def needs(account: Account, resource: Resource) -> list[Need]:
    return [n for n in NEEDS if n.account == account and n.resource == resource]
