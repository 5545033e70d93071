#!/usr/bin/env bash
# Deploy retrain-trigger with plain gcloud: what deploy/terraform creates, for people without
# Terraform. Idempotent: run it again after a change (existing resources are kept, functions
# are redeployed, IAM bindings re-added as no-ops).
#
#   PROJECT=my-project MANUAL_INVOKERS="user:me@example.com" deploy/gcloud/deploy.sh
#
# Needs: gcloud (logged in as someone who may create these resources, e.g. a project Owner),
# python3, and the project's Python environment (`make install`) to compile the policy file.
set -euo pipefail

# ------------------------------------------------------------------------------ Variables
PROJECT="${PROJECT:?set PROJECT to your project id}"
REGION="${REGION:-us-central1}"
SOURCE_DIR="${SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
POLICY_FILE="${POLICY_FILE:-policies.yaml}"           # relative to SOURCE_DIR, shipped with it
INDEXES_FILE="${INDEXES_FILE:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/firestore.indexes.json}"
FIRESTORE_DB="${FIRESTORE_DB:-retrain-trigger}"
FIRESTORE_LOCATION="${FIRESTORE_LOCATION:-$REGION}"
STATE_RETENTION="${STATE_RETENTION:-}"                 # e.g. 400d or none; empty: store default
METRICS_TOPIC="${METRICS_TOPIC:-model-metrics}"
DEAD_LETTER_TOPIC="${DEAD_LETTER_TOPIC:-model-metrics-dead-letter}"
OUTCOME_TOPIC="${OUTCOME_TOPIC:-retrain-outcomes}"
OUTCOME_DEAD_LETTER_TOPIC="${OUTCOME_DEAD_LETTER_TOPIC:-retrain-outcomes-dead-letter}"
DECISIONS_TOPIC="${DECISIONS_TOPIC:-retrain-decisions}"        # every told decision (RETRAIN_DECISIONS_TOPIC)
EVALUATION_DEAD_LETTER_TOPIC="${EVALUATION_DEAD_LETTER_TOPIC:-retrain-evaluations-dead-letter}"
MAX_DELIVERY_ATTEMPTS="${MAX_DELIVERY_ATTEMPTS:-10}"
RUNTIME_SA_ID="${RUNTIME_SA_ID:-retrain-trigger}"
PIPELINE_SA_ID="${PIPELINE_SA_ID:-retrain-pipeline}"
TRIGGER_SA_ID="${TRIGGER_SA_ID:-retrain-events}"
BUILD_SA="${BUILD_SA:-}"                               # empty: the project's default build account
SOURCE_BUCKET="${SOURCE_BUCKET:-$PROJECT-retrain-trigger-source}"
PIPELINE_BUCKET="${PIPELINE_BUCKET:-$PROJECT-retrain-pipelines}"  # pipeline_root: the pipeline SA writes
TEMPLATE_BUCKET="${TEMPLATE_BUCKET:-$PROJECT-retrain-templates}"  # templates: runtime reads, pipeline SA can't write
EVALUATION_BUCKET="${EVALUATION_BUCKET:-$PROJECT-retrain-evaluations}"  # evaluation files: on-evaluation-file reads
MANUAL_INVOKERS="${MANUAL_INVOKERS:-}"                 # e.g. "user:a@x.com serviceAccount:ci@p.iam.gserviceaccount.com"
MANUAL_AUDIENCES="${MANUAL_AUDIENCES:-}"               # more ID-token audiences, space-separated
MEMORY="${MEMORY:-512Mi}"                              # at least 256Mi
CPU="${CPU:-1}"
MAX_INSTANCES="${MAX_INSTANCES:-10}"
TIMEOUT="${TIMEOUT:-120}"
RETRY_PAUSE="${RETRY_PAUSE:-20}"                       # seconds between retries of a waiting step
PROPAGATION_ATTEMPTS="${PROPAGATION_ATTEMPTS:-10}"     # ~RETRY_PAUSE each: IAM takes up to minutes
if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3
  [ -x "$SOURCE_DIR/.venv/bin/python" ] && PYTHON="$SOURCE_DIR/.venv/bin/python"
fi

