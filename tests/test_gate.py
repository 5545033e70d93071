"""The promotion gate: constructed champion/challenger data with known decisions, McNemar and
the bootstrap checked against independent computations, and the `promotion:` schema."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy.stats import bootstrap, mannwhitneyu, rankdata

from pipeline_client.promotion.gate import (
    MAX_BATCH_CELLS,
    GateInputError,
    GateResult,
    PromotionRules,
    evaluate_promotion,
)
from pipeline_client.promotion.rules import METRICS
from tests.conftest import EXAMPLE_TEMPLATE, POLICY_YAML
from triggers.config import ServiceConfig
from triggers.errors import PolicyConfigError
from triggers.policy_file import FloorsSpec, parse_policy_file, policy_file_schema

Array = NDArray[np.float64]


def rules(**section: Any) -> PromotionRules:
    return PromotionRules.from_dict(section)


def scored(n: int, champion_signal: float, challenger_signal: float,
           seed: int = 1) -> tuple[Array, Array, Array]:
    """Balanced 0/1 labels and two models' probabilities; a larger signal is a better model
    (higher accuracy and AUC, lower log loss). Each model has its own noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n).astype(float)

    def model(signal: float) -> Array:
        logit = (2 * y - 1) * signal + rng.normal(0, 1, n)
        return np.asarray(1 / (1 + np.exp(-logit)))

    champion = model(champion_signal)
    return y, model(challenger_signal), champion


def table(both: int, wins: int, losses: int, neither: int,
          seed: int = 2) -> tuple[Array, Array, Array]:
    """Data with an exact McNemar table: `wins` examples only the challenger gets right,
    `losses` only the champion, `both` and `neither` the rest (shuffled, mixed labels)."""
    rng = np.random.default_rng(seed)
    right_a = np.repeat([True, True, False, False], [both, wins, losses, neither])
    right_b = np.repeat([True, False, True, False], [both, wins, losses, neither])
    order = rng.permutation(right_a.size)
    right_a, right_b = right_a[order], right_b[order]
    y = rng.integers(0, 2, right_a.size).astype(float)

    def probability(right: NDArray[np.bool_]) -> Array:
        predicts_one = np.where(right, y == 1, y == 0)
        return np.where(predicts_one, 0.8, 0.2)

    return y, probability(right_a), probability(right_b)


def regression(n: int, scale: float, seed: int = 3) -> tuple[Array, Array, Array]:
    """The challenger's errors are the champion's, shuffled and scaled by `scale`: its RMSE
    is exactly `scale` times the champion's, but example by example the two are unrelated."""
    rng = np.random.default_rng(seed)
    y = rng.normal(10, 2, n)
    errors = rng.normal(0, 1, n)
    return y, y + scale * rng.permutation(errors), y + errors


def check(result: GateResult, kind: str, metric: str) -> Any:
    (found,) = [c for c in result.checks if c.kind == kind and c.metric == metric]
    return found


# --- decisions ----------------------------------------------------------------------------------

DESIGN_RULES = {
    "primary": {"metric": "accuracy", "min_improvement": 0.0, "confidence": 0.95},
    "guardrails": [{"metric": "auc", "max_regression": 0.005},
                   {"metric": "log_loss", "max_regression": 0.01}],
    "floors": {"accuracy": 0.80},
}


def test_a_clear_win_is_promoted() -> None:
    y, challenger, champion = scored(5000, 1.0, 1.5)
    result = evaluate_promotion(rules(**DESIGN_RULES), y, challenger, champion, seed=0)
    assert result.decision == "promote", result.reason
    assert [(c.kind, c.metric, c.passed) for c in result.checks] == [
        ("primary", "accuracy", True), ("guardrail", "auc", True),
        ("guardrail", "log_loss", True), ("floor", "accuracy", True)]
    primary = check(result, "primary", "accuracy")
    assert primary.challenger - primary.champion == pytest.approx(primary.improvement)
    assert primary.ci_low > 0.02 and primary.ci_high > primary.ci_low
    assert primary.p_value is not None and primary.p_value < 1e-6
    log_loss = check(result, "guardrail", "log_loss")
    assert log_loss.direction == "lower_is_better"
    assert log_loss.challenger < log_loss.champion and log_loss.improvement > 0
    assert log_loss.limit == -0.01


