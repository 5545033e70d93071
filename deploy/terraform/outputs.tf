output "manual_trigger_url" {
  description = "HTTPS endpoint of manual-trigger (callers need roles/run.invoker and an identity token)."
  value       = google_cloudfunctions2_function.fn["manual"].service_config[0].uri
}

output "metrics_topic" {
  description = "Publish metric events here (python -m triggers publish FILE --topic ...)."
  value       = google_pubsub_topic.metrics.id
}

output "outcome_topic" {
  description = "The pipeline's outcome_topic parameter: where its last step publishes the run's outcome."
  value       = google_pubsub_topic.outcomes.id
}

output "evaluation_prefix" {
  description = "Upload evaluation files here (python -m triggers publish FILE --bucket ...): each object's lines are metric events."
  value       = "gs://${google_storage_bucket.evaluations.name}/"
}

output "decisions_topic" {
  description = "Every told decision is published here (attributes model, kind): subscribe with a filter."
  value       = google_pubsub_topic.decisions.id
}

output "evaluation_dead_letter_subscription" {
  description = "Evaluation-file notifications that failed max_delivery_attempts times wait here (7 days)."
  value       = google_pubsub_subscription.evaluation_dead_letter.id
}

output "dead_letter_subscription" {
  description = "Metric events that failed max_delivery_attempts times wait here (7 days)."
  value       = google_pubsub_subscription.dead_letter.id
}

output "outcome_dead_letter_subscription" {
  description = "Run outcomes that failed max_delivery_attempts times wait here (7 days)."
  value       = google_pubsub_subscription.outcome_dead_letter.id
}

output "runtime_service_account" {
  value = google_service_account.runtime.email
}

output "pipeline_service_account" {
  description = "Set as pipeline.service_account of every model in the policy file."
  value       = google_service_account.pipeline.email
}

output "pipeline_root" {
  description = "Set as pipeline.pipeline_root in the policy file."
  value       = "gs://${google_storage_bucket.pipelines.name}/root"
}

output "template_prefix" {
  description = "Upload compiled pipeline templates under this prefix (the functions read it; the pipeline account cannot write it)."
  value       = "gs://${google_storage_bucket.templates.name}/templates/"
}

output "firestore_state" {
  description = "RETRAIN_STATE of the functions."
  value       = local.function_env.RETRAIN_STATE
}

output "source_object" {
  description = "The deployed source zip."
  value       = "gs://${google_storage_bucket.source.name}/${google_storage_bucket_object.source.name}"
}
