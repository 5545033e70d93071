"""The `retrain-trigger` command (also `python -m triggers`): serve, publish, validate,
decisions, schema, quickstart, demo, rollback, doctor — each a thin layer over the packages."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from triggers.cloud.environment import Environment

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="retrain-trigger",
        description="Continued model evaluation: metric events in, guarded retraining runs out.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run every entry point on one local server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--threads", type=int, default=1)
    serve.add_argument("--policies", help="policy file (default: $RETRAIN_POLICY_FILE)")
    serve.add_argument("--state", help="state URL (default: $RETRAIN_STATE)")

    publish = commands.add_parser("publish", help="send metric events from JSONL or CSV")
    publish.add_argument("file", help="events: .jsonl (one event per line) or .csv")
    target = publish.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running `serve`, e.g. http://127.0.0.1:8080")
    target.add_argument("--topic", help="a Pub/Sub topic, projects/P/topics/T")
    target.add_argument("--bucket", metavar="gs://BUCKET/PREFIX",
                        help="upload FILE (validated, at most 10 MiB) for on_evaluation_file")
    publish.add_argument("--token", default=os.environ.get("RETRAIN_MANUAL_TOKEN"))

    validate = commands.add_parser("validate", help="check a policy file")
    validate.add_argument("file")
    validate.add_argument(
        "--compile", action="store_true",
        help="also store the validated form beside it (FILE stem + .compiled.json), which a "
        "cold start loads without pydantic or YAML",
    )

    decisions = commands.add_parser("decisions", help="print the audit trail, newest first")
    decisions.add_argument("--model")
    decisions.add_argument("--limit", type=int, default=30)
    decisions.add_argument("--state", help="state URL (default: $RETRAIN_STATE)")
    decisions.add_argument("--json", action="store_true", help="one JSON object per line")

    commands.add_parser("schema", help="print the policy file's JSON Schema")

    quick = commands.add_parser(
        "quickstart", help="start a local server, feed it a sample stream, show the decisions"
    )
    quick.add_argument("--workdir", default=".retrain/quickstart")
    quick.add_argument("--keep-serving", action="store_true")

    demo = commands.add_parser(
        "demo", help="the whole loop on this machine: drifting stream, policies, kfp.local "
        "runs, promotion gate, model registry; ends with a timeline and a PNG plot")
    demo.add_argument("--workdir", default=".retrain/demo")
    demo.add_argument("--days", type=int, default=48, help="simulated days (default 48)")
    demo.add_argument("--examples", type=int, default=2000,
                      help="labelled examples per day (default 2000)")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--keep-serving", action="store_true",
                      help="at the end, print the page's URL and keep serving it until Ctrl-C")

    rollback = commands.add_parser(
        "rollback", help="move the model registry's `champion` back to `previous` (or --to "
        "a version) and make the service watch it")
    rollback.add_argument("model")
    rollback.add_argument("--to", metavar="VERSION", help="the version to restore (default: "
                          "`previous`); idempotent: repeat it safely after a failure")
    rollback.add_argument("--force", action="store_true",
                          help="roll back even while a retraining run is in flight")
    rollback.add_argument("--reason", default="manual rollback")
    rollback.add_argument("--registry", help="registry URI (default: the model's "
                          "pipeline.parameters.registry in the policy file)")
    rollback.add_argument("--policies", help="policy file (default: $RETRAIN_POLICY_FILE)")
    rollback.add_argument("--state", help="state URL (default: $RETRAIN_STATE)")

    matrix = commands.add_parser(
        "matrix", help="MATRIX.csv for backtest --counterfactual: the reference pipeline's "
        "train step over a grid of training dates, each model scored on every later day")
    matrix.add_argument("--data", required=True, help="the data lake (directory of "
                        "<model>/<YYYY-MM-DD>.csv)")
    matrix.add_argument("--model", required=True, help="the model's folder in the data lake")
    matrix.add_argument("--output", required=True, help="the MATRIX.csv to write")
    matrix.add_argument("--training-days", type=int, default=7,
                        help="days each model trains on (default 7, as the pipeline)")
    matrix.add_argument("--every", type=int, default=1,
                        help="a training date every N days (default 1)")
    matrix.add_argument("--progress", action="store_true",
                        help="draw the progress bar even when stderr is not a terminal")

    backtest = commands.add_parser(
        "backtest", help="replay a metric history through the policies and guards; sweep a "
        "policy field (table, JSON/CSV, PNG)")
    backtest.add_argument("--policies", required=True, help="policy file")
    backtest.add_argument("--history",
                          help="metric history: JSONL events or CSV "
                          "(model,metric,value,window_end[,examples,slice,model_version])")
    backtest.add_argument("--model", help="replay this model only (default: every configured "
                          "model in the history)")
    backtest.add_argument("--output", help="also write the report: FILE.json or FILE.csv")
    backtest.add_argument("--strict", action="store_true",
                          help="refuse a history with malformed lines (exit 2) instead of "
                          "skipping them")
    backtest.add_argument("--run-duration", default="6h",
                          help="how long a simulated run lasts (default 6h)")
    backtest.add_argument("--assume-recovery", action="append", metavar="[METRIC=]VALUE",
                          help="runs promote a model whose METRIC (default: the triggering "
                          "policy's) reads VALUE from the run's end on (simulated; "
                          "repeatable); default: runs end rejected")
    backtest.add_argument("--sweep", action="append", metavar="POLICY.FIELD=START:STOP:STEP",
                          help="run the backtest per value (STOP included); repeatable")
    backtest.add_argument("--slo", type=float, help="sweeps: the value of the swept metric "
                          "that counts as degraded (default: the policy's threshold, or the "
                          "model's absolute floor on that metric)")
    backtest.add_argument("--plot", help="sweeps: the PNG to write (default: beside --output, "
                          "else backtest-sweep.png)")
    backtest.add_argument("--counterfactual", metavar="MATRIX.csv",
                          help="replay on what each retrained model would have scored (rows "
                               "model, trained_through, window_end, metrics): runs promote "
                               "the latest model trained before their launch; reports costs "
                               "against never retraining and fixed schedules")
    backtest.add_argument("--retrain-cost", type=float,
                          help="--counterfactual: one run's cost (default: the cost policy's)")
    backtest.add_argument("--loss-per-unit-day", type=float,
                          help="--counterfactual: the metric 1.0 worse for a day (default: "
                               "the cost policy's)")
    backtest.add_argument("--metric", help="--counterfactual: the metric priced (default: "
                                           "the cost policy's, else the first policy's)")
    backtest.add_argument("--progress", action="store_true",
                          help="show progress on stderr even when it is not a terminal")

    doctor = commands.add_parser(
        "doctor", help="preflight of a Google Cloud project: APIs, service accounts and their "
        "permissions, templates, registry, Firestore, topics; each failure with its fix")
    from triggers.tools.doctor import add_arguments as add_doctor_arguments

    add_doctor_arguments(doctor)

    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "publish":
        return _publish(args)
    if args.command == "validate":
        return _validate(args.file, args.compile)
    if args.command == "decisions":
        return _decisions(args)
    if args.command == "schema":
        from triggers.policy_file import schema_json

        sys.stdout.write(schema_json())
        return 0
    if args.command == "quickstart":
        from triggers.tools.quickstart import run_quickstart

        return int(run_quickstart(Path(args.workdir), keep_serving=args.keep_serving))
    if args.command == "demo":
        from triggers.tools.demo import DemoSettings, run_demo

        return run_demo(Path(args.workdir), DemoSettings(args.days, args.examples, args.seed,
                                                             args.keep_serving))
    if args.command == "rollback":
        return _rollback(args)
    if args.command == "matrix":
        from triggers.tools.matrix import run_command as run_matrix

        return run_matrix(args)
    if args.command == "backtest" and args.counterfactual:
        from triggers.tools.backtest.counterfactual import run_command as run_counterfactual

        return run_counterfactual(args)
    if args.command == "backtest" and not args.history:
        print("retrain-trigger backtest: --history is required (or --counterfactual "
              "MATRIX.csv)", file=sys.stderr)
        return 2
    if args.command == "backtest":
        from triggers.tools.backtest.command import run_command

        return run_command(args)
    if args.command == "doctor":
        from triggers.tools.doctor import run_command as run_doctor

        return run_doctor(args)
    print(f"retrain-trigger {args.command}: not built yet; see README.md", file=sys.stderr)
    return 2


def _environment(args: argparse.Namespace) -> Environment:
    """The environment's settings with the command's --policies and --state over them."""
    from triggers.cloud.environment import Environment

    flags = {"RETRAIN_POLICY_FILE": args.policies, "RETRAIN_STATE": args.state}
    return Environment.from_env({**os.environ, **{k: v for k, v in flags.items() if v}})


def _serve(args: argparse.Namespace) -> int:
    from triggers.cloud import wiring
    from triggers.cloud.serve import serve
    from triggers.config import load_policy_file
    from triggers.errors import RetrainError

    try:  # fail before forking workers, with the field named
        env = _environment(args)
        load_policy_file(env.policy_file)
    except RetrainError as exc:
        print(f"retrain-trigger serve: {exc}", file=sys.stderr)
        return 2
    wiring.use_environment(env)  # the forked workers inherit it
    serve(args.host, args.port, workers=args.workers, threads=args.threads)
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from pipeline_client.promotion.registries import open_registry
    from triggers.cloud.wiring import build_service
    from triggers.errors import RetrainError

    try:
        service = build_service(_environment(args))
        model = service.config.models.get(args.model)
        if model is None:
            print(f"rollback: model {args.model!r} is not in the policy file", file=sys.stderr)
            return 2
        uri = args.registry or model.pipeline.parameters.get("registry")
        if not uri:
            print(f"rollback: no registry: pass --registry or set models.{args.model}"
                  ".pipeline.parameters.registry", file=sys.stderr)
            return 2
        in_flight = service.store.in_flight_runs(args.model)
        if in_flight and not args.force:
            print(f"rollback: run {in_flight[0].run_id} is in flight and could promote over "
                  "the restored version; wait for it, or pass --force", file=sys.stderr)
            return 1
        registry = open_registry(str(uri))
        demoted = registry.champion(args.model)
        if args.to is not None:  # idempotent: promoting the champion again moves nothing
            restored = registry.promote(args.model, args.to)
        else:
            restored = registry.rollback(args.model)
        if demoted is not None and demoted.version == restored.version:
            demoted = None  # already there (a repeated --to): only the service catches up
        decision = service.record_rollback(args.model, restored.version,
                                           demoted.version if demoted else None, args.reason)
    except RetrainError as exc:
        print(f"rollback: {exc}", file=sys.stderr)
        return 1
    print(format_decision(decision.to_json()))
    return 0


def _publish(args: argparse.Namespace) -> int:
    from triggers.event_files import read_events
    from triggers.tools.publish import publish_to_topic, publish_to_url, upload_to_bucket

    if args.bucket:
        try:
            upload = upload_to_bucket(args.file, args.bucket)
        except (OSError, ValueError) as exc:
            print(f"publish: {exc}", file=sys.stderr)
            return 1
        print(f"uploaded {upload.url} (generation {upload.generation}, {upload.size} bytes, "
              f"{upload.events} events)")
        return 0
    events = list(read_events(args.file))
    progress = _Progress(len(events), "publishing")
    if args.url:
        report = publish_to_url(events, args.url, token=args.token, progress=progress)
    else:
        report = publish_to_topic(events, args.topic, progress=progress)
    progress.done()
    print(report.summary())
    for error in report.errors[:20]:
        status = f" (HTTP {error.status})" if error.status else ""
        print(f"  line {error.line}{status}: {error.error}")
    return 0 if report.ok else 1


def _validate(path: str, compile_: bool = False) -> int:
    from triggers.config import ServiceConfig, compile_policy_file
    from triggers.errors import PolicyConfigError

    file = Path(path)
    try:
        config = ServiceConfig.from_yaml(file.read_text(encoding="utf-8"), file.resolve().parent,
                                         path)
    except PolicyConfigError as exc:
        errors = getattr(exc, "errors", [exc])
        print(f"{path}: {len(errors)} error(s)", file=sys.stderr)
        for error in errors:
            print(f"  {error}", file=sys.stderr)
        return 1
    except (OSError, UnicodeDecodeError) as exc:
        print(f"{path}: cannot read: {exc}", file=sys.stderr)
        return 1
    problems = []
    for model in config.models.values():
        template = model.pipeline.template
        if "://" not in template and not Path(template).exists():
            problems.append(f"models.{model.name}.pipeline.template: {template} does not exist")
        elif "://" not in template:
            problems += _template_problems(model)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    if problems:
        return 1
    for model in config.models.values():
        names = ", ".join(f"{p.name} ({p.kind})" for p in model.policies)
        print(f"{model.name}: {len(model.policies)} policies: {names}")
    print(f"{path}: OK")
    if compile_:
        print(f"compiled: {compile_policy_file(path)}")
    return 0


def _template_problems(model: Any) -> list[str]:
    """A local template's declared inputs against what the service will pass it."""
    from pipeline_client.launching.templates import fetch_template
    from triggers.errors import RetrainError

    where = f"models.{model.name}.pipeline"
    try:
        template = fetch_template(model.pipeline.template)
    except RetrainError as exc:
        return [f"{where}.template: {exc}"]
    passed = {*model.pipeline.parameters, "model", "trigger_id", "reason", "champion_version"}
    if model.promotion is not None:
        passed.add("promotion")
    declared = set(template.input_parameters)
    problems = [f"{where}: the template does not declare input {name!r}"
                + (" (the promotion: section is passed as `promotion`)"
                   if name == "promotion" else "")
                for name in sorted(passed - declared)]
    problems += [f"{where}.parameters: the template requires {name!r}"
                 for name in sorted(template.required_parameters - passed)]
    return problems


