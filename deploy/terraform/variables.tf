variable "project_id" {
  description = "The Google Cloud project to deploy into (billing enabled)."
  type        = string
}

variable "region" {
  description = "Region of the functions, the Eventarc triggers and Vertex AI (RETRAIN_LOCATION)."
  type        = string
  default     = "us-central1"
}

variable "source_dir" {
  description = "Root of the retrain-trigger source tree that is zipped and deployed (main.py, requirements.txt, the policy file)."
  type        = string
  default     = null # null: the repository this file lives in (../..)
}

variable "policy_file" {
  description = "The policy file, relative to source_dir. Ship it compiled: run `python -m triggers validate --compile FILE` first (the plan checks that FILE's .compiled.json is current)."
  type        = string
  default     = "policies.yaml"
}

variable "firestore_indexes_file" {
  description = "Composite indexes and TTL field overrides, Firebase CLI format."
  type        = string
  default     = null # null: deploy/firestore.indexes.json
}

variable "firestore_database" {
  description = "Firestore database id (RETRAIN_STATE=firestore://<id>). A named database leaves the project's (default) alone."
  type        = string
  default     = "retrain-trigger"
}

variable "state_retention" {
  description = "How long points, processed markers, decisions and rejected events are kept (their expire_at, deleted by the TTL policies), e.g. 400d; \"none\" keeps them forever; null: the store's default."
  type        = string
  default     = null
}

variable "firestore_location" {
  description = "Firestore location (a region such as us-central1, or a multi-region such as nam5)."
  type        = string
  default     = null # null: var.region
}

variable "firestore_delete_protection" {
  description = "Refuse to delete the Firestore database (recommended: it holds the audit trail)."
  type        = bool
  default     = true
}

variable "metrics_topic" {
  description = "Topic the evaluation job publishes metric events to."
  type        = string
  default     = "model-metrics"
}

variable "dead_letter_topic" {
  description = "Where metric events go after max_delivery_attempts failed deliveries."
  type        = string
  default     = "model-metrics-dead-letter"
}

variable "outcome_topic" {
  description = "Topic the pipeline's last step publishes run outcomes to."
  type        = string
  default     = "retrain-outcomes"
}

variable "outcome_dead_letter_topic" {
  description = "Where run outcomes go after max_delivery_attempts failed deliveries to on-run-outcome."
  type        = string
  default     = "retrain-outcomes-dead-letter"
}

variable "decisions_topic" {
  description = "Topic every told decision is published to (RETRAIN_DECISIONS_TOPIC), as the JSON GET /decisions returns, with attributes model and kind for subscription filters."
  type        = string
  default     = "retrain-decisions"
}

variable "evaluation_dead_letter_topic" {
  description = "Where evaluation-file notifications go after max_delivery_attempts failed deliveries to on-evaluation-file."
  type        = string
  default     = "retrain-evaluations-dead-letter"
}

variable "max_delivery_attempts" {
  description = "Deliveries of one metric event before it is dead-lettered (5..100)."
  type        = number
  default     = 10
  validation {
    condition     = var.max_delivery_attempts >= 5 && var.max_delivery_attempts <= 100
    error_message = "Pub/Sub accepts 5 to 100 delivery attempts."
  }
}

variable "configure_trigger_dead_letter" {
  description = "Attach the dead-letter topics to the subscriptions Eventarc creates for on-metric-event, on-run-outcome and on-evaluation-file. The google provider cannot manage that subscription, so this runs deploy/gcloud/dead_letter.sh (needs gcloud, logged in, where terraform runs)."
  type        = bool
  default     = true
}

variable "runtime_service_account_id" {
  description = "Account id of the functions' runtime service account."
  type        = string
  default     = "retrain-trigger"
}

variable "pipeline_service_account_id" {
  description = "Account id of the service account Vertex AI pipeline runs use. Every model's pipeline.service_account in the policy file must be this account."
  type        = string
  default     = "retrain-pipeline"
}

variable "trigger_service_account_id" {
  description = "Account id of the identity Eventarc uses to invoke on-metric-event, on-run-outcome and on-evaluation-file."
  type        = string
  default     = "retrain-events"
}

