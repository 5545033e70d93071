"""Cold start (Popen → first CloudEvent answered) of main.py:on_metric_event vs a hello-world
function, and of the Vertex launch path vs a sample importing google.cloud.aiplatform at load."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    CLOUDEVENT_HEADERS,
    EXAMPLE_TEMPLATE,
    HELLO_SOURCE,
    MAIN,
    ROOT,
    Row,
    Server,
    base_env,
    cloudevent_body,
    compare,
    db_counts,
    ff_command,
    finish,
    first_answer,
    fixture_event,
    free_port,
    machine_banner,
    metric_event,
    policy_text,
    print_rows,
    tempdir,
    write_rows,
)

DECISION_TARGET = 1.2
VERTEX_TARGET = 0.6

VERTEX_POLICY = """
models:
  fraud-detector:
    pipeline:
      template: %(template)s
      parameters: {training_days: 30}
      pipeline_root: gs://bench/root
    policies:
      - {name: accuracy-floor, metric: accuracy, direction: higher_is_better,
         absolute: {threshold: 0.95}}
"""

# The "common sample style": the whole Vertex AI SDK imported when the function loads. The
# handler does the same work as ours (decode, threshold, load the compiled template, create the
# PipelineJob with the GAPIC REST client against the same fake); only the import style differs.
SAMPLE_SOURCE = '''\
import base64
import hashlib
import json
import os

import functions_framework
import yaml
from google.auth.credentials import AnonymousCredentials
from google.cloud import aiplatform  # noqa: F401  (module level, as public samples do)
from google.cloud import aiplatform_v1

PROJECT = os.environ["GOOGLE_CLOUD_PROJECT"]
PARENT = f"projects/{PROJECT}/locations/us-central1"
ENDPOINT = os.environ["SAMPLE_VERTEX_ENDPOINT"]
TEMPLATE = os.environ["SAMPLE_TEMPLATE"]
THRESHOLD = 0.95


@functions_framework.cloud_event
def on_metric_event(cloud_event):
    message = cloud_event.data["message"]
    event = json.loads(base64.b64decode(message["data"]))
    accuracy = event["metrics"].get("accuracy")
    if event["model"] != "fraud-detector" or accuracy is None or accuracy >= THRESHOLD:
        return
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(TEMPLATE, encoding="utf-8") as handle:
        spec = next(d for d in yaml.load_all(handle, Loader=loader) if d)
    trigger = hashlib.sha256(f"{event['model']}|{event['window_end']}".encode()).hexdigest()[:16]
    run_id = f"sample-{trigger}"
    client = aiplatform_v1.PipelineServiceClient(
        credentials=AnonymousCredentials(), transport="rest",
        client_options={"api_endpoint": ENDPOINT},
    )
    job = aiplatform_v1.PipelineJob(
        display_name=run_id,
        labels={"model": event["model"], "policy": "accuracy-floor", "trigger-id": trigger},
        pipeline_spec=spec,
        runtime_config=aiplatform_v1.PipelineJob.RuntimeConfig(
            gcs_output_directory="gs://bench/root",
            parameter_values={
                "model": event["model"], "trigger_id": trigger,
                "reason": f"accuracy {accuracy} < {THRESHOLD}", "training_days": 30,
                "champion_version": event.get("model_version") or "",
            },
        ),
    )
    client.create_pipeline_job(parent=PARENT, pipeline_job=job, pipeline_job_id=run_id,
                               timeout=30)
'''


COMPILE = True


def compile_bytecode(*extra: Path) -> None:
    """Write the .pyc files of our packages and of `extra` (the functions' sources) before
    timing: with PYTHONDONTWRITEBYTECODE set, every start would otherwise compile from source
    whatever changed since the last write, and both sides must start from bytecode alike (as
    a deployed function does once its first instance has run)."""
    import compileall

    for target in (*(ROOT / p for p in ("main.py", "triggers", "thresholds",
                                        "pipeline_client")), *extra):
        ok = (compileall.compile_dir(target, quiet=1) if target.is_dir()
              else compileall.compile_file(target, quiet=1))
        if not ok:
            raise RuntimeError(f"could not compile {target}")


def prepare(policy: Path) -> None:
    """Ship the policy file as a deploy does: validated and compiled (unless --no-compile)."""
    if COMPILE:
        from triggers.config import compile_policy_file

        compile_policy_file(policy)
    print(f"# policy file {'compiled (validate --compile)' if COMPILE else 'not compiled'}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=7, help="measured starts per variant")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured starts per variant")
    parser.add_argument("--skip-vertex", action="store_true", help="decision path only")
    parser.add_argument("--json", help="write the summary rows to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (server logs)")
    parser.add_argument(
        "--no-compile", action="store_true",
        help="measure without the compiled policy file (validate --compile), i.e. with "
        "pydantic and YAML at cold start",
    )
    args = parser.parse_args(argv)
    global COMPILE
    COMPILE = not args.no_compile
    machine_banner("cold_start.py", argv)

    work = tempdir("cold")
    hello = work / "hello.py"
    hello.write_text(HELLO_SOURCE, encoding="utf-8")
    compile_bytecode(hello)
    policy = work / "policy.yaml"
    policy.write_text(policy_text(), encoding="utf-8")
    prepare(policy)
    body = cloudevent_body()  # fraud-detector accuracy 0.943: 1 breach of 3 needed, no launch
    counter = iter(range(1_000_000))

    def start(variant: str) -> float:
        n = next(counter)
        run = work / f"{variant}-{n}"
        run.mkdir()
        port = free_port()
        if variant == "hello":
            server = Server(ff_command(hello, "hello", port), base_env(), run,
                            run / "server.log", port)
        else:
            env = base_env(RETRAIN_POLICY_FILE=str(policy),
                           RETRAIN_STATE=f"sqlite:///{run}/state.db", RETRAIN_LAUNCHER="local")
            server = Server(ff_command(MAIN, "on_metric_event", port), env, run,
                            run / "server.log", port)
        with server:
            seconds, status, data = first_answer(server, "/", body, CLOUDEVENT_HEADERS)
            if status != 200:
                raise RuntimeError(f"{variant}: HTTP {status} {data[:300]!r}\n{server.log_tail()}")
        if variant == "ours":
            counts = db_counts(run / "state.db")
            if counts["processed"] != 1 or counts["runs"] != 0:
                raise RuntimeError(f"ours did not take the decision path: {counts}")
        return seconds

    rows: list[Row] = []
    print("\n## decision path: hello-world function vs main.py:on_metric_event (no launch)")
    hello_s, ours_s, paired = compare(start, "hello", args.repeat, args.warmup)
    print(f"  median: hello {hello_s:.3f}s  ours {ours_s:.3f}s  ratio {ours_s / hello_s:.2f}x"
          f"  (median of paired ratios {paired:.2f}x, +{(ours_s - hello_s) * 1000:.0f} ms)")
    rows.append(Row("cold_start", "decision path, Popen→first answer", ours_s, hello_s, "s",
                    ours_s / hello_s, f"<= {DECISION_TARGET}x",
                    ours_s / hello_s <= DECISION_TARGET))

    if not args.skip_vertex:
        rows.append(vertex_section(args, work))

    print()
    print_rows(rows)
    write_rows(args.json, rows)
    finish(work, args.keep)
    return 0


def vertex_section(args: argparse.Namespace, work: Path) -> Row:
    from tests.fakes.vertex_server import FakeVertexServer

    print("\n## Vertex launch path: main.py (vertex launcher) vs module-level aiplatform sample")
    policy = work / "vertex-policy.yaml"
    policy.write_text(policy_text(yaml_text=VERTEX_POLICY), encoding="utf-8")
    prepare(policy)
    sample = work / "sample.py"
    sample.write_text(SAMPLE_SOURCE, encoding="utf-8")
    compile_bytecode(sample)
    base_event = fixture_event()  # accuracy 0.943 < 0.95: the 1-of-1 policy fires at once
    numbers = iter(range(1_000_000))

    with FakeVertexServer() as fake:

        def start(variant: str) -> float:
            n = next(numbers)
            run = work / f"vertex-{variant}-{n}"
            run.mkdir()
            # a new window each start: a new run id, so every start really creates a job
            event = metric_event("fraud-detector", 2 + n, dict(base_event["metrics"]),
                                 version=base_event.get("model_version"),
                                 examples=base_event["examples"])
            body = cloudevent_body(event, message_id=f"bench-{variant}-{n}")
            port = free_port()
            env = base_env(GOOGLE_CLOUD_PROJECT="bench")
            if variant == "ours":
                env.update(RETRAIN_POLICY_FILE=str(policy),
                           RETRAIN_STATE=f"sqlite:///{run}/state.db", RETRAIN_LAUNCHER="vertex",
                           RETRAIN_VERTEX_ENDPOINT=fake.endpoint)
                cmd = ff_command(MAIN, "on_metric_event", port)
            else:
                env.update(SAMPLE_VERTEX_ENDPOINT=fake.endpoint,
                           SAMPLE_TEMPLATE=str(EXAMPLE_TEMPLATE))
                cmd = ff_command(sample, "on_metric_event", port)
            before = set(fake.created)
            with Server(cmd, env, run, run / "server.log", port) as server:
                seconds, status, data = first_answer(server, "/", body, CLOUDEVENT_HEADERS)
                if status != 200:
                    raise RuntimeError(
                        f"{variant}: HTTP {status} {data[:300]!r}\n{server.log_tail()}")
            new = sorted(set(fake.created) - before)
            prefix = "rt-" if variant == "ours" else "sample-"
            if len(new) != 1 or not new[0].startswith(prefix):
                raise RuntimeError(f"{variant}: expected one new {prefix}* job, got {new}")
            return seconds

        sample_s, ours_s, paired = compare(start, "sample", args.repeat, args.warmup)
        creates = len(fake.created)
    print(f"  median: sample {sample_s:.3f}s  ours {ours_s:.3f}s  ratio {ours_s / sample_s:.2f}x"
          f"  (median of paired ratios {paired:.2f}x); {creates} jobs created on the fake")
    return Row("cold_start", "vertex launch, Popen→first answer", ours_s, sample_s, "s",
               ours_s / sample_s, f"<= {VERTEX_TARGET}x", ours_s / sample_s <= VERTEX_TARGET)


if __name__ == "__main__":
    sys.exit(main())
