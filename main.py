"""Cloud Functions entry points of retrain-trigger: parse, call the service, answer.

Wiring only; the logic lives in `triggers/`. Config is validated here, at cold start.
"""

import functions_framework

from triggers.cloud import entry, http_guard, wiring
from triggers.cloud.logs import configure_logging

configure_logging()
wiring.service()  # validate RETRAIN_POLICY_FILE and the environment once, loudly
wiring.decision_publisher()  # and RETRAIN_DECISIONS_TOPIC
# The app functions-framework is loading this file into (one per function, as deployed):
# bodies read whole and bounded before parsing; errors as JSON that echo no header or body.
http_guard.install()


@functions_framework.cloud_event
def on_metric_event(cloud_event):  # type: ignore[no-untyped-def]
    entry.metric_cloud_event(cloud_event)


@functions_framework.http
def manual_trigger(request):  # type: ignore[no-untyped-def]
    return entry.manual_request(request)


@functions_framework.cloud_event
def on_run_outcome(cloud_event):  # type: ignore[no-untyped-def]
    entry.outcome_cloud_event(cloud_event)


@functions_framework.cloud_event
def on_evaluation_file(cloud_event):  # type: ignore[no-untyped-def]
    entry.evaluation_file_cloud_event(cloud_event)
