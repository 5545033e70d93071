"""Threshold sweeps: one policy field varied over values, each value a replay, in worker
processes; the table and the plot.
"""

from __future__ import annotations

import io
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from thresholds.durations import format_duration, parse_duration
from thresholds.forecast import ForecastPolicy
from thresholds.registry import build_policy
from thresholds.spec import PolicySpec
from thresholds.trend import FitMemo, TrendPolicy
from triggers.config import ServiceConfig
from triggers.events import MetricEvent
from triggers.tools.backtest.io import BacktestInputError
from triggers.tools.backtest.replay import BacktestSettings, Replay
from triggers.tools.backtest.report import span, threshold_of, time_worse_than


# ----------------------------------------------------------------------------- sweeps
@dataclass(frozen=True)
class SweepSpec:
    """`POLICY[.RULE].FIELD=START:STOP:STEP`: the values (STOP included when on the grid);
    `rule` (absolute, baseline, trend, forecast, cost) when the field was named with its rule."""

    policy: str
    field: str
    values: tuple[float, ...]
    text: str
    rule: str | None = None


_TOP_FIELDS = ("breaches_to_trigger", "evaluation_points", "min_examples")
_DURATION_FIELDS = ("lookback", "horizon")


_RULES = ("absolute", "baseline", "trend", "forecast", "cost")


def parse_sweep(text: str) -> SweepSpec:
    """Parse `POLICY[.RULE].FIELD=START:STOP:STEP`, e.g. `accuracy-floor.threshold=…` or
    `accuracy-floor.absolute.threshold=…` (durations allowed for lookback and horizon)."""
    target, sep, bounds = text.partition("=")
    policy, dot, name = target.rpartition(".")
    rule = None
    for kind in _RULES:
        if policy.endswith("." + kind) and name not in _TOP_FIELDS:
            policy, rule = policy[: -len(kind) - 1], kind
    parts = bounds.split(":")
    if not sep or not dot or not policy or not name or len(parts) != 3:
        raise BacktestInputError("--sweep", f"{text!r} is not POLICY.FIELD=START:STOP:STEP")
    try:
        if name in _DURATION_FIELDS:
            start, stop, step = (parse_duration(p).total_seconds() for p in parts)
        else:
            start, stop, step = (float(p) for p in parts)
    except ValueError as exc:
        raise BacktestInputError("--sweep", f"{text!r}: {exc}") from None
    if not (math.isfinite(start) and math.isfinite(stop) and math.isfinite(step)) or step <= 0:
        raise BacktestInputError("--sweep", f"{text!r}: STEP must be a positive number")
    if stop < start:
        raise BacktestInputError("--sweep", f"{text!r}: STOP is below START")
    count = int(math.floor((stop - start) / step + 1e-9)) + 1
    if count > 1000:
        raise BacktestInputError("--sweep", f"{text!r} gives {count} values; at most 1000")
    values = tuple(float(f"{start + i * step:.12g}") for i in range(count))
    return SweepSpec(policy, name, values, text, rule)


