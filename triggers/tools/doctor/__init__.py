"""`retrain-trigger doctor`: a preflight of a real Google Cloud project before the first event
(APIs, service accounts and their permissions, templates, registry, Firestore, Pub/Sub).

Each failure names what is wrong and the command that fixes it; see `checks` for the checks,
`permissions` for what each account must hold, `google` for the endpoints and their variables.
"""

from __future__ import annotations

import argparse
import os
import sys

from triggers.tools.doctor.checks import DoctorSettings, run_checks
from triggers.tools.doctor.google import Endpoints, GoogleApis
from triggers.tools.doctor.report import Finding, Report

__all__ = ["DoctorSettings", "Endpoints", "Finding", "GoogleApis", "Report", "add_arguments",
           "run_checks", "run_command"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `doctor` subcommand's options."""
    parser.add_argument("--project", default=os.environ.get("GOOGLE_CLOUD_PROJECT"),
                        help="project id (default: $GOOGLE_CLOUD_PROJECT)")
    parser.add_argument("--region", default=os.environ.get("RETRAIN_LOCATION", "us-central1"),
                        help="region of the functions and Vertex (default: $RETRAIN_LOCATION "
                        "or us-central1)")
    parser.add_argument("--policies", help="policy file (default: $RETRAIN_POLICY_FILE)")
    parser.add_argument("--database", help="Firestore database (default: from "
                        "$RETRAIN_STATE=firestore://DB, else retrain-trigger)")
    parser.add_argument("--runtime-account", default="retrain-trigger", metavar="ID",
                        help="the functions' service account id (default retrain-trigger)")
    parser.add_argument("--pipeline-account", default="retrain-pipeline", metavar="ID",
                        help="the pipeline runs' service account id (default retrain-pipeline)")
    parser.add_argument("--smoke", action="store_true",
                        help="also submit a one-step pipeline as the pipeline account and wait "
                        "for it")
    parser.add_argument("--smoke-timeout", type=float, default=900.0, metavar="SECONDS",
                        help="how long --smoke waits (default 900)")
    parser.add_argument("--smoke-poll", type=float, default=10.0, metavar="SECONDS",
                        help="how often --smoke asks for the run's state (default 10)")
    parser.add_argument("--json", action="store_true", help="the findings as one JSON object")


def run_command(args: argparse.Namespace) -> int:
    """0 when every check passed, 1 when one failed, 2 when doctor cannot start."""
    if not args.project:
        print("doctor: no project: pass --project or set GOOGLE_CLOUD_PROJECT", file=sys.stderr)
        return 2
    database = args.database
    state = os.environ.get("RETRAIN_STATE", "")
    if database is None and state.startswith("firestore://"):
        database = state[len("firestore://"):].split("?", 1)[0] or "(default)"
    settings = DoctorSettings(
        project=args.project, location=args.region,
        policy_file=args.policies or os.environ.get("RETRAIN_POLICY_FILE", ""),
        database=database or "retrain-trigger",
        runtime_account_id=args.runtime_account, pipeline_account_id=args.pipeline_account,
        decisions_topic=os.environ.get("RETRAIN_DECISIONS_TOPIC") or None,
        vertex_endpoint=os.environ.get("RETRAIN_VERTEX_ENDPOINT") or None,
        smoke=args.smoke, smoke_timeout=args.smoke_timeout,
        smoke_poll=args.smoke_poll,
    )
    report = run_checks(settings, GoogleApis(Endpoints.from_env()))
    print(report.to_json() if args.json else report.to_table())
    return 0 if report.passed else 1