def _decisions(args: argparse.Namespace) -> int:
    from triggers.cloud.wiring import build_store

    url = args.state or os.environ.get("RETRAIN_STATE") or "sqlite:///.retrain/state.db"
    store = build_store(url)
    rows = store.decisions(args.model, args.limit)
    for decision in rows:
        if args.json:
            print(json.dumps(decision.to_json(), default=str))
        else:
            print(format_decision(decision.to_json()))
    if not rows and not args.json:
        print("no decisions recorded yet")
    return 0


def format_decision(d: dict[str, Any]) -> str:
    """One line of the audit trail for people."""
    when = (d.get("at") or "")[:19].replace("T", " ")
    policy = d.get("policy") or "-"
    run = f" run={d['run_id']}" if d.get("run_id") else ""
    return f"{when}  {d['model']:<18} {d['kind']:<18} {policy:<20} {d['reason']}{run}"


class _Progress:
    """A one-line progress bar on stderr when it is a terminal; silent otherwise."""

    def __init__(self, total: int, label: str) -> None:
        self.total = total
        self.label = label
        self.count = 0
        self.tty = sys.stderr.isatty()

    def __call__(self, n: int = 1) -> None:
        self.count += n
        if self.tty and self.total:
            width = 30
            filled = int(width * self.count / self.total)
            sys.stderr.write(
                f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] "
                f"{self.count}/{self.total}"
            )
            sys.stderr.flush()

    def done(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
