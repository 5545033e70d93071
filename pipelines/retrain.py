"""The reference retraining pipeline: prepare ▸ train ▸ evaluate champion and challenger on
the same fresh held-out examples ▸ gate ▸ promote (only if it wins) ▸ report the outcome.

`prepare_data` and `train_model` are the parts to replace with your own; the steps in
`pipelines.components` are the ones to keep. `python -m pipelines.retrain` compiles it to
retrain.yaml (a test fails when that file is stale).
"""

# kfp ships no type information: its decorators, and a pipeline returning a task output (a
# channel, typed by the annotation only), are untyped for mypy.
# mypy: disable-error-code="untyped-decorator,no-any-return"

import sys
from pathlib import Path
from typing import NamedTuple

from kfp import compiler, dsl
from kfp.dsl import Dataset, Input, Model, Output

from pipelines.components import (
    component,
    evaluate_models,
    promote_model,
    promotion_gate,
    report_outcome,
)

PIPELINE_NAME = "retrain-reference"
COMPILED_PATH = Path(__file__).with_name("retrain.yaml")


@component
def prepare_data(
    model: str, data_uri: str, training_days: int, holdout_days: int,
    train: Output[Dataset], holdout: Output[Dataset],
) -> int:
    """Reads the latest `training_days` + `holdout_days` days of labelled examples; the
    newest `holdout_days` are held out (never trained on) for the comparison. Replace me."""
    import numpy as np

    from pipelines.datalake import read_latest

    if training_days < 1 or holdout_days < 1:
        raise ValueError(f"training_days and holdout_days must be ≥ 1, got {training_days}, "
                         f"{holdout_days}")
    days = read_latest(data_uri, model, training_days + holdout_days)
    if len(days) < holdout_days + 1:
        raise ValueError(f"{data_uri}/{model} holds {len(days)} day(s); need at least "
                         f"{holdout_days + 1}")
    header = ",".join([*days[0].features, "label"])
    for output, part in ((train, days[:-holdout_days]), (holdout, days[-holdout_days:])):
        table = np.vstack([np.hstack([d.x, d.y.reshape(-1, 1)]) for d in part])
        np.savetxt(output.path, table, delimiter=",", fmt="%.6g", header=header, comments="")
        output.metadata["days"] = [d.day for d in part]
        output.metadata["rows"] = int(len(table))
    return sum(len(d.y) for d in days[:-holdout_days])


@component
def train_model(
    train: Input[Dataset], seed: int, challenger: Output[Model]
) -> NamedTuple("TrainOutputs", [("report", str)]):  # type: ignore[valid-type]
    """Fits the challenger on the training days and saves it as `challenger/model.joblib`, the
    one file Vertex AI's prebuilt scikit-learn container serves. Replace me with your own
    training; keep that export (or change the registry's serving image to match yours)."""
    import json
    from collections import namedtuple

    import numpy as np

    from pipelines.logistic import fit_logistic

    with open(train.path, encoding="utf-8") as handle:
        features = handle.readline().strip().split(",")[:-1]
    table = np.loadtxt(train.path, delimiter=",", skiprows=1, ndmin=2)
    fitted = fit_logistic(table[:, :-1], table[:, -1].astype(int), features)
    fitted.save(challenger.path)
    training_accuracy = float(np.mean((fitted.predict_proba(table[:, :-1]) > 0.5)
                                      == (table[:, -1] > 0.5)))
    challenger.metadata["training_accuracy"] = training_accuracy
    report = {"rows": int(len(table)), "days": train.metadata.get("days", []),
              "training_accuracy": round(training_accuracy, 6), "seed": seed}
    return namedtuple("TrainOutputs", ["report"])(json.dumps(report, sort_keys=True))


@dsl.pipeline(name=PIPELINE_NAME,
              description="Retrain, compare with the champion on fresh data, promote if better.")
def retrain_pipeline(
    model: str,
    trigger_id: str,
    reason: str,
    champion_version: str = "",
    promotion: str = "{}",
    data_uri: str = "",
    registry: str = "",
    training_days: int = 7,
    holdout_days: int = 1,
    seed: int = 0,
    outcome_topic: str = "",
) -> str:
    """Returns the outcome message (JSON) that `report_outcome` also published."""
    prepared = prepare_data(model=model, data_uri=data_uri, training_days=training_days,
                            holdout_days=holdout_days)
    trained = train_model(train=prepared.outputs["train"], seed=seed)
    scored = evaluate_models(model=model, champion_version=champion_version,
                             registry=registry, holdout=prepared.outputs["holdout"],
                             challenger=trained.outputs["challenger"])
    gate = promotion_gate(promotion=promotion, seed=seed,
                          predictions=scored.outputs["predictions"])
    common = dict(model=model, trigger_id=trigger_id, run_id=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                  gate_report=gate.outputs["report"], training_report=trained.outputs["report"],
                  outcome_topic=outcome_topic)
    with dsl.If(gate.outputs["decision"] == "promote", name="challenger-wins"):
        promoted = promote_model(model=model, trigger_id=trigger_id, registry=registry,
                                 compared_with=scored.outputs["Output"],
                                 gate_report=gate.outputs["report"],
                                 challenger=trained.outputs["challenger"])
        won = report_outcome(promoted=True, champion_version=promoted.output, **common)
    with dsl.Else(name="champion-stays"):
        lost = report_outcome(promoted=False, champion_version=scored.outputs["Output"],
                              **common)
    return dsl.OneOf(won.output, lost.output)


def compile_pipeline(path: Path = COMPILED_PATH) -> Path:
    """Compiles the pipeline to `path` (pipelines/retrain.yaml by default)."""
    compiler.Compiler().compile(retrain_pipeline, str(path))
    return path


if __name__ == "__main__":
    target = compile_pipeline(Path(sys.argv[1]) if len(sys.argv) > 1 else COMPILED_PATH)
    sys.stdout.write(f"compiled {target}\n")