def with_value(spec: PolicySpec, field_name: str, value: float) -> PolicySpec:
    """`spec` with one field (top-level or of its rule) set to `value`, validated again."""
    data = spec.to_dict()
    rule = data[spec.kind]
    if field_name in _TOP_FIELDS:
        target: dict[str, Any] = data
    elif field_name in PolicySpec.__dataclass_fields__ or field_name not in _rule_fields(spec):
        raise BacktestInputError(
            "--sweep", f"policy {spec.name!r} ({spec.kind}) has no numeric field "
            f"{field_name!r}; sweepable: {', '.join(_TOP_FIELDS + _rule_fields(spec))}")
    else:
        target = rule
    current = getattr(spec, field_name) if target is data else getattr(
        getattr(spec, spec.kind), field_name)
    if isinstance(current, int) and not isinstance(current, bool):
        if value != int(value):
            raise BacktestInputError("--sweep", f"{spec.name}.{field_name} takes whole "
                                                f"numbers, not {value:g}")
        target[field_name] = int(value)
    else:
        target[field_name] = value
    from pydantic import ValidationError

    try:
        return PolicySpec.parse(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise BacktestInputError(
            "--sweep", f"{spec.name}.{field_name}={value:g}: {where}: {error['msg']}") from None


def _rule_fields(spec: PolicySpec) -> tuple[str, ...]:
    rule = getattr(spec, spec.kind)
    return tuple(name for name in rule.__dataclass_fields__
                 if isinstance(getattr(rule, name), (int, float, timedelta))
                 or name in ("max_relative_drop", "max_absolute_drop", "horizon"))


def with_policy(config: ServiceConfig, model: str, spec: PolicySpec) -> ServiceConfig:
    """`config` with `model`'s policy of the same name built from `spec`."""
    current = config.models[model]
    policies = tuple(build_policy(spec) if p.name == spec.name else p for p in current.policies)
    models = dict(config.models)
    models[model] = replace(current, policies=policies)
    return replace(config, models=models)


@dataclass(frozen=True)
class Slo:
    """What "degraded" means for a sweep: the metric strictly worse than `threshold`."""

    model: str
    slice: str
    metric: str
    threshold: float
    higher_is_better: bool


@dataclass(frozen=True)
class SweepPoint:
    value: float
    runs: int
    triggers: int
    suppressed: int
    degraded: float
    before_a_run: float
    elapsed: float


@dataclass(frozen=True)
class SweepResult:
    spec: SweepSpec
    model: str
    slo: Slo
    points: tuple[SweepPoint, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "sweep": self.spec.text, "policy": self.spec.policy, "field": self.spec.field,
            "model": self.model, "slo": asdict(self.slo),
            "values": [asdict(point) for point in self.points],
        }


@dataclass(frozen=True)
class _SweepJob:
    """What a worker needs to run every value of every sweep (sent once per worker)."""

    config: ServiceConfig
    events: list[tuple[int, MetricEvent]]
    settings: BacktestSettings
    sweeps: list[_PreparedSweep]


_JOB: _SweepJob | None = None
_FITS = FitMemo(capacity=50_000)
"""A sweep worker's fits: every value of a sweep over a limit replays the same windows."""


def _init_worker(job: _SweepJob) -> None:
    global _JOB
    _JOB = job


def _run_value(task: tuple[int, int]) -> SweepPoint:
    assert _JOB is not None, "worker not initialised"
    sweep, index = task
    prepared = _JOB.sweeps[sweep]
    model, slo = prepared.model, prepared.slo
    started = time.perf_counter()
    config = with_policy(_JOB.config, model, prepared.specs[index])
    for policy in config.models[model].policies:
        if isinstance(policy, TrendPolicy | ForecastPolicy):
            policy.fit_memo = _FITS
    replay = Replay(config, _JOB.settings)
    replay.run(_JOB.events)
    runs = replay.store.runs(model, limit=1_000_000)
    series = replay.champion_points(model, slo.slice, slo.metric)
    degraded = time_worse_than(series, slo.threshold, slo.higher_is_better,
                               replay.run_spans(model), model, slo.slice, slo.metric)
    kinds: dict[str, int] = {}
    for decision in replay.store.all_decisions():  # the swept policy's own verdicts
        if decision.model == model and decision.policy == prepared.sweep.policy:
            kinds[decision.kind] = kinds.get(decision.kind, 0) + 1
    return SweepPoint(prepared.sweep.values[index], len(runs), kinds.get("fired", 0),
                      kinds.get("suppressed", 0), degraded.worse, degraded.before_a_run,
                      time.perf_counter() - started)


@dataclass(frozen=True)
class _PreparedSweep:
    """A sweep checked against the policy file: its model, a validated spec per value, and
    what counts as degraded."""

    sweep: SweepSpec
    model: str
    specs: list[PolicySpec]
    slo: Slo


def prepare_sweep(
    config: ServiceConfig, models: Sequence[str], sweep: SweepSpec, slo_value: float | None
) -> _PreparedSweep:
    """The model holding the swept policy, its validated spec per value, and the SLO."""
    owners = [m for m in models if any(p.name == sweep.policy for p in config.models[m].policies)]
    if not owners:
        raise BacktestInputError("--sweep", f"no policy {sweep.policy!r} in the replayed "
                                            f"models ({', '.join(models) or 'none'})")
    if len(owners) > 1:
        raise BacktestInputError("--sweep", f"policy {sweep.policy!r} is in models "
                                            f"{', '.join(owners)}: choose one with --model")
    model = config.models[owners[0]]
    policy = next(p for p in model.policies if p.name == sweep.policy)
    if sweep.rule is not None and sweep.rule != policy.spec.kind:
        raise BacktestInputError("--sweep", f"policy {sweep.policy!r} has a {policy.spec.kind} "
                                            f"rule, not {sweep.rule}")
    specs = [with_value(policy.spec, sweep.field, value) for value in sweep.values]
    threshold = slo_value
    if threshold is None:
        threshold = threshold_of(policy)
    if threshold is None:
        floors = [threshold_of(p) for p in model.policies
                  if p.spec.absolute is not None and p.metric == policy.metric
                  and p.spec.slice == policy.spec.slice]
        threshold = floors[0] if floors else None
    if threshold is None:
        raise BacktestInputError(
            "--slo", f"{sweep.policy} has no threshold and model {model.name} no absolute "
            f"policy on {policy.metric}: give the value that counts as degraded with --slo")
    slo = Slo(model.name, policy.spec.slice, policy.metric, threshold, policy.higher_is_better)
    return _PreparedSweep(sweep, model.name, specs, slo)


def run_sweeps(
    config: ServiceConfig, events: list[tuple[int, MetricEvent]], settings: BacktestSettings,
    sweeps: Sequence[SweepSpec], models: Sequence[str], slo_value: float | None = None,
    workers: int | None = None, progress: Callable[[int], None] | None = None,
) -> list[SweepResult]:
    """Run a backtest per value of every sweep, on `workers` processes (default: every core
    this process may use)."""
    prepared = [prepare_sweep(config, models, sweep, slo_value) for sweep in sweeps]
    job = _SweepJob(config, events, settings, prepared)
    tasks = [(s, i) for s, sweep in enumerate(prepared) for i in range(len(sweep.specs))]
    workers = min(workers or available_cores(), len(tasks))
    results: list[SweepPoint] = []
    if workers <= 1:
        _init_worker(job)
        try:
            for task in tasks:
                results.append(_run_value(task))
                if progress is not None:
                    progress(len(results))
        finally:
            _init_worker_reset()
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else None)
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                 initargs=(job,)) as pool:
            for point in pool.map(_run_value, tasks):
                results.append(point)
                if progress is not None:
                    progress(len(results))
    return [
        SweepResult(sweep.sweep, sweep.model, sweep.slo,
                    tuple(point for (s, _), point in zip(tasks, results, strict=True)
                          if s == index))
        for index, sweep in enumerate(prepared)
    ]