RUNTIME_SA="$RUNTIME_SA_ID@$PROJECT.iam.gserviceaccount.com"
PIPELINE_SA="$PIPELINE_SA_ID@$PROJECT.iam.gserviceaccount.com"
TRIGGER_SA="$TRIGGER_SA_ID@$PROJECT.iam.gserviceaccount.com"
# The function's environment (triggers/cloud/environment.py Environment.from_env). RETRAIN_MANUAL_TOKEN
# stays unset (manual-trigger trusts Cloud Run IAM); RETRAIN_VERTEX_ENDPOINT is for local fakes.
STATE_URL="firestore://$FIRESTORE_DB${STATE_RETENTION:+?retention=$STATE_RETENTION}"
ENV_VARS="RETRAIN_POLICY_FILE=$POLICY_FILE,RETRAIN_STATE=$STATE_URL,RETRAIN_LAUNCHER=vertex,GOOGLE_CLOUD_PROJECT=$PROJECT,RETRAIN_LOCATION=$REGION,RETRAIN_VERTEX_TIMEOUT=30s,RETRAIN_DECISIONS_TOPIC=projects/$PROJECT/topics/$DECISIONS_TOPIC"

G=(--project="$PROJECT" --quiet)
log() { printf '\n== %s\n' "$*"; }
# Retry a command that can fail for a few seconds after a resource was created (IAM on a new
# service account is eventually consistent).
retry() {
  local n=0
  until "$@"; do
    n=$((n + 1))
    [ "$n" -lt 5 ] || return 1
    sleep $((n * 5))
  done
}
# Run a command, retrying (bounded) while it fails with an error matching PATTERN: what Google
# answers while something it depends on is still settling. Any other failure stops at once.
retry_while() {  # PATTERN ATTEMPTS WHAT COMMAND...
  local pattern="$1" attempts="$2" what="$3" n=1 out
  shift 3
  while true; do
    if out=$("$@" 2>&1); then
      printf '%s\n' "$out"
      return 0
    fi
    # "already exists" (also a 409) is an answer, not a busy database: never retried here
    if [ "$n" -ge "$attempts" ] || ! grep -qiE "$pattern" <<<"$out" ||
      grep -qiE 'already exists|ALREADY_EXISTS' <<<"$out"; then
      printf '%s\n' "$out" >&2
      return 1
    fi
    echo "$what: not ready yet (attempt $n of $attempts), retrying in ${RETRY_PAUSE}s" >&2
    n=$((n + 1))
    sleep "$RETRY_PAUSE"
  done
}
# On a fresh project the Eventarc and Pub/Sub service agents get their roles minutes after the
# APIs are enabled: a trigger created before that fails with this message.
PROPAGATION_ERROR='Permission denied while using the Eventarc Service Agent|permissions are propagated|verify that it has Eventarc Service Agent role'
# Index, field and TTL operations on one database conflict while another runs: 409 / ABORTED.
FIRESTORE_BUSY='409|ABORTED|Please retry|underlying data changed|contention|another operation'
firestore_op() {  # COMMAND... (retried while the database is busy with another operation)
  retry_while "$FIRESTORE_BUSY" 10 "Firestore ${3:-} ${4:-}" "$@"
}
# Run a create command; "already exists" counts as success.
create_or_exists() {
  local out
  if out=$(firestore_op "$@" 2>&1); then return 0; fi
  if grep -qiE 'already exists|ALREADY_EXISTS' <<<"$out"; then return 0; fi
  printf '%s\n' "$out" >&2
  return 1
}
bind_project() {  # MEMBER ROLE [CONDITION]
  retry gcloud projects add-iam-policy-binding "$PROJECT" --member="$1" --role="$2" \
    --condition="${3:-None}" --quiet >/dev/null
}

case "$MEMORY" in
  *Gi) ;;
  *Mi) [ "${MEMORY%Mi}" -ge 256 ] || { echo "MEMORY must be at least 256Mi" >&2; exit 2; } ;;
  *) echo "MEMORY must be like 512Mi or 1Gi" >&2; exit 2 ;;
esac
for member in $MANUAL_INVOKERS; do
  case "${member,,}" in
    allusers | allauthenticatedusers | domain:*)
      echo "MANUAL_INVOKERS: $member refused: manual-trigger is never public (refused: allUsers, allAuthenticatedUsers, domain:); name users or service accounts" >&2
      exit 2 ;;
    group:*)
      echo "MANUAL_INVOKERS: $member refused: the function checks the caller's ID token against RETRAIN_INVOKERS, and a token does not name the caller's groups; list user: and serviceAccount: members one by one" >&2
      exit 2 ;;
  esac