def test_a_win_inside_the_noise_is_rejected() -> None:
    # 12 wins against 8 losses out of 400: +1 point of accuracy, not significant
    y, challenger, champion = table(300, 12, 8, 80)
    result = evaluate_promotion(rules(primary={"metric": "accuracy"}), y, challenger, champion)
    primary = check(result, "primary", "accuracy")
    assert primary.improvement == pytest.approx(0.01)
    assert primary.ci_low < 0 < primary.ci_high
    assert primary.p_value == pytest.approx(sum(math.comb(20, k) for k in range(12, 21)) / 2**20)
    assert result.decision == "reject"
    assert "primary accuracy" in result.reason and "McNemar" in result.reason


def test_the_confidence_interval_decides_not_the_point_estimate() -> None:
    # rmse exactly 2% better, but per-example errors unrelated: the interval crosses zero
    y, challenger, champion = regression(300, 0.98)
    result = evaluate_promotion(rules(primary={"metric": "rmse"}), y, challenger, champion)
    primary = check(result, "primary", "rmse")
    assert primary.challenger == pytest.approx(0.98 * primary.champion)
    assert primary.improvement > primary.limit == 0  # a point-estimate gate would promote
    assert primary.ci_low < 0
    assert result.decision == "reject"
    assert "lower bound" in primary.reason and primary.p_value is None


def test_min_improvement_must_be_cleared_by_the_lower_bound() -> None:
    y, challenger, champion = scored(5000, 1.0, 1.5)
    clear = evaluate_promotion(rules(primary={"metric": "accuracy"}), y, challenger, champion)
    gain = check(clear, "primary", "accuracy")
    assert gain.ci_low > 0.02
    between = (gain.ci_low + gain.improvement) / 2  # below the estimate, above the bound
    result = evaluate_promotion(rules(primary={"metric": "accuracy", "min_improvement": between}),
                                y, challenger, champion)
    assert result.decision == "reject"
    assert "is not above min_improvement" in result.reason
    above = evaluate_promotion(
        rules(primary={"metric": "accuracy", "min_improvement": gain.improvement + 0.001}),
        y, challenger, champion)
    assert "< min_improvement" in above.reason and above.decision == "reject"


@pytest.mark.parametrize("metric", ["rmse", "mae"])
def test_lower_is_better_regression_metrics_win_and_lose(metric: str) -> None:
    y, better, champion = regression(2000, 0.5)
    win = evaluate_promotion(rules(primary={"metric": metric}), y, better, champion)
    assert win.decision == "promote", win.reason
    primary = check(win, "primary", metric)
    assert primary.direction == "lower_is_better"
    assert primary.challenger < primary.champion and primary.ci_low > 0
    lose = evaluate_promotion(rules(primary={"metric": metric}), y, champion, better)
    assert lose.decision == "reject"
    assert check(lose, "primary", metric).improvement < 0


def test_log_loss_win_and_loss() -> None:
    y, better, worse = scored(3000, 0.8, 1.4)
    section = {"primary": {"metric": "log_loss", "direction": "lower_is_better"}}
    win = evaluate_promotion(rules(**section), y, better, worse)
    assert win.decision == "promote", win.reason
    assert check(win, "primary", "log_loss").ci_low > 0
    lose = evaluate_promotion(rules(**section), y, worse, better)
    assert lose.decision == "reject"
    primary = check(lose, "primary", "log_loss")
    assert primary.challenger > primary.champion and primary.ci_high < 0


def test_a_guardrail_regression_rejects_a_winner() -> None:
    y, challenger, champion = scored(5000, 1.0, 1.5)
    overconfident = np.where(challenger >= 0.5, 0.999, 0.001)  # same accuracy, awful log loss
    result = evaluate_promotion(rules(**DESIGN_RULES), y, overconfident, champion)
    assert check(result, "primary", "accuracy").passed is True
    guardrail = check(result, "guardrail", "log_loss")
    assert guardrail.passed is False and guardrail.ci_low < -0.01
    assert result.decision == "reject"
    assert result.reason.startswith("rejected: guardrail log_loss: may regress")


