"""Model registries: numbered versions of a model and the `champion`/`previous` aliases.

In memory (tests), on a local file system (crash-safe alias moves) or Vertex AI Model Registry.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote, urlsplit

from pipeline_client.errors import RetrainError, TransientError

if TYPE_CHECKING:
    from google.cloud.aiplatform_v1 import Model, ModelServiceClient

CHAMPION = "champion"
PREVIOUS = "previous"
MAX_MODEL_NAME_LENGTH = 128
VERSION_FILE = "version.json"
ALIASES_FILE = "aliases.json"
# The steps a LocalModelRegistry reports to its `fault` hook, in the order it reaches them.
REGISTER_STEPS = ("after-copy", "after-version-file", "after-publish")
ALIAS_STEPS = (
    "before-alias-write",
    "after-temp-write",
    "after-temp-fsync",
    "after-alias-replace",
    "after-dir-fsync",
)
DEFAULT_TIMEOUT_SECONDS = 30.0
UPLOAD_TIMEOUT_SECONDS = 600.0
MANAGED_BY_LABEL = ("managed-by", "retrain-trigger")
VERTEX_ENDPOINT_VARIABLE = "RETRAIN_VERTEX_ENDPOINT"

_VERSION_ID = re.compile(r"[1-9][0-9]{0,17}")
_VERTEX_MODEL_ID = re.compile(r"[a-z_][a-z0-9_-]{0,62}")
_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
_VERTEX_URI = re.compile(
    r"vertex://projects/(?P<project>[^/?#]+)/locations/(?P<location>[^/?#]+)/?"
)


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
class _Aliases:
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


def _checked_metrics(model: str, metrics: Mapping[str, float]) -> dict[str, float]:
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


def _checked_metadata(model: str, metadata: Mapping[str, str] | None) -> dict[str, str]:
    checked: dict[str, str] = {}
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidRegistrationError(model, f"metadata {key!r}: keys and values are str")
        checked[key] = value
    return checked


def _promoted(aliases: _Aliases, version: str) -> _Aliases | None:
    """The aliases after promoting `version`; None when it is the champion already."""
    if aliases.champion == version:
        return None
    if aliases.champion is not None:
        return _Aliases(champion=version, previous=aliases.champion)
    previous = aliases.previous if aliases.previous != version else None
    return _Aliases(champion=version, previous=previous)


def _check_expected(
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


def _rolled_back(model: str, aliases: _Aliases) -> _Aliases:
    """The aliases after a rollback: champion and previous swapped."""
    if aliases.champion is None:
        raise NoPreviousVersionError(model, "there is no champion to roll back")
    if aliases.previous is None or aliases.previous == aliases.champion:
        raise NoPreviousVersionError(
            model, f"champion {aliases.champion} has no previous version to roll back to"
        )
    return _Aliases(champion=aliases.previous, previous=aliases.champion)


# --- in memory ---------------------------------------------------------------------------------


class InMemoryRegistry:
    """The shipped fake: the same contract in a dict; `artifact` is kept as given, not copied."""

    name = "memory"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._versions: dict[str, dict[str, ModelVersion]] = {}
        self._aliases: dict[str, _Aliases] = {}
        self._lock = threading.Lock()

    def register(
        self,
        model: str,
        artifact: str | Path,
        metrics: Mapping[str, float],
        metadata: Mapping[str, str] | None = None,
    ) -> ModelVersion:
        validate_model_name(model)
        checked_metrics = _checked_metrics(model, metrics)
        checked_metadata = _checked_metadata(model, metadata)
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
            holder = self._aliases.get(model, _Aliases()).champion
            return self._with_aliases(model, holder) if holder else None

    def previous(self, model: str) -> ModelVersion | None:
        validate_model_name(model)
        with self._lock:
            holder = self._aliases.get(model, _Aliases()).previous
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
            aliases = self._aliases.get(model, _Aliases())
            _check_expected(model, version, aliases.champion, expected_champion)
            changed = _promoted(aliases, version)
            if changed is not None:
                self._aliases[model] = changed
            promoted = self._with_aliases(model, version)
            assert promoted is not None
            return promoted

    def rollback(self, model: str) -> ModelVersion:
        validate_model_name(model)
        with self._lock:
            changed = _rolled_back(model, self._aliases.get(model, _Aliases()))
            self._aliases[model] = changed
            assert changed.champion is not None
            champion = self._with_aliases(model, changed.champion)
            assert champion is not None
            return champion

    def _with_aliases(self, model: str, version: str) -> ModelVersion | None:
        stored = self._versions.get(model, {}).get(version)
        if stored is None:
            return None
        return replace(stored, aliases=self._aliases.get(model, _Aliases()).of(version))


# --- local file system -------------------------------------------------------------------------


class LocalModelRegistry:
    """Versions under `<root>/<model>/versions/<n>/`; both aliases in `<root>/<model>/aliases.json`.

    A version directory holds `version.json` (metrics, metadata, created) and `artifact/` (a copy
    of the registered directory, or a directory holding the registered file). It is assembled and
    fsynced under `<model>/.staging/` and published by one `rename` to `versions/<n>`, which
    fails when another writer published `n` first (its directory is not empty): so versions are
    numbered 1, 2, 3 without gaps or duplicates across processes, and a version that is visible
    is complete. A crash mid-register leaves only an ignored `.staging/` entry.

    The aliases live in ONE file, rewritten under an exclusive `flock` on `<model>/.lock` by
    writing a temporary file, fsyncing it, `os.replace`-ing it over `aliases.json` and fsyncing
    the directory. A reader sees the old file or the new one, never a mix: a crash at any point
    leaves exactly the champion before the move or the one after (and none only if there was
    none before the first promotion). `fault(step)` is called at each of REGISTER_STEPS and
    ALIAS_STEPS (tests make it kill the process there). POSIX only (`fcntl`).
    """

    name = "local"

    def __init__(
        self,
        root: str | Path,
        *,
        fault: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = Path(root).expanduser().absolute()
        self._fault = fault or (lambda step: None)
        self._clock = clock

    def model_dir(self, model: str) -> Path:
        """`<root>/<model>`; the name is validated, so the path is always directly under root."""
        path = self.root / validate_model_name(model)
        if path.parent != self.root:  # belt and braces: one segment, never a way out
            raise InvalidModelNameError(model, "the name does not stay under the registry root")
        return path

    # -- reading --

    def get(self, model: str, version: str) -> ModelVersion | None:
        model_dir = self.model_dir(model)
        return self._load(model, model_dir, version, self._read_aliases(model, model_dir))

    def champion(self, model: str) -> ModelVersion | None:
        model_dir = self.model_dir(model)
        aliases = self._read_aliases(model, model_dir)
        return self._load(model, model_dir, aliases.champion, aliases)

    def previous(self, model: str) -> ModelVersion | None:
        model_dir = self.model_dir(model)
        aliases = self._read_aliases(model, model_dir)
        return self._load(model, model_dir, aliases.previous, aliases)

    def versions(self, model: str) -> list[ModelVersion]:
        model_dir = self.model_dir(model)
        aliases = self._read_aliases(model, model_dir)
        found = [self._load(model, model_dir, v, aliases) for v in self._version_ids(model_dir)]
        return [version for version in found if version is not None]

    # -- writing --

    def register(
        self,
        model: str,
        artifact: str | Path,
        metrics: Mapping[str, float],
        metadata: Mapping[str, str] | None = None,
    ) -> ModelVersion:
        model_dir = self.model_dir(model)
        source = _local_artifact(model, artifact)
        record: dict[str, Any] = {
            "model": model,
            "metrics": _checked_metrics(model, metrics),
            "metadata": _checked_metadata(model, metadata),
            "source": str(source),
        }
        staging_root = model_dir / ".staging"
        staging_root.mkdir(parents=True, exist_ok=True)
        staging = staging_root / f"{os.getpid()}-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            record["artifact"] = _copy_artifact(source, staging / "artifact")
            self._fault("after-copy")
            record["created"] = self._clock()
            _write_synced(staging / VERSION_FILE, json.dumps(record, indent=2, sort_keys=True))
            _fsync_dir(staging)
            self._fault("after-version-file")
            versions_dir = model_dir / "versions"
            if not versions_dir.is_dir():
                versions_dir.mkdir(exist_ok=True)
                _fsync_dir(model_dir)
            version = self._publish(model, staging, versions_dir)
            self._fault("after-publish")
            _fsync_dir(versions_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # gone already when published
        loaded = self._load(model, model_dir, version, self._read_aliases(model, model_dir))
        assert loaded is not None
        return loaded

    def promote(
        self, model: str, version: str, expected_champion: str | None = None
    ) -> ModelVersion:
        model_dir = self.model_dir(model)
        if not self._has_version(model_dir, version):
            raise VersionNotFoundError(model, "no such version to promote", version)
        with self._locked(model_dir):
            aliases = self._read_aliases(model, model_dir)
            _check_expected(model, version, aliases.champion, expected_champion)
            changed = _promoted(aliases, version)
            if changed is not None:
                self._write_aliases(model_dir, changed)
            promoted = self._load(model, model_dir, version, changed or aliases)
        assert promoted is not None
        return promoted

    def rollback(self, model: str) -> ModelVersion:
        model_dir = self.model_dir(model)
        if not model_dir.is_dir():
            raise NoPreviousVersionError(model, "there is no champion to roll back")
        with self._locked(model_dir):
            changed = _rolled_back(model, self._read_aliases(model, model_dir))
            self._write_aliases(model_dir, changed)
            champion = self._load(model, model_dir, changed.champion, changed)
        assert champion is not None
        return champion

    # -- internals --

    def _publish(self, model: str, staging: Path, versions_dir: Path) -> str:
        """Renames `staging` to the next free `versions/<n>`; returns n."""
        for _ in range(10_000):
            ids = self._version_ids(versions_dir.parent)
            candidate = str(int(ids[-1]) + 1 if ids else 1)
            target = versions_dir / candidate
            try:
                os.rename(staging, target)  # refuses an existing, non-empty directory
            except OSError:
                if not target.exists():
                    raise
                continue  # another writer published this number first
            return candidate
        raise RegistryError(model, "could not allocate a version number")  # pragma: no cover

    @staticmethod
    def _version_ids(model_dir: Path) -> list[str]:
        try:
            names = os.listdir(model_dir / "versions")
        except FileNotFoundError:
            return []
        return sorted((n for n in names if _VERSION_ID.fullmatch(n)), key=int)

    @staticmethod
    def _has_version(model_dir: Path, version: str) -> bool:
        return (
            bool(_VERSION_ID.fullmatch(version))
            and (model_dir / "versions" / version / VERSION_FILE).is_file()
        )

    def _load(
        self, model: str, model_dir: Path, version: str | None, aliases: _Aliases
    ) -> ModelVersion | None:
        if version is None or not _VERSION_ID.fullmatch(version):
            return None
        version_dir = model_dir / "versions" / version
        try:
            record = json.loads((version_dir / VERSION_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise RegistryError(model, f"{VERSION_FILE} is corrupt: {exc}", version) from exc
        return ModelVersion(
            model=model,
            version=version,
            artifact_uri=str(version_dir / record["artifact"]),
            metrics={k: float(v) for k, v in record.get("metrics", {}).items()},
            created=float(record.get("created", 0.0)),
            aliases=aliases.of(version),
            metadata={str(k): str(v) for k, v in record.get("metadata", {}).items()},
        )

    def _read_aliases(self, model: str, model_dir: Path) -> _Aliases:
        try:
            data = json.loads((model_dir / ALIASES_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return _Aliases()
        except ValueError as exc:
            raise RegistryError(model, f"{ALIASES_FILE} is corrupt: {exc}") from exc
        return _Aliases(champion=data.get(CHAMPION), previous=data.get(PREVIOUS))

    def _write_aliases(self, model_dir: Path, aliases: _Aliases) -> None:
        """Replaces aliases.json atomically and durably; the caller holds the model's lock."""
        payload = {CHAMPION: aliases.champion, PREVIOUS: aliases.previous, "updated": self._clock()}
        for stale in model_dir.glob(".aliases.*.tmp"):  # left by a writer that died (lock held)
            stale.unlink(missing_ok=True)
        self._fault("before-alias-write")
        temporary = model_dir / f".aliases.{os.getpid()}.{uuid.uuid4().hex}.tmp"
        try:
            with open(temporary, "w", encoding="utf-8") as handle:
                handle.write(json.dumps(payload, indent=2, sort_keys=True))
                handle.flush()
                self._fault("after-temp-write")
                os.fsync(handle.fileno())
            self._fault("after-temp-fsync")
            os.replace(temporary, model_dir / ALIASES_FILE)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        self._fault("after-alias-replace")
        _fsync_dir(model_dir)
        self._fault("after-dir-fsync")

    @contextlib.contextmanager
    def _locked(self, model_dir: Path) -> Iterator[None]:
        """An exclusive flock on `<model>/.lock` (released by the kernel if the process dies)."""
        import fcntl

        model_dir.mkdir(parents=True, exist_ok=True)
        with open(model_dir / ".lock", "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _local_artifact(model: str, artifact: str | Path) -> Path:
    """The local file or directory `artifact` names (a path or a file:// URI)."""
    text = str(artifact)
    if isinstance(artifact, str) and "://" in text:
        parts = urlsplit(text)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
            raise InvalidRegistrationError(
                model, f"a local registry copies local files; cannot copy {text!r}"
            )
        text = unquote(parts.path)
    path = Path(text).expanduser().absolute()
    if not path.exists():
        raise InvalidRegistrationError(model, f"artifact {str(path)!r} does not exist")
    return path


def _copy_artifact(source: Path, destination: Path) -> str:
    """Copies a directory to `destination`, or a file into it, fsyncing every file and directory.

    Returns the artifact's path relative to the version directory.
    """
    if source.is_dir():
        shutil.copytree(source, destination)
        relative = destination.name
    else:
        destination.mkdir()
        shutil.copy2(source, destination / source.name)
        relative = f"{destination.name}/{source.name}"
    for directory, _, files in os.walk(destination):
        for name in files:
            with open(os.path.join(directory, name), "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(Path(directory))
    return relative


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    """Makes a directory's entries durable (creates, renames); a no-op where unsupported."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


# --- Vertex AI Model Registry ------------------------------------------------------------------


# The scikit-learn release the reference pipeline pins (requirements-pipeline.txt) and the
# prebuilt serving container of that major.minor. Google's "Prebuilt containers for inference"
# list names one container per release, `sklearn-cpu.MAJOR-MINOR` (scikit-learn 1.6 ->
# sklearn-cpu.1-6), and "Export model artifacts for inference" asks for the version the model
# was trained with; a pickle from another release may not load in the container. Each image
# sits in the us, europe and asia Artifact Registry mirrors. The container loads the one
# model.joblib or model.pkl of the version's artifact directory.
SKLEARN_SERVING_VERSION = "1.6"


def default_serving_image(location: str) -> str:
    """Vertex's prebuilt scikit-learn CPU serving container for SKLEARN_SERVING_VERSION, from
    the location's nearest mirror."""
    region = location.split("-")[0]
    mirror = region if region in ("europe", "asia") else "us"
    tag = SKLEARN_SERVING_VERSION.replace(".", "-")
    return f"{mirror}-docker.pkg.dev/vertex-ai/prediction/sklearn-cpu.{tag}:latest"


def vertex_model_id(model: str) -> str:
    """The Vertex model ID a model name maps to (a valid ID, stable across processes).

    A name that is already a valid ID (`[a-z_][a-z0-9_-]{0,62}`) is used as it is; any other
    name becomes a lower-case slug plus 8 hex digits of its SHA-256, so distinct names stay
    distinct (`Fraud.Detector` -> `fraud-detector-1c0ffee5`).
    """
    import hashlib

    validate_model_name(model)
    if _VERTEX_MODEL_ID.fullmatch(model):
        return model
    slug = re.sub(r"[^a-z0-9_-]+", "-", model.lower()).strip("-")[:50]
    if not slug or not re.match(r"[a-z_]", slug):
        slug = "m-" + slug if slug else "m"
    return f"{slug}-{hashlib.sha256(model.encode('utf-8')).hexdigest()[:8]}"


class VertexModelRegistry:
    """Vertex AI Model Registry through `aiplatform_v1.ModelServiceClient` (REST).

    A model name maps to one Vertex parent model: `projects/P/locations/L/models/<model_id>`
    with `vertex_model_id(name)`, created (display name = the model name) by the first
    `register`; failing that ID, an existing model whose display name equals the name (one made
    by another tool) is adopted. Each `register` uploads a new version under it (`upload_model`
    with `parent_model`, waiting for the long-running operation); Vertex numbers versions 1, 2,
    3. Metrics and metadata travel as JSON in `versionDescription`; metadata entries that are
    valid labels also become labels, beside `managed-by=retrain-trigger`.

    Aliases move with `merge_version_aliases`, which Vertex applies atomically to one version and
    which takes an alias off whichever version held it, so an alias names at most one version.
    Moving two aliases takes two calls; their order makes a crash between them harmless:

    - promote: first `previous` onto the old champion, then `champion` onto the new version. In
      between, the old champion holds both: still exactly one champion, and calling promote
      again finishes the move. `previous()` answers None while `previous` sits on the champion.
    - rollback: first `champion` onto the previous version, then `previous` onto the demoted
      one. In between, the rollback has taken effect (one champion) and only `previous` lags.

    `endpoint` overrides `{location}-aiplatform.googleapis.com`; an `http://` endpoint means
    anonymous credentials (local fakes only). Calls use a bounded `timeout` and no client-side
    retries; transient failures raise `RegistryUnavailableError` (a `TransientError`).
    `register` is not idempotent: retrying one whose answer was lost may add an extra version,
    which no alias points to.
    """

    name = "vertex"

    def __init__(
        self,
        project: str,
        location: str,
        endpoint: str | None = None,
        credentials: Any = None,
        *,
        serving_image: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        upload_timeout: float = UPLOAD_TIMEOUT_SECONDS,
        client: Any = None,
    ) -> None:
        if not project or not location:
            raise ValueError("VertexModelRegistry needs a project and a location")
        self.project = project
        self.location = location
        self.parent = f"projects/{project}/locations/{location}"
        self.endpoint = (endpoint or f"{location}-aiplatform.googleapis.com").rstrip("/")
        self.credentials = credentials
        self.serving_image = serving_image or default_serving_image(location)
        self.timeout = timeout
        self.upload_timeout = upload_timeout
        self._client: Any = client
        self._resolved: dict[str, str] = {}
        self._lock = threading.Lock()

    def model_resource_name(self, model: str) -> str:
        """The parent model this registry creates for `model` (see `vertex_model_id`)."""
        return f"{self.parent}/models/{vertex_model_id(model)}"

    # -- reading --

    def get(self, model: str, version: str) -> ModelVersion | None:
        resource = self._resolve(model)
        if resource is None or not _VERSION_ID.fullmatch(version):
            return None
        found = self._call(model, version, "get_model", name=f"{resource}@{version}")
        return None if found is None else self._to_version(model, found)

    def champion(self, model: str) -> ModelVersion | None:
        return self._by_alias(model, CHAMPION)

    def previous(self, model: str) -> ModelVersion | None:
        found = self._by_alias(model, PREVIOUS)
        if found is not None and found.is_champion:
            return None  # a promote stopped between its two alias moves: no distinct previous
        return found

    def versions(self, model: str) -> list[ModelVersion]:
        from google.cloud.aiplatform_v1 import ListModelVersionsRequest

        resource = self._resolve(model)
        if resource is None:
            return []
        request = ListModelVersionsRequest(name=resource)
        found = self._call(model, None, "list_model_versions", materialize=True, request=request)
        versions = [self._to_version(model, item) for item in found or []]
        return sorted(versions, key=lambda v: (len(v.version), v.version))

    # -- writing --

    def register(
        self,
        model: str,
        artifact: str | Path,
        metrics: Mapping[str, float],
        metadata: Mapping[str, str] | None = None,
    ) -> ModelVersion:
        from google.cloud.aiplatform_v1 import Model, ModelContainerSpec

        validate_model_name(model)
        artifact_uri = str(artifact)
        if artifact_uri.startswith("/gcs/"):  # a step's view of gs:// through Cloud Storage FUSE
            artifact_uri = "gs://" + artifact_uri[len("/gcs/"):]
            artifact = artifact_uri
        if isinstance(artifact, Path) or not artifact_uri.startswith("gs://"):
            raise InvalidRegistrationError(
                model, f"Vertex AI needs a gs:// artifact URI, got {artifact_uri!r}"
            )
        checked_metrics = _checked_metrics(model, metrics)
        checked_metadata = _checked_metadata(model, metadata)
        description = json.dumps(
            {"metrics": checked_metrics, "metadata": checked_metadata}, sort_keys=True
        )
        labels = dict([MANAGED_BY_LABEL, ("retrain-model", vertex_model_id(model))])
        for key, value in checked_metadata.items():
            if _LABEL_KEY.fullmatch(key) and _LABEL_VALUE.fullmatch(value):
                labels.setdefault(key, value)
        body = Model(
            display_name=model,
            artifact_uri=artifact_uri,
            container_spec=ModelContainerSpec(image_uri=self.serving_image),
            labels=labels,
            version_description=description,
        )
        uploaded = self._upload(model, body, self._resolve(model))
        with self._lock:
            self._resolved[model] = uploaded.model
        version_id = uploaded.model_version_id
        found = self._call(model, version_id, "get_model", name=f"{uploaded.model}@{version_id}")
        if found is None:
            raise RegistryError(model, "the uploaded version is not readable", version_id)
        return self._to_version(model, found)

    def promote(
        self, model: str, version: str, expected_champion: str | None = None
    ) -> ModelVersion:
        """Moves the aliases (see the class docstring). Vertex has no compare-and-set on
        aliases: `expected_champion` is checked on a read just before the first move."""
        target = self.get(model, version)
        if target is None:
            raise VersionNotFoundError(model, "no such version to promote", version)
        if target.is_champion:
            return target
        current = self.champion(model)
        _check_expected(model, version, current.version if current else None,
                        expected_champion)
        if current is not None:
            self._merge(model, current.version, [PREVIOUS])  # first: see the class docstring
            moves = [CHAMPION]
        else:
            moves = [CHAMPION] + ([f"-{PREVIOUS}"] if PREVIOUS in target.aliases else [])
        return self._to_version(model, self._merge(model, version, moves))

    def rollback(self, model: str) -> ModelVersion:
        current = self.champion(model)
        if current is None:
            raise NoPreviousVersionError(model, "there is no champion to roll back")
        previous = self.previous(model)
        if previous is None:
            raise NoPreviousVersionError(
                model, f"champion {current.version} has no previous version to roll back to"
            )
        restored = self._merge(model, previous.version, [CHAMPION])  # first: see class docstring
        self._merge(model, current.version, [PREVIOUS])
        champion = self._to_version(model, restored)
        return replace(champion, aliases=tuple(a for a in champion.aliases if a != PREVIOUS))

    # -- internals --

    def _resolve(self, model: str) -> str | None:
        """The parent model's resource name, or None when the model has no version yet."""
        from google.cloud.aiplatform_v1 import ListModelsRequest

        validate_model_name(model)
        with self._lock:
            cached = self._resolved.get(model)
        if cached is not None:
            return cached
        name = self.model_resource_name(model)
        if self._call(model, None, "get_model", name=name) is None:
            quoted = model.replace("\\", "\\\\").replace('"', '\\"')
            request = ListModelsRequest(parent=self.parent, filter=f'display_name="{quoted}"')
            listed = self._call(model, None, "list_models", materialize=True, request=request)
            names = sorted({item.name for item in listed or []})
            if len(names) > 1:
                raise RegistryError(
                    model, f"{len(names)} Vertex models have this display name: {names}"
                )
            if not names:
                return None
            name = names[0]
        with self._lock:
            self._resolved[model] = name
        return name

    def _upload(self, model: str, body: Model, parent_model: str | None) -> Any:
        """Uploads `body` as a new version (a new model when `parent_model` is None)."""
        from google.cloud.aiplatform_v1 import UploadModelRequest

        from pipeline_client.google_api import classify

        if parent_model:
            request = UploadModelRequest(parent=self.parent, parent_model=parent_model, model=body)
        else:
            request = UploadModelRequest(
                parent=self.parent, model_id=vertex_model_id(model), model=body
            )
        try:
            operation: Any = self._get_client().upload_model(
                request=request, retry=None, timeout=self.timeout
            )
            return operation.result(timeout=self.upload_timeout)
        except Exception as exc:
            kind, detail = classify(exc)
            if kind == "already_exists" and not parent_model:
                # Another register created the model first: add this version under it.
                return self._upload(model, body, self.model_resource_name(model))
            if kind == "other":
                raise
            raise _registry_error(kind, detail, model, None) from exc

    def _merge(self, model: str, version: str, aliases: list[str]) -> Model:
        resource = self._resolve(model)
        merged: Model | None = None
        if resource is not None:
            merged = self._call(
                model,
                version,
                "merge_version_aliases",
                name=f"{resource}@{version}",
                version_aliases=aliases,
            )
        if merged is None:
            raise VersionNotFoundError(model, "no such version", version)
        return merged

    def _by_alias(self, model: str, alias: str) -> ModelVersion | None:
        resource = self._resolve(model)
        if resource is None:
            return None
        found = self._call(model, None, "get_model", name=f"{resource}@{alias}")
        return None if found is None else self._to_version(model, found)

    def _call(
        self, model: str, version: str | None, method: str, materialize: bool = False, **kwargs: Any
    ) -> Any:
        """One client call; None on NOT_FOUND; other failures as RegistryError subclasses."""
        from pipeline_client.google_api import classify

        try:
            result = getattr(self._get_client(), method)(**kwargs, retry=None, timeout=self.timeout)
            return list(result) if materialize else result  # a pager fetches pages here
        except Exception as exc:
            kind, detail = classify(exc)
            if kind == "not_found":
                return None
            if kind == "other":
                raise  # not an API failure: a bug, surfaced as it is
            raise _registry_error(kind, detail, model, version) from exc

    @staticmethod
    def _to_version(model: str, found: Model) -> ModelVersion:
        try:
            described = json.loads(found.version_description or "{}")
        except ValueError:
            described = {}
        if not isinstance(described, dict):
            described = {}
        created = found.version_create_time
        return ModelVersion(
            model=model,
            version=found.version_id,
            artifact_uri=found.artifact_uri,
            metrics={str(k): float(v) for k, v in (described.get("metrics") or {}).items()},
            created=created.timestamp() if created else 0.0,
            aliases=tuple(found.version_aliases),
            metadata={str(k): str(v) for k, v in (described.get("metadata") or {}).items()},
        )

    def _get_client(self) -> ModelServiceClient:
        with self._lock:
            if self._client is None:
                self._client = self._create_client()
            client: ModelServiceClient = self._client
            return client

    def _create_client(self) -> ModelServiceClient:
        from google.cloud.aiplatform_v1 import ModelServiceClient

        from pipeline_client.google_api import rest_client

        client: ModelServiceClient = rest_client(ModelServiceClient, self.endpoint,
                                                 self.credentials)
        return client


def _registry_error(kind: str, detail: str, model: str, version: str | None) -> RegistryError:
    if kind == "transient":
        return RegistryUnavailableError(model, f"Vertex AI unavailable: {detail}", version)
    return RegistryError(model, f"Vertex AI refused: {detail}", version)


# --- opening by URI ----------------------------------------------------------------------------


def open_registry(uri: str) -> ModelRegistry:
    """A registry from a URI.

    `memory://` (a new, empty InMemoryRegistry), `file:///abs/path` or a plain path
    (LocalModelRegistry; relative to the working directory), `vertex://projects/P/locations/L`
    (VertexModelRegistry; API endpoint from RETRAIN_VERTEX_ENDPOINT when set).
    """
    if not isinstance(uri, str) or not uri.strip():
        raise RegistryUriError(str(uri), "empty; use memory://, file:///path or vertex://...")
    if uri in ("memory://", "memory:"):
        return InMemoryRegistry()
    if uri.startswith("vertex://"):
        match = _VERTEX_URI.fullmatch(uri)
        if match is None:
            raise RegistryUriError(uri, "expected vertex://projects/PROJECT/locations/LOCATION")
        endpoint = os.environ.get(VERTEX_ENDPOINT_VARIABLE) or None
        return VertexModelRegistry(match["project"], match["location"], endpoint=endpoint)
    if uri.startswith("file:"):
        parts = urlsplit(uri)
        if not uri.startswith("file://") or parts.netloc not in ("", "localhost"):
            raise RegistryUriError(uri, "expected file:///absolute/path (no host)")
        if parts.query or parts.fragment or not parts.path.startswith("/"):
            raise RegistryUriError(uri, "expected file:///absolute/path")
        return LocalModelRegistry(Path(unquote(parts.path)))
    if "://" in uri:
        scheme = uri.split(":", 1)[0]
        raise RegistryUriError(
            uri, f"unknown scheme {scheme!r}; use memory://, file:///path, a path or vertex://"
        )
    return LocalModelRegistry(Path(uri))
