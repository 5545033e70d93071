# retrain-trigger on Google Cloud: Pub/Sub topics, four gen2 Cloud Functions, Firestore state,
# least-privilege service accounts. deploy/gcloud/deploy.sh does the same with plain gcloud.

locals {
  pubsub_agent = "service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
  # A gen2 function answers on its cloudfunctions.net and its run.app URL: callers' ID tokens
  # may name either (the run.app one needs the project number).
  manual_function_env = merge(local.manual_env, { RETRAIN_AUDIENCE = "${local.manual_audience},https://manual-trigger-${data.google_project.this.number}.${var.region}.run.app" })
}

data "google_project" "this" {
  project_id = var.project_id
}

# Cloud Storage's service agent publishes the bucket's notifications for Eventarc.
data "google_storage_project_service_account" "storage_agent" {
  project    = var.project_id
  depends_on = [google_project_service.apis]
}

# ---------------------------------------------------------------------------------------- APIs

resource "google_project_service" "apis" {
  for_each = toset([
    "aiplatform.googleapis.com",
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudfunctions.googleapis.com",
    "cloudresourcemanager.googleapis.com",
    "eventarc.googleapis.com",
    "firestore.googleapis.com",
    "iam.googleapis.com",
    "iamcredentials.googleapis.com",
    "logging.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "serviceusage.googleapis.com",
    "storage.googleapis.com",
  ])
  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}

# ------------------------------------------------------------------------------ Service accounts

resource "google_service_account" "runtime" {
  project      = var.project_id
  account_id   = var.runtime_service_account_id
  display_name = "retrain-trigger functions (runtime)"
  depends_on   = [google_project_service.apis]
}

resource "google_service_account" "pipeline" {
  project      = var.project_id
  account_id   = var.pipeline_service_account_id
  display_name = "retrain-trigger Vertex AI pipeline runs"
  depends_on   = [google_project_service.apis]
}

resource "google_service_account" "trigger" {
  project      = var.project_id
  account_id   = var.trigger_service_account_id
  display_name = "retrain-trigger Eventarc invoker"
  depends_on   = [google_project_service.apis]
}

# Every role below is the narrowest predefined one covering what the code calls; each says why.
# Runtime: launch Vertex pipelines, act as the pipeline account (on that account only), read and
# write its own Firestore database (IAM condition), read the templates bucket, log.
# aiplatform.user: pipelineJobs.create/get/cancel (pipeline_client/launching/vertex.py) and the Model
# Registry's alias moves on promotion (pipeline_client/promotion/registries.py); Vertex has no narrower
# predefined role that creates pipeline jobs, nor per-resource grants on them.
resource "google_project_iam_member" "runtime_aiplatform" {
  project = var.project_id
  role    = "roles/aiplatform.user"
  member  = google_service_account.runtime.member
}

# logWriter: the functions' structured logs (triggers/cloud/logs.py).
resource "google_project_iam_member" "runtime_logging" {
  project = var.project_id
  role    = "roles/logging.logWriter"
  member  = google_service_account.runtime.member
}

# datastore.user: read and write documents (triggers/state/firestore.py), conditioned on the one
# database; no admin rights (indexes and TTL are managed here, not by the function).
resource "google_project_iam_member" "runtime_datastore" {
  project = var.project_id
  role    = "roles/datastore.user"
  member  = google_service_account.runtime.member
  condition {
    title       = "retrain-trigger-database-only"
    description = "Only the retrain-trigger Firestore database"
    expression  = "resource.name == \"projects/${var.project_id}/databases/${var.firestore_database}\""
  }
}

# serviceAccountUser on the pipeline account only: a PipelineJob runs as that account.
resource "google_service_account_iam_member" "runtime_acts_as_pipeline" {
  service_account_id = google_service_account.pipeline.name
  role               = "roles/iam.serviceAccountUser"
  member             = google_service_account.runtime.member
}

# publisher on the decisions topic only: the outbox drains told decisions there
# (triggers/cloud/outbox.py). The functions receive their events as pushes and publish nothing else.
resource "google_pubsub_topic_iam_member" "runtime_publishes_decisions" {
  project = var.project_id
  topic   = google_pubsub_topic.decisions.name
  role    = "roles/pubsub.publisher"
  member  = google_service_account.runtime.member
}