done
# The function verifies callers' Google ID tokens again (a second layer behind Cloud Run IAM).
read -ra INVOKER_LIST <<<"$MANUAL_INVOKERS"
MANUAL_INVOKERS_CSV=$(IFS=,; echo "${INVOKER_LIST[*]}")

# ---------------------------------------------------------------- The policy file, compiled
log "policy file: validate and compile $SOURCE_DIR/$POLICY_FILE"
(cd "$SOURCE_DIR" && "$PYTHON" -m triggers validate --compile "$POLICY_FILE")
COMPILED="$SOURCE_DIR/$(dirname "$POLICY_FILE")/$(basename "${POLICY_FILE%.*}").compiled.json"
# Every model's pipeline must run as the pipeline account: the runtime may act as no other.
python3 - "$COMPILED" "$PIPELINE_SA" <<'PY'
import json, sys
models = json.load(open(sys.argv[1]))["policy_file"]["models"]
off = [name for name, m in models.items() if m["pipeline"].get("service_account") != sys.argv[2]]
if off:
    sys.exit(f"model(s) {', '.join(off)}: pipeline.service_account must be {sys.argv[2]}")
PY

# ------------------------------------------------------------------------------------- APIs
log "APIs"
gcloud services enable aiplatform.googleapis.com artifactregistry.googleapis.com \
  cloudbuild.googleapis.com cloudfunctions.googleapis.com cloudresourcemanager.googleapis.com \
  eventarc.googleapis.com firestore.googleapis.com iam.googleapis.com iamcredentials.googleapis.com \
  logging.googleapis.com pubsub.googleapis.com run.googleapis.com serviceusage.googleapis.com \
  storage.googleapis.com "${G[@]}"
PROJECT_NUMBER=$(gcloud projects describe "$PROJECT" --format='value(projectNumber)')
PUBSUB_AGENT="service-$PROJECT_NUMBER@gcp-sa-pubsub.iam.gserviceaccount.com"
# Cloud Storage's service agent (created on first ask) publishes the bucket's notifications.
STORAGE_AGENT=$(gcloud storage service-agent --project="$PROJECT")
# The manual trigger's own URLs (a gen2 function answers on both), then any extra audiences.
MANUAL_AUDIENCE="https://$REGION-$PROJECT.cloudfunctions.net/manual-trigger,https://manual-trigger-$PROJECT_NUMBER.$REGION.run.app"
for audience in $MANUAL_AUDIENCES; do MANUAL_AUDIENCE="$MANUAL_AUDIENCE,$audience"; done

# -------------------------------------------------------------------------- Service accounts
log "service accounts"
for pair in "$RUNTIME_SA_ID:retrain-trigger functions (runtime)" \
            "$PIPELINE_SA_ID:retrain-trigger Vertex AI pipeline runs" \
            "$TRIGGER_SA_ID:retrain-trigger Eventarc invoker"; do
  id="${pair%%:*}"
  gcloud iam service-accounts describe "$id@$PROJECT.iam.gserviceaccount.com" "${G[@]}" \
    >/dev/null 2>&1 ||
    gcloud iam service-accounts create "$id" --display-name="${pair#*:}" "${G[@]}"
done

# ---------------------------------------------------------------------------- Pub/Sub topics
log "topics"
for topic in "$METRICS_TOPIC" "$DEAD_LETTER_TOPIC" "$OUTCOME_TOPIC" "$OUTCOME_DEAD_LETTER_TOPIC" \
             "$DECISIONS_TOPIC" "$EVALUATION_DEAD_LETTER_TOPIC"; do
  gcloud pubsub topics describe "$topic" "${G[@]}" >/dev/null 2>&1 ||
    gcloud pubsub topics create "$topic" --labels=app=retrain-trigger "${G[@]}"
done
# Messages published to a topic without subscriptions are lost: hold dead letters for a week.
for topic in "$DEAD_LETTER_TOPIC" "$OUTCOME_DEAD_LETTER_TOPIC" "$EVALUATION_DEAD_LETTER_TOPIC"; do
  gcloud pubsub subscriptions describe "$topic-hold" "${G[@]}" >/dev/null 2>&1 ||
    gcloud pubsub subscriptions create "$topic-hold" --topic="$topic" \
      --message-retention-duration=7d --ack-deadline=60 --expiration-period=never "${G[@]}"
done

