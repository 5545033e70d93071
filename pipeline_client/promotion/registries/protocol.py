"""The ModelRegistry contract: a registered ModelVersion, the two aliases, the errors, and the
checks and alias moves every registry shares.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pipeline_client.errors import RetrainError, TransientError

CHAMPION = "champion"
PREVIOUS = "previous"
MAX_MODEL_NAME_LENGTH = 128
VERSION_ID = re.compile(r"[1-9][0-9]{0,17}")

# --- data --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelVersion:
    """One registered version: where its artifact is, its metrics and the aliases it holds now.

    `artifact_uri` is a gs:// URI for Vertex, the copied file or directory's absolute local path
    for the local registry, and whatever was registered for the in-memory one.
    """

    model: str
    version: str
    artifact_uri: str
    metrics: dict[str, float] = field(default_factory=dict)
    created: float = 0.0  # seconds since the epoch
    aliases: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def is_champion(self) -> bool:
        return CHAMPION in self.aliases

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["aliases"] = list(self.aliases)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


@dataclass(frozen=True)
class Aliases:
    """Which version holds `champion` and which holds `previous` (None: no version)."""

    champion: str | None = None
    previous: str | None = None

    def of(self, version: str) -> tuple[str, ...]:
        return tuple(
            alias
            for alias, holder in ((CHAMPION, self.champion), (PREVIOUS, self.previous))
            if holder == version
        )


# --- errors ------------------------------------------------------------------------------------


class RegistryError(RetrainError):
    """A registry operation on `model` (and `version`, when one is concerned) failed."""

    def __init__(self, model: str, reason: str, version: str | None = None) -> None:
        self.model = model
        self.version = version
        self.reason = reason
        where = f"model {model!r}" + (f" version {version!r}" if version is not None else "")
        super().__init__(f"{where}: {reason}")


class InvalidModelNameError(RegistryError):
    """The model name is empty, too long, or could name a path outside the registry."""


class InvalidRegistrationError(RegistryError):
    """`register` got an unusable artifact, metric or metadata entry."""


class VersionNotFoundError(RegistryError):
    """The model has no such version."""


class NoPreviousVersionError(RegistryError):
    """`rollback` has nothing to go back to (no champion, or no distinct previous version)."""


class ChampionChangedError(RegistryError):
    """The champion is not the one the caller compared against: promoting now would replace a
    model the challenger never beat."""


class RegistryUnavailableError(RegistryError, TransientError):
    """The registry service is unreachable or overloaded right now; a retry may succeed."""


class RegistryUriError(RetrainError):
    """`open_registry` got a URI it cannot open."""

    def __init__(self, uri: str, reason: str) -> None:
        self.uri = uri
        self.reason = reason
        super().__init__(f"registry URI {uri!r}: {reason}")


# --- the contract ------------------------------------------------------------------------------


class ModelRegistry(Protocol):
    """Versions of models, numbered by the registry, and two aliases moved by promote/rollback.

    `promote(model, v)`: `champion` moves to v and `previous` to the old champion (nothing moves
    if v is the champion already); with `expected_champion` ("" for none) it refuses with
    ChampionChangedError unless the champion is still that one. `rollback(model)` swaps them.
    At most one version of a model holds each alias at any moment. Failures raise
    `RegistryError` subclasses; a transient one is also a `TransientError`.
    """

    name: str

    def register(
        self,
        model: str,
        artifact: str | Path,
        metrics: Mapping[str, float],
        metadata: Mapping[str, str] | None = None,
    ) -> ModelVersion: ...

    def get(self, model: str, version: str) -> ModelVersion | None: ...

    def champion(self, model: str) -> ModelVersion | None: ...

    def previous(self, model: str) -> ModelVersion | None: ...

    def versions(self, model: str) -> list[ModelVersion]: ...

    def promote(
        self, model: str, version: str, expected_champion: str | None = None
    ) -> ModelVersion: ...

    def rollback(self, model: str) -> ModelVersion: ...


def validate_model_name(model: object) -> str:
    """The name, if it is safe as one path segment under any root; else InvalidModelNameError."""
    if not isinstance(model, str):
        raise InvalidModelNameError(repr(model), "a model name must be a string")
    if not model:
        raise InvalidModelNameError(model, "a model name cannot be empty")
    if len(model) > MAX_MODEL_NAME_LENGTH:
        raise InvalidModelNameError(model, f"longer than {MAX_MODEL_NAME_LENGTH} characters")
    if model.startswith("."):
        raise InvalidModelNameError(model, "a model name cannot start with '.'")
    if "/" in model or "\\" in model:
        raise InvalidModelNameError(model, "a model name cannot contain '/' or '\\'")
    if any(ord(char) < 32 or 127 <= ord(char) < 160 for char in model):
        raise InvalidModelNameError(model, "a model name cannot contain control characters")
    return model


def valid_metrics(model: str, metrics: Mapping[str, float]) -> dict[str, float]:
    checked: dict[str, float] = {}
    for name, value in metrics.items():
        if not isinstance(name, str) or not name:
            raise InvalidRegistrationError(model, f"metric name {name!r} is not a string")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidRegistrationError(model, f"metric {name} is not a number: {value!r}")
        if not math.isfinite(value):
            raise InvalidRegistrationError(model, f"metric {name} is not finite: {value!r}")
        checked[name] = float(value)
    return checked


def valid_metadata(model: str, metadata: Mapping[str, str] | None) -> dict[str, str]:
    checked: dict[str, str] = {}
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidRegistrationError(model, f"metadata {key!r}: keys and values are str")
        checked[key] = value
    return checked


def promoted_aliases(aliases: Aliases, version: str) -> Aliases | None:
    """The aliases after promoting `version`; None when it is the champion already."""
    if aliases.champion == version:
        return None
    if aliases.champion is not None:
        return Aliases(champion=version, previous=aliases.champion)
    previous = aliases.previous if aliases.previous != version else None
    return Aliases(champion=version, previous=previous)


def check_expected(
    model: str, version: str, current: str | None, expected: str | None
) -> None:
    """Refuse a promotion against a champion other than the one the challenger was compared
    with (`expected`: None = no check, "" = there was no champion)."""
    if expected is None or current == version:
        return
    if (current or "") != expected:
        raise ChampionChangedError(
            model, f"the champion is now {current or 'none'}, not {expected or 'none'} that "
            f"version {version} was compared with; evaluate again", version)


def rolled_back_aliases(model: str, aliases: Aliases) -> Aliases:
    """The aliases after a rollback: champion and previous swapped."""
    if aliases.champion is None:
        raise NoPreviousVersionError(model, "there is no champion to roll back")
    if aliases.previous is None or aliases.previous == aliases.champion:
        raise NoPreviousVersionError(
            model, f"champion {aliases.champion} has no previous version to roll back to"
        )
    return Aliases(champion=aliases.previous, previous=aliases.champion)