# objectViewer on the evaluations bucket only: on_evaluation_file reads each finalized object
# (objects.get: triggers/cloud/evaluation_files.py); it writes nothing there.
resource "google_storage_bucket_iam_member" "runtime_reads_evaluations" {
  bucket = google_storage_bucket.evaluations.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.runtime.member
}

# Pipeline templates given as gs:// URLs are read by the function itself (objects.get:
# pipeline_client/launching/templates.py) from the templates bucket, which the pipeline account cannot write.
resource "google_storage_bucket_iam_member" "runtime_reads_templates" {
  for_each = toset(concat([google_storage_bucket.templates.name], var.template_buckets))
  bucket   = each.value
  role     = "roles/storage.objectViewer"
  member   = google_service_account.runtime.member
}

# Pipeline runs: Vertex jobs, their pipeline_root, publishing the run's outcome, logs.
# aiplatform.user: the run's own Vertex calls (custom jobs, uploading the challenger to the Model
# Registry: pipelines/components.py); no narrower predefined role uploads models.
resource "google_project_iam_member" "pipeline_aiplatform" {
  project = var.project_id
  role    = "roles/aiplatform.user"
  member  = google_service_account.pipeline.member
}

resource "google_project_iam_member" "pipeline_logging" {
  project = var.project_id
  role    = "roles/logging.logWriter"
  member  = google_service_account.pipeline.member
}

# objectUser (create/get/list/update/delete objects, no IAM changes, unlike objectAdmin) on the
# pipeline_root bucket only: the only bucket the pipeline account writes.
resource "google_storage_bucket_iam_member" "pipeline_root" {
  bucket = google_storage_bucket.pipelines.name
  role   = "roles/storage.objectUser"
  member = google_service_account.pipeline.member
}

# publisher on the outcome topic only: the run's last step reports its outcome there.
resource "google_pubsub_topic_iam_member" "pipeline_publishes_outcomes" {
  project = var.project_id
  topic   = google_pubsub_topic.outcomes.name
  role    = "roles/pubsub.publisher"
  member  = google_service_account.pipeline.member
}

# Eventarc's identity: Pub/Sub mints its tokens (needed in projects created before April 2021),
# and it may invoke the two event-driven functions (granted on those services below), nothing else.
resource "google_service_account_iam_member" "pubsub_mints_trigger_tokens" {
  service_account_id = google_service_account.trigger.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = "serviceAccount:${local.pubsub_agent}"
  depends_on         = [google_project_service.apis] # the agent exists once Pub/Sub is enabled
}

# Eventarc delivers Cloud Storage events to a trigger whose identity may receive them
# (eventReceiver: eventarc.events.receiveEvent; Google grants it no narrower than the project).
resource "google_project_iam_member" "trigger_receives_events" {
  project = var.project_id
  role    = "roles/eventarc.eventReceiver"
  member  = google_service_account.trigger.member
}

# Eventarc storage triggers: the Cloud Storage service agent publishes the bucket's object
# notifications to Eventarc's Pub/Sub transport (Google documents the project-level grant).
resource "google_project_iam_member" "storage_agent_publishes_events" {
  project = var.project_id
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${data.google_storage_project_service_account.storage_agent.email_address}"
}

# ---------------------------------------------------------------------------- Pub/Sub topics

resource "google_pubsub_topic" "metrics" {
  project    = var.project_id
  name       = var.metrics_topic
  labels     = var.labels
  depends_on = [google_project_service.apis]
}

resource "google_pubsub_topic" "dead_letter" {
  project    = var.project_id
  name       = var.dead_letter_topic
  labels     = var.labels
  depends_on = [google_project_service.apis]
}

# Messages published to a topic without subscriptions are lost: hold dead letters for a week.
resource "google_pubsub_subscription" "dead_letter" {
  project                    = var.project_id
  name                       = "${var.dead_letter_topic}-hold"
  topic                      = google_pubsub_topic.dead_letter.id
  message_retention_duration = "604800s"
  ack_deadline_seconds       = 60
  labels                     = var.labels
  expiration_policy {
    ttl = ""
  }
}

# Every told decision (fired, suppressed, launched, promoted, ...), attributes model and kind.
resource "google_pubsub_topic" "decisions" {
  project    = var.project_id
  name       = var.decisions_topic
  labels     = var.labels
  depends_on = [google_project_service.apis]
}

