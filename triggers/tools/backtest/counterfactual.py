"""The counterfactual backtest: replay policies on a matrix of what each retrained model would
have scored, so every run launches a real successor and the report prices runs against loss.

MATRIX.csv has a row per (model, trained_through, window_end) and one column per metric. The
replay goes through the service's own decision code (`replay.Replay`: policies, guards, run
lifecycle on a MemoryStore); only the launcher is the matrix's: a run launched at t promotes,
from t + run duration, the model with the latest `trained_through` ≤ t.
"""

from __future__ import annotations

import csv
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline_client.launching.protocol import LaunchRequest, LaunchResult, RunStatus
from triggers.config import ModelConfig, ServiceConfig
from triggers.events import MetricEvent, parse_timestamp
from triggers.service import RetrainService
from triggers.state.protocol import iso
from triggers.tools.backtest.io import BacktestInputError, RowError
from triggers.tools.backtest.replay import (
    BacktestSettings,
    Replay,
    SimulatedLauncher,
    SimulatedRun,
)

DAY = 86_400.0
OPTIONAL_COLUMNS = ("window_start", "examples", "slice")
REQUIRED_COLUMNS = ("model", "trained_through", "window_end")
#: Fixed schedules compared with the policies: retrain every k days.
SCHEDULE_DAYS = (1, 2, 3, 4, 5, 7, 10, 14, 21, 30, 45, 60, 90, 120, 180)


# ----------------------------------------------------------------------------- the matrix
@dataclass(frozen=True)
class Window:
    """One evaluation window of the matrix: its end (and start, when the matrix says)."""

    end: float
    start: float | None
    slice: str


@dataclass
class ModelMatrix:
    """One model's matrix: its trained versions (by `trained_through`, ascending) and, per
    window, what each version scored."""

    model: str
    trained: list[float] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)
    scores: dict[tuple[float, float], Mapping[str, float]] = field(default_factory=dict)
    examples: dict[tuple[float, float], int | None] = field(default_factory=dict)
    _best: dict[tuple[str, bool], dict[float, float]] = field(default_factory=dict, repr=False)

    def version(self, trained_through: float) -> str:
        """The model_version the replay gives the model trained up to `trained_through`."""
        return "trained-" + datetime.fromtimestamp(trained_through, UTC).strftime(
            "%Y%m%dT%H%M%SZ")

    def successor(self, launched: float) -> float:
        """The `trained_through` of the model a run launched at `launched` promotes."""
        from bisect import bisect_right

        index = bisect_right(self.trained, launched) - 1
        return self.trained[max(index, 0)]

    def value(self, trained_through: float, window: Window, metric: str) -> float:
        scores = self.scores.get((trained_through, window.end))
        if scores is None or metric not in scores:
            raise BacktestInputError(
                "--counterfactual", f"no {metric} of {self.model} trained through "
                f"{iso(trained_through)} on the window ending {iso(window.end)}")
        return scores[metric]

    def best(self, window: Window, metric: str, higher_is_better: bool) -> float:
        """The best value any model of the matrix scored on `window`."""
        key = (metric, higher_is_better)
        table = self._best.get(key)
        if table is None:
            pick = max if higher_is_better else min
            table = self._best[key] = {}
            for (_, end), scores in self.scores.items():
                if metric in scores:
                    value = scores[metric]
                    table[end] = pick(table[end], value) if end in table else value
        return table[window.end]

    def length_days(self, index: int) -> float:
        """Window `index`'s length: end − start, else the gap since the previous window's end
        (the first: the median gap)."""
        window = self.windows[index]
        if window.start is not None:
            return (window.end - window.start) / DAY
        ends = [w.end for w in self.windows]
        gaps = [b - a for a, b in zip(ends, ends[1:], strict=False)]
        if index > 0:
            return (ends[index] - ends[index - 1]) / DAY
        return statistics.median(gaps) / DAY if gaps else 1.0


def _time(text: str, column: str) -> float:
    parsed = parse_timestamp(text.strip())
    if parsed is None:
        raise ValueError(f"{column} {text!r} is not RFC 3339 with an offset "
                         "(e.g. 2026-11-02T00:00:00Z)")
    return parsed.timestamp()