variable "build_service_account" {
  description = "Email of the service account Cloud Build uses to build the functions; null uses the project's default (which an organization policy may leave without the roles it needs)."
  type        = string
  default     = null
}

variable "pipeline_bucket" {
  description = "Bucket for the runs' pipeline_root (root/), the only bucket the pipeline account writes; created here. Globally unique."
  type        = string
  default     = null # null: <project_id>-retrain-pipelines
}

variable "template_bucket" {
  description = "Bucket for the compiled pipeline templates the functions launch (templates/): the runtime account reads it, the pipeline account has no role on it (a run cannot rewrite what later runs execute); created here. Globally unique."
  type        = string
  default     = null # null: <project_id>-retrain-templates
}

variable "evaluation_bucket" {
  description = "Bucket of evaluation files (JSON Lines or CSV of metric events): each finalized object triggers on-evaluation-file; the runtime account reads it. Created here, in var.region. Globally unique."
  type        = string
  default     = null # null: <project_id>-retrain-evaluations
}

variable "template_buckets" {
  description = "Other buckets holding gs:// pipeline templates the functions must read (objectViewer is granted on each). Never the pipeline bucket: the pipeline account writes there."
  type        = list(string)
  default     = []
}

variable "manual_trigger_invokers" {
  description = "Members allowed to call manual-trigger (e.g. user:ops@example.com, serviceAccount:ci@p.iam.gserviceaccount.com). They are bound as Cloud Run invokers AND set as RETRAIN_INVOKERS, which the function checks against the caller's ID token. allUsers, allAuthenticatedUsers and domain: members are refused; so are group: members (an ID token names its holder, not the holder's groups)."
  type        = list(string)
  default     = []
  validation {
    condition     = alltrue([for m in var.manual_trigger_invokers : !startswith(lower(trimspace(m)), "group:")])
    error_message = "group: members cannot be checked by the function (an ID token does not name the caller's groups): list user: and serviceAccount: members one by one."
  }
  validation {
    # Case-insensitive: IAM treats "AllUsers" as allUsers. A domain: member is everyone in a
    # Workspace domain: too wide for a trigger that launches paid training runs.
    condition     = alltrue([for m in var.manual_trigger_invokers : !contains(["allusers", "allauthenticatedusers"], lower(trimspace(m))) && !startswith(lower(trimspace(m)), "domain:")])
    error_message = "manual-trigger is never public (refused: allUsers, allAuthenticatedUsers, domain:): name users, groups or service accounts."
  }
}

variable "service_agent_wait" {
  description = "How long to wait after enabling the APIs and granting the service agents their roles before creating the Eventarc triggers (IAM propagates in seconds to minutes; on a fresh project a trigger created too early fails with \"Permission denied while using the Eventarc Service Agent\")."
  type        = string
  default     = "120s"
}

variable "memory" {
  description = "Memory of each function (at least 256Mi: the first Vertex launch peaks near 124 MiB)."
  type        = string
  default     = "512Mi"
  validation {
    condition     = can(regex("^[0-9]+(Mi|Gi)$", var.memory)) && (endswith(var.memory, "Gi") || try(tonumber(trimsuffix(var.memory, "Mi")) >= 256, false))
    error_message = "memory must be like 256Mi, 512Mi or 1Gi, and at least 256Mi."
  }
}

variable "cpu" {
  description = "vCPUs of each function. Cold-start figures in the README were measured on full CPUs; below 1 vCPU, imports are proportionally slower."
  type        = string
  default     = "1"
}

variable "max_instances" {
  description = "Upper bound on instances of each function."
  type        = number
  default     = 10
}

variable "timeout_seconds" {
  description = "Request timeout of each function (a launch waits at most 30 s on Vertex)."
  type        = number
  default     = 120
}

variable "labels" {
  description = "Labels added to the resources that take them."
  type        = map(string)
  default     = { app = "retrain-trigger" }
}

variable "manual_trigger_audiences" {
  description = "Other audiences the manual trigger accepts in callers' ID tokens, besides its cloudfunctions.net and run.app URLs (e.g. a custom domain's URL, or gcloud's OAuth client id 32555940559.apps.googleusercontent.com so that `gcloud auth print-identity-token` of a listed user works)."
  type        = list(string)
  default     = []
}
