"""The shipped fake registry: the ModelRegistry contract in a dict, for tests and `memory://`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

from pipeline_client.promotion.registries.protocol import (
    Aliases,
    ModelVersion,
    VersionNotFoundError,
    check_expected,
    promoted_aliases,
    rolled_back_aliases,
    valid_metadata,
    valid_metrics,
    validate_model_name,
)


class InMemoryRegistry:
    """The shipped fake: the same contract in a dict; `artifact` is kept as given, not copied."""

    name = "memory"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._versions: dict[str, dict[str, ModelVersion]] = {}
        self._aliases: dict[str, Aliases] = {}
        self._lock = threading.Lock()

    def register(
        self,
        model: str,
        artifact: str | Path,
        metrics: Mapping[str, float],
        metadata: Mapping[str, str] | None = None,
    ) -> ModelVersion:
        validate_model_name(model)
        checked_metrics = valid_metrics(model, metrics)
        checked_metadata = valid_metadata(model, metadata)
        with self._lock:
            versions = self._versions.setdefault(model, {})
            version = ModelVersion(
                model=model,
                version=str(len(versions) + 1),
                artifact_uri=str(artifact),
                metrics=checked_metrics,
                created=self._clock(),
                metadata=checked_metadata,
            )
            versions[version.version] = version
            return version

    def get(self, model: str, version: str) -> ModelVersion | None:
        validate_model_name(model)
        with self._lock:
            return self._with_aliases(model, version)

    def champion(self, model: str) -> ModelVersion | None:
        validate_model_name(model)
        with self._lock:
            holder = self._aliases.get(model, Aliases()).champion
            return self._with_aliases(model, holder) if holder else None

    def previous(self, model: str) -> ModelVersion | None:
        validate_model_name(model)
        with self._lock:
            holder = self._aliases.get(model, Aliases()).previous
            return self._with_aliases(model, holder) if holder else None

    def versions(self, model: str) -> list[ModelVersion]:
        validate_model_name(model)
        with self._lock:
            found = [self._with_aliases(model, v) for v in self._versions.get(model, {})]
            return sorted((v for v in found if v is not None), key=lambda v: int(v.version))

    def promote(
        self, model: str, version: str, expected_champion: str | None = None
    ) -> ModelVersion:
        validate_model_name(model)
        with self._lock:
            if version not in self._versions.get(model, {}):
                raise VersionNotFoundError(model, "no such version to promote", version)
            aliases = self._aliases.get(model, Aliases())
            check_expected(model, version, aliases.champion, expected_champion)
            changed = promoted_aliases(aliases, version)
            if changed is not None:
                self._aliases[model] = changed
            promoted = self._with_aliases(model, version)
            assert promoted is not None
            return promoted

    def rollback(self, model: str) -> ModelVersion:
        validate_model_name(model)
        with self._lock:
            changed = rolled_back_aliases(model, self._aliases.get(model, Aliases()))
            self._aliases[model] = changed
            assert changed.champion is not None
            champion = self._with_aliases(model, changed.champion)
            assert champion is not None
            return champion

    def _with_aliases(self, model: str, version: str) -> ModelVersion | None:
        stored = self._versions.get(model, {}).get(version)
        if stored is None:
            return None
        return replace(stored, aliases=self._aliases.get(model, Aliases()).of(version))


# --- local file system -------------------------------------------------------------------------