def read_matrix(path: str | Path) -> dict[str, ModelMatrix]:
    """Every model's matrix in `path`; a malformed row is an error naming its line."""
    source = str(path)
    try:
        handle = open(path, encoding="utf-8", newline="")
    except OSError as exc:
        raise BacktestInputError(source, f"cannot be read: {exc.strerror}") from None
    matrices: dict[str, ModelMatrix] = {}
    errors: list[RowError] = []
    with handle:
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or [])
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise BacktestInputError(source, f"missing column(s) {', '.join(missing)}; a "
                                     "matrix has model, trained_through, window_end and a "
                                     "column per metric")
        metrics = [c for c in columns if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
        if not metrics:
            raise BacktestInputError(source, "no metric column")
        windows: dict[str, dict[float, Window]] = {}
        for line, row in enumerate(reader, start=2):
            try:
                model = (row["model"] or "").strip()
                if not model:
                    raise ValueError("model is empty")
                trained = _time(row["trained_through"] or "", "trained_through")
                end = _time(row["window_end"] or "", "window_end")
                start_text = (row.get("window_start") or "").strip()
                start = _time(start_text, "window_start") if start_text else None
                if start is not None and start >= end:
                    raise ValueError("window_start is not before window_end")
                examples_text = (row.get("examples") or "").strip()
                examples = int(examples_text) if examples_text else None
                values: dict[str, float] = {}
                for metric in metrics:
                    text = (row.get(metric) or "").strip()
                    if text:
                        value = float(text)
                        if not math.isfinite(value):
                            raise ValueError(f"{metric} {text!r} is not a finite number")
                        values[metric] = value
            except ValueError as exc:
                errors.append(RowError(line, str(exc)))
                continue
            matrix = matrices.setdefault(model, ModelMatrix(model))
            key = (trained, end)
            if key in matrix.scores:
                errors.append(RowError(line, f"a second row for {model} trained through "
                                             f"{iso(trained)} on the window ending {iso(end)}"))
                continue
            matrix.scores[key] = values
            matrix.examples[key] = examples
            slice_ = (row.get("slice") or "").strip() or "overall"
            windows.setdefault(model, {}).setdefault(end, Window(end, start, slice_))
    if errors:
        raise BacktestInputError(source, f"{len(errors)} malformed row(s)", errors)
    if not matrices:
        raise BacktestInputError(source, "no rows")
    for model, matrix in matrices.items():
        matrix.trained = sorted({trained for trained, _ in matrix.scores})
        matrix.windows = [windows[model][end] for end in sorted(windows[model])]
    return matrices


# ----------------------------------------------------------------------------- the replay
class MatrixLauncher(SimulatedLauncher):
    """Runs end `run_duration` after launch, promoting the model of the matrix with the latest
    `trained_through` ≤ the launch time."""

    def __init__(self, clock: Callable[[], float], run_duration: float,
                 matrix: ModelMatrix) -> None:
        super().__init__(clock, run_duration, promote=True)
        self.matrix = matrix

    def submit(self, request: LaunchRequest) -> LaunchResult:
        existed = request.run_id in self.runs
        if not existed:
            now = self.clock()
            successor = self.matrix.version(self.matrix.successor(now))
            self.runs[request.run_id] = SimulatedRun(request, now, now + self.run_duration,
                                                     successor)
        return LaunchResult(request.run_id, f"counterfactual/{request.run_id}", existed)

    def get_status(self, run_id: str) -> RunStatus:
        run = self.runs.get(run_id)
        if run is None or self.clock() < run.ends_at:
            return super().get_status(run_id)
        return RunStatus("succeeded", {
            "decision": "promoted", "champion_version": run.champion_version,
            "report": {"summary": f"counterfactual: {run.champion_version} from the matrix"}})


class CounterfactualReplay(Replay):
    """A `Replay` whose events are written as it goes: each window's metrics are those of
    whichever model is in production then, as the service's own state says."""

    def __init__(self, config: ServiceConfig, matrix: ModelMatrix, run_duration: float) -> None:
        super().__init__(config, BacktestSettings(run_duration))
        self.matrix = matrix
        self.launcher = MatrixLauncher(self.clock, run_duration, matrix)
        self.service = RetrainService(config, self.store, self.launcher, clock=self.clock)
        self.production: list[float] = []
        """Per window of the matrix, the `trained_through` of the model in production."""

    def play(self, model: ModelConfig) -> None:
        import logging

        service_logger = logging.getLogger("retrain")
        level = service_logger.level
        service_logger.setLevel(logging.ERROR)  # simulated launches are not log news
        try:
            self._play(model)
        finally:
            service_logger.setLevel(level)

    def _play(self, model: ModelConfig) -> None:
        by_version = {self.matrix.version(t): t for t in self.matrix.trained}
        first = self.matrix.trained[0]
        for line, window in enumerate(self.matrix.windows, start=1):
            now = window.end
            self.clock.now = now
            if self.store.in_flight_runs(model.name):
                self._absorb(model, self.service.refresh_runs(model, now))
            champion = self._state(model.name).champion_version
            trained = by_version.get(champion or "", first)
            scores = self.matrix.scores.get((trained, window.end))
            self.production.append(trained)
            if not scores:
                raise BacktestInputError(
                    "--counterfactual", f"no row of {model.name} trained through "
                    f"{iso(trained)} (in production) on the window ending {iso(window.end)}")
            event = MetricEvent(
                model.name, dict(scores), datetime.fromtimestamp(now, UTC),
                self.matrix.version(trained),
                datetime.fromtimestamp(window.start, UTC) if window.start is not None else None,
                self.matrix.examples.get((trained, window.end)), window.slice)
            self._replay(now, line, event)
        self.first_time = self.matrix.windows[0].end
        self.last_time = self.matrix.windows[-1].end


# ----------------------------------------------------------------------------- costs
@dataclass(frozen=True)
class Costs:
    """What the two costs are and which metric they price."""

    retrain_cost: float
    loss_per_unit_day: float
    metric: str
    higher_is_better: bool


@dataclass(frozen=True)
class Outcome:
    """One way of deciding (a policy set, never retraining, or a fixed schedule): its runs,
    the mean production metric, the staleness loss and the total cost."""

    name: str
    runs: int
    mean_metric: float
    loss: float
    total_cost: float
    schedule_days: float | None = None
    best_in_hindsight: bool = False
    launched: tuple[float, ...] = ()


def price(matrix: ModelMatrix, production: Sequence[float], launches: Sequence[float],
          costs: Costs, name: str, schedule_days: float | None = None) -> Outcome:
    """runs × retrain_cost + loss_per_unit_day × Σ window days × (best − production)."""
    loss, values = 0.0, []
    sign = 1.0 if costs.higher_is_better else -1.0
    for index, (window, trained) in enumerate(zip(matrix.windows, production, strict=True)):
        value = matrix.value(trained, window, costs.metric)
        best = matrix.best(window, costs.metric, costs.higher_is_better)
        values.append(value)
        loss += matrix.length_days(index) * sign * (best - value)
    loss *= costs.loss_per_unit_day
    return Outcome(name, len(launches), math.fsum(values) / len(values), loss,
                   len(launches) * costs.retrain_cost + loss, schedule_days,
                   launched=tuple(launches))


def schedule(matrix: ModelMatrix, every_days: float | None, run_duration: float,
             costs: Costs) -> Outcome:
    """A fixed schedule (a run every `every_days` from the first window; None: never)."""
    first, last = matrix.windows[0].end, matrix.windows[-1].end
    launches: list[float] = []
    if every_days is not None:
        step, at = every_days * DAY, first + every_days * DAY
        while at <= last:
            launches.append(at)
            at += step
    production, current, pending = [], matrix.trained[0], 0
    for window in matrix.windows:
        while pending < len(launches) and launches[pending] + run_duration <= window.end:
            current = matrix.successor(launches[pending])
            pending += 1
        production.append(current)
    name = "never retrain" if every_days is None else f"every {every_days:g} days"
    return price(matrix, production, launches, costs, name, every_days)


def baselines(matrix: ModelMatrix, run_duration: float, costs: Costs) -> list[Outcome]:
    """Never retraining, then every fixed schedule of the grid shorter than the replay; the
    cheapest of them all marked best in hindsight."""
    span = (matrix.windows[-1].end - matrix.windows[0].end) / DAY
    outcomes = [schedule(matrix, None, run_duration, costs)]
    outcomes += [schedule(matrix, k, run_duration, costs) for k in SCHEDULE_DAYS if k < span]
    best = min(range(len(outcomes)), key=lambda i: outcomes[i].total_cost)
    outcomes[best] = Outcome(**{**asdict(outcomes[best]), "best_in_hindsight": True})
    return outcomes


def costs_for(model: ModelConfig, retrain_cost: float | None = None,
              loss_per_unit_day: float | None = None, metric: str | None = None) -> Costs:
    """The model's costs: its first `cost` policy's, unless given."""
    policy = next((p for p in model.policies if p.spec.cost is not None), None)
    if policy is not None and policy.spec.cost is not None:
        retrain_cost = policy.spec.cost.retrain_cost if retrain_cost is None else retrain_cost
        if loss_per_unit_day is None:
            loss_per_unit_day = policy.spec.cost.loss_per_unit_day
    if retrain_cost is None or loss_per_unit_day is None:
        raise BacktestInputError(
            "--retrain-cost" if retrain_cost is None else "--loss-per-unit-day",
            f"model {model.name!r} has no cost policy: set --retrain-cost and "
            "--loss-per-unit-day")
    if metric is None:
        chosen = policy or (model.policies[0] if model.policies else None)
        if chosen is None:
            raise BacktestInputError("--metric", f"model {model.name!r} has no policy: set "
                                                 "--metric")
        metric, direction = chosen.metric, chosen.higher_is_better
    else:
        same = next((p for p in model.policies if p.metric == metric), None)
        if same is None:
            raise BacktestInputError("--metric", f"no policy of {model.name!r} reads {metric}")
        direction = same.higher_is_better
    return Costs(retrain_cost, loss_per_unit_day, metric, direction)


@dataclass
class ModelReport:
    """One model's counterfactual backtest: per policy set and per baseline."""

    model: str
    costs: Costs
    windows: int
    policies: list[Outcome]
    baselines: list[Outcome]
    elapsed: float


@dataclass
class CounterfactualReport:
    policy_file: str
    matrix: str
    run_duration: float
    runs: list[dict[str, Any]]
    models: list[ModelReport]
    elapsed: float

    def to_json(self) -> dict[str, Any]:
        def outcome(o: Outcome) -> dict[str, Any]:
            data = asdict(o)
            data["launched"] = [iso(t) for t in o.launched]
            return data

        return {
            "policy_file": self.policy_file, "matrix": self.matrix,
            "run_duration": self.run_duration, "runs": self.runs,
            "runs_count": len(self.runs), "elapsed": self.elapsed,
            "models": [{"model": m.model, "costs": asdict(m.costs), "windows": m.windows,
                        "policies": [outcome(o) for o in m.policies],
                        "baselines": [outcome(o) for o in m.baselines],
                        "elapsed": m.elapsed} for m in self.models],
        }


def replay_model(config: ServiceConfig, model: str, matrix: ModelMatrix, run_duration: float,
                 costs: Costs, name: str = "all policies"
                 ) -> tuple[Outcome, CounterfactualReplay]:
    """The policies of `model` in `config`, replayed on its matrix and priced."""
    replay = CounterfactualReplay(config, matrix, run_duration)
    replay.play(config.models[model])
    launches = sorted(run.launched_at for run in replay.launcher.runs.values())
    return price(matrix, replay.production, launches, costs, name), replay


def counterfactual(config: ServiceConfig, matrices: Mapping[str, ModelMatrix],
                   run_duration: float, policy_file: str = "", matrix_file: str = "",
                   retrain_cost: float | None = None, loss_per_unit_day: float | None = None,
                   metric: str | None = None) -> CounterfactualReport:
    """Each configured model of the matrix: its policies together, each alone (when more
    than one), and the baselines."""
    from dataclasses import replace

    started = time.perf_counter()
    models = [m for m in sorted(matrices) if m in config.models]
    if not models:
        raise BacktestInputError(matrix_file or "--counterfactual",
                                 "no model of the matrix is configured in the policy file")
    runs: list[dict[str, Any]] = []
    reports = []
    for name in models:
        model_started = time.perf_counter()
        model, matrix = config.models[name], matrices[name]
        costs = costs_for(model, retrain_cost, loss_per_unit_day, metric)
        together, replay = replay_model(config, name, matrix, run_duration, costs)
        for run in sorted(replay.store.runs(name, limit=1_000_000),
                          key=lambda r: (r.created_at, r.run_id)):
            runs.append({"run_id": run.run_id, "model": name, "policy": run.policy,
                         "launched": iso(run.created_at), "state": run.state,
                         "promoted": replay.launcher.runs[run.run_id].champion_version
                         if run.run_id in replay.launcher.runs else None})
        outcomes = [together]
        if len(model.policies) > 1:
            for policy in model.policies:
                alone = replace(config, models={**config.models,
                                                name: replace(model, policies=(policy,))})
                outcomes.append(replay_model(alone, name, matrix, run_duration, costs,
                                             policy.name)[0])
        reports.append(ModelReport(name, costs, len(matrix.windows), outcomes,
                                   baselines(matrix, run_duration, costs),
                                   time.perf_counter() - model_started))
    return CounterfactualReport(policy_file, matrix_file, run_duration, runs, reports,
                                time.perf_counter() - started)


def format_counterfactual(report: CounterfactualReport) -> str:
    lines = []
    for m in report.models:
        c = m.costs
        lines.append(f"{m.model}: {m.windows} windows; one run {c.retrain_cost:g}, "
                     f"{c.metric} 1.0 worse for a day {c.loss_per_unit_day:g}")
        lines.append(f"  {'':28} {'runs':>5} {'mean ' + c.metric:>16} {'loss':>12} "
                     f"{'total cost':>12}")
        for o in (*m.policies, *m.baselines):
            mark = "  ← best in hindsight" if o.best_in_hindsight else ""
            lines.append(f"  {o.name:28} {o.runs:5d} {o.mean_metric:16.4f} {o.loss:12.1f} "
                         f"{o.total_cost:12.1f}{mark}")
    return "\n".join(lines) + "\n"


def plot_counterfactual(report: CounterfactualReport, path: str | Path) -> Path:
    """The seed's figure: runs against total cost, a point per policy set, the schedules as
    a line (labelled by days), never retraining, the best in hindsight circled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(report.models), figsize=(7 * len(report.models), 5),
                             squeeze=False)
    for ax, m in zip(axes[0], report.models, strict=True):
        fixed = [o for o in m.baselines if o.schedule_days is not None]
        ax.plot([o.runs for o in fixed], [o.total_cost for o in fixed], "o-", color="0.6",
                label="fixed schedule (every k days)")
        for o in fixed:
            ax.annotate(f"{o.schedule_days:g}d", (o.runs, o.total_cost), fontsize=7,
                        xytext=(3, 3), textcoords="offset points", color="0.4")
        never = m.baselines[0]
        ax.plot([never.runs], [never.total_cost], "s", color="black", label="never retrain")
        for o in m.policies:
            ax.plot([o.runs], [o.total_cost], "*", markersize=14, label=o.name)
        best = next(o for o in m.baselines if o.best_in_hindsight)
        ax.plot([best.runs], [best.total_cost], "o", markersize=16, mfc="none", color="red",
                label=f"best in hindsight ({best.name})")
        ax.set_xlabel("runs")
        ax.set_ylabel("total cost (runs × run cost + staleness loss)")
        ax.set_title(f"{m.model}: {m.costs.metric}, one run {m.costs.retrain_cost:g}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    target = Path(path)
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target


def parse_run_duration(text: str) -> float:
    from thresholds.durations import parse_duration

    seconds = parse_duration(text).total_seconds()
    if seconds <= 0:
        raise BacktestInputError("--run-duration", "must be longer than 0s")
    return seconds


def run_command(args: Any) -> int:
    """`retrain-trigger backtest --counterfactual MATRIX.csv`: 0 when done, 2 on bad input."""
    import json
    import sys

    from triggers.config import load_policy_file
    from triggers.errors import RetrainError

    try:
        for option in ("history", "sweep", "assume_recovery", "slo"):
            if getattr(args, option, None):
                raise BacktestInputError("--" + option.replace("_", "-"),
                                         "does not apply with --counterfactual")
        config = load_policy_file(args.policies)
        run_duration = parse_run_duration(args.run_duration)
        for option, path in (("--output", args.output), ("--plot", args.plot)):
            if path is not None and not Path(path).resolve().parent.is_dir():
                raise BacktestInputError(option, f"{path}: its directory does not exist")
        matrices = read_matrix(args.counterfactual)
        if args.model is not None:
            if args.model not in config.models:
                raise BacktestInputError("--model", f"model {args.model!r} is not configured")
            matrices = {k: v for k, v in matrices.items() if k == args.model}
        report = counterfactual(config, matrices, run_duration, args.policies,
                                args.counterfactual, args.retrain_cost,
                                args.loss_per_unit_day, args.metric)
    except BacktestInputError as exc:
        print(f"retrain-trigger backtest: {exc}", file=sys.stderr)
        for row in exc.rows[:50]:
            print(f"  {row}", file=sys.stderr)
        return 2
    except (RetrainError, ValueError) as exc:
        print(f"retrain-trigger backtest: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(format_counterfactual(report))
    if args.output:
        Path(args.output).write_text(
            json.dumps({"backtest": report.to_json()}, indent=1) + "\n", encoding="utf-8")
        print(f"written: {args.output}")
    if args.plot:
        print(f"plot: {plot_counterfactual(report, args.plot)}")
    return 0
