#!/usr/bin/env bash
# Attach a dead-letter topic to the Pub/Sub subscription that Eventarc created for a function's
# trigger (on-metric-event's, on-run-outcome's and on-evaluation-file's). Used by deploy.sh and by Terraform
# (terraform_data.metrics_dead_letter, .outcome_dead_letter, .evaluation_dead_letter), because no Terraform resource
# can manage a subscription that Eventarc owns. Idempotent.
#
# Environment: PROJECT, REGION, TRIGGER (the Eventarc trigger: projects/P/locations/L/triggers/T
# or just T), DEAD_LETTER_TOPIC (projects/P/topics/T or T), MAX_DELIVERY_ATTEMPTS (5..100),
# PUBSUB_AGENT (service-<project number>@gcp-sa-pubsub.iam.gserviceaccount.com).
set -euo pipefail

: "${PROJECT:?}" "${REGION:?}" "${TRIGGER:?}" "${DEAD_LETTER_TOPIC:?}" "${PUBSUB_AGENT:?}"
MAX_DELIVERY_ATTEMPTS="${MAX_DELIVERY_ATTEMPTS:-10}"

subscription=$(gcloud eventarc triggers describe "${TRIGGER##*/}" --project="$PROJECT" \
  --location="$REGION" --format='value(transport.pubsub.subscription)')
if [ -z "$subscription" ]; then
  echo "dead_letter.sh: trigger $TRIGGER has no Pub/Sub subscription (yet?)" >&2
  exit 1
fi

# The Pub/Sub service agent acknowledges the message on the source subscription when it moves it
# to the dead-letter topic: it needs subscriber there (publisher on the topic is granted apart).
gcloud pubsub subscriptions add-iam-policy-binding "$subscription" --project="$PROJECT" \
  --member="serviceAccount:$PUBSUB_AGENT" --role=roles/pubsub.subscriber --quiet >/dev/null
gcloud pubsub subscriptions update "$subscription" --project="$PROJECT" \
  --dead-letter-topic="$DEAD_LETTER_TOPIC" --max-delivery-attempts="$MAX_DELIVERY_ATTEMPTS" --quiet
echo "dead letters of $subscription -> $DEAD_LETTER_TOPIC after $MAX_DELIVERY_ATTEMPTS attempts"