# ----------------------------------------------------------------------------------- Buckets
log "buckets"
for bucket in "$SOURCE_BUCKET" "$PIPELINE_BUCKET" "$TEMPLATE_BUCKET" "$EVALUATION_BUCKET"; do
  gcloud storage buckets describe "gs://$bucket" "${G[@]}" >/dev/null 2>&1 ||
    gcloud storage buckets create "gs://$bucket" --location="$REGION" \
      --uniform-bucket-level-access --public-access-prevention "${G[@]}"
done

# --------------------------------------------------------------------------------------- IAM
log "IAM"
# Each role is the narrowest predefined one covering what the code calls (as in Terraform's
# main.tf, which says why for each). Runtime: launch pipelines and move Model Registry aliases
# (aiplatform.user), act as the pipeline account (on that account only), its own Firestore
# database only, logs, read templates (from the templates bucket only) and evaluation files
# (from the evaluations bucket only), publish decisions (to the decisions topic only).
bind_project "serviceAccount:$RUNTIME_SA" roles/aiplatform.user
bind_project "serviceAccount:$RUNTIME_SA" roles/logging.logWriter
bind_project "serviceAccount:$RUNTIME_SA" roles/datastore.user \
  "expression=resource.name == \"projects/$PROJECT/databases/$FIRESTORE_DB\",title=retrain-trigger-database-only"
retry gcloud iam service-accounts add-iam-policy-binding "$PIPELINE_SA" \
  --member="serviceAccount:$RUNTIME_SA" --role=roles/iam.serviceAccountUser "${G[@]}" >/dev/null
retry gcloud storage buckets add-iam-policy-binding "gs://$TEMPLATE_BUCKET" \
  --member="serviceAccount:$RUNTIME_SA" --role=roles/storage.objectViewer "${G[@]}" >/dev/null
retry gcloud storage buckets add-iam-policy-binding "gs://$EVALUATION_BUCKET" \
  --member="serviceAccount:$RUNTIME_SA" --role=roles/storage.objectViewer "${G[@]}" >/dev/null
retry gcloud pubsub topics add-iam-policy-binding "$DECISIONS_TOPIC" \
  --member="serviceAccount:$RUNTIME_SA" --role=roles/pubsub.publisher "${G[@]}" >/dev/null
# Pipeline runs: Vertex jobs and model uploads, their pipeline_root (objectUser: objects only, no
# IAM; the only bucket it writes — never the templates bucket), the run's outcome, logs.
bind_project "serviceAccount:$PIPELINE_SA" roles/aiplatform.user
bind_project "serviceAccount:$PIPELINE_SA" roles/logging.logWriter
retry gcloud storage buckets add-iam-policy-binding "gs://$PIPELINE_BUCKET" \
  --member="serviceAccount:$PIPELINE_SA" --role=roles/storage.objectUser "${G[@]}" >/dev/null
retry gcloud pubsub topics add-iam-policy-binding "$OUTCOME_TOPIC" \
  --member="serviceAccount:$PIPELINE_SA" --role=roles/pubsub.publisher "${G[@]}" >/dev/null
# Eventarc's identity: Pub/Sub mints its tokens (projects created before April 2021 need it).
retry gcloud iam service-accounts add-iam-policy-binding "$TRIGGER_SA" \
  --member="serviceAccount:$PUBSUB_AGENT" --role=roles/iam.serviceAccountTokenCreator \
  "${G[@]}" >/dev/null
# Eventarc storage triggers: the Storage agent publishes object notifications (Google documents
# the project-level grant); the trigger's identity may receive Eventarc events.
bind_project "serviceAccount:$STORAGE_AGENT" roles/pubsub.publisher
bind_project "serviceAccount:$TRIGGER_SA" roles/eventarc.eventReceiver
# Dead-lettering: the Pub/Sub service agent publishes to the dead-letter topics.
for topic in "$DEAD_LETTER_TOPIC" "$OUTCOME_DEAD_LETTER_TOPIC" "$EVALUATION_DEAD_LETTER_TOPIC"; do
  retry gcloud pubsub topics add-iam-policy-binding "$topic" \
    --member="serviceAccount:$PUBSUB_AGENT" --role=roles/pubsub.publisher "${G[@]}" >/dev/null
done

# --------------------------------------------------------------------------------- Firestore
log "Firestore database $FIRESTORE_DB, indexes and TTL policies from $INDEXES_FILE"
gcloud firestore databases describe --database="$FIRESTORE_DB" "${G[@]}" >/dev/null 2>&1 ||
  gcloud firestore databases create --database="$FIRESTORE_DB" --location="$FIRESTORE_LOCATION" \
    --type=firestore-native --delete-protection "${G[@]}"
