"""Backtest input and output: reading a metric history (rows checked like live events), the
CSV/JSON outputs, and the progress bar.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from triggers.config import ServiceConfig
from triggers.errors import InvalidEventError, RetrainError
from triggers.events import MetricEvent, fast_event
from triggers.state.protocol import iso

if TYPE_CHECKING:
    from triggers.tools.backtest.report import BacktestReport
    from triggers.tools.backtest.sweep import SweepResult


class BacktestInputError(RetrainError):
    """The history, the policy file or an option cannot be used; `source` names which."""

    def __init__(self, source: str, reason: str, rows: Sequence[RowError] = ()) -> None:
        self.source = source
        self.reason = reason
        self.rows = list(rows)
        super().__init__(f"{source}: {reason}")


# ----------------------------------------------------------------------------- history
@dataclass(frozen=True)
class RowError:
    """A history line that was left out, and why."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass
class History:
    """The events of a history file (with their first line), and the lines left out."""

    events: list[tuple[int, MetricEvent]]
    errors: list[RowError]
    other_models: int = 0


def read_history(path: str | Path, config: ServiceConfig, model: str | None = None) -> History:
    """Every well-formed event of a JSONL or CSV history (the formats `publish` reads) of the
    configured models (or of `model` only); malformed lines are listed in `errors`."""
    from triggers.event_files import read_events

    errors: list[RowError] = []
    events: list[tuple[int, MetricEvent]] = []
    other = 0
    try:
        rows = list(read_events(path, skip=lambda line, why: errors.append(RowError(line, why))))
    except (OSError, ValueError) as exc:
        raise BacktestInputError(str(path), str(exc)) from None
    for line, data in rows:
        try:
            event = fast_event(data) or _validated_event(data)
        except InvalidEventError as exc:
            errors.append(RowError(line, f"{exc.field}: {exc.reason}"))
            continue
        if model is not None and event.model != model:
            other += 1
        elif event.model not in config.models:
            errors.append(RowError(line, f"model: {event.model!r} is not configured in the "
                                         "policy file"))
        else:
            events.append((line, event))
    errors.sort(key=lambda error: error.line)
    return History(events, errors, other)


def _validated_event(data: Mapping[str, Any]) -> MetricEvent:
    from triggers.event_schema import validate_event

    return validate_event(data)


TRIGGER_COLUMNS = ("kind", "time", "model", "policy", "metric", "run_id",
                   "detection_delay_seconds", "lead_time_seconds", "simulated", "reason")


SWEEP_COLUMNS = ("sweep", "model", "policy", "field", "value", "runs", "triggers",
                 "suppressed", "degraded_seconds", "before_a_run_seconds", "slo_metric",
                 "slo_threshold")


def write_output(path: str | Path, report: BacktestReport | None,
                 sweeps: Sequence[SweepResult] = ()) -> Path:
    """Write the report (and sweeps) as JSON or CSV, chosen by the file's extension."""
    target = Path(path)
    kind: Literal["json", "csv"] = "csv" if target.suffix.lower() == ".csv" else "json"
    if kind == "json":
        data: dict[str, Any] = {}
        if report is not None:
            data["backtest"] = report.to_json()
        if sweeps:
            data["sweeps"] = [result.to_json() for result in sweeps]
        target.write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
        return target
    with open(target, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        if sweeps:
            writer.writerow(SWEEP_COLUMNS)
            for result in sweeps:
                for p in result.points:
                    writer.writerow([result.spec.text, result.model, result.spec.policy,
                                     result.spec.field, p.value, p.runs, p.triggers,
                                     p.suppressed, p.degraded, p.before_a_run,
                                     result.slo.metric, result.slo.threshold])
        elif report is not None:
            writer.writerow(TRIGGER_COLUMNS)
            rows: list[tuple[float, list[Any]]] = [
                (t.time, [t.kind, iso(t.time), t.model, t.policy, t.metric, t.run_id or "",
                          t.detection_delay, t.lead_time, t.simulated, t.reason])
                for t in report.triggers]
            rows += [(s.time, ["suppressed", iso(s.time), s.model, s.policy, "", "", "", "",
                               "", s.reason]) for s in report.suppressed]
            for _, row in sorted(rows, key=lambda item: item[0]):
                writer.writerow(["" if v is None else v for v in row])
    return target


class ProgressBar:
    """A one-line progress bar on stderr, drawn only when it is a terminal or when asked."""

    def __init__(self, total: int, label: str, enabled: bool | None = None) -> None:
        self.total = total
        self.label = label
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._drawn = 0.0

    def __call__(self, done: int) -> None:
        if not self.enabled or not self.total:
            return
        now = time.monotonic()
        if done < self.total and now - self._drawn < 0.1:
            return
        self._drawn = now
        width = 30
        filled = min(width, int(width * done / self.total))
        sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] "
                         f"{done:,}/{self.total:,}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.total:
            sys.stderr.write("\n")
            sys.stderr.flush()