def test_a_guardrail_needs_evidence_of_no_regression() -> None:
    # the challenger's scores are the champion's shuffled within each class: exactly the same
    # AUC (a TFMA change threshold passes), but on 300 examples a paired comparison of
    # unrelated scores cannot exclude a regression beyond the tolerance
    y, _, champion = scored(300, 1.0, 1.0)
    rng = np.random.default_rng(4)
    challenger = champion.copy()
    for label in (0, 1):
        members = np.flatnonzero(y == label)
        challenger[members] = champion[rng.permutation(members)]
    section = {"guardrails": [{"metric": "auc", "max_regression": 0.01}]}
    result = evaluate_promotion(rules(**section), y, challenger, champion)
    guardrail = check(result, "guardrail", "auc")
    assert guardrail.challenger == pytest.approx(guardrail.champion, abs=1e-12)
    assert guardrail.ci_low < -0.01  # the tolerance
    assert result.decision == "reject"
    same = evaluate_promotion(rules(**section), y, champion, champion)
    assert check(same, "guardrail", "auc").ci_low == 0 and check(same, "guardrail",
                                                                 "auc").passed is True
    # ...but a guardrail says "not worse", never "better": no primary, no promotion.
    assert same.decision == "reject" and "no primary rule" in same.reason


def test_floors_alone_never_replace_a_champion_but_admit_a_first_model() -> None:
    y, worse, champion = scored(2000, 1.5, 0.5)  # the challenger is clearly worse
    floors_only = rules(floors={"accuracy": 0.55})
    replaced = evaluate_promotion(floors_only, y, worse, champion)
    assert check(replaced, "floor", "accuracy").passed is True
    assert replaced.decision == "reject"
    assert replaced.reason.startswith("rejected: no primary rule says the challenger beats")
    first = evaluate_promotion(floors_only, y, worse, None)
    assert first.decision == "promote"


def test_a_floor_miss_rejects_a_winner() -> None:
    y, challenger, champion = scored(5000, 1.0, 1.5)
    section = {**DESIGN_RULES, "floors": {"accuracy": 0.95, "log_loss": 0.5}}
    result = evaluate_promotion(rules(**section), y, challenger, champion)
    accuracy, log_loss = check(result, "floor", "accuracy"), check(result, "floor", "log_loss")
    assert accuracy.passed is False and accuracy.challenger < 0.95
    assert log_loss.passed is True and log_loss.challenger <= 0.5  # a maximum
    assert result.decision == "reject"
    assert result.reason.startswith("rejected: floor accuracy: challenger")
    assert "must be at least 0.95" in result.reason


def test_a_first_model_faces_the_floors_only() -> None:
    y, challenger, _ = scored(2000, 1.0, 1.5)
    met = evaluate_promotion(rules(**DESIGN_RULES), y, challenger, None)
    assert met.decision == "promote", met.reason
    assert [(c.kind, c.passed) for c in met.checks] == [
        ("primary", None), ("guardrail", None), ("guardrail", None), ("floor", True)]
    assert met.checks[0].to_json()["skipped"] is True
    assert "skipped" in met.checks[0].reason
    missed = evaluate_promotion(rules(**{**DESIGN_RULES, "floors": {"auc": 0.99}}),
                                y, challenger, None)
    assert missed.decision == "reject" and "floor auc" in missed.reason
    nothing = evaluate_promotion(rules(primary={"metric": "accuracy"}), y, challenger)
    assert nothing.decision == "promote" and "first model" in nothing.reason


def test_without_rules_a_champion_is_never_replaced() -> None:
    y, challenger, champion = scored(500, 1.0, 1.5)
    empty = PromotionRules.from_json("{}")
    assert empty.empty
    assert evaluate_promotion(empty, y, challenger, champion).decision == "reject"
    assert evaluate_promotion(empty, y, challenger).decision == "promote"


# --- McNemar ------------------------------------------------------------------------------------