resource "google_pubsub_topic" "outcomes" {
  project    = var.project_id
  name       = var.outcome_topic
  labels     = var.labels
  depends_on = [google_project_service.apis]
}

# Run outcomes that on-run-outcome failed max_delivery_attempts times: held a week, like metrics.
resource "google_pubsub_topic" "outcome_dead_letter" {
  project    = var.project_id
  name       = var.outcome_dead_letter_topic
  labels     = var.labels
  depends_on = [google_project_service.apis]
}

resource "google_pubsub_subscription" "outcome_dead_letter" {
  project                    = var.project_id
  name                       = "${var.outcome_dead_letter_topic}-hold"
  topic                      = google_pubsub_topic.outcome_dead_letter.id
  message_retention_duration = "604800s"
  ack_deadline_seconds       = 60
  labels                     = var.labels
  expiration_policy {
    ttl = ""
  }
}

# Storage notifications that on-evaluation-file failed max_delivery_attempts times: held a week.
resource "google_pubsub_topic" "evaluation_dead_letter" {
  project    = var.project_id
  name       = var.evaluation_dead_letter_topic
  labels     = var.labels
  depends_on = [google_project_service.apis]
}

resource "google_pubsub_subscription" "evaluation_dead_letter" {
  project                    = var.project_id
  name                       = "${var.evaluation_dead_letter_topic}-hold"
  topic                      = google_pubsub_topic.evaluation_dead_letter.id
  message_retention_duration = "604800s"
  ack_deadline_seconds       = 60
  labels                     = var.labels
  expiration_policy {
    ttl = ""
  }
}

# The Pub/Sub service agent forwards undeliverable messages to the dead-letter topic. It also
# needs pubsub.subscriber on the source subscription: granted by dead_letter.sh, since that
# subscription belongs to Eventarc.
resource "google_pubsub_topic_iam_member" "pubsub_agent_dead_letter_publisher" {
  project    = var.project_id
  topic      = google_pubsub_topic.dead_letter.name
  role       = "roles/pubsub.publisher"
  member     = "serviceAccount:${local.pubsub_agent}"
  depends_on = [google_project_service.apis]
}

resource "google_pubsub_topic_iam_member" "pubsub_agent_outcome_dead_letter_publisher" {
  project    = var.project_id
  topic      = google_pubsub_topic.outcome_dead_letter.name
  role       = "roles/pubsub.publisher"
  member     = "serviceAccount:${local.pubsub_agent}"
  depends_on = [google_project_service.apis]
}

resource "google_pubsub_topic_iam_member" "pubsub_agent_evaluation_dead_letter_publisher" {
  project    = var.project_id
  topic      = google_pubsub_topic.evaluation_dead_letter.name
  role       = "roles/pubsub.publisher"
  member     = "serviceAccount:${local.pubsub_agent}"
  depends_on = [google_project_service.apis]
}

# On a fresh project the service agents' roles (granted by Google when an API is enabled, and the
# bindings above) take a while to propagate; an Eventarc trigger created before that fails with
# "Permission denied while using the Eventarc Service Agent". Wait once, before the functions.
resource "time_sleep" "service_agents" {
  create_duration = var.service_agent_wait
  depends_on = [
    google_project_service.apis,
    google_service_account_iam_member.pubsub_mints_trigger_tokens,
    google_pubsub_topic_iam_member.pubsub_agent_dead_letter_publisher,
    google_pubsub_topic_iam_member.pubsub_agent_outcome_dead_letter_publisher,
    google_pubsub_topic_iam_member.pubsub_agent_evaluation_dead_letter_publisher,
    google_project_iam_member.storage_agent_publishes_events,
    google_project_iam_member.trigger_receives_events,
  ]
}

# ---------------------------------------------------------------------------------- Firestore

resource "google_firestore_database" "state" {
  project                 = var.project_id
  name                    = var.firestore_database
  location_id             = coalesce(var.firestore_location, var.region)
  type                    = "FIRESTORE_NATIVE"
  delete_protection_state = var.firestore_delete_protection ? "DELETE_PROTECTION_ENABLED" : "DELETE_PROTECTION_DISABLED"
  depends_on              = [google_project_service.apis]
}

