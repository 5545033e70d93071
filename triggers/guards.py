"""Guards against too many runs: one in flight, cooldown, budget per sliding window.

The settings (`Guards`, from the policy file) and `check_guards`, a pure rule of the decision
core over a model's recent runs, which every store applies inside its claim transaction (so
it sits beneath the stores in the layer order and imports none of them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any, Protocol

from thresholds.durations import format_duration, parse_duration
from thresholds.records import record


@record
class Guards:
    """Resolved guards of one model."""

    cooldown: timedelta = timedelta(hours=24)
    max_runs: int = 3
    max_runs_per: timedelta = timedelta(days=7)
    skip_if_running: bool = True
    run_timeout: timedelta = timedelta(hours=24)

    def merged(self, data: Mapping[str, Any] | None) -> Guards:
        """These guards with the fields `data` (validated, as written) sets replaced."""
        if not data:
            return self
        max_runs = data.get("max_runs")
        return Guards(
            cooldown=_duration(data.get("cooldown"), self.cooldown),
            max_runs=max_runs["count"] if max_runs else self.max_runs,
            max_runs_per=parse_duration(max_runs["per"]) if max_runs else self.max_runs_per,
            skip_if_running=(
                data["skip_if_running"]
                if data.get("skip_if_running") is not None
                else self.skip_if_running
            ),
            run_timeout=_duration(data.get("run_timeout"), self.run_timeout),
        )


class GuardedRun(Protocol):
    """What the guards read of a run (a store's `RunRecord`)."""

    @property
    def run_id(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def created_at(self) -> float: ...
    @property
    def in_flight(self) -> bool: ...


def _duration(value: Any, default: timedelta) -> timedelta:
    return default if value is None else parse_duration(value)


def guard_window(guards: Guards) -> float:
    """How far back (seconds) a store must look at runs to check these guards."""
    return max(guards.cooldown, guards.max_runs_per).total_seconds()


def check_guards(runs: Iterable[GuardedRun], guards: Guards, now: float, force: bool) -> str | None:
    """Why a new run of this model is blocked now, or None when it may launch.

    `runs` must hold every in-flight run of the model and every run created within
    `guard_window(guards)` seconds before `now`. `force` passes cooldown and budget but
    never a run in flight.
    """
    runs = list(runs)
    in_flight = [r for r in runs if r.in_flight]
    if in_flight and (guards.skip_if_running or force):
        run = in_flight[0]
        return f"run {run.run_id} is still in flight ({run.state}); policies are disarmed"
    if force:
        return None
    started = sorted((r.created_at for r in runs), reverse=True)
    cooldown = guards.cooldown.total_seconds()
    if started and now - started[0] < cooldown:
        left = cooldown - (now - started[0])
        return (
            f"cooldown: last run started {format_seconds(now - started[0])} ago, "
            f"cooldown is {format_duration(guards.cooldown)} ({format_seconds(left)} left)"
        )
    window = guards.max_runs_per.total_seconds()
    recent = [t for t in started if now - t < window]
    if len(recent) >= guards.max_runs:
        return (
            f"budget: {len(recent)} runs in the last {format_duration(guards.max_runs_per)}, "
            f"max_runs is {guards.max_runs}"
        )
    return None


def format_seconds(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds >= 86400:
        return f"{seconds / 86400:.1f}d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    if seconds >= 60:
        return f"{seconds / 60:.0f}m"
    return f"{seconds:.0f}s"