def test_mcnemar_p_value_is_the_one_sided_exact_binomial() -> None:
    # 12 discordant examples go to the challenger, 3 to the champion:
    # P(X >= 12 | X ~ Binomial(15, 1/2)) = (C(15,12) + C(15,13) + C(15,14) + C(15,15)) / 2^15
    y, challenger, champion = table(70, 12, 3, 15)
    section = {"primary": {"metric": "accuracy"}}
    result = evaluate_promotion(rules(**section), y, challenger, champion)
    assert check(result, "primary", "accuracy").p_value == pytest.approx(576 / 32768, rel=1e-12)
    # the other way round: P(X >= 3) = 1 - (C(15,0) + C(15,1) + C(15,2)) / 2^15
    reverse = evaluate_promotion(rules(**section), y, champion, challenger)
    assert check(reverse, "primary", "accuracy").p_value == pytest.approx(1 - 121 / 32768)
    tied = evaluate_promotion(rules(**section), *table(50, 4, 4, 10))
    assert check(tied, "primary", "accuracy").p_value == pytest.approx(
        sum(math.comb(8, k) for k in range(4, 9)) / 2**8)


def test_mcnemar_rejects_what_the_bootstrap_alone_would_pass() -> None:
    # 6 wins, no loss in 1000: every resample shows a gain unless it misses all 6 (p ≈ 0.25%),
    # so the 99% bound is above 0; the exact test says p = 1/64 > 1%
    y, challenger, champion = table(900, 6, 0, 94)
    section = {"primary": {"metric": "accuracy", "confidence": 0.99}}
    result = evaluate_promotion(rules(**section), y, challenger, champion)
    primary = check(result, "primary", "accuracy")
    assert primary.ci_low > 0
    assert primary.p_value == pytest.approx(1 / 64)
    assert result.decision == "reject" and "McNemar one-sided p=0.01562" in result.reason
    lenient = evaluate_promotion(rules(primary={"metric": "accuracy", "confidence": 0.95}),
                                 y, challenger, champion)
    assert lenient.decision == "promote", lenient.reason


# --- the bootstrap against an independent computation -----------------------------------------


def naive(metric: str, y: Array, p: Array, axis: int = -1) -> Array:
    """Textbook metrics on resampled rows (ranks for AUC), no weights or counting tricks."""
    if metric == "auc":
        ranks = rankdata(p, axis=axis)
        positives = y.sum(axis=axis)
        negatives = y.shape[axis] - positives
        ranksum = (ranks * y).sum(axis=axis)
        return np.asarray((ranksum - positives * (positives + 1) / 2) / (positives * negatives))
    predicted = p >= 0.5
    if metric == "accuracy":
        return np.asarray((predicted == (y == 1)).mean(axis=axis))
    if metric == "log_loss":
        q = np.clip(p, 1e-15, 1 - 1e-15)
        return np.asarray(-(y * np.log(q) + (1 - y) * np.log(1 - q)).mean(axis=axis))
    if metric == "f1":
        tp = (predicted & (y == 1)).sum(axis=axis)
        return np.asarray(2 * tp / (predicted.sum(axis=axis) + (y == 1).sum(axis=axis)))
    raise AssertionError(metric)


