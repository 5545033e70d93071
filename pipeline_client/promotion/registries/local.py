"""The local file registry: versions in numbered directories, both aliases in one file moved
crash-safely under a lock (laptop mode, `file:///path`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from pipeline_client.promotion.registries.protocol import (
    CHAMPION,
    PREVIOUS,
    VERSION_ID,
    Aliases,
    InvalidModelNameError,
    InvalidRegistrationError,
    ModelVersion,
    NoPreviousVersionError,
    RegistryError,
    VersionNotFoundError,
    check_expected,
    promoted_aliases,
    rolled_back_aliases,
    valid_metadata,
    valid_metrics,
    validate_model_name,
)

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
            "metrics": valid_metrics(model, metrics),
            "metadata": valid_metadata(model, metadata),
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
            check_expected(model, version, aliases.champion, expected_champion)
            changed = promoted_aliases(aliases, version)
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
            changed = rolled_back_aliases(model, self._read_aliases(model, model_dir))
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
        return sorted((n for n in names if VERSION_ID.fullmatch(n)), key=int)

    @staticmethod
    def _has_version(model_dir: Path, version: str) -> bool:
        return (
            bool(VERSION_ID.fullmatch(version))
            and (model_dir / "versions" / version / VERSION_FILE).is_file()
        )

    def _load(
        self, model: str, model_dir: Path, version: str | None, aliases: Aliases
    ) -> ModelVersion | None:
        if version is None or not VERSION_ID.fullmatch(version):
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

    def _read_aliases(self, model: str, model_dir: Path) -> Aliases:
        try:
            data = json.loads((model_dir / ALIASES_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return Aliases()
        except ValueError as exc:
            raise RegistryError(model, f"{ALIASES_FILE} is corrupt: {exc}") from exc
        return Aliases(champion=data.get(CHAMPION), previous=data.get(PREVIOUS))

    def _write_aliases(self, model_dir: Path, aliases: Aliases) -> None:
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