# One line per composite index: collection group, query scope, then one --field-config each.
while IFS=$'\t' read -r -a index; do
  args=()
  for field in "${index[@]:2}"; do args+=("--field-config=$field"); done
  create_or_exists gcloud firestore indexes composite create --database="$FIRESTORE_DB" \
    --collection-group="${index[0]}" --query-scope="${index[1]}" "${args[@]}" --async "${G[@]}"
done < <(python3 - "$INDEXES_FILE" <<'PY'
import json, sys
for index in json.load(open(sys.argv[1])).get("indexes", []):
    fields = []
    for f in index["fields"]:
        kind = f"order={f['order'].lower()}" if "order" in f else \
            f"array-config={f['arrayConfig'].lower()}"
        fields.append(f"field-path={f['fieldPath']},{kind}")
    scope = index.get("queryScope", "COLLECTION").lower().replace("_", "-")
    print("\t".join([index["collectionGroup"], scope, *fields]))
PY
)
# One line per field override: collection group, field, ttl (0/1), and its single-field
# indexes: "inherit" (no "indexes" key), "none" ("indexes": []) or --index values.
while IFS=$'\t' read -r -a override; do
  group="${override[0]}" field="${override[1]}" ttl="${override[2]}"
  case "${override[3]}" in
    inherit) ;;
    none) firestore_op gcloud firestore indexes fields update "$field" \
            --database="$FIRESTORE_DB" --collection-group="$group" --disable-indexes "${G[@]}" ;;
    *) args=()
       for spec in "${override[@]:3}"; do args+=("--index=$spec"); done
       firestore_op gcloud firestore indexes fields update "$field" --database="$FIRESTORE_DB" \
         --collection-group="$group" "${args[@]}" "${G[@]}" ;;
  esac
  # Without --async: gcloud waits for the operation, so the next one does not race it.
  if [ "$ttl" = 1 ]; then
    firestore_op gcloud firestore fields ttls update "$field" --database="$FIRESTORE_DB" \
      --collection-group="$group" --enable-ttl "${G[@]}"
  fi
done < <(python3 - "$INDEXES_FILE" <<'PY'
import json, sys
for o in json.load(open(sys.argv[1])).get("fieldOverrides", []):
    if "indexes" not in o:
        indexes = ["inherit"]
    elif not o["indexes"]:
        indexes = ["none"]
    else:
        indexes = []
        for i in o["indexes"]:
            if i.get("queryScope", "COLLECTION") != "COLLECTION":
                print(f"warning: {o['collectionGroup']}.{o['fieldPath']}: gcloud sets collection"
                      f"-scoped single-field indexes only; skipped {i}", file=sys.stderr)
                continue
            indexes.append(f"order={i['order'].lower()}" if "order" in i else
                           f"array-config={i['arrayConfig'].lower()}")
        indexes = indexes or ["none"]
    ttl = "1" if o.get("ttl") else "0"
    print("\t".join([o["collectionGroup"], o["fieldPath"], ttl, *indexes]))
PY
)

# --------------------------------------------------------------------------------- Functions
# Stage the source without the deployment, VCS and local caches; gcloud then applies the
# project's .gcloudignore inside the stage.
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
tar -C "$SOURCE_DIR" --exclude=./.git --exclude=./.venv --exclude=./deploy --exclude=./.retrain \
  --exclude='*/__pycache__' --exclude=./.mypy_cache --exclude=./.ruff_cache \
  --exclude=./.pytest_cache --exclude=./.hypothesis -cf - . | tar -C "$STAGE" -xf -

COMMON=(--gen2 --runtime=python311 --region="$REGION" --source="$STAGE"
  --run-service-account="$RUNTIME_SA" --memory="$MEMORY" --cpu="$CPU" --timeout="${TIMEOUT}s"
  --max-instances="$MAX_INSTANCES" --concurrency=1 "${G[@]}")
[ -z "$BUILD_SA" ] || COMMON+=(--build-service-account="projects/$PROJECT/serviceAccounts/$BUILD_SA")

# The event-driven ones create Eventarc triggers: retried while the service agents' roles are
# still propagating (a fresh project), bounded by PROPAGATION_ATTEMPTS.
log "function on-metric-event (Eventarc Pub/Sub trigger on $METRICS_TOPIC, retried on failure)"
retry_while "$PROPAGATION_ERROR" "$PROPAGATION_ATTEMPTS" "on-metric-event's trigger" \
  gcloud functions deploy on-metric-event "${COMMON[@]}" --entry-point=on_metric_event \
  --trigger-topic="$METRICS_TOPIC" --retry --trigger-service-account="$TRIGGER_SA" \
  --ingress-settings=internal-only --set-env-vars="$ENV_VARS"