@pytest.mark.parametrize("metric", ["auc", "accuracy", "log_loss", "f1"])
def test_bootstrap_bounds_match_a_naive_paired_bootstrap(metric: str) -> None:
    y, challenger, champion = scored(200, 1.0, 1.2)
    challenger = np.round(challenger, 2)  # ties, within and across classes
    sign = 1 if METRICS[metric].direction == "higher_is_better" else -1

    def improvement(y: Array, a: Array, b: Array, axis: int = -1) -> Array:
        return sign * (naive(metric, y, a, axis) - naive(metric, y, b, axis))

    expected = bootstrap((y, challenger, champion), improvement, paired=True, vectorized=True,
                         n_resamples=500, batch=min(500, MAX_BATCH_CELLS // 200),
                         confidence_level=0.8, method="percentile",
                         rng=np.random.default_rng(11))
    section = {"guardrails": [{"metric": metric, "max_regression": 0.1, "confidence": 0.9,
                               "resamples": 500}]}
    got = check(evaluate_promotion(rules(**section), y, challenger, champion, seed=11),
                "guardrail", metric)
    assert got.ci_low == pytest.approx(expected.confidence_interval.low, abs=1e-12)
    assert got.ci_high == pytest.approx(expected.confidence_interval.high, abs=1e-12)
    assert got.improvement == pytest.approx(float(improvement(y, challenger, champion)))


def test_auc_counts_ties_as_one_half() -> None:
    y, challenger, _ = scored(400, 1.0, 1.0)
    coarse = np.round(challenger, 1)
    result = evaluate_promotion(rules(floors={"auc": 0.5}), y, coarse)
    expected = mannwhitneyu(coarse[y == 1], coarse[y == 0]).statistic / (
        (y == 1).sum() * (y == 0).sum())
    assert check(result, "floor", "auc").challenger == pytest.approx(expected, abs=1e-12)


# --- determinism and the report ---------------------------------------------------------------


def test_decisions_are_deterministic_for_a_seed() -> None:
    y, challenger, champion = scored(1000, 1.0, 1.3)
    gate = rules(**DESIGN_RULES)
    first = evaluate_promotion(gate, y, challenger, champion, seed=7)
    again = evaluate_promotion(gate, y, challenger, champion, seed=7)
    other = evaluate_promotion(gate, y, challenger, champion, seed=8)
    assert first.to_json() == again.to_json()
    assert first.checks[0].ci_low != other.checks[0].ci_low
    # a check's interval does not depend on the other checks configured
    alone = evaluate_promotion(rules(primary=DESIGN_RULES["primary"]), y, challenger, champion,
                               seed=7)
    assert alone.checks[0] == first.checks[0]


def test_the_report_is_json_safe() -> None:
    y = np.ones(50)
    challenger = np.linspace(0.1, 0.9, 50)
    result = evaluate_promotion(rules(**DESIGN_RULES), y, challenger, challenger[::-1])
    report = json.loads(json.dumps(result.to_json(), allow_nan=False))
    assert set(report) == {"decision", "reason", "examples", "seed", "checks"}
    assert report["examples"] == 50 and report["decision"] == "reject"
    auc = [c for c in report["checks"] if c["metric"] == "auc"][0]
    assert auc["passed"] is False and auc["ci_low"] is None and auc["skipped"] is False
    assert set(auc) == {"metric", "kind", "direction", "passed", "reason", "champion",
                        "challenger", "improvement", "ci_low", "ci_high", "limit",
                        "confidence", "p_value", "skipped"}


# --- degenerate inputs --------------------------------------------------------------------------


def test_auc_with_one_class_fails_its_check_instead_of_crashing() -> None:
    y = np.zeros(100)
    scores = np.linspace(0, 1, 100)
    section = {"guardrails": [{"metric": "auc", "max_regression": 0.01},
                              {"metric": "brier", "max_regression": 0.5}],
               "floors": {"auc": 0.6}}
    result = evaluate_promotion(rules(**section), y, scores, scores[::-1])
    auc = check(result, "guardrail", "auc")
    assert auc.passed is False and "only negatives (one class)" in auc.reason
    assert check(result, "guardrail", "brier").passed is True
    assert check(result, "floor", "auc").passed is False
    assert result.decision == "reject" and "guardrail auc" in result.reason


def test_undefined_precision_fails_with_a_reason() -> None:
    y, _, champion = scored(200, 1.0, 1.0)
    never_positive = np.full(200, 0.1)
    section = {"guardrails": [{"metric": "precision", "max_regression": 0.05}]}
    result = evaluate_promotion(rules(**section), y, never_positive, champion)
    assert result.decision == "reject"
    assert "the challenger predicts no positives at decision_threshold 0.5" in result.reason


@pytest.mark.parametrize(
    ("labels", "challenger", "champion", "field", "reason"),
    [
        ([], [], None, "labels", "at least 2 examples"),
        ([0, 1, 1], [0.2, 0.8], [0.3, 0.6, 0.9], "challenger", "2 values for 3 labels"),
        ([0, 1, 1], [0.2, 0.8, 0.9], [0.3, 0.6], "champion", "2 values for 3 labels"),
        ([0, 1, 1], [0.2, math.nan, 0.9], None, "challenger", "first at index 1"),
        ([0, 1, math.inf], [0.2, 0.3, 0.9], None, "labels", "NaN or infinite"),
        ([0, 1, 2], [0.2, 0.3, 0.9], None, "labels", "must be 0 or 1"),
        ([0, 1, 1], [0.2, 0.3, 0.9], [0.1, 1.5, 0.2], "champion", "probabilities in [0, 1]"),
        ([[0, 1], [1, 0]], [0.2, 0.3], None, "labels", "one-dimensional"),
        ([0, 1], ["a", "b"], None, "challenger", "sequence of numbers"),
    ],
)
def test_unusable_data_name_the_argument(labels: Any, challenger: Any, champion: Any,
                                         field: str, reason: str) -> None:
    with pytest.raises(GateInputError) as info:
        evaluate_promotion(rules(**DESIGN_RULES), labels, challenger, champion)
    assert info.value.field == field
    assert reason in info.value.reason


# --- rules at run time (no pydantic) -------------------------------------------------------------

BAD_SECTIONS = [
    ({"primary": {"metric": "log_loss", "direction": "higher_is_better"}},
     "primary.direction", "log_loss is lower_is_better"),
    ({"primary": {"metric": "accuracy", "direction": "up"}}, "primary.direction", ""),
    ({"primary": {"metric": "acuracy"}}, "primary.metric", ""),
    ({"primary": {"metric": "accuracy", "min_improvment": 0.01}},
     "primary.min_improvment", "unknown field"),
    ({"primary": {"metric": "accuracy", "confidence": 1.0}}, "primary.confidence", ""),
    ({"primary": {"metric": "accuracy", "confidence": 0.5}}, "primary.confidence", ""),
    ({"primary": {"metric": "accuracy", "resamples": 99}}, "primary.resamples", ""),
    ({"primary": {"metric": "accuracy", "min_improvement": -0.01}},
     "primary.min_improvement", ""),
    ({"guardrails": [{"metric": "auc"}]}, "guardrails.0.max_regression", ""),
    ({"guardrails": [{"metric": "auc", "max_regression": -0.1}]},
     "guardrails.0.max_regression", ""),
    ({"guardrails": [{"metric": "auc", "max_regression": 0.1, "direction": "lower_is_better"}]},
     "guardrails.0.direction", "auc is higher_is_better"),
    ({"floors": {"acuracy": 0.9}}, "floors.acuracy", ""),
    ({"floors": {"auc": 1.2}}, "floors.auc", ""),
    ({"floors": {"rmse": -1}}, "floors.rmse", ""),
    ({"decision_threshold": 1}, "decision_threshold", ""),
    ({"primary": {"metric": "accuracy"}, "florrs": {}}, "florrs", "unknown field"),
]


@pytest.mark.parametrize(("section", "field", "reason"), BAD_SECTIONS)
def test_rule_errors_name_the_field(section: dict[str, Any], field: str, reason: str) -> None:
    with pytest.raises(PolicyConfigError) as info:
        PromotionRules.from_dict(section)
    assert info.value.field == f"promotion.{field}"
    assert reason in info.value.reason


def test_more_rule_errors() -> None:
    cases = [
        ({"primary": {"metric": "accuracy"}, "floors": {"rmse": 1.0}}, "promotion.floors.rmse"),
        ({"guardrails": [{"metric": "auc", "max_regression": 0.1},
                         {"metric": "auc", "max_regression": 0.2}]},
         "promotion.guardrails.1.metric"),
        ({"primary": {"metric": "accuracy", "min_improvement": True}},
         "promotion.primary.min_improvement"),
        ({"primary": {"metric": "accuracy", "resamples": 2000.5}}, "promotion.primary.resamples"),
        ({"guardrails": {"metric": "auc"}}, "promotion.guardrails"),
        ({"primary": "accuracy"}, "promotion.primary"),
    ]
    for section, field in cases:
        with pytest.raises(PolicyConfigError) as info:
            PromotionRules.from_dict(section)
        assert info.value.field == field, section
    with pytest.raises(PolicyConfigError) as info:
        PromotionRules.from_json("{primary: accuracy}")
    assert info.value.field == "promotion" and "not valid JSON" in info.value.reason


def test_rules_resolve_directions_and_defaults() -> None:
    gate = rules(**DESIGN_RULES)
    assert gate.primary is not None and gate.primary.direction == "higher_is_better"
    assert gate.primary.resamples == 2000 and gate.decision_threshold == 0.5
    assert [(g.metric, g.direction, g.confidence) for g in gate.guardrails] == [
        ("auc", "higher_is_better", 0.95), ("log_loss", "lower_is_better", 0.95)]
    assert gate.task == "classification"
    inherited = rules(primary={"metric": "rmse", "confidence": 0.9, "resamples": 500},
                      guardrails=[{"metric": "mae", "max_regression": 0.1}])
    assert (inherited.guardrails[0].confidence, inherited.guardrails[0].resamples) == (0.9, 500)
    assert PromotionRules.from_json(gate.to_json()) == gate


# --- the policy file's `promotion:` section -----------------------------------------------------

PROMOTION = """    promotion:
      primary: {metric: accuracy, min_improvement: 0.0, confidence: 0.95}
      guardrails: [{metric: auc, max_regression: 0.005}]
      floors: {accuracy: 0.90}
"""


def policy_yaml(promotion: str = PROMOTION) -> str:
    text = POLICY_YAML % {"template": EXAMPLE_TEMPLATE}
    anchor = "    guards: {cooldown: 72h}\n"
    assert anchor in text
    return text.replace(anchor, anchor + promotion)


def test_the_design_example_validates_and_reaches_the_pipeline_as_json() -> None:
    config = ServiceConfig.from_yaml(policy_yaml(), EXAMPLE_TEMPLATE.parent)
    stored = config.models["fraud-detector"].promotion
    assert stored is not None and config.models["churn"].promotion is None
    parameter = json.dumps(stored)  # what the service hands the pipeline
    assert PromotionRules.from_json(parameter) == rules(**DESIGN_RULES | {
        "guardrails": [{"metric": "auc", "max_regression": 0.005}],
        "floors": {"accuracy": 0.90}})


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("min_improvement: 0.0", "min_improvment: 0.0", "primary.min_improvment"),
        ("metric: accuracy, min", "metric: acuracy, min", "primary.metric"),
        ("confidence: 0.95}", "confidence: 1.5}", "primary.confidence"),
        ("confidence: 0.95}", "confidence: 0.95, direction: lower_is_better}",
         "primary.direction"),
        ("confidence: 0.95}", "confidence: 0.95, resamples: 10}", "primary.resamples"),
        ("max_regression: 0.005", "max_regresion: 0.005", "guardrails.0.max_regresion"),
        ("max_regression: 0.005", "max_regression: -0.005", "guardrails.0.max_regression"),
        ("{metric: auc,", "{metric: AUC,", "guardrails.0.metric"),
        ("floors: {accuracy: 0.90}", "floors: {acuracy: 0.90}", "floors.acuracy"),
        ("floors: {accuracy: 0.90}", "floors: {accuracy: 90}", "floors.accuracy"),
        ("      floors:", "      flors:", "flors"),
    ],
)
def test_schema_errors_name_the_field(old: str, new: str, field: str) -> None:
    assert old in PROMOTION
    with pytest.raises(PolicyConfigError) as info:
        parse_policy_file(policy_yaml(PROMOTION.replace(old, new)))
    fields = [error.field for error in info.value.errors]  # type: ignore[attr-defined]
    assert f"models.fraud-detector.promotion.{field}" in fields


