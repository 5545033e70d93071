"""The reference pipeline's model: logistic regression fitted with numpy (Newton's method),
stored as one small JSON file. Replace it with your own training code; keep `predict_proba`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

MODEL_FILE = "model.json"
Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class LogisticModel:
    """Weights, bias and feature names of a fitted binary classifier."""

    weights: tuple[float, ...]
    bias: float
    features: tuple[str, ...]

    def predict_proba(self, x: Array) -> Array:
        """Probability of the positive class for each row of `x`."""
        z = np.asarray(x, dtype=np.float64) @ np.asarray(self.weights) + self.bias
        probability: Array = 1.0 / (1.0 + np.exp(-np.clip(z, -500.0, 500.0)))
        return probability

    def predict_named(self, columns: Sequence[str], x: Array) -> Array:
        """`predict_proba` on a table whose columns are named: columns are matched to the
        model's features by name (any order); a missing feature is an error naming it."""
        index = {name: i for i, name in enumerate(columns)}
        missing = [name for name in self.features if name not in index]
        if missing:
            raise ValueError(f"the data lacks the model's feature(s) {', '.join(missing)} "
                             f"(columns: {', '.join(columns)})")
        table = np.asarray(x, dtype=np.float64)
        return self.predict_proba(table[:, [index[name] for name in self.features]])

    def save(self, directory: str | Path) -> Path:
        """Writes `model.json` into `directory` (created if missing); returns its path."""
        path = Path(directory) / MODEL_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"kind": "logistic", "weights": list(self.weights), "bias": self.bias,
                "features": list(self.features)}
        path.write_text(json.dumps(data, indent=1), encoding="utf-8")
        return path

    @classmethod
    def load(cls, location: str | Path) -> LogisticModel:
        """Reads a model from its directory, its `model.json`, or a file:// or gs:// URI."""
        from pipelines.datalake import local_root

        path = local_root(location)  # file:// and gs:// (Vertex's /gcs mount) to a local path
        if path.is_dir():
            path = path / MODEL_FILE
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("kind") != "logistic":
            raise ValueError(f"{path} is not a logistic model (kind={data.get('kind')!r})")
        return cls(tuple(float(w) for w in data["weights"]), float(data["bias"]),
                   tuple(str(f) for f in data["features"]))


def fit_logistic(
    x: Array, y: npt.NDArray[np.int_], features: Sequence[str], l2: float = 1e-3,
    iterations: int = 25,
) -> LogisticModel:
    """Maximum-likelihood logistic regression with a small L2 penalty (Newton–Raphson)."""
    x = np.asarray(x, dtype=np.float64)
    target = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or len(x) != len(target) or len(x) == 0:
        raise ValueError(f"need a non-empty 2-D x and one label per row, got {x.shape}, "
                         f"{target.shape}")
    design = np.hstack([x, np.ones((len(x), 1))])
    theta = np.zeros(design.shape[1])
    penalty = l2 * len(x) * np.eye(design.shape[1])
    penalty[-1, -1] = 0.0  # the bias is not penalised
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(design @ theta, -500.0, 500.0)))
        gradient = design.T @ (p - target) + penalty @ theta
        hessian = (design * (p * (1 - p))[:, None]).T @ design + penalty
        step = np.linalg.solve(hessian + 1e-9 * np.eye(len(theta)), gradient)
        theta -= step
        if float(np.max(np.abs(step))) < 1e-8:
            break
    return LogisticModel(tuple(float(v) for v in theta[:-1]), float(theta[-1]), tuple(features))
