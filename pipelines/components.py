"""The reusable steps of a retraining pipeline: evaluate champion and challenger on the same
held-out examples, gate, promote, report the outcome. Keep these; replace prepare and train.

Each step runs the code of `pipeline_client` / `pipelines` installed in its image (locally:
the service's venv under kfp.local; on Vertex: the image built from pipelines/Dockerfile).
"""

# kfp ships no type information: its decorators are untyped for mypy.
# mypy: disable-error-code="untyped-decorator"

import os
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from pipeline_client.launching.templates import PLACEHOLDER_IMAGE

# The image every step runs in. kfp.local's SubprocessRunner ignores it and uses the current
# interpreter; on Vertex it must hold kfp, numpy, scipy, statsmodels, scikit-learn, joblib
# and this repository:
# build pipelines/Dockerfile and compile with RETRAIN_PIPELINE_IMAGE set to it.
BASE_IMAGE = os.environ.get("RETRAIN_PIPELINE_IMAGE") or PLACEHOLDER_IMAGE


def component(func):  # type: ignore[no-untyped-def]
    """A KFP component that installs nothing when it runs (see BASE_IMAGE)."""
    return dsl.component(func, base_image=BASE_IMAGE, packages_to_install=[],
                         install_kfp_package=False)


@component
def evaluate_models(
    model: str,
    champion_version: str,
    registry: str,
    holdout: Input[Dataset],
    challenger: Input[Model],
    predictions: Output[Dataset],
) -> str:
    """Scores the registry's champion and the new challenger on the same held-out examples.

    Writes `predictions` (labels and both models' scores, one row per example, matched to
    each model's features by column name) and returns the champion version that was scored
    ("" when there is none yet: a first model) — the only champion a promotion may replace.
    """
    import json

    import numpy as np

    from pipeline_client.promotion.registries import open_registry
    from pipelines.logistic import LogisticModel

    with open(holdout.path, encoding="utf-8") as handle:
        columns = handle.readline().strip().split(",")[:-1]
    table = np.loadtxt(holdout.path, delimiter=",", skiprows=1, ndmin=2)
    x, labels = table[:, :-1], table[:, -1].astype(int)
    challenger_scores = LogisticModel.load(challenger.path).predict_named(columns, x)
    current = open_registry(registry).champion(model) if registry else None
    if current is None:
        champion_scores = None
        scored = ""
    else:
        champion_model = LogisticModel.load(current.artifact_uri)
        champion_scores = champion_model.predict_named(columns, x).tolist()
        scored = current.version
    if champion_version and scored and champion_version != scored:
        print(f"note: the service believed champion {champion_version}, the registry holds "
              f"{scored}; the registry's champion is compared")
    with open(predictions.path, "w", encoding="utf-8") as handle:
        json.dump({"labels": labels.tolist(), "challenger": challenger_scores.tolist(),
                   "champion": champion_scores, "champion_version": scored,
                   "holdout_days": list(holdout.metadata.get("days", []))}, handle)
    predictions.metadata["examples"] = int(len(labels))
    return scored


@component
def promotion_gate(
    promotion: str, seed: int, predictions: Input[Dataset]
) -> NamedTuple("GateOutputs", [("decision", str), ("report", str)]):  # type: ignore[valid-type]
    """Applies the policy file's `promotion:` rules; returns "promote" or "reject" and the
    report of every check as JSON."""
    import json
    from collections import namedtuple

    from pipeline_client.promotion.gate import PromotionRules, evaluate_promotion

    with open(predictions.path, encoding="utf-8") as handle:
        data = json.load(handle)
    rules = PromotionRules.from_json(promotion or "{}")
    result = evaluate_promotion(rules, data["labels"], data["challenger"], data["champion"],
                                seed=seed)
    report = result.to_json()
    report["champion_version"] = data["champion_version"] or None
    report["examples"] = len(data["labels"])
    report["holdout_days"] = data.get("holdout_days", [])
    print(f"gate: {result.decision}: {result.reason}")
    outputs = namedtuple("GateOutputs", ["decision", "report"])
    return outputs(result.decision, json.dumps(report, sort_keys=True))


@component
def promote_model(
    model: str, trigger_id: str, registry: str, compared_with: str, gate_report: str,
    challenger: Input[Model],
) -> str:
    """Registers the challenger and moves `champion` to it (`previous` to the old one) —
    only if the champion is still `compared_with`, the version the gate compared it with
    (a rollback or another run in between fails this step instead); returns the new
    champion version."""
    import json

    from pipeline_client.promotion.registries import open_registry

    if not registry:
        raise ValueError("the `registry` pipeline parameter is empty: set it in the policy "
                         "file's pipeline.parameters (file:///path or vertex://...)")
    report = json.loads(gate_report)
    metrics = {c["metric"]: c["challenger"] for c in report.get("checks", [])
               if isinstance(c.get("challenger"), (int, float))}
    store = open_registry(registry)
    # Vertex wants the artifact's gs:// URI; a local registry copies the file it can read.
    artifact = challenger.uri if registry.startswith("vertex://") else challenger.path
    version = store.register(model, artifact, metrics,
                             {"trigger_id": trigger_id, "gate": report.get("reason", "")[:500]})
    promoted = store.promote(model, version.version, expected_champion=compared_with)
    print(f"promoted {model} version {promoted.version}")
    return promoted.version


@component
def report_outcome(
    model: str,
    trigger_id: str,
    run_id: str,
    promoted: bool,
    champion_version: str,
    gate_report: str,
    training_report: str,
    outcome_topic: str,
) -> str:
    """Publishes the run's outcome to `outcome_topic` (a Pub/Sub topic, or a local service's
    URL; empty: nowhere) and returns it as JSON — the pipeline's one output.

    Publishing is retried for about a minute; if it still fails the step does NOT fail: the
    promotion has happened, and a failed run would tell the service the opposite. The
    service then learns the end from the launcher (the local launcher delivers this output).
    """
    import json
    import time

    from pipeline_client.promotion.outcome import publish_outcome

    gate = json.loads(gate_report)
    message = {
        "model": model,
        "trigger_id": trigger_id,
        "run_id": run_id,
        "decision": "promoted" if promoted else "rejected",
        "champion_version": champion_version or None,
        "report": {"summary": gate.get("reason", ""), "gate": gate,
                   "training": json.loads(training_report)},
    }
    for attempt in range(6) if outcome_topic else ():
        try:
            sent = publish_outcome(message, outcome_topic)
            print(f"outcome published to {outcome_topic}: {sent}")
            break
        except Exception as exc:  # any failure: retry, then report and go on
            print(f"publishing the outcome to {outcome_topic} failed ({exc})")
            if attempt < 5:
                time.sleep(2 ** attempt)
    return json.dumps(message, sort_keys=True)
