"""A small but real KFP v2 retraining pipeline (prepare ▸ train ▸ report) for the local launcher.

`python -m pipelines.example` compiles it to example.yaml; the last step returns the outcome.
"""

# kfp ships no type information: its decorators, and a pipeline returning a task output (a
# channel, typed by the annotation only), are untyped for mypy.
# mypy: disable-error-code="untyped-decorator,no-any-return"

import hashlib
import sys
from pathlib import Path

from kfp import compiler, dsl
from kfp.dsl import Dataset, Input, Model, Output

PIPELINE_NAME = "retrain-example"
COMPILED_PATH = Path(__file__).with_name("example.yaml")
# Standard library only: nothing is pip-installed when a step runs. The kfp runtime itself is
# not installed either (install_kfp_package=False), so the image running the steps must
# already have kfp — true for kfp.local's SubprocessRunner(use_venv=False) in the service venv.
BASE_IMAGE = "python:3.11-slim"


def champion_version_for(trigger_id: str) -> str:
    """The version the pipeline gives its new champion (mirrors the `report` step)."""
    return "v" + hashlib.sha256(trigger_id.encode("utf-8")).hexdigest()[:12]


@dsl.component(base_image=BASE_IMAGE, packages_to_install=[], install_kfp_package=False)
def prepare(model: str, trigger_id: str, training_days: int, dataset: Output[Dataset]) -> int:
    """Writes a deterministic toy training set: one (x, y) row per hour of `training_days`."""
    import json
    import random

    if training_days <= 0:
        raise ValueError(f"training_days must be positive, got {training_days}")
    rng = random.Random(f"{model}:{trigger_id}")
    rows = []
    for _ in range(training_days * 24):
        x = rng.uniform(-1.0, 1.0)
        rows.append({"x": x, "y": 1 if x + rng.gauss(0.0, 0.3) > 0.0 else 0})
    with open(dataset.path, "w", encoding="utf-8") as handle:
        json.dump(rows, handle)
    dataset.metadata["rows"] = len(rows)
    return len(rows)


@dsl.component(base_image=BASE_IMAGE, packages_to_install=[], install_kfp_package=False)
def train(dataset: Input[Dataset], model_artifact: Output[Model]) -> float:
    """Fits a one-feature threshold classifier; writes it as a tiny JSON "model"."""
    import json

    with open(dataset.path, encoding="utf-8") as handle:
        rows = json.load(handle)
    best_threshold, best_accuracy = 0.0, -1.0
    for step in range(-20, 21):
        threshold = step / 20
        correct = sum(1 for row in rows if (row["x"] > threshold) == (row["y"] == 1))
        accuracy = correct / len(rows)
        if accuracy > best_accuracy:
            best_threshold, best_accuracy = threshold, accuracy
    with open(model_artifact.path, "w", encoding="utf-8") as handle:
        json.dump({"kind": "threshold", "threshold": best_threshold}, handle)
    model_artifact.metadata["accuracy"] = best_accuracy
    return best_accuracy


@dsl.component(base_image=BASE_IMAGE, packages_to_install=[], install_kfp_package=False)
def report(
    model: str,
    trigger_id: str,
    reason: str,
    champion_version: str,
    rows: int,
    accuracy: float,
    model_artifact: Input[Model],
) -> str:
    """Returns the run's outcome as JSON: decision, the new champion version, a report."""
    import hashlib
    import json

    with open(model_artifact.path, encoding="utf-8") as handle:
        trained = json.load(handle)
    new_version = "v" + hashlib.sha256(trigger_id.encode("utf-8")).hexdigest()[:12]
    return json.dumps(
        {
            "decision": "promoted",
            "champion_version": new_version,
            "report": {
                "model": model,
                "reason": reason,
                "previous_champion_version": champion_version or None,
                "training_rows": rows,
                "challenger_accuracy": round(accuracy, 6),
                "threshold": trained["threshold"],
                "model_uri": model_artifact.uri,
            },
        },
        sort_keys=True,
    )


@dsl.pipeline(name=PIPELINE_NAME, description="Toy retraining run: prepare, train, report.")
def example_pipeline(
    model: str,
    trigger_id: str,
    reason: str,
    champion_version: str = "",
    training_days: int = 30,
) -> str:
    """Prepare data, train a challenger, report a `promoted` outcome as a JSON string."""
    prepared = prepare(model=model, trigger_id=trigger_id, training_days=training_days)
    trained = train(dataset=prepared.outputs["dataset"])
    reported = report(
        model=model,
        trigger_id=trigger_id,
        reason=reason,
        champion_version=champion_version,
        rows=prepared.outputs["Output"],
        accuracy=trained.outputs["Output"],
        model_artifact=trained.outputs["model_artifact"],
    )
    return reported.output


def compile_pipeline(path: Path = COMPILED_PATH) -> Path:
    """Compiles the pipeline to `path` (pipelines/example.yaml by default)."""
    compiler.Compiler().compile(example_pipeline, str(path))
    return path


if __name__ == "__main__":
    target = compile_pipeline(Path(sys.argv[1]) if len(sys.argv) > 1 else COMPILED_PATH)
    sys.stdout.write(f"compiled {target}\n")
