# Values derived from variables and files only (no provider): tests/test_deploy.py evaluates
# this file with a real terraform and no provider to check them.

locals {
  source_dir    = abspath(coalesce(var.source_dir, "${path.module}/../.."))
  indexes_file  = coalesce(var.firestore_indexes_file, "${path.module}/../firestore.indexes.json")
  policy_path   = "${local.source_dir}/${var.policy_file}"
  policy_stem   = replace(basename(var.policy_file), "/\\.[^.]*$/", "")
  compiled_path = "${local.source_dir}/${dirname(var.policy_file)}/${local.policy_stem}.compiled.json"
  # What `python -m triggers validate --compile` wrote: the validated policy file and its digest.
  compiled      = try(jsondecode(file(local.compiled_path)), {})
  policy_models = try(local.compiled.policy_file.models, {})
  # The compiled file belongs to this policy file as it is now (else the cold start re-validates
  # the YAML: correct but about 90 ms slower, and a sign the shipped file was not checked).
  policy_compiled_fresh = try(local.compiled.source_sha256, "") == try(filesha256(local.policy_path), "missing")

  pipeline_bucket     = coalesce(var.pipeline_bucket, "${var.project_id}-retrain-pipelines")
  template_bucket     = coalesce(var.template_bucket, "${var.project_id}-retrain-templates")
  evaluation_bucket   = coalesce(var.evaluation_bucket, "${var.project_id}-retrain-evaluations")
  pipeline_sa_email   = "${var.pipeline_service_account_id}@${var.project_id}.iam.gserviceaccount.com"
  models_off_pipeline = [for name, m in local.policy_models : name if try(m.pipeline.service_account, null) != local.pipeline_sa_email]

  # The function's environment (triggers/cloud/environment.py Environment.from_env). RETRAIN_MANUAL_TOKEN is
  # deliberately unset: manual-trigger trusts Cloud Run IAM instead of a shared secret.
  # RETRAIN_VERTEX_ENDPOINT is for local fakes only.
  state_url = "firestore://${var.firestore_database}${var.state_retention == null ? "" : "?retention=${var.state_retention}"}"
  function_env = {
    RETRAIN_POLICY_FILE  = var.policy_file
    RETRAIN_STATE        = local.state_url
    RETRAIN_LAUNCHER     = "vertex"
    GOOGLE_CLOUD_PROJECT = var.project_id
    RETRAIN_LOCATION     = var.region
    RETRAIN_TRUST_IAM    = "false"
    # each Vertex call is bounded well inside the function's timeout; a redelivery retries
    RETRAIN_VERTEX_TIMEOUT = "30s"
    # every told decision is published here (triggers/cloud/outbox.py), from whichever function
    RETRAIN_DECISIONS_TOPIC = "projects/${var.project_id}/topics/${var.decisions_topic}"
  }
  # manual-trigger: Cloud Run IAM authenticates every caller (no allUsers binding), so trust it.
  # The function verifies the caller's Google ID token again (audience: its own URLs; main.tf
  # adds the run.app URL, which needs the project number) against the same invokers.
  manual_invokers = join(",", [for m in var.manual_trigger_invokers : trimspace(m)])
  manual_audience = join(",", concat(["https://${var.region}-${var.project_id}.cloudfunctions.net/manual-trigger"], var.manual_trigger_audiences))
  manual_env      = merge(local.function_env, { RETRAIN_TRUST_IAM = "true", RETRAIN_INVOKERS = local.manual_invokers, RETRAIN_AUDIENCE = local.manual_audience })

  # Everything `gcloud functions deploy --source=.` leaves out (.gcloudignore), plus the
  # deployment itself (its state and the zip) and local caches. Paths relative to source_dir.
  source_excludes = [
    ".gcloudignore", ".gitignore", ".git/**", ".venv/**", ".retrain/**", ".ci/**",
    "**/__pycache__/**", "**/*.pyc", "tests/**", "bench/**", "examples/sample_stream.jsonl",
    "requirements-dev.txt", "requirements-pipeline.txt", "Makefile",
    "deploy/**", ".mypy_cache/**", ".ruff_cache/**", ".pytest_cache/**", ".hypothesis/**",
    "*.egg-info/**", "build/**", "dist/**",
  ]

  # Firestore indexes and TTL policies, from the Firebase CLI file the store's author maintains.
  firestore = jsondecode(file(local.indexes_file))
  composite_indexes = {
    for i in try(local.firestore.indexes, []) :
    join("|", concat([i.collectionGroup, try(i.queryScope, "COLLECTION")],
      [for f in i.fields : "${f.fieldPath}:${try(f.order, f.arrayConfig)}"])) => {
      collection  = i.collectionGroup
      query_scope = try(i.queryScope, "COLLECTION")
      fields = [for f in i.fields : {
        field_path   = f.fieldPath
        order        = try(f.order, null)
        array_config = try(f.arrayConfig, null)
      }]
    }
  }
  # Firestore answers 409 to index operations that race on a new database: the first index is
  # created alone (it bootstraps the database's index metadata), then the others.
  first_index_key = try(sort(keys(local.composite_indexes))[0], null)
  field_overrides = {
    for o in try(local.firestore.fieldOverrides, []) : "${o.collectionGroup}/${o.fieldPath}" => {
      collection = o.collectionGroup
      field      = o.fieldPath
      ttl        = try(o.ttl, false)
      # "indexes": [] in the Firebase format means: no single-field indexes on this field.
      index_config = can(o.indexes) ? [[for i in o.indexes : {
        query_scope  = try(i.queryScope, null)
        order        = try(i.order, null)
        array_config = try(i.arrayConfig, null)
      }]] : []
    }
  }
}