# Index and field operations on one database conflict when they run at once (409 "Please retry,
# underlying data changed" / "cross-transaction contention"; the provider retries only some):
# the first index alone, then the other indexes, then the field overrides and TTL policies.
resource "google_firestore_index" "first" {
  for_each    = { for k, v in local.composite_indexes : k => v if k == local.first_index_key }
  project     = var.project_id
  database    = google_firestore_database.state.name
  collection  = each.value.collection
  query_scope = each.value.query_scope

  dynamic "fields" {
    for_each = each.value.fields
    content {
      field_path   = fields.value.field_path
      order        = fields.value.order
      array_config = fields.value.array_config
    }
  }
}

resource "google_firestore_index" "composite" {
  for_each    = { for k, v in local.composite_indexes : k => v if k != local.first_index_key }
  depends_on  = [google_firestore_index.first]
  project     = var.project_id
  database    = google_firestore_database.state.name
  collection  = each.value.collection
  query_scope = each.value.query_scope

  dynamic "fields" {
    for_each = each.value.fields
    content {
      field_path   = fields.value.field_path
      order        = fields.value.order
      array_config = fields.value.array_config
    }
  }
}

resource "google_firestore_field" "overrides" {
  for_each   = local.field_overrides
  depends_on = [google_firestore_index.first, google_firestore_index.composite]
  project    = var.project_id
  database   = google_firestore_database.state.name
  collection = each.value.collection
  field      = each.value.field

  dynamic "ttl_config" {
    for_each = each.value.ttl ? [true] : []
    content {}
  }

  dynamic "index_config" {
    for_each = each.value.index_config
    content {
      dynamic "indexes" {
        for_each = index_config.value
        content {
          query_scope  = indexes.value.query_scope
          order        = indexes.value.order
          array_config = indexes.value.array_config
        }
      }
    }
  }
}

# ------------------------------------------------------------------------------------ Buckets

resource "google_storage_bucket" "source" {
  project                     = var.project_id
  name                        = "${var.project_id}-retrain-trigger-source"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  labels                      = var.labels
  depends_on                  = [google_project_service.apis]
}

# The runs' pipeline_root (root/...): the pipeline account writes here and nowhere else.
resource "google_storage_bucket" "pipelines" {
  project                     = var.project_id
  name                        = local.pipeline_bucket
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  labels                      = var.labels
  depends_on                  = [google_project_service.apis]
}

# Compiled pipeline templates (templates/...) the functions launch: read by the runtime account;
# the pipeline account has no role here, so a run cannot change what later runs execute.
resource "google_storage_bucket" "templates" {
  project                     = var.project_id
  name                        = local.template_bucket
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  labels                      = var.labels
  depends_on                  = [google_project_service.apis]
}

# Evaluation files (JSON Lines or CSV of metric events): each finalized object triggers
# on-evaluation-file, which the runtime account reads; in the region, as the trigger must be.
resource "google_storage_bucket" "evaluations" {
  project                     = var.project_id
  name                        = local.evaluation_bucket
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  labels                      = var.labels
  depends_on                  = [google_project_service.apis]
}

# ------------------------------------------------------------------------------- Source zip

data "archive_file" "source" {
  type             = "zip"
  source_dir       = local.source_dir
  output_path      = "${path.module}/.build/retrain-trigger-source.zip"
  excludes         = local.source_excludes
  output_file_mode = "0644"
}

resource "google_storage_bucket_object" "source" {
  # Content-addressed: a changed source is a new object, and so a new build of each function.
  name   = "retrain-trigger-${data.archive_file.source.output_md5}.zip"
  bucket = google_storage_bucket.source.name
  source = data.archive_file.source.output_path

  lifecycle {
    precondition {
      condition     = fileexists(local.policy_path)
      error_message = "Policy file ${local.policy_path} not found (variable policy_file is relative to source_dir)."
    }
    precondition {
      condition     = local.policy_compiled_fresh
      error_message = "${local.compiled_path} is missing or stale: run `python -m triggers validate --compile ${local.policy_path}` and plan again."
    }
    precondition {
      condition     = length(local.models_off_pipeline) == 0
      error_message = "Model(s) ${join(", ", local.models_off_pipeline)}: pipeline.service_account must be ${local.pipeline_sa_email}, the only account the runtime may act as."
    }
  }
}

