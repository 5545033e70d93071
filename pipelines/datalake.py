"""The reference pipeline's data source: one CSV of labelled examples per model and day,
`<root>/<model>/<YYYY-MM-DD>.csv` with feature columns and a final `label` column.

`root` is a directory, a file:// URI, or gs://BUCKET/PATH (read through the /gcs mount a
Vertex AI step has).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class LabelledDay:
    """One day of labelled examples."""

    day: str
    features: tuple[str, ...]
    x: npt.NDArray[np.float64]
    y: npt.NDArray[np.int_]


def local_root(root: str | Path) -> Path:
    """The local path `root` names: file:// URIs, and gs:// through the /gcs mount a Vertex AI
    step has."""
    text = str(root)
    if text.startswith("file://"):
        return Path(text[len("file://"):])
    if text.startswith("gs://"):
        return Path("/gcs") / text[len("gs://"):]
    return Path(text)


def write_day(root: str | Path, model: str, day: LabelledDay) -> Path:
    """Stores one day (replacing an earlier file of that day); returns the file written."""
    directory = local_root(root) / model
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{day.day}.csv"
    table = np.hstack([day.x, day.y.reshape(-1, 1).astype(np.float64)])
    temporary = path.with_suffix(".csv.tmp")
    np.savetxt(temporary, table, delimiter=",", fmt="%.6g",
               header=",".join([*day.features, "label"]), comments="")
    temporary.replace(path)
    return path


def list_days(root: str | Path, model: str) -> list[str]:
    """The days stored for `model`, oldest first."""
    directory = local_root(root) / model
    if not directory.is_dir():
        return []
    return sorted(p.stem for p in directory.glob("*.csv"))


def read_day(root: str | Path, model: str, day: str) -> LabelledDay:
    """One stored day."""
    path = local_root(root) / model / f"{day}.csv"
    with open(path, encoding="utf-8") as handle:
        header = handle.readline().strip().split(",")
    if not header or header[-1] != "label":
        raise ValueError(f"{path}: the last column must be `label`, got {header[-1:]}")
    table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    return LabelledDay(day, tuple(header[:-1]), table[:, :-1], table[:, -1].astype(np.int_))


def read_latest(root: str | Path, model: str, days: int) -> list[LabelledDay]:
    """The latest `days` stored days of `model`, oldest first."""
    return [read_day(root, model, d) for d in list_days(root, model)[-days:]] if days > 0 else []
