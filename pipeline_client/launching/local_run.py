"""The local launcher's child:
`python -m pipeline_client.launching.local_run RUN_DIR [--outcome-handler F]`.

Runs the request's compiled pipeline with kfp.local, writes the final status, delivers the outcome.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import re
import resource
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from pipeline_client.launching.local import (
    LOG_FILE,
    REQUEST_FILE,
    read_run_status,
    write_run_status,
)
from pipeline_client.launching.protocol import LaunchRequest

logger = logging.getLogger("pipeline_client.launching.local_run")

MAX_ERROR_CHARS = 4000
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Warning)\b(: .*)?$")


class PipelineRunError(Exception):
    """The pipeline could not run or did not produce a usable outcome."""


def run_pipeline(request: LaunchRequest, run_dir: Path) -> dict[str, Any]:
    """Runs `request.template` with kfp.local; returns the outcome its last step reported."""
    from kfp import local
    from kfp.components import load_component_from_file

    template = Path(request.template)
    if not template.is_file():
        raise PipelineRunError(f"pipeline template {request.template!r} not found")
    pipeline = load_component_from_file(str(template))
    declared = dict(pipeline.component_spec.inputs or {})
    undeclared = sorted(set(request.parameters) - set(declared))
    if undeclared:
        raise PipelineRunError(
            f"template {request.template} does not declare input(s) {', '.join(undeclared)}"
            f" (declared: {', '.join(sorted(declared)) or 'none'})"
        )
    missing = sorted(set(pipeline.required_inputs) - set(request.parameters))
    if missing:
        raise PipelineRunError(
            f"template {request.template} requires input(s) {', '.join(missing)}"
            " that the request does not pass"
        )
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(run_dir / "artifacts"),
        workspace_root=str(run_dir / "workspace"),
        raise_on_error=True,
        # kfp.local caches task outputs only when asked (and then per task, as compiled); off
        # unless the policy file opts in, so a retraining run never reuses an earlier one's.
        # The cache sits beside the runs, so that an opted-in model's runs can share it.
        enable_caching=request.enable_caching,
        cache_root=str(run_dir.parent / ".kfp_cache"),
    )
    task = pipeline(**dict(request.parameters))
    outputs = task.outputs
    if len(outputs) != 1:
        raise PipelineRunError(
            f"pipeline must return exactly one output (the outcome), got {sorted(outputs)}"
        )
    return parse_outcome(next(iter(outputs.values())))


def parse_outcome(value: Any) -> dict[str, Any]:
    """Validates the pipeline's output: a JSON object (or dict) with a `decision`."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise PipelineRunError(f"pipeline output is not JSON: {value[:200]!r}") from exc
    if not isinstance(value, dict):
        raise PipelineRunError(f"pipeline output must be a JSON object, got {type(value).__name__}")
    if not isinstance(value.get("decision"), str) or not value["decision"]:
        raise PipelineRunError("pipeline outcome lacks a string `decision`")
    report = value.get("report", {})
    return {
        "decision": value["decision"],
        "champion_version": value.get("champion_version"),
        "report": report if isinstance(report, dict) else {"value": report},
    }


def failed_outcome(error: str, **details: Any) -> dict[str, Any]:
    """The outcome of a run that failed before its last step reported one."""
    return {"decision": "failed", "champion_version": None, "report": {"error": error, **details}}


def outcome_message(request: LaunchRequest, outcome: Mapping[str, Any]) -> dict[str, Any]:
    """The message the outcome handler receives (the shape `on_run_outcome` consumes)."""
    return {
        "model": request.model,
        "trigger_id": request.trigger_id,
        "run_id": request.run_id,
        "decision": outcome["decision"],
        "champion_version": outcome.get("champion_version"),
        "report": dict(outcome.get("report") or {}),
    }


def load_handler(ref: str) -> Callable[[dict[str, Any]], Any]:
    """Imports "module:function"."""
    module_name, _, attribute = ref.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"outcome handler must be 'module:function', got {ref!r}")
    target: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"outcome handler {ref!r} is not callable")
    return cast("Callable[[dict[str, Any]], Any]", target)