def _init_worker_reset() -> None:
    global _JOB
    _JOB = None


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def plot_sweeps(results: Sequence[SweepResult], path: str | Path) -> Path:
    """A PNG with one panel per sweep: value vs retraining runs and hours degraded before a
    run (staleness). matplotlib (Agg) is imported here only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(results), figsize=(6.4 * len(results), 4.2),
                                squeeze=False)
    for axis, result in zip(axes[0], results, strict=True):
        values = [_display_value(result.spec, p.value) for p in result.points]
        axis.plot(values, [p.runs for p in result.points], "o-", color="tab:blue",
                  label="retraining runs")
        axis.set_xlabel(f"{result.spec.policy}.{result.spec.field}"
                        + (" (hours)" if result.spec.field in _DURATION_FIELDS else ""))
        axis.set_ylabel("retraining runs", color="tab:blue")
        stale = axis.twinx()
        stale.plot(values, [p.before_a_run / 3600 for p in result.points], "s--",
                   color="tab:red", label="staleness")
        stale.set_ylabel(f"hours {result.slo.metric} worse than {result.slo.threshold:g} "
                         "before a run", color="tab:red")
        axis.set_title(f"{result.model}: sweep of {result.spec.policy}.{result.spec.field}")
        axis.grid(True, alpha=0.3)
    figure.tight_layout()
    target = Path(path)
    figure.savefig(target, dpi=100)
    plt.close(figure)
    return target


def _display_value(spec: SweepSpec, value: float) -> float:
    return value / 3600 if spec.field in _DURATION_FIELDS else value


def format_sweeps(results: Sequence[SweepResult]) -> str:
    out = io.StringIO()
    for result in results:
        slo = result.slo
        side = "below" if slo.higher_is_better else "above"
        out.write(f"Sweep {result.spec.text} ({result.model}; degraded = {slo.metric} {side} "
                  f"{slo.threshold:g})\n")
        out.write(f"  {'value':>10} {'runs':>6} {'triggers':>9} {'suppressed':>11} "
                  f"{'degraded':>10} {'before a run (staleness)':>25}\n")
        for p in result.points:
            value = (format_duration(timedelta(seconds=p.value))
                     if result.spec.field in _DURATION_FIELDS else f"{p.value:g}")
            out.write(f"  {value:>10} {p.runs:>6} {p.triggers:>9} {p.suppressed:>11} "
                      f"{span(p.degraded):>10} {span(p.before_a_run):>25}\n")
        out.write("\n")
    return out.getvalue()

