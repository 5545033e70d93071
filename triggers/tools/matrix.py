"""`retrain-trigger matrix`: what each retraining would have bought, from the user's own data.

For a grid of training dates, the reference pipeline's train step (`train_model`, in-process)
fits a model on the days up to that date, and each model is scored on every later day of the
data lake: the MATRIX.csv that `backtest --counterfactual` replays.
"""

from __future__ import annotations

import csv
import tempfile
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from triggers.errors import RetrainError

METRICS = ("accuracy", "auc")


class MatrixInputError(RetrainError):
    """The data lake or an option cannot be used; `option` names which."""

    def __init__(self, option: str, reason: str) -> None:
        self.option = option
        self.reason = reason
        super().__init__(f"{option}: {reason}")


def _midnight(day: str) -> datetime:
    return datetime.combine(date.fromisoformat(day), datetime.min.time(), tzinfo=UTC)


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def train_through(data: str | Path, model: str, days: list[Any], workdir: Path) -> Any:
    """The pipeline's own train step on `days` (what its prepare step would write for them)."""
    import numpy as np
    from kfp.dsl import Dataset, Model

    from pipelines.logistic import LogisticModel
    from pipelines.retrain import train_model

    train = Dataset(name="train", uri=str(workdir / "train.csv"))
    header = ",".join([*days[0].features, "label"])
    table = np.vstack([np.hstack([d.x, d.y.reshape(-1, 1)]) for d in days])
    np.savetxt(train.path, table, delimiter=",", fmt="%.6g", header=header, comments="")
    train.metadata["days"] = [d.day for d in days]
    challenger = Model(name="challenger", uri=str(workdir / "model.json"))
    train_model.python_func(train=train, seed=0, challenger=challenger)
    return LogisticModel.load(challenger.path)


def build_matrix(
    data: str | Path, model: str, output: str | Path, training_days: int = 7,
    every_days: int = 1, progress: Callable[[int, int], None] | None = None,
) -> int:
    """Write MATRIX.csv for `model`'s data lake; returns the number of rows."""
    from pipelines.datalake import list_days, read_day
    from triggers.tools.demo import score

    if training_days < 1 or every_days < 1:
        raise MatrixInputError("--training-days" if training_days < 1 else "--every",
                               "must be at least 1")
    names = list_days(data, model)
    if len(names) < training_days + 1:
        raise MatrixInputError("--data", f"{data}/{model} holds {len(names)} day(s); need at "
                                         f"least {training_days + 1} (training days + 1)")
    days = [read_day(data, model, name) for name in names]
    ends = list(range(training_days - 1, len(days) - 1, every_days))
    rows = 0
    with tempfile.TemporaryDirectory() as tmp, open(output, "w", newline="",
                                                        encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "trained_through", "window_start", "window_end", *METRICS,
                         "examples"])
        for done, last in enumerate(ends):
            fitted = train_through(data, model, days[last - training_days + 1:last + 1],
                                   Path(tmp))
            trained = _midnight(days[last].day) + timedelta(days=1)
            for later in days[last + 1:]:
                start = _midnight(later.day)
                accuracy, auc = score(fitted, later.x, later.y)
                writer.writerow([model, _rfc3339(trained), _rfc3339(start),
                                 _rfc3339(start + timedelta(days=1)), f"{accuracy:.6f}",
                                 f"{auc:.6f}", len(later.y)])
                rows += 1
            if progress is not None:
                progress(done + 1, len(ends))
    return rows


def run_command(args: Any) -> int:
    """`retrain-trigger matrix`: 0 when written, 2 on bad input."""
    import sys

    from triggers.tools.backtest.io import ProgressBar

    bar: ProgressBar | None = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = ProgressBar(total, "training dates", True if args.progress else None)
        bar(done)

    try:
        if not Path(args.output).resolve().parent.is_dir():
            raise MatrixInputError("--output", f"{args.output}: its directory does not exist")
        rows = build_matrix(args.data, args.model, args.output, args.training_days,
                            args.every, progress)
    except (MatrixInputError, ValueError, OSError) as exc:
        print(f"retrain-trigger matrix: {exc}", file=sys.stderr)
        return 2
    if bar is not None:
        bar.close()
    print(f"written: {args.output} ({rows} rows)")
    return 0
