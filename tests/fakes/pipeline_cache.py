"""Vertex AI Pipelines execution caching, as the fake Vertex server emulates it.

A container task's cache key covers its component (spec and executor: image, command, args),
its custom `cacheKey` and its inputs: parameters resolved to the run's values, and artifacts
and upstream outputs identified by the producing task's own key. The fake runs nothing, so
it neither evaluates `triggerPolicy` conditions nor ParallelFor: every task is listed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# PipelineTaskDetail.State and Execution.State of aiplatform v1, in order (the index is the
# number sent with enum-encoding=int). A cache hit is a task SKIPPED whose execution is CACHED.
TASK_STATES = (
    "STATE_UNSPECIFIED",
    "PENDING",
    "RUNNING",
    "SUCCEEDED",
    "CANCEL_PENDING",
    "CANCELLING",
    "CANCELLED",
    "FAILED",
    "SKIPPED",
    "NOT_TRIGGERED",
)
EXECUTION_STATES = ("STATE_UNSPECIFIED", "NEW", "RUNNING", "COMPLETE", "FAILED", "CACHED",
                    "CANCELLED")
# Placeholders the backend resolves before computing a key (so they make a task run-specific).
_JOB_NAME = "{{$.pipeline_job_name}}"
_JOB_RESOURCE_NAME = "{{$.pipeline_job_resource_name}}"


@dataclass
class PlannedTask:
    """One task of a job: where it sits, its cache key, and whether it may read the cache."""

    task_id: int
    parent_task_id: int | None
    name: str
    key: str
    container: bool  # a container execution (only those are cached); else a DAG
    enable_cache: bool


def plan_tasks(body: Mapping[str, Any], job_id: str, job_name: str) -> list[PlannedTask]:
    """Every task of the PipelineJob `body` (nested DAGs included), with its cache key."""
    spec = body.get("pipelineSpec")
    if not isinstance(spec, Mapping):
        return []
    runtime = body.get("runtimeConfig") or {}
    root = spec.get("root") or {}
    declared = ((root.get("inputDefinitions") or {}).get("parameters")) or {}
    values = {n: d["defaultValue"] for n, d in declared.items() if "defaultValue" in d}
    values.update(runtime.get("parameterValues") or {})
    params = {name: ["value", value] for name, value in values.items()}
    planner = _Planner(spec, job_id, job_name)
    planner.walk(root, params, {}, None)
    return planner.tasks


class _Planner:
    def __init__(self, spec: Mapping[str, Any], job_id: str, job_name: str) -> None:
        self.components: Mapping[str, Any] = spec.get("components") or {}
        self.executors: Mapping[str, Any] = (spec.get("deploymentSpec") or {}).get(
            "executors"
        ) or {}
        self.job_id = job_id
        self.job_name = job_name
        self.tasks: list[PlannedTask] = []

    def walk(
        self,
        component: Mapping[str, Any],
        params: Mapping[str, Any],
        artifacts: Mapping[str, Any],
        parent: int | None,
    ) -> None:
        tasks: Mapping[str, Any] = (component.get("dag") or {}).get("tasks") or {}
        keys: dict[str, str] = {}

        def key_of(name: str, seen: frozenset[str] = frozenset()) -> str:
            if name in keys:
                return keys[name]
            if name in seen or name not in tasks:
                return f"unknown:{name}"
            task = tasks[name]
            inner = seen | {name}
            resolved_params = {
                input_name: self._parameter(source, params, lambda p: key_of(p, inner))
                for input_name, source in ((task.get("inputs") or {}).get("parameters")
                                           or {}).items()
            }
            resolved_artifacts = {
                input_name: self._artifact(source, artifacts, lambda p: key_of(p, inner))
                for input_name, source in ((task.get("inputs") or {}).get("artifacts")
                                           or {}).items()
            }
            ref = ((task.get("componentRef") or {}).get("name")) or ""
            spec = self.components.get(ref) or {}
            caching = task.get("cachingOptions") or {}
            if caching.get("cacheKey"):
                material: Any = ["custom", caching["cacheKey"]]
            else:
                executor = self.executors.get(spec.get("executorLabel") or "")
                material = {"component": spec, "executor": executor,
                            "parameters": resolved_params, "artifacts": resolved_artifacts}
            keys[name] = _digest(material)
            pending.append((name, task, spec, resolved_params, resolved_artifacts))
            return keys[name]

        pending: list[tuple[str, Any, Any, Any, Any]] = []
        for name in tasks:
            key_of(name)
        for name, task, spec, resolved_params, resolved_artifacts in pending:
            caching = task.get("cachingOptions") or {}
            planned = PlannedTask(
                task_id=len(self.tasks) + 1,
                parent_task_id=parent,
                name=str(((task.get("taskInfo") or {}).get("name")) or name),
                key=keys[name],
                container="dag" not in spec,
                enable_cache=bool(caching.get("enableCache", False)),
            )
            self.tasks.append(planned)
            if not planned.container:
                self.walk(spec, resolved_params, resolved_artifacts, planned.task_id)

    def _parameter(self, source: Mapping[str, Any], params: Mapping[str, Any], key_of: Any) -> Any:
        if "componentInputParameter" in source:
            return params.get(source["componentInputParameter"], ["missing"])
        if "runtimeValue" in source:
            constant = (source["runtimeValue"] or {}).get("constant")
            if isinstance(constant, str):
                constant = constant.replace(_JOB_NAME, self.job_id).replace(
                    _JOB_RESOURCE_NAME, self.job_name
                )
            return ["value", constant]
        if "taskOutputParameter" in source:
            output = source["taskOutputParameter"]
            return ["output", key_of(output.get("producerTask", "")),
                    output.get("outputParameterKey")]
        if "taskFinalStatus" in source:
            return ["final-status", key_of(source["taskFinalStatus"].get("producerTask", ""))]
        return ["spec", source]

    def _artifact(
        self, source: Mapping[str, Any], artifacts: Mapping[str, Any], key_of: Any
    ) -> Any:
        if "componentInputArtifact" in source:
            return artifacts.get(source["componentInputArtifact"], ["missing"])
        if "taskOutputArtifact" in source:
            output = source["taskOutputArtifact"]
            return ["artifact", key_of(output.get("producerTask", "")),
                    output.get("outputArtifactKey")]
        return ["spec", source]


def _digest(material: Any) -> str:
    text = json.dumps(material, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