log "function on-run-outcome (Eventarc Pub/Sub trigger on $OUTCOME_TOPIC)"
retry_while "$PROPAGATION_ERROR" "$PROPAGATION_ATTEMPTS" "on-run-outcome's trigger" \
  gcloud functions deploy on-run-outcome "${COMMON[@]}" --entry-point=on_run_outcome \
  --trigger-topic="$OUTCOME_TOPIC" --retry --trigger-service-account="$TRIGGER_SA" \
  --ingress-settings=internal-only --set-env-vars="$ENV_VARS"
log "function on-evaluation-file (Eventarc storage trigger on gs://$EVALUATION_BUCKET, retried on failure)"
retry_while "$PROPAGATION_ERROR" "$PROPAGATION_ATTEMPTS" "on-evaluation-file's trigger" \
  gcloud functions deploy on-evaluation-file "${COMMON[@]}" --entry-point=on_evaluation_file \
  --trigger-event-filters=type=google.cloud.storage.object.v1.finalized \
  --trigger-event-filters="bucket=$EVALUATION_BUCKET" --trigger-location="$REGION" \
  --retry --trigger-service-account="$TRIGGER_SA" \
  --ingress-settings=internal-only --set-env-vars="$ENV_VARS"
log "function manual-trigger (HTTPS, IAM-authenticated callers only)"
gcloud functions deploy manual-trigger "${COMMON[@]}" --entry-point=manual_trigger \
  --trigger-http --no-allow-unauthenticated --ingress-settings=all \
  --set-env-vars="^;^${ENV_VARS//,/;};RETRAIN_TRUST_IAM=true;RETRAIN_INVOKERS=$MANUAL_INVOKERS_CSV;RETRAIN_AUDIENCE=$MANUAL_AUDIENCE"

log "invokers"
for fn in on-metric-event on-run-outcome on-evaluation-file; do
  retry gcloud functions add-invoker-policy-binding "$fn" --region="$REGION" \
    --member="serviceAccount:$TRIGGER_SA" "${G[@]}" >/dev/null
done
for member in $MANUAL_INVOKERS; do
  retry gcloud functions add-invoker-policy-binding manual-trigger --region="$REGION" \
    --member="$member" "${G[@]}" >/dev/null
done

for pair in "on-metric-event:$DEAD_LETTER_TOPIC" "on-run-outcome:$OUTCOME_DEAD_LETTER_TOPIC" \
            "on-evaluation-file:$EVALUATION_DEAD_LETTER_TOPIC"; do
  fn="${pair%%:*}"
  log "dead letter on $fn's subscription -> ${pair#*:}"
  TRIGGER=$(gcloud functions describe "$fn" --gen2 --region="$REGION" \
    --project="$PROJECT" --format='value(eventTrigger.trigger)')
  env PROJECT="$PROJECT" REGION="$REGION" TRIGGER="$TRIGGER" PUBSUB_AGENT="$PUBSUB_AGENT" \
    DEAD_LETTER_TOPIC="projects/$PROJECT/topics/${pair#*:}" \
    MAX_DELIVERY_ATTEMPTS="$MAX_DELIVERY_ATTEMPTS" \
    bash "$(dirname "${BASH_SOURCE[0]}")/dead_letter.sh"
done

URL=$(gcloud functions describe manual-trigger --gen2 --region="$REGION" --project="$PROJECT" \
  --format='value(serviceConfig.uri)')
cat <<EOF

Deployed. Publish a metric event:
  gcloud pubsub topics publish $METRICS_TOPIC --project=$PROJECT --message='{"model": ...}'
Ask the manual trigger (as one of MANUAL_INVOKERS):
  curl -H "Authorization: Bearer \$(gcloud auth print-identity-token)" "$URL/decisions?limit=20"
Pipeline runs: service account $PIPELINE_SA, pipeline_root gs://$PIPELINE_BUCKET/root
Pipeline templates: upload to gs://$TEMPLATE_BUCKET/templates/
Evaluation files (each line a metric event): python -m triggers publish FILE --bucket gs://$EVALUATION_BUCKET/
Decisions are published to projects/$PROJECT/topics/$DECISIONS_TOPIC (attributes model, kind)
EOF
