"""The cost policy against the best fixed schedule in hindsight and never retraining, on
counterfactual matrices of seeded synthetic drift (gradual, abrupt, recurring): numpy concept
models, then logistic regressions on river's drift generators (Hyperplane, SEA; river is a
bench-only dependency in requirements-dev.txt), and on the demo's committed matrix.

Run: PYTHONPATH=. python -m bench.cost_policy
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from triggers.config import ServiceConfig
from triggers.tools.backtest.counterfactual import (
    Costs,
    ModelMatrix,
    Window,
    baselines,
    read_matrix,
    replay_model,
)

ROOT = Path(__file__).resolve().parent.parent
DAY = 86_400.0
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
DAYS = 365
RETRAIN_COST, LOSS_PER_UNIT_DAY = 500.0, 20_000.0
POLICY = """
models:
  m:
    pipeline: {template: %s, pipeline_root: gs://b/r}
    policies:
      - {name: worth-a-run, metric: accuracy, direction: higher_is_better,
         cost: {retrain_cost: %g, loss_per_unit_day: %g}}
    guards: {cooldown: 1h}
"""


def concept(kind: str, days: np.ndarray) -> np.ndarray:
    """The concept (a position on a line; a model's accuracy falls with the distance from the
    concept it learned) on each day."""
    if kind == "gradual":      # rotating hyperplane: a steady 0.0005 of accuracy a day
        return 0.0005 * days
    if kind == "abrupt":       # SEA-like concept switches on four days
        return 0.12 * np.searchsorted([60, 150, 230, 300], days, side="right")
    if kind == "recurring":    # two concepts, switching every 45 days
        return 0.12 * ((days // 45) % 2)
    raise ValueError(kind)


def synthetic(kind: str, seed: int = 11) -> ModelMatrix:
    """A model trained through each day (on the 7 days before it) scored on every later day:
    0.95 − |concept(window) − concept learned| + noise (sd 0.004)."""
    rng = np.random.default_rng(seed)
    days = np.arange(DAYS + 1)
    learned = np.array([concept(kind, np.arange(max(t - 7, 0), t)).mean() if t else 0.0
                        for t in days])
    now = concept(kind, days)
    matrix = ModelMatrix("m")
    matrix.trained = [T0 + t * DAY for t in range(DAYS)]
    matrix.windows = [Window(T0 + (w + 1) * DAY, T0 + w * DAY, "overall") for w in range(DAYS)]
    for t in range(DAYS):
        values = 0.95 - np.abs(now[t:DAYS] - learned[t]) + rng.normal(0, 0.004, DAYS - t)
        for w, value in zip(range(t, DAYS), values, strict=True):
            end = T0 + (w + 1) * DAY
            matrix.scores[(T0 + t * DAY, end)] = {"accuracy": float(value)}
    return matrix


RIVER_PER_DAY = 1000
"""Examples a day in the river matrices (a day's accuracy then has a sd of about 0.01)."""


def river_stream(kind: str, seed: int = 11) -> tuple[np.ndarray, np.ndarray]:
    """(X, y) for 7 + DAYS days of RIVER_PER_DAY examples from river's drift generators:
    gradual, a rotating Hyperplane (sigma 0: it keeps turning one way); abrupt, SEA whose
    concept (threshold variant) switches on days 60, 150, 230, 300; recurring, SEA switching
    between variants 0 and 2 every 45 days. SEA with 10 % label noise, as published."""
    from river.datasets import synth

    total = (DAYS + 7) * RIVER_PER_DAY
    if kind == "gradual":
        rows = list(synth.Hyperplane(seed=seed, n_features=10, n_drift_features=2,
                                     mag_change=3e-5, noise_percentage=0.05,
                                     sigma=0.0).take(total))
    else:
        if kind == "abrupt":
            switches, variants = [60, 150, 230, 300], [0, 1, 2, 3, 0]
        elif kind == "recurring":
            switches = list(range(45, DAYS, 45))
            variants = [0 if i % 2 == 0 else 2 for i in range(len(switches) + 1)]
        else:
            raise ValueError(kind)
        bounds = [0] + [7 + d for d in switches] + [DAYS + 7]
        rows = []
        for index, variant in enumerate(variants):
            days = bounds[index + 1] - bounds[index]
            rows += list(synth.SEA(variant=variant, seed=seed + index,
                                   noise=0.1).take(days * RIVER_PER_DAY))
    names = sorted(rows[0][0])
    x = np.array([[features[n] for n in names] for features, _ in rows], dtype=float)
    y = np.array([int(label) for _, label in rows])
    return x, y


def river_matrix(kind: str, seed: int = 11) -> ModelMatrix:
    """A logistic regression trained through each day (on the 7 days before it) and its
    accuracy on every later day's examples, on a stream of river's generators."""
    from sklearn.linear_model import LogisticRegression

    x, y = river_stream(kind, seed)
    per = RIVER_PER_DAY
    matrix = ModelMatrix("m")
    matrix.trained = [T0 + t * DAY for t in range(DAYS)]
    matrix.windows = [Window(T0 + (w + 1) * DAY, T0 + w * DAY, "overall") for w in range(DAYS)]
    for t in range(DAYS):  # data day d + 7 is matrix day d; model t learns days t−7 … t−1
        fit = LogisticRegression(max_iter=1000).fit(x[t * per:(t + 7) * per],
                                                    y[t * per:(t + 7) * per])
        scores = x[(t + 7) * per:] @ fit.coef_[0] + fit.intercept_[0]
        right = ((scores > 0).astype(int) == y[(t + 7) * per:]).reshape(DAYS - t, per)
        for w, accuracy in zip(range(t, DAYS), right.mean(axis=1), strict=True):
            matrix.scores[(T0 + t * DAY, T0 + (w + 1) * DAY)] = {"accuracy": float(accuracy)}
    return matrix


BARS = {"within 10 %": "within 10 % of best fixed", "below": "below best fixed",
        "reported": "≤ never only (reported)"}


def row(name: str, matrix: ModelMatrix, config: ServiceConfig, costs: Costs,
        rule: str) -> tuple[str, str]:
    started = time.perf_counter()
    outcome, _ = replay_model(config, "m" if "m" in config.models else matrix.model, matrix,
                              6 * 3600.0, costs)
    elapsed = time.perf_counter() - started
    others = baselines(matrix, 6 * 3600.0, costs)
    never = others[0]
    fixed = min(others[1:], key=lambda o: o.total_cost)
    ratio = outcome.total_cost / fixed.total_cost
    passed = outcome.total_cost <= never.total_cost and (
        ratio <= 1.10 if rule == "within 10 %" else ratio < 1.0 if rule == "below" else True)
    line = (f"| {name} | {outcome.runs} | {outcome.total_cost:,.0f} | {fixed.name} "
            f"({fixed.runs} runs) | {fixed.total_cost:,.0f} | {never.total_cost:,.0f} | "
            f"{ratio:.3f} | {BARS.get(rule, rule)}, ≤ never | {'PASS' if passed else 'MISS'} | "
            f"{elapsed:.2f} s |")
    return line, "PASS" if passed else "MISS"


def main() -> None:
    template = ROOT / "pipelines" / "example.yaml"
    config = ServiceConfig.from_yaml(POLICY % (template, RETRAIN_COST, LOSS_PER_UNIT_DAY), ROOT)
    costs = Costs(RETRAIN_COST, LOSS_PER_UNIT_DAY, "accuracy", True)
    print(f"one run {RETRAIN_COST:g}, accuracy 1.0 worse for a day {LOSS_PER_UNIT_DAY:g}; "
          "runs last 6h; the cost policy given only these two numbers")
    print("| matrix | cost policy runs | cost policy total | best fixed schedule in hindsight"
          " | its total | never retrain | policy / best fixed | bar | result | replay time |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind, rule in (("gradual", "within 10 %"), ("abrupt", "below"),
                       ("recurring", "reported")):
        print(row(f"{kind} ({DAYS} days)", synthetic(kind), config, costs, rule)[0])
    try:
        import river  # noqa: F401  (a bench-only dependency: requirements-dev.txt)
    except ImportError:
        print("| river matrices | skipped: `pip install -r requirements-dev.txt` (river) |")
    else:
        for kind, rule in (("gradual", "within 10 %"), ("abrupt", "below"),
                           ("recurring", "reported")):
            label = {"gradual": "Hyperplane", "abrupt": "SEA", "recurring": "SEA"}[kind]
            print(row(f"river {label}, {kind} ({DAYS} days)", river_matrix(kind), config,
                      costs, rule)[0])
    demo = ServiceConfig.from_yaml(
        (ROOT / "examples" / "cost-policies.yaml").read_text(encoding="utf-8"),
        ROOT / "examples")
    (matrix,) = read_matrix(ROOT / "examples" / "matrix.csv").values()
    alone = demo.models["fraud-detector"]
    from dataclasses import replace

    demo = replace(demo, models={"fraud-detector": replace(alone, policies=alone.policies[:1])})
    print(row("demo (examples/matrix.csv)", matrix, demo, costs, "within 10 %")[0])


if __name__ == "__main__":
    main()
