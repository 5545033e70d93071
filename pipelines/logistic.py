"""The reference pipeline's model: logistic regression fitted with numpy (Newton's method),
saved as a scikit-learn `LogisticRegression` in `model.joblib`, the file Vertex AI's prebuilt
scikit-learn serving container loads. Replace it with your own training; keep `predict_proba`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

# Vertex AI's prebuilt scikit-learn container serves the one `model.joblib` (or `model.pkl`)
# of the registered directory ("Export model artifacts for inference", scikit-learn).
MODEL_FILE = "model.joblib"
LEGACY_MODEL_FILE = "model.json"  # what versions registered before the joblib export hold
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

    def to_sklearn(self) -> Any:
        """The same model as a fitted `sklearn.linear_model.LogisticRegression`: `coef_`,
        `intercept_`, `classes_` (0, 1) and `feature_names_in_` set from these weights, so its
        `predict_proba(x)[:, 1]` is `self.predict_proba(x)` (to rounding)."""
        from sklearn.linear_model import LogisticRegression

        estimator = LogisticRegression()
        estimator.coef_ = np.asarray([self.weights], dtype=np.float64)
        estimator.intercept_ = np.asarray([self.bias], dtype=np.float64)
        estimator.classes_ = np.asarray([0, 1])
        estimator.n_features_in_ = len(self.weights)
        estimator.feature_names_in_ = np.asarray(self.features, dtype=object)
        return estimator

    def save(self, directory: str | Path) -> Path:
        """Writes `model.joblib` (see `to_sklearn`) into `directory` (created if missing) and
        nothing else: a prebuilt serving container wants exactly one model file there.
        Returns its path."""
        import joblib

        path = Path(directory) / MODEL_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        joblib.dump(self.to_sklearn(), path)
        return path

    @classmethod
    def load(cls, location: str | Path) -> LogisticModel:
        """Reads a model from its directory, its `model.joblib` (or an older `model.json`), or
        a file:// or gs:// URI. Unpickles: load only artifacts your own pipeline wrote."""
        from pipelines.datalake import local_root

        path = local_root(location)  # file:// and gs:// (Vertex's /gcs mount) to a local path
        if path.is_dir():
            has_joblib = (path / MODEL_FILE).exists()
            path = path / (LEGACY_MODEL_FILE if not has_joblib and (
                path / LEGACY_MODEL_FILE).is_file() else MODEL_FILE)
        if path.suffix == ".json":
            return cls._from_json(path)
        import joblib

        estimator = joblib.load(path)
        coef = np.asarray(getattr(estimator, "coef_", None), dtype=np.float64)
        classes = list(getattr(estimator, "classes_", []))
        names = getattr(estimator, "feature_names_in_", None)
        if coef.ndim != 2 or coef.shape[0] != 1 or classes != [0, 1] or names is None:
            raise ValueError(f"{path} is not a binary logistic model with feature names "
                             f"(got {type(estimator).__name__})")
        return cls(tuple(float(w) for w in coef[0]), float(estimator.intercept_[0]),
                   tuple(str(f) for f in names))

    @classmethod
    def _from_json(cls, path: Path) -> LogisticModel:
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