def execute(run_dir: Path, outcome_handler: str | None) -> int:
    """The whole child: run, record, deliver. Returns the process exit code."""
    started = time.monotonic()
    try:
        request = LaunchRequest.from_dict(
            json.loads((run_dir / REQUEST_FILE).read_text(encoding="utf-8"))
        )
    except Exception:  # nothing to deliver to without a request
        logger.exception("cannot read the run request in %s", run_dir)
        error = f"unreadable request: {_error_line()}"
        _finish(run_dir, "failed", failed_outcome(error), started, error)
        return 2
    labels = {"model": request.model, "trigger_id": request.trigger_id, "run_id": request.run_id}
    log_path = run_dir / LOG_FILE
    log_offset = _file_size(log_path)
    try:
        status = read_run_status(run_dir) or {}
        write_run_status(run_dir, {**status, "state": "running", "pid": os.getpid()})
        logger.info("local run started: template %s", request.template, extra=labels)
        outcome = run_pipeline(request, run_dir)
        state, message = "succeeded", ""
        logger.info("local run succeeded: %s", outcome["decision"], extra=labels)
    except Exception:  # every failure becomes a failed outcome
        error = _error_line()
        step_error = _step_error(log_path, log_offset)
        logger.exception("local run failed", extra=labels)
        state, message = "failed", f"{error} {step_error}" if step_error else error
        outcome = failed_outcome(error, step_error=step_error, log=str(log_path))
    try:
        _finish(run_dir, state, outcome, started, message)
    except OSError:  # still deliver; get_status reports the vanished process as failed
        logger.exception("cannot write the final status of %s", run_dir, extra=labels)
    if not outcome_handler:
        return 0 if state == "succeeded" else 1
    try:
        load_handler(outcome_handler)(outcome_message(request, outcome))
    except Exception:  # the status stays; the service falls back to polling
        logger.exception("outcome handler %s failed", outcome_handler, extra=labels)
        _record_delivery(run_dir, f"failed: {_error_line()}")
        return 3
    _record_delivery(run_dir, "delivered")
    logger.info("outcome delivered to %s", outcome_handler, extra=labels)
    return 0 if state == "succeeded" else 1


def _finish(
    run_dir: Path, state: str, outcome: Mapping[str, Any], started: float, message: str
) -> None:
    status = read_run_status(run_dir) or {}
    self_usage = resource.getrusage(resource.RUSAGE_SELF)
    child_usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    status.update(
        {
            "state": state,
            "outcome": dict(outcome),
            "message": message,
            "seconds": round(time.monotonic() - started, 3),
            # ru_maxrss is KiB on Linux: this process, and the largest step it waited for.
            "max_rss_kib": self_usage.ru_maxrss,
            "steps_max_rss_kib": child_usage.ru_maxrss,
        }
    )
    write_run_status(run_dir, status)


def _record_delivery(run_dir: Path, delivery: str) -> None:
    status = read_run_status(run_dir) or {}
    write_run_status(run_dir, {**status, "delivery": _short(delivery)})


def _error_line() -> str:
    """`Type: message` of the exception being handled, without kfp's terminal colours."""
    exc = sys.exc_info()[1]
    return _short(_ANSI.sub("", f"{type(exc).__name__}: {exc}"))


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _step_error(log_path: Path, offset: int) -> str | None:
    """The last exception line a failed step printed to the run's log after `offset`, if any.

    kfp.local streams each step's output into this process's stdout (the log file) but raises
    only "Inner task failed: 'name'"; the step's own error is in the log.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        with open(log_path, encoding="utf-8", errors="replace") as handle:
            handle.seek(offset)
            text = _ANSI.sub("", handle.read())
    except OSError:
        return None
    found = None
    in_traceback = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("Traceback (most recent call last):"):
            in_traceback = True
        elif in_traceback and _EXCEPTION_LINE.match(line):
            found, in_traceback = line, False
    return _short(found) if found else None


def _short(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else "…" + text[-MAX_ERROR_CHARS:]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m pipeline_client.launching.local_run`."""
    parser = argparse.ArgumentParser(prog="python -m pipeline_client.launching.local_run")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--outcome-handler", default=None, help="module:function")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return execute(args.run_dir.resolve(), args.outcome_handler)


if __name__ == "__main__":
    sys.exit(main())