def test_schema_and_run_time_rules_reject_the_same_sections() -> None:
    for section, field, _ in BAD_SECTIONS:
        text = policy_yaml("    promotion: " + json.dumps(section) + "\n")
        with pytest.raises(PolicyConfigError) as info:
            parse_policy_file(text)
        assert info.value.field.startswith(f"models.fraud-detector.promotion.{field}"), section
    mixed = policy_yaml("    promotion: {primary: {metric: accuracy}, floors: {rmse: 1}}\n")
    with pytest.raises(PolicyConfigError, match="cannot be mixed"):
        parse_policy_file(mixed)
    with pytest.raises(PolicyConfigError, match="at least one of primary"):
        parse_policy_file(policy_yaml("    promotion: {}\n"))


def test_the_json_schema_lists_the_catalogue() -> None:
    assert set(FloorsSpec.model_fields) == set(METRICS)
    defs = policy_file_schema()["$defs"]
    assert set(defs["PrimarySpec"]["properties"]["metric"]["enum"]) == set(METRICS)
    assert defs["PrimarySpec"]["additionalProperties"] is False
    assert defs["PromotionSpec"]["additionalProperties"] is False
    assert all(p.get("description") for p in defs["PromotionSpec"]["properties"].values())
    confidence = defs["PrimarySpec"]["properties"]["confidence"]
    assert (confidence["exclusiveMinimum"], confidence["exclusiveMaximum"]) == (0.5, 1)
