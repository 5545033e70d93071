"""What `GET /models/{model}` answers: a model's champion, guards, run in flight and latest
points, runs and decisions, read from the store as they are now."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from triggers.errors import ModelNotConfiguredError
from triggers.state.protocol import iso

if TYPE_CHECKING:
    from triggers.service.event_path import RetrainService


def model_status(service: RetrainService, model_name: str) -> dict[str, Any]:
    """The model's status (`ModelNotConfiguredError` if the policy file has no such model)."""
    model = service.config.models.get(model_name)
    if model is None:
        raise ModelNotConfiguredError(model_name)
    store = service.store
    state = store.model_state(model.name)
    in_flight = store.in_flight_runs(model.name)
    guards = model.guards
    return {
        "model": model.name,
        "champion_version": state.champion_version,
        "history_start": iso(state.history_start),
        "armed": not in_flight,
        "run_in_flight": in_flight[0].to_json() if in_flight else None,
        "policies": [p.spec.to_dict() for p in model.policies],
        "guards": {
            "cooldown_seconds": guards.cooldown.total_seconds(),
            "max_runs": guards.max_runs,
            "max_runs_per_seconds": guards.max_runs_per.total_seconds(),
            "skip_if_running": guards.skip_if_running,
            "run_timeout_seconds": guards.run_timeout.total_seconds(),
        },
        "latest_points": [p.to_json() for p in store.latest_points(model.name, 20)],
        "recent_runs": [r.to_json() for r in store.runs(model.name, limit=10)],
        "last_decisions": [d.to_json() for d in store.decisions(model.name, limit=20)],
    }
