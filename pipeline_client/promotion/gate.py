"""The promotion gate: may a challenger replace the champion, judged on the same held-out
examples? A pure function of the rules and the per-example data (numpy, scipy; no I/O).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from pipeline_client.errors import RetrainError
from pipeline_client.promotion.rules import METRICS, GuardrailRule, PrimaryRule, PromotionRules
from thresholds.spec import Direction

__all__ = [
    "CheckResult",
    "GateInputError",
    "GateResult",
    "PromotionRules",
    "evaluate_promotion",
]

Decision = Literal["promote", "reject"]
CheckKind = Literal["primary", "guardrail", "floor"]
Floats = NDArray[np.float64]
Values = Sequence[float] | Sequence[int] | NDArray[Any]

LOG_LOSS_EPS = 1e-15
MAX_BATCH_CELLS = 250_000
"""Resamples are evaluated in batches of at most this many (resample, example) cells."""


class GateInputError(RetrainError, ValueError):
    """The per-example data handed to the gate are unusable; `field` names the argument."""

    def __init__(self, field: str, reason: str, value: Any = None) -> None:
        self.field = field
        self.reason = reason
        self.value = value
        super().__init__(f"{field}: {reason}")


@dataclass(frozen=True)
class CheckResult:
    """One check with its numbers. `passed` is None when the check was skipped.

    `champion`, `challenger`: the metric's point estimates; `improvement`: challenger −
    champion oriented so that positive is better; `ci_low`, `ci_high`: one-sided confidence
    bounds of the improvement at `confidence`; `limit`: what was compared with (primary:
    min_improvement, guardrail: −max_regression, floor: the floor); `p_value`: McNemar's
    one-sided exact p (accuracy primary only).
    """

    metric: str
    kind: CheckKind
    direction: Direction
    passed: bool | None
    reason: str
    champion: float | None = None
    challenger: float | None = None
    improvement: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    limit: float | None = None
    confidence: float | None = None
    p_value: float | None = None

    @property
    def skipped(self) -> bool:
        return self.passed is None

    def to_json(self) -> dict[str, Any]:
        """JSON-safe: NaN and infinities become None."""
        data = {key: _json_safe(value) for key, value in asdict(self).items()}
        data["skipped"] = self.skipped
        return data


@dataclass(frozen=True)
class GateResult:
    """The gate's decision, the reason (naming every failing check) and all checks."""

    decision: Decision
    reason: str
    checks: list[CheckResult] = field(default_factory=list)
    examples: int = 0
    seed: int = 0

    @property
    def promoted(self) -> bool:
        return self.decision == "promote"

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (`json.dumps(..., allow_nan=False)` accepts it)."""
        return {"decision": self.decision, "reason": self.reason, "examples": self.examples,
                "seed": self.seed, "checks": [check.to_json() for check in self.checks]}


def evaluate_promotion(
    rules: PromotionRules,
    labels: Values,
    challenger: Values,
    champion: Values | None = None,
    *,
    seed: int = 0,
) -> GateResult:
    """Decide whether `challenger` should replace `champion` under `rules`.

    `labels`: 0/1 for classification metrics, floats for regression; `challenger`,
    `champion`: each model's prediction per example, in the same order (the positive-class
    probability for classification, the predicted value for regression). `champion=None`
    (a first model): only the floors apply; primary and guardrails are reported as skipped.
    Raises `GateInputError` (naming the argument) for unusable data. Every check that
    applies must pass; with a champion, at least one check must apply.

    TFMA's thresholds compare point estimates (a value threshold on the candidate, a change
    threshold on candidate − baseline). Here each comparison is a test on the paired
    difference, so a challenger is promoted only when the data show it is better:

    - primary: superiority. The oriented improvement (positive = better) must reach
      `min_improvement` as a point estimate AND its one-sided lower confidence bound must
      exceed it. For accuracy, McNemar's exact test (on the examples where the two models
      disagree) must also reject "no improvement" one-sided at 1 − confidence.
    - guardrails: non-inferiority (see `_guardrail`).
    - floors: the challenger's point estimate against an absolute limit.

    Bounds are one-sided at `confidence`: `ci_low`/`ci_high` are the (1 − c) and c
    percentiles of the paired bootstrap distribution (the two-sided 2c − 1 interval, the
    usual companion of a one-sided test at level 1 − c); `scipy.stats.bootstrap` with
    `method="percentile"`: BCa's jackknife costs n more statistic evaluations per check and
    changes little at held-out sizes. The bootstrap resamples example indices
    (`paired=True`): one resample selects the same examples for the labels, the challenger
    and the champion. Metrics are vectorized over resamples, AUC by counting per distinct
    score instead of sorting each resample. Each check draws from
    `np.random.default_rng(seed)` afresh: deterministic for a seed, and one check's interval
    does not depend on which other checks are configured.
    """
    task = rules.task
    y = _as_vector("labels", labels)
    n = y.size
    a = _as_vector("challenger", challenger, n)
    b = None if champion is None else _as_vector("champion", champion, n)
    if task == "classification":
        if not np.isin(y, (0.0, 1.0)).all():
            bad = y[~np.isin(y, (0.0, 1.0))][0]
            raise GateInputError("labels", "classification labels must be 0 or 1", float(bad))
        for name, values in (("challenger", a), ("champion", b)):
            if values is not None and ((values < 0) | (values > 1)).any():
                raise GateInputError(name, "classification predictions must be positive-class "
                                     "probabilities in [0, 1]")
    checks: list[CheckResult] = []
    primary_and_guardrails: list[PrimaryRule | GuardrailRule] = (
        [rules.primary] if rules.primary else []
    ) + list(rules.guardrails)
    for rule in primary_and_guardrails:
        kind: CheckKind = "primary" if isinstance(rule, PrimaryRule) else "guardrail"
        if b is None:
            checks.append(CheckResult(rule.metric, kind, rule.direction, None,
                                      f"{kind} {rule.metric}: skipped, no champion to compare"))
        elif isinstance(rule, PrimaryRule):
            checks.append(_primary(rule, y, a, b, rules.decision_threshold, seed))
        else:
            checks.append(_guardrail(rule, y, a, b, rules.decision_threshold, seed))
    for metric, floor in rules.floors.items():
        checks.append(_floor(metric, floor, y, a, b, rules.decision_threshold))
    failed = [check for check in checks if check.passed is False]
    applied = [check for check in checks if check.passed is not None]
    if failed:
        return GateResult("reject", "rejected: " + "; ".join(c.reason for c in failed), checks,
                          n, seed)
    if b is not None and rules.primary is None:
        # Floors and guardrails say "not too bad", never "better": without a primary metric
        # nothing shows the challenger wins, and a champion is replaced only by a winner.
        return GateResult("reject", "rejected: no primary rule says the challenger beats the "
                          "champion (set promotion.primary in the policy file; floors and "
                          "guardrails alone apply to a first model only)", checks, n, seed)
    if not applied:
        return GateResult("promote", "promoted: first model and no floors to meet", checks,
                          n, seed)
    summary = "; ".join(c.reason for c in applied)
    return GateResult("promote", f"promoted: {summary}", checks, n, seed)


# --- checks ---------------------------------------------------------------------------------


def _primary(rule: PrimaryRule, y: Floats, a: Floats, b: Floats, threshold: float,
             seed: int) -> CheckResult:
    comparison = _compare(rule.metric, rule.direction, y, a, b, threshold, rule.confidence,
                          rule.resamples, seed)
    head = f"primary {rule.metric}"
    limit = rule.min_improvement
    base = comparison.check(rule.metric, "primary", rule.direction, limit, rule.confidence)
    if comparison.undefined:
        return replace(base, passed=False, reason=f"{head}: {comparison.undefined}")
    level = _pct(rule.confidence)
    improvement, low = comparison.improvement, comparison.ci_low
    failures = []
    if not improvement >= limit:
        failures.append(f"improvement {improvement:+.4g} < min_improvement {limit:g}")
    if not low > limit:
        failures.append(f"{level} lower bound {low:+.4g} is not above min_improvement {limit:g}")
    p_value = None
    if rule.metric == "accuracy":
        p_value = mcnemar_one_sided(y, a, b, threshold)
        alpha = 1 - rule.confidence
        if not p_value < alpha:
            failures.append(f"McNemar one-sided p={p_value:.4g} is not below {alpha:.4g}")
    numbers = (f"{comparison.champion:.4g} → {comparison.challenger:.4g}, improvement "
               f"{improvement:+.4g}, {level} bounds [{low:+.4g}, {comparison.ci_high:+.4g}]"
               + (f", McNemar p={p_value:.4g}" if p_value is not None else ""))
    if failures:
        reason = f"{head}: {'; '.join(failures)} ({numbers})"
    else:
        reason = f"{head}: significantly better by more than {limit:g} ({numbers})"
    return replace(base, passed=not failures, reason=reason, p_value=p_value)


def _guardrail(rule: GuardrailRule, y: Floats, a: Floats, b: Floats, threshold: float,
               seed: int) -> CheckResult:
    """Non-inferiority: pass iff the improvement's lower confidence bound ≥ −max_regression.

    TFMA's change threshold passes when the *observed* change is above −max_regression. On a
    small or noisy held-out set that lets a genuinely worse model through about half the
    time at the margin, and the smaller the data the easier it passes: absence of evidence of
    a regression is taken as evidence of none. The sound version puts the burden of proof on
    the challenger: reject "the true regression exceeds max_regression" at level 1 −
    confidence, which is exactly "the one-sided lower bound ≥ −max_regression". With too few
    examples to show it, the guardrail fails instead of passing by default.
    """
    comparison = _compare(rule.metric, rule.direction, y, a, b, threshold, rule.confidence,
                          rule.resamples, seed)
    head = f"guardrail {rule.metric}"
    limit = -rule.max_regression
    base = comparison.check(rule.metric, "guardrail", rule.direction, limit, rule.confidence)
    if comparison.undefined:
        return replace(base, passed=False, reason=f"{head}: {comparison.undefined}")
    level = _pct(rule.confidence)
    low = comparison.ci_low
    numbers = (f"{comparison.champion:.4g} → {comparison.challenger:.4g}, improvement "
               f"{comparison.improvement:+.4g}, {level} bounds [{low:+.4g}, "
               f"{comparison.ci_high:+.4g}]")
    if low >= limit:
        return replace(base, passed=True, reason=f"{head}: no regression beyond "
                           f"{rule.max_regression:g} ({numbers})")
    return replace(base, passed=False, reason=f"{head}: may regress by more than "
                       f"max_regression {rule.max_regression:g}: {level} lower bound {low:+.4g} "
                       f"< {limit:+.4g} ({numbers})")


def _floor(metric: str, floor: float, y: Floats, a: Floats, b: Floats | None,
           threshold: float) -> CheckResult:
    info = METRICS[metric]
    every = _all(y.size)
    challenger = float(_metric(metric, y, a, threshold)(every)[0])
    champion = None if b is None else float(_metric(metric, y, b, threshold)(every)[0])
    head = f"floor {metric}"
    base = CheckResult(metric, "floor", info.direction, None, "", champion=champion,
                       challenger=challenger, limit=floor)
    if math.isnan(challenger):
        return replace(base, passed=False,
                           reason=f"{head}: {_undefined(metric, y, a, threshold, 'challenger')}")
    if info.direction == "higher_is_better":
        passed, word = challenger >= floor, ("≥" if challenger >= floor else "<")
        need = "at least"
    else:
        passed, word = challenger <= floor, ("≤" if challenger <= floor else ">")
        need = "at most"
    reason = (f"{head}: challenger {challenger:.4g} {word} {floor:g}"
              + ("" if passed else f" (must be {need} {floor:g})"))
    return replace(base, passed=bool(passed), reason=reason)


@dataclass(frozen=True)
class _Comparison:
    champion: float
    challenger: float
    improvement: float
    ci_low: float
    ci_high: float
    undefined: str | None = None

    def check(self, metric: str, kind: CheckKind, direction: Direction, limit: float,
              confidence: float) -> CheckResult:
        """A check with these numbers, its outcome still to be filled in."""
        return CheckResult(metric, kind, direction, None, "", champion=self.champion,
                           challenger=self.challenger, improvement=self.improvement,
                           ci_low=self.ci_low, ci_high=self.ci_high, limit=limit,
                           confidence=confidence)


def _compare(metric: str, direction: Direction, y: Floats, a: Floats, b: Floats,
             threshold: float, confidence: float, resamples: int, seed: int) -> _Comparison:
    """Point estimates and the paired bootstrap bounds of the oriented improvement."""
    from scipy.stats import bootstrap

    n = y.size
    sign = 1.0 if direction == "higher_is_better" else -1.0
    of_a, of_b = _metric(metric, y, a, threshold), _metric(metric, y, b, threshold)
    every = _all(n)
    challenger, champion = float(of_a(every)[0]), float(of_b(every)[0])
    improvement = sign * (challenger - champion)
    for value, which, values in ((challenger, "challenger", a), (champion, "champion", b)):
        if math.isnan(value):
            return _Comparison(champion, challenger, improvement, math.nan, math.nan,
                               _undefined(metric, y, values, threshold, which))

    def statistic(resampled: NDArray[np.intp], axis: int = -1) -> Floats:
        index = np.atleast_2d(resampled)
        return sign * (of_a(index) - of_b(index))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns of a degenerate (NaN) interval
        result = bootstrap(
            (np.arange(n),), statistic, paired=True, vectorized=True, n_resamples=resamples,
            batch=max(1, min(resamples, MAX_BATCH_CELLS // n)),
            confidence_level=2 * confidence - 1, method="percentile",
            rng=np.random.default_rng(seed),
        )
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    undefined = None
    if math.isnan(low) or math.isnan(high):
        bad = int(np.isnan(result.bootstrap_distribution).sum())
        undefined = (f"the confidence interval is undefined: {metric} is undefined in {bad} of "
                     f"{resamples} resamples (too few positives or negatives)")
    return _Comparison(champion, challenger, improvement, low, high, undefined)


def mcnemar_one_sided(y: Floats, a: Floats, b: Floats, threshold: float) -> float:
    """McNemar's exact p-value that the challenger (`a`) is more accurate than `b`, one-sided.

    statsmodels gives the two-sided exact p = min(1, 2·P(X ≤ min(wins, losses))), X ~
    Binomial(wins + losses, ½). When the challenger has more wins the one-sided p is half of
    it; otherwise it is P(X ≥ wins) = 1 − P(X ≤ wins − 1), ≥ ½.
    """
    from statsmodels.stats.contingency_tables import mcnemar

    right_a = (a >= threshold) == (y == 1)
    right_b = (b >= threshold) == (y == 1)
    wins = int((right_a & ~right_b).sum())
    losses = int((~right_a & right_b).sum())
    table = [[int((right_a & right_b).sum()), losses],
             [wins, int((~right_a & ~right_b).sum())]]
    two_sided = float(mcnemar(table, exact=True).pvalue)
    if wins > losses:
        return two_sided / 2
    from scipy.stats import binom

    return float(binom.sf(wins - 1, wins + losses, 0.5))


# --- metrics: each a function of (k, n) resampled example indices -> k values -------------


Metric = Callable[[NDArray[np.intp]], Floats]


def _metric(name: str, y: Floats, p: Floats, threshold: float) -> Metric:
    """The metric of predictions `p` on the examples each row of indices selects.

    `_ALL(n)` (every example once) gives the ordinary metric; undefined values (no
    positives, one class for AUC) are NaN.
    """

    def mean_of(per_example: Floats) -> Metric:
        return lambda index: np.asarray(per_example[index].mean(axis=1), dtype=np.float64)

    def ratio(top: Floats, bottom: Floats) -> Metric:
        def value(index: NDArray[np.intp]) -> Floats:
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.asarray(top[index].sum(axis=1) / bottom[index].sum(axis=1),
                                  dtype=np.float64)
        return value

    predicted = (p >= threshold).astype(np.float64)
    tp, fp = predicted * y, predicted * (1 - y)
    fn = (1 - predicted) * y
    if name == "accuracy":
        return mean_of((predicted == y).astype(np.float64))
    if name == "brier" or name == "rmse":
        squared = mean_of((p - y) ** 2)
        return squared if name == "brier" else (lambda index: np.sqrt(squared(index)))
    if name == "mae":
        return mean_of(np.abs(p - y))
    if name == "log_loss":
        clipped = np.clip(p, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
        return mean_of(-(y * np.log(clipped) + (1 - y) * np.log1p(-clipped)))
    if name == "precision":
        return ratio(tp, tp + fp)
    if name == "recall":
        return ratio(tp, y)
    if name == "f1":
        return ratio(2 * tp, 2 * tp + fp + fn)
    if name == "auc":
        return _auc(y, p)
    raise AssertionError(f"metric {name!r} is not in the catalogue")  # pragma: no cover


def _auc(y: Floats, p: Floats) -> Metric:
    """Mann–Whitney AUC: P(score of a positive > score of a negative), ties counting ½.

    The distinct scores are ranked once; a resample is then counted per distinct score
    (positives and negatives apart, in one `bincount`) and the negatives below each score
    accumulated: O(n) per resample instead of a sort.
    """
    distinct, group = np.unique(p, return_inverse=True)
    cells = 2 * distinct.size
    code = 2 * group + y.astype(np.intp)  # (distinct score, class) of each example

    def value(index: NDArray[np.intp]) -> Floats:
        k = index.shape[0]
        keys = (code[index] + np.arange(k)[:, None] * cells).ravel()
        counts = np.bincount(keys, minlength=k * cells).reshape(k, -1, 2)
        neg, pos = counts[:, :, 0], counts[:, :, 1]
        below = np.cumsum(neg, axis=1) - neg
        top = (pos * (below + 0.5 * neg)).sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.asarray(top / (pos.sum(axis=1) * neg.sum(axis=1)), dtype=np.float64)

    return value


def _all(n: int) -> NDArray[np.intp]:
    """One "resample" holding every example once: the point estimate."""
    return np.arange(n)[None, :]


def _undefined(metric: str, y: Floats, p: Floats, threshold: float, which: str) -> str:
    """Why `metric` has no value on these data."""
    positives = int((y == 1).sum())
    if metric == "auc":
        only = "positives" if positives else "negatives"
        return f"auc is undefined: the labels hold only {only} (one class)"
    if metric == "recall" or (metric == "f1" and not positives):
        return f"{metric} is undefined: the labels hold no positives"
    return (f"{metric} is undefined: the {which} predicts no positives at decision_threshold "
            f"{threshold:g}")


# --- helpers -----------------------------------------------------------------------------------


def _as_vector(name: str, values: Any, n: int | None = None) -> Floats:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise GateInputError(name, f"must be a sequence of numbers ({exc})") from None
    if array.ndim != 1:
        raise GateInputError(name, f"must be one-dimensional (got shape {array.shape})")
    if n is None and array.size < 2:
        raise GateInputError(name, f"needs at least 2 examples (got {array.size})")
    if n is not None and array.size != n:
        raise GateInputError(name, f"has {array.size} values for {n} labels", array.size)
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise GateInputError(name, f"{bad.size} values are NaN or infinite (first at index "
                             f"{int(bad[0])})", float(array[bad[0]]))
    return array


def _pct(confidence: float) -> str:
    return f"{confidence * 100:g}%"


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