# ---------------------------------------------------------------------------------- Functions

# The four entry points of main.py: one source, one runtime identity, one environment
# (manual-trigger adds RETRAIN_TRUST_IAM=true); the three event-driven ones behind Eventarc:
# a topic's messages, or (bucket) the evaluations bucket's finalized objects.
locals {
  functions = {
    metric_event = {
      name        = "on-metric-event"
      entry_point = "on_metric_event"
      description = "retrain-trigger: metric events from Pub/Sub -> policies -> guarded Vertex launch"
      topic       = google_pubsub_topic.metrics.id
      bucket      = null
      ingress     = "ALLOW_INTERNAL_ONLY"
      env         = local.function_env
    }
    run_outcome = {
      name        = "on-run-outcome"
      entry_point = "on_run_outcome"
      description = "retrain-trigger: pipeline run outcomes -> re-arm policies, new champion"
      topic       = google_pubsub_topic.outcomes.id
      bucket      = null
      ingress     = "ALLOW_INTERNAL_ONLY"
      env         = local.function_env
    }
    evaluation_file = {
      name        = "on-evaluation-file"
      entry_point = "on_evaluation_file"
      description = "retrain-trigger: evaluation files in Cloud Storage -> one metric event a line"
      topic       = null
      bucket      = google_storage_bucket.evaluations.name
      ingress     = "ALLOW_INTERNAL_ONLY"
      env         = local.function_env
    }
    # The HTTPS trigger: no unauthenticated access. Cloud Run IAM checks every caller (no
    # allUsers binding exists), and the service trusts that check (RETRAIN_TRUST_IAM=true).
    manual = {
      name        = "manual-trigger"
      entry_point = "manual_trigger"
      description = "retrain-trigger: manual retrain, events over HTTPS, decisions and model state"
      topic       = null
      bucket      = null
      ingress     = "ALLOW_ALL"
      env         = local.manual_function_env
    }
  }
}

resource "google_cloudfunctions2_function" "fn" {
  for_each    = local.functions
  project     = var.project_id
  name        = each.value.name
  location    = var.region
  description = each.value.description
  labels      = var.labels

  build_config {
    runtime         = "python311"
    entry_point     = each.value.entry_point
    service_account = var.build_service_account == null ? null : "projects/${var.project_id}/serviceAccounts/${var.build_service_account}"
    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.source.name
      }
    }
  }

  service_config {
    available_memory                 = var.memory
    available_cpu                    = var.cpu
    max_instance_count               = var.max_instances
    max_instance_request_concurrency = 1
    timeout_seconds                  = var.timeout_seconds
    ingress_settings                 = each.value.ingress
    all_traffic_on_latest_revision   = true
    service_account_email            = google_service_account.runtime.email
    environment_variables            = each.value.env
  }

  # 5xx (transient: store or launcher unavailable) -> Pub/Sub redelivers; same run id again.
  dynamic "event_trigger" {
    for_each = each.value.topic == null && each.value.bucket == null ? [] : [each.value]
    content {
      trigger_region        = var.region
      event_type            = event_trigger.value.topic != null ? "google.cloud.pubsub.topic.v1.messagePublished" : "google.cloud.storage.object.v1.finalized"
      pubsub_topic          = event_trigger.value.topic
      retry_policy          = "RETRY_POLICY_RETRY"
      service_account_email = google_service_account.trigger.email

      dynamic "event_filters" {
        for_each = event_trigger.value.bucket == null ? [] : [event_trigger.value.bucket]
        content {
          attribute = "bucket"
          value     = event_filters.value
        }
      }
    }
  }

  # The runtime's roles first, so the first delivery does not meet a half-made identity; the
  # service agents' roles propagated before Eventarc checks them (time_sleep.service_agents).
  depends_on = [
    time_sleep.service_agents,
    google_project_iam_member.runtime_aiplatform,
    google_project_iam_member.runtime_datastore,
    google_project_iam_member.runtime_logging,
    google_service_account_iam_member.runtime_acts_as_pipeline,
    google_pubsub_topic_iam_member.runtime_publishes_decisions,
    google_storage_bucket_iam_member.runtime_reads_evaluations,
    google_firestore_database.state,
  ]
}

# Invokers, granted on each function's Cloud Run service (never project-wide).
resource "google_cloud_run_v2_service_iam_member" "events_invoke" {
  for_each = toset(["metric_event", "run_outcome", "evaluation_file"])
  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.fn[each.value].name
  role     = "roles/run.invoker"
  member   = google_service_account.trigger.member
}

resource "google_cloud_run_v2_service_iam_member" "manual_invokers" {
  for_each = toset(var.manual_trigger_invokers)
  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.fn["manual"].name
  role     = "roles/run.invoker"
  member   = each.value
}

# ----------------------------------------------------------- Dead letter on the triggers' subscriptions
# Eventarc creates (and owns) the push subscription behind each event-driven function's trigger
# (a storage trigger's too, on a topic of Eventarc's own);
# the google provider exposes neither its name nor its dead-letter policy, so Terraform cannot
# manage it. dead_letter.sh (shared with deploy.sh) looks it up through the trigger and sets the
# policy, and grants the Pub/Sub service agent subscriber on it.
resource "terraform_data" "metrics_dead_letter" {
  count = var.configure_trigger_dead_letter ? 1 : 0

  triggers_replace = [
    google_cloudfunctions2_function.fn["metric_event"].event_trigger[0].trigger,
    google_pubsub_topic.dead_letter.id,
    var.max_delivery_attempts,
  ]

  provisioner "local-exec" {
    command = "bash '${abspath(path.module)}/../gcloud/dead_letter.sh'"
    environment = {
      PROJECT               = var.project_id
      REGION                = var.region
      TRIGGER               = google_cloudfunctions2_function.fn["metric_event"].event_trigger[0].trigger
      DEAD_LETTER_TOPIC     = google_pubsub_topic.dead_letter.id
      MAX_DELIVERY_ATTEMPTS = tostring(var.max_delivery_attempts)
      PUBSUB_AGENT          = local.pubsub_agent
    }
  }

  depends_on = [
    google_pubsub_topic_iam_member.pubsub_agent_dead_letter_publisher,
    google_pubsub_subscription.dead_letter,
  ]
}

resource "terraform_data" "outcome_dead_letter" {
  count = var.configure_trigger_dead_letter ? 1 : 0

  triggers_replace = [
    google_cloudfunctions2_function.fn["run_outcome"].event_trigger[0].trigger,
    google_pubsub_topic.outcome_dead_letter.id,
    var.max_delivery_attempts,
  ]

  provisioner "local-exec" {
    command = "bash '${abspath(path.module)}/../gcloud/dead_letter.sh'"
    environment = {
      PROJECT               = var.project_id
      REGION                = var.region
      TRIGGER               = google_cloudfunctions2_function.fn["run_outcome"].event_trigger[0].trigger
      DEAD_LETTER_TOPIC     = google_pubsub_topic.outcome_dead_letter.id
      MAX_DELIVERY_ATTEMPTS = tostring(var.max_delivery_attempts)
      PUBSUB_AGENT          = local.pubsub_agent
    }
  }

  depends_on = [
    google_pubsub_topic_iam_member.pubsub_agent_outcome_dead_letter_publisher,
    google_pubsub_subscription.outcome_dead_letter,
  ]
}

resource "terraform_data" "evaluation_dead_letter" {
  count = var.configure_trigger_dead_letter ? 1 : 0

  triggers_replace = [
    google_cloudfunctions2_function.fn["evaluation_file"].event_trigger[0].trigger,
    google_pubsub_topic.evaluation_dead_letter.id,
    var.max_delivery_attempts,
  ]

  provisioner "local-exec" {
    command = "bash '${abspath(path.module)}/../gcloud/dead_letter.sh'"
    environment = {
      PROJECT               = var.project_id
      REGION                = var.region
      TRIGGER               = google_cloudfunctions2_function.fn["evaluation_file"].event_trigger[0].trigger
      DEAD_LETTER_TOPIC     = google_pubsub_topic.evaluation_dead_letter.id
      MAX_DELIVERY_ATTEMPTS = tostring(var.max_delivery_attempts)
      PUBSUB_AGENT          = local.pubsub_agent
    }
  }

  depends_on = [
    google_pubsub_topic_iam_member.pubsub_agent_evaluation_dead_letter_publisher,
    google_pubsub_subscription.evaluation_dead_letter,
  ]
}
