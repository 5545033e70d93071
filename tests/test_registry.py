"""The ModelRegistry contract, run against the in-memory, local-file and Vertex registries.

Local: promote killed in a subprocess at every step; Vertex: the exact requests the fake receives.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline_client.promotion.registries import (
    ALIAS_STEPS,
    ALIASES_FILE,
    REGISTER_STEPS,
    ChampionChangedError,
    InMemoryRegistry,
    InvalidModelNameError,
    InvalidRegistrationError,
    LocalModelRegistry,
    ModelRegistry,
    ModelVersion,
    NoPreviousVersionError,
    RegistryError,
    RegistryUnavailableError,
    RegistryUriError,
    VersionNotFoundError,
    VertexModelRegistry,
    default_serving_image,
    open_registry,
    vertex_model_id,
)
from tests.fakes import prebuilt
from tests.fakes.vertex_server import FakeGcsServer, FakeVertexServer
from triggers.errors import RetrainError, TransientError

ROOT = Path(__file__).resolve().parents[1]
MODEL = "fraud-detector"
PROJECT, LOCATION = "acme-ml", "europe-west4"
PARENT = f"projects/{PROJECT}/locations/{LOCATION}"
VERTEX_MODEL = f"{PARENT}/models/{MODEL}"


@dataclass
class Harness:
    """A registry under test and a way to make an artifact it accepts (tagged, to tell apart)."""

    registry: ModelRegistry
    artifact: Callable[[str], str]

    def register(self, tag: str, accuracy: float = 0.9, model: str = MODEL) -> ModelVersion:
        return self.registry.register(
            model, self.artifact(tag), {"accuracy": accuracy}, {"tag": tag}
        )


def roles(version: ModelVersion | None) -> set[str]:
    """The aliases this project moves (Vertex also keeps its own `default`)."""
    assert version is not None
    return set(version.aliases) & {"champion", "previous"}


def holders(registry: ModelRegistry, model: str = MODEL) -> tuple[str | None, str | None]:
    champion, previous = registry.champion(model), registry.previous(model)
    return (
        champion.version if champion else None,
        previous.version if previous else None,
    )


def local_artifact_factory(directory: Path) -> Callable[[str], str]:
    def make(tag: str) -> str:
        source = directory / f"src-{tag}"
        source.mkdir(parents=True, exist_ok=True)
        (source / "model.json").write_text(json.dumps({"tag": tag}), encoding="utf-8")
        return str(source)

    return make


# The gs:// directories the Vertex tests below register. The fake refuses an upload under the
# prebuilt scikit-learn image unless its directory holds one model.joblib or model.pkl
# (tests/fakes/prebuilt.py), so each holds a model.joblib in the fake bucket.
SERVABLE_DIRECTORIES = (
    *(f"gs://acme-models/fraud/{n}" for n in range(1, 5)),
    "gs://new/2",
    "gs://acme-root/run-1/challenger",
)


def store_files(storage: FakeGcsServer, directory: str, files: dict[str, bytes]) -> str:
    """Puts `files` (name -> content) under the gs:// `directory`; returns the directory."""
    bucket, _, prefix = directory.removeprefix("gs://").partition("/")
    for name, data in files.items():
        storage.put(bucket, f"{prefix.rstrip('/')}/{name}" if prefix else name, data)
    return directory


def servable(storage: FakeGcsServer, directory: str) -> str:
    """`directory` holding a model.joblib (its bytes only tag it: the fake reads names)."""
    return store_files(storage, directory, {"model.joblib": directory.encode()})


@pytest.fixture()
def storage() -> Iterator[FakeGcsServer]:
    with FakeGcsServer() as server:
        yield server


@pytest.fixture()
def vertex(storage: FakeGcsServer) -> Iterator[FakeVertexServer]:
    with FakeVertexServer() as server:
        prebuilt.serve_artifacts_from(server, storage)
        for directory in SERVABLE_DIRECTORIES:
            servable(storage, directory)
        yield server


@pytest.fixture(params=["memory", "local", "vertex"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    if request.param == "memory":
        yield Harness(InMemoryRegistry(), lambda tag: f"gs://acme-models/{tag}")
    elif request.param == "local":
        local = LocalModelRegistry(tmp_path / "registry")
        yield Harness(local, local_artifact_factory(tmp_path / "sources"))
    else:
        with FakeVertexServer() as server, FakeGcsServer() as bucket:
            prebuilt.serve_artifacts_from(server, bucket)
            remote = VertexModelRegistry(PROJECT, LOCATION, endpoint=server.endpoint)
            yield Harness(remote, lambda tag: servable(bucket, f"gs://acme-models/{MODEL}/{tag}"))


# --- the contract: every registry --------------------------------------------------------------


def test_register_numbers_versions_from_one_and_keeps_metrics(harness: Harness) -> None:
    first = harness.register("a", 0.91)
    second = harness.register("b", 0.93)

    assert (first.model, first.version, second.version) == (MODEL, "1", "2")
    assert first.metrics == {"accuracy": 0.91}
    assert first.metadata == {"tag": "a"}
    assert first.created > 0
    assert roles(first) == set()
    again = harness.registry.get(MODEL, "2")
    assert again is not None
    assert (again.version, again.metrics, again.metadata) == ("2", {"accuracy": 0.93}, {"tag": "b"})
    assert again.artifact_uri == second.artifact_uri
    assert [v.version for v in harness.registry.versions(MODEL)] == ["1", "2"]


def test_unknown_model_and_version_are_none_or_empty(harness: Harness) -> None:
    assert harness.registry.get(MODEL, "1") is None
    assert harness.registry.champion(MODEL) is None
    assert harness.registry.previous(MODEL) is None
    assert harness.registry.versions(MODEL) == []
    harness.register("a")
    assert harness.registry.get(MODEL, "7") is None
    assert harness.registry.get(MODEL, "../1") is None


def test_first_promotion_makes_a_champion_without_previous(harness: Harness) -> None:
    harness.register("a")

    promoted = harness.registry.promote(MODEL, "1")

    assert (promoted.version, roles(promoted)) == ("1", {"champion"})
    assert holders(harness.registry) == ("1", None)
    champion = harness.registry.champion(MODEL)
    assert champion is not None and champion.metadata == {"tag": "a"}


def test_promote_moves_champion_and_previous(harness: Harness) -> None:
    for tag in "abc":
        harness.register(tag)
    harness.registry.promote(MODEL, "1")
    harness.registry.promote(MODEL, "2")

    promoted = harness.registry.promote(MODEL, "3")

    assert (promoted.version, roles(promoted)) == ("3", {"champion"})
    assert holders(harness.registry) == ("3", "2")
    by_version = {v.version: roles(v) for v in harness.registry.versions(MODEL)}
    assert by_version == {"1": set(), "2": {"previous"}, "3": {"champion"}}


def test_promote_refuses_when_the_champion_is_not_the_one_compared_with(
    harness: Harness,
) -> None:
    for tag in "abc":
        harness.register(tag)
    harness.registry.promote(MODEL, "1", expected_champion="")  # first model: none expected
    harness.registry.promote(MODEL, "2", expected_champion="1")
    # Version 3 was compared with 1, but 2 is champion now: nothing moves.
    with pytest.raises(ChampionChangedError, match="the champion is now 2, not 1") as caught:
        harness.registry.promote(MODEL, "3", expected_champion="1")
    assert (caught.value.model, caught.value.version) == (MODEL, "3")
    with pytest.raises(ChampionChangedError, match="not none"):
        harness.registry.promote(MODEL, "3", expected_champion="")
    assert holders(harness.registry) == ("2", "1")
    assert harness.registry.promote(MODEL, "2", expected_champion="1").version == "2"


def test_promoting_the_champion_again_changes_nothing(harness: Harness) -> None:
    harness.register("a")
    harness.register("b")
    harness.registry.promote(MODEL, "1")
    harness.registry.promote(MODEL, "2")

    again = harness.registry.promote(MODEL, "2")

    assert (again.version, roles(again)) == ("2", {"champion"})
    assert holders(harness.registry) == ("2", "1")


def test_promoting_the_previous_version_swaps_them(harness: Harness) -> None:
    harness.register("a")
    harness.register("b")
    harness.registry.promote(MODEL, "1")
    harness.registry.promote(MODEL, "2")

    harness.registry.promote(MODEL, "1")

    assert holders(harness.registry) == ("1", "2")


def test_rollback_swaps_champion_and_previous_and_back(harness: Harness) -> None:
    for tag in "abc":
        harness.register(tag)
    for version in ("1", "2", "3"):
        harness.registry.promote(MODEL, version)

    restored = harness.registry.rollback(MODEL)

    assert (restored.version, roles(restored)) == ("2", {"champion"})
    assert holders(harness.registry) == ("2", "3")
    assert harness.registry.rollback(MODEL).version == "3"
    assert holders(harness.registry) == ("3", "2")


def test_rollback_without_previous_is_a_clear_error(harness: Harness) -> None:
    harness.register("a")
    with pytest.raises(NoPreviousVersionError, match="no champion") as no_champion:
        harness.registry.rollback(MODEL)
    assert no_champion.value.model == MODEL

    harness.registry.promote(MODEL, "1")
    with pytest.raises(NoPreviousVersionError, match="champion 1 has no previous") as caught:
        harness.registry.rollback(MODEL)
    assert isinstance(caught.value, RetrainError)
    assert holders(harness.registry) == ("1", None)


def test_promoting_an_unknown_version_is_refused(harness: Harness) -> None:
    harness.register("a")
    harness.registry.promote(MODEL, "1")

    with pytest.raises(VersionNotFoundError) as caught:
        harness.registry.promote(MODEL, "9")

    assert (caught.value.model, caught.value.version) == (MODEL, "9")
    assert holders(harness.registry) == ("1", None)


def test_models_have_separate_versions_and_aliases(harness: Harness) -> None:
    harness.register("a")
    harness.register("b", model="churn")
    harness.register("c", model="churn")
    harness.registry.promote("churn", "2")

    assert holders(harness.registry) == (None, None)
    assert holders(harness.registry, "churn") == ("2", None)
    assert [v.version for v in harness.registry.versions(MODEL)] == ["1"]


@pytest.mark.parametrize(
    "name",
    ["", ".", "..", "../outside", "a/b", "a\\b", ".hidden", "nul\x00byte", "new\nline", "x" * 129],
    ids=[
        "empty",
        "dot",
        "dotdot",
        "parent",
        "slash",
        "backslash",
        "leading-dot",
        "nul",
        "newline",
        "too-long",
    ],
)
def test_unsafe_model_names_are_refused(harness: Harness, name: str) -> None:
    with pytest.raises(InvalidModelNameError) as caught:
        harness.registry.register(name, harness.artifact("a"), {"accuracy": 0.9})
    assert caught.value.model == name
    with pytest.raises(InvalidModelNameError):
        harness.registry.champion(name)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "0.9", True], ids=repr)
def test_metrics_must_be_finite_numbers(harness: Harness, value: object) -> None:
    with pytest.raises(InvalidRegistrationError, match="accuracy"):
        harness.registry.register(MODEL, harness.artifact("a"), {"accuracy": value})  # type: ignore
    assert harness.registry.versions(MODEL) == []


def test_model_version_to_json(harness: Harness) -> None:
    harness.register("a")
    version = harness.registry.promote(MODEL, "1")

    data = json.loads(version.to_json())

    assert data["model"] == MODEL and data["version"] == "1"
    assert data["metrics"] == {"accuracy": 0.9} and data["metadata"] == {"tag": "a"}
    assert "champion" in data["aliases"]
    assert data == version.to_dict()


# --- local file system -------------------------------------------------------------------------


@pytest.fixture()
def local(tmp_path: Path) -> Harness:
    return Harness(
        LocalModelRegistry(tmp_path / "registry"), local_artifact_factory(tmp_path / "sources")
    )


def test_local_layout_copies_the_artifact(local: Harness, tmp_path: Path) -> None:
    source = Path(local.artifact("a"))
    version = local.register("a")
    single = tmp_path / "single.pkl"
    single.write_bytes(b"weights")
    from_file = local.registry.register(MODEL, single.as_uri(), {"accuracy": 0.8})

    version_dir = tmp_path / "registry" / MODEL / "versions" / "1"
    assert Path(version.artifact_uri) == version_dir / "artifact"
    assert (version_dir / "artifact" / "model.json").read_text() == '{"tag": "a"}'
    record = json.loads((version_dir / "version.json").read_text())
    assert record["metrics"] == {"accuracy": 0.9} and record["metadata"] == {"tag": "a"}
    (source / "model.json").write_text("changed")  # the registry holds its own copy
    assert (version_dir / "artifact" / "model.json").read_text() == '{"tag": "a"}'
    assert Path(from_file.artifact_uri) == version_dir.parent / "2" / "artifact" / "single.pkl"
    assert Path(from_file.artifact_uri).read_bytes() == b"weights"


def test_local_aliases_live_in_one_file_and_survive_reopening(
    local: Harness, tmp_path: Path
) -> None:
    local.register("a")
    local.register("b")
    local.registry.promote(MODEL, "1")
    local.registry.promote(MODEL, "2")

    aliases = json.loads((tmp_path / "registry" / MODEL / ALIASES_FILE).read_text())
    assert (aliases["champion"], aliases["previous"]) == ("2", "1")
    assert holders(LocalModelRegistry(tmp_path / "registry")) == ("2", "1")
    assert sorted(p.name for p in (tmp_path / "registry" / MODEL).iterdir()) == [
        ".lock",
        ".staging",
        ALIASES_FILE,
        "versions",
    ]


@pytest.mark.parametrize(
    "artifact", ["gs://bucket/model", "file://otherhost/x", "relative/missing"], ids=str
)
def test_local_register_needs_an_existing_local_artifact(local: Harness, artifact: str) -> None:
    with pytest.raises(InvalidRegistrationError):
        local.registry.register(MODEL, artifact, {})
    assert local.registry.versions(MODEL) == []


def test_local_names_never_escape_the_root(tmp_path: Path) -> None:
    root = tmp_path / "nested" / "registry"
    registry = LocalModelRegistry(root)
    source = local_artifact_factory(tmp_path)("a")
    for name in ("..", "../escape", "../../escape", "/abs", "a/../../escape", "\\..\\escape"):
        with pytest.raises(InvalidModelNameError):
            registry.register(name, source, {})
        with pytest.raises(InvalidModelNameError):
            registry.promote(name, "1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src-a"]  # nothing made, anywhere


def test_concurrent_local_registers_get_distinct_versions(local: Harness, tmp_path: Path) -> None:
    writers, per_writer = 8, 3
    barrier = threading.Barrier(writers)
    errors: list[BaseException] = []

    def write(writer: int) -> None:
        registry = LocalModelRegistry(tmp_path / "registry")  # one instance each, like processes
        barrier.wait()
        try:
            for index in range(per_writer):
                tag = f"w{writer}-{index}"
                registry.register(MODEL, local.artifact(tag), {"accuracy": 0.5}, {"tag": tag})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert errors == []
    versions = local.registry.versions(MODEL)
    total = writers * per_writer
    assert [v.version for v in versions] == [str(n) for n in range(1, total + 1)]
    assert len({v.metadata["tag"] for v in versions}) == total
    for version in versions:  # each version holds its own writer's artifact
        content = json.loads((Path(version.artifact_uri) / "model.json").read_text())
        assert content == {"tag": version.metadata["tag"]}


def test_fault_hook_sees_every_step_in_order(local: Harness, tmp_path: Path) -> None:
    seen: list[str] = []
    registry = LocalModelRegistry(tmp_path / "registry", fault=seen.append)

    registry.register(MODEL, local.artifact("a"), {})
    assert tuple(seen) == REGISTER_STEPS
    seen.clear()
    registry.promote(MODEL, "1")
    assert tuple(seen) == ALIAS_STEPS
    seen.clear()
    registry.promote(MODEL, "1")  # already champion: nothing written
    assert seen == []


CRASHING_CHILD = """
import os, sys
from pipeline_client.promotion.registries import LocalModelRegistry

root, operation, argument, crash_at = sys.argv[1:5]

def fault(step):
    print(step, flush=True)
    if step == crash_at:
        os._exit(1)

registry = LocalModelRegistry(root, fault=fault)
if operation == "promote":
    registry.promote("fraud-detector", argument)
elif operation == "rollback":
    registry.rollback("fraud-detector")
else:
    registry.register("fraud-detector", argument, {"accuracy": 0.5})
"""


def crash_child(root: Path, operation: str, argument: str, step: str) -> None:
    """Runs one registry operation in a new process that dies (os._exit) at `step`."""
    result = subprocess.run(
        [sys.executable, "-c", CRASHING_CHILD, str(root), operation, argument, step],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 1, result.stderr
    assert result.stdout.split()[-1] == step  # it really died there


def assert_consistent(registry: LocalModelRegistry) -> None:
    """One aliases file, parseable, naming existing versions; no version holds both aliases."""
    champion, previous = holders(registry)
    assert champion is None or registry.get(MODEL, champion) is not None
    assert previous is None or (registry.get(MODEL, previous) is not None and previous != champion)
    assert sum(v.is_champion for v in registry.versions(MODEL)) == (0 if champion is None else 1)


@pytest.mark.parametrize("step", ALIAS_STEPS)
def test_crash_during_promote_leaves_the_old_or_the_new_champion(local: Harness, step: str) -> None:
    registry = local.registry
    assert isinstance(registry, LocalModelRegistry)
    for tag in "abc":
        local.register(tag)
    registry.promote(MODEL, "1")
    registry.promote(MODEL, "2")

    crash_child(registry.root, "promote", "3", step)

    reopened = LocalModelRegistry(registry.root)
    assert_consistent(reopened)
    replaced = ALIAS_STEPS.index(step) >= ALIAS_STEPS.index("after-alias-replace")
    assert holders(reopened) == (("3", "2") if replaced else ("2", "1"))
    reopened.promote(MODEL, "3")  # the lock died with the process; the move can be redone
    assert holders(reopened) == ("3", "2")
    assert list((registry.root / MODEL).glob("*.tmp")) == []


@pytest.mark.parametrize("step", ALIAS_STEPS)
def test_crash_during_first_promotion_leaves_no_champion_or_the_new_one(
    local: Harness, step: str
) -> None:
    registry = local.registry
    assert isinstance(registry, LocalModelRegistry)
    local.register("a")

    crash_child(registry.root, "promote", "1", step)

    reopened = LocalModelRegistry(registry.root)
    assert_consistent(reopened)
    replaced = ALIAS_STEPS.index(step) >= ALIAS_STEPS.index("after-alias-replace")
    # "None" is possible only here: there was no champion before this first promotion.
    assert holders(reopened) == (("1", None) if replaced else (None, None))


@pytest.mark.parametrize("step", ALIAS_STEPS)
def test_crash_during_rollback_leaves_one_champion(local: Harness, step: str) -> None:
    registry = local.registry
    assert isinstance(registry, LocalModelRegistry)
    local.register("a")
    local.register("b")
    registry.promote(MODEL, "1")
    registry.promote(MODEL, "2")

    crash_child(registry.root, "rollback", "", step)

    reopened = LocalModelRegistry(registry.root)
    assert_consistent(reopened)
    replaced = ALIAS_STEPS.index(step) >= ALIAS_STEPS.index("after-alias-replace")
    assert holders(reopened) == (("1", "2") if replaced else ("2", "1"))


@pytest.mark.parametrize("step", REGISTER_STEPS)
def test_crash_during_register_publishes_a_whole_version_or_none(local: Harness, step: str) -> None:
    registry = local.registry
    assert isinstance(registry, LocalModelRegistry)
    local.register("a")
    registry.promote(MODEL, "1")

    crash_child(registry.root, "register", local.artifact("b"), step)

    reopened = LocalModelRegistry(registry.root)
    published = step == "after-publish"
    versions = reopened.versions(MODEL)
    assert [v.version for v in versions] == (["1", "2"] if published else ["1"])
    if published:
        assert (Path(versions[1].artifact_uri) / "model.json").read_text() == '{"tag": "b"}'
    assert holders(reopened) == ("1", None)
    following = reopened.register(MODEL, local.artifact("c"), {})
    assert following.version == ("3" if published else "2")


# --- Vertex AI Model Registry: the exact requests ----------------------------------------------


@pytest.fixture()
def vertex_registry(vertex: FakeVertexServer) -> VertexModelRegistry:
    return VertexModelRegistry(PROJECT, LOCATION, endpoint=vertex.endpoint)


def merges(vertex: FakeVertexServer) -> list[tuple[str, list[str]]]:
    return [
        (
            r.path.removeprefix(f"/v1/{VERTEX_MODEL}").removesuffix(":mergeVersionAliases"),
            r.body["versionAliases"],
        )
        for r in vertex.model_requests("merge_aliases")
    ]


def test_vertex_first_register_creates_the_parent_model(
    vertex: FakeVertexServer, vertex_registry: VertexModelRegistry
) -> None:
    version = vertex_registry.register(
        MODEL,
        "gs://acme-models/fraud/1",
        {"accuracy": 0.91},
        {"trigger_id": "t-0123abcd", "gate": "challenger wins by 0.02"},
    )

    assert (version.version, version.artifact_uri) == ("1", "gs://acme-models/fraud/1")
    assert (version.metrics, version.aliases) == ({"accuracy": 0.91}, ("default",))
    assert [(r.method, r.path) for r in vertex.model_requests()] == [
        ("GET", f"/v1/{VERTEX_MODEL}"),
        ("GET", f"/v1/{PARENT}/models"),
        ("POST", f"/v1/{PARENT}/models:upload"),
        ("GET", f"/ui/{VERTEX_MODEL}/operations/1"),
        ("GET", f"/v1/{VERTEX_MODEL}@1"),
    ]
    [listing] = vertex.model_requests("list_models")
    assert listing.query["filter"] == f'display_name="{MODEL}"'
    [upload] = vertex.model_requests("upload")
    assert upload.body == {
        "modelId": MODEL,
        "model": {
            "displayName": MODEL,
            "artifactUri": "gs://acme-models/fraud/1",
            "containerSpec": {"imageUri": default_serving_image(LOCATION)},
            "labels": {
                "managed-by": "retrain-trigger",
                "retrain-model": MODEL,
                "trigger_id": "t-0123abcd",
            },
            "versionDescription": json.dumps(
                {
                    "metadata": {"trigger_id": "t-0123abcd", "gate": "challenger wins by 0.02"},
                    "metrics": {"accuracy": 0.91},
                },
                sort_keys=True,
            ),
        },
    }
    assert "authorization" not in upload.headers


def test_vertex_later_registers_upload_under_the_parent_model(
    vertex: FakeVertexServer, vertex_registry: VertexModelRegistry
) -> None:
    vertex_registry.register(MODEL, "gs://acme-models/fraud/1", {"accuracy": 0.91})
    vertex.requests.clear()

    version = vertex_registry.register(MODEL, "gs://acme-models/fraud/2", {"accuracy": 0.93})

    assert version.version == "2"
    [upload] = vertex.model_requests("upload")
    assert upload.body["parentModel"] == VERTEX_MODEL
    assert "modelId" not in upload.body
    assert upload.body["model"]["artifactUri"] == "gs://acme-models/fraud/2"
    assert vertex.model_requests("list_models") == []  # the parent model is remembered


def test_vertex_promote_moves_previous_first_then_champion(
    vertex: FakeVertexServer, vertex_registry: VertexModelRegistry
) -> None:
    for n in (1, 2):
        vertex_registry.register(MODEL, f"gs://acme-models/fraud/{n}", {"accuracy": 0.9})
    vertex_registry.promote(MODEL, "1")
    assert merges(vertex) == [("@1", ["champion"])]
    vertex.requests.clear()

    promoted = vertex_registry.promote(MODEL, "2")

    assert merges(vertex) == [("@1", ["previous"]), ("@2", ["champion"])]
    assert roles(promoted) == {"champion"}
    stored = vertex.models[MODEL]["versions"]
    assert stored["1"]["versionAliases"] == ["default", "previous"]
    assert stored["2"]["versionAliases"] == ["champion"]

    vertex.requests.clear()
    vertex_registry.promote(MODEL, "2")
    assert merges(vertex) == []  # idempotent: nothing sent


def test_vertex_rollback_moves_champion_first_then_previous(
    vertex: FakeVertexServer, vertex_registry: VertexModelRegistry
) -> None:
    for n in (1, 2):
        vertex_registry.register(MODEL, f"gs://acme-models/fraud/{n}", {"accuracy": 0.9})
    vertex_registry.promote(MODEL, "1")
    vertex_registry.promote(MODEL, "2")
    vertex.requests.clear()

    restored = vertex_registry.rollback(MODEL)

    assert merges(vertex) == [("@1", ["champion"]), ("@2", ["previous"])]
    assert (restored.version, roles(restored)) == ("1", {"champion"})


def test_vertex_crash_between_promote_moves_keeps_one_champion(
    vertex: FakeVertexServer, vertex_registry: VertexModelRegistry
) -> None:
    for n in (1, 2, 3):
        vertex_registry.register(MODEL, f"gs://acme-models/fraud/{n}", {"accuracy": 0.9})
    vertex_registry.promote(MODEL, "1")
    vertex_registry.promote(MODEL, "2")
    vertex.fail_next(1, 503, op="merge_aliases", skip=1)  # the second alias move fails

    with pytest.raises(RegistryUnavailableError) as caught:
        vertex_registry.promote(MODEL, "3")

    assert isinstance(caught.value, TransientError) and caught.value.model == MODEL
    champions = [v for v in vertex_registry.versions(MODEL) if v.is_champion]
    assert [v.version for v in champions] == ["2"]
    assert roles(champions[0]) == {"champion", "previous"}
    assert holders(vertex_registry) == ("2", None)  # no distinct previous meanwhile
    vertex_registry.promote(MODEL, "3")  # the retry finishes the move
    assert holders(vertex_registry) == ("3", "2")


def test_vertex_crash_between_rollback_moves_keeps_one_champion(
    vertex: FakeVertexServer, vertex_registry: VertexModelRegistry
) -> None:
    for n in (1, 2):
        vertex_registry.register(MODEL, f"gs://acme-models/fraud/{n}", {"accuracy": 0.9})
    vertex_registry.promote(MODEL, "1")
    vertex_registry.promote(MODEL, "2")
    vertex.fail_next(1, 503, op="merge_aliases", skip=1)

    with pytest.raises(RegistryUnavailableError):
        vertex_registry.rollback(MODEL)

    champions = [v.version for v in vertex_registry.versions(MODEL) if v.is_champion]
    assert champions == ["1"]  # the rollback took effect; only `previous` lags
    assert holders(vertex_registry) == ("1", None)


def test_vertex_fake_moves_an_alias_and_refuses_removing_default(
    vertex: FakeVertexServer, vertex_registry: VertexModelRegistry
) -> None:
    for n in (1, 2):
        vertex_registry.register(MODEL, f"gs://acme-models/fraud/{n}", {"accuracy": 0.9})
    client = vertex_registry._get_client()
    client.merge_version_aliases(name=f"{VERTEX_MODEL}@1", version_aliases=["golden", "beta"])
    moved = client.merge_version_aliases(name=f"{VERTEX_MODEL}@2", version_aliases=["golden"])
    removed = client.merge_version_aliases(name=f"{VERTEX_MODEL}@1", version_aliases=["-beta"])

    assert sorted(moved.version_aliases) == ["golden"]
    assert sorted(removed.version_aliases) == ["default"]
    assert client.get_model(name=f"{VERTEX_MODEL}@golden").version_id == "2"
    from google.api_core import exceptions

    with pytest.raises(exceptions.BadRequest, match="default alias cannot be removed"):
        client.merge_version_aliases(name=f"{VERTEX_MODEL}@1", version_aliases=["-default"])
    with pytest.raises(exceptions.BadRequest, match="invalid version alias"):
        client.merge_version_aliases(name=f"{VERTEX_MODEL}@1", version_aliases=["Bad_Alias"])


def test_vertex_adopts_a_model_found_by_display_name(
    vertex: FakeVertexServer, vertex_registry: VertexModelRegistry
) -> None:
    legacy = vertex.add_model_version(PROJECT, LOCATION, None, "Legacy Model", "gs://old/1")

    version = vertex_registry.register("Legacy Model", "gs://new/2", {"accuracy": 0.9})

    assert version.version == "2"
    [listing] = vertex.model_requests("list_models")
    assert listing.query["filter"] == 'display_name="Legacy Model"'
    [upload] = vertex.model_requests("upload")
    assert upload.body["parentModel"] == legacy["name"]
    assert upload.body["model"]["labels"]["retrain-model"] == vertex_model_id("Legacy Model")


def test_vertex_two_models_with_the_display_name_are_ambiguous(
    vertex: FakeVertexServer, vertex_registry: VertexModelRegistry
) -> None:
    vertex.add_model_version(PROJECT, LOCATION, None, "twin")
    vertex.add_model_version(PROJECT, LOCATION, None, "twin")
    with pytest.raises(RegistryError, match="2 Vertex models have this display name"):
        vertex_registry.champion("twin")


def test_vertex_concurrent_first_register_falls_back_to_parent_model(
    vertex: FakeVertexServer, vertex_registry: VertexModelRegistry
) -> None:
    other_writer = VertexModelRegistry(PROJECT, LOCATION, endpoint=vertex.endpoint)
    other_writer.register(MODEL, "gs://acme-models/fraud/1", {"accuracy": 0.9})
    # This writer looked before the other one created the model: it saw nothing.
    vertex.fail_next(1, "NOT_FOUND", op="get_model")
    vertex.fail_next(1, "NOT_FOUND", op="list_models")
    vertex.requests.clear()

    version = vertex_registry.register(MODEL, "gs://acme-models/fraud/2", {"accuracy": 0.9})

    assert version.version == "2"
    first, second = vertex.model_requests("upload")
    assert (first.body.get("modelId"), first.body.get("parentModel")) == (MODEL, None)
    assert (second.body.get("modelId"), second.body.get("parentModel")) == (None, VERTEX_MODEL)


def test_vertex_unavailable_is_transient_and_carries_the_model(
    vertex: FakeVertexServer, vertex_registry: VertexModelRegistry
) -> None:
    vertex_registry.register(MODEL, "gs://acme-models/fraud/1", {"accuracy": 0.9})
    vertex.fail_next(1, 503, op="get_model")

    with pytest.raises(RegistryUnavailableError) as caught:
        vertex_registry.champion(MODEL)

    assert isinstance(caught.value, TransientError)
    assert caught.value.model == MODEL and "UNAVAILABLE" in caught.value.reason
    assert vertex_registry.champion(MODEL) is None


def test_vertex_permanent_refusal_is_a_registry_error(
    vertex: FakeVertexServer, vertex_registry: VertexModelRegistry
) -> None:
    vertex.fail_next(1, "PERMISSION_DENIED", op="upload")
    with pytest.raises(RegistryError, match="PERMISSION_DENIED") as caught:
        vertex_registry.register(MODEL, "gs://acme-models/fraud/1", {"accuracy": 0.9})
    assert not isinstance(caught.value, TransientError)


def test_vertex_needs_a_gcs_artifact(
    vertex: FakeVertexServer, vertex_registry: VertexModelRegistry, tmp_path: Path
) -> None:
    for artifact in (str(tmp_path), tmp_path, "file:///tmp/model"):
        with pytest.raises(InvalidRegistrationError, match="gs://"):
            vertex_registry.register(MODEL, artifact, {})
    assert vertex.requests == []


def test_vertex_takes_a_steps_gcs_fuse_path_as_its_gs_uri(
    vertex: FakeVertexServer, vertex_registry: VertexModelRegistry
) -> None:
    # A pipeline step sees its output artifact at /gcs/BUCKET/...; Vertex wants gs://.
    version = vertex_registry.register(MODEL, "/gcs/acme-root/run-1/challenger", {})
    assert version.artifact_uri == "gs://acme-root/run-1/challenger"
    [upload] = vertex.model_requests("upload")
    assert upload.body["model"]["artifactUri"] == "gs://acme-root/run-1/challenger"


@pytest.mark.parametrize(
    ("name", "model_id"),
    [
        ("fraud-detector", "fraud-detector"),
        ("Fraud.Detector", "fraud-detector-"),
        ("7-day churn", "m-7-day-churn-"),
        ("ünïcode", "n-code-"),
        ("__init__", "__init__"),
    ],
)
def test_vertex_model_ids_are_valid_and_distinct(name: str, model_id: str) -> None:
    mapped = vertex_model_id(name)
    assert mapped.startswith(model_id)
    assert len(mapped) <= 63 and mapped == vertex_model_id(name)
    assert vertex_model_id("Fraud.Detector") != vertex_model_id("fraud.detector")


# --- open_registry and import cost -------------------------------------------------------------


def test_open_registry_uris(
    tmp_path: Path, vertex: FakeVertexServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(open_registry("memory://"), InMemoryRegistry)
    by_uri = open_registry(f"file://{tmp_path}/reg")
    assert isinstance(by_uri, LocalModelRegistry) and by_uri.root == tmp_path / "reg"
    monkeypatch.chdir(tmp_path)
    by_path = open_registry("relative/reg")
    assert isinstance(by_path, LocalModelRegistry) and by_path.root == tmp_path / "relative/reg"

    monkeypatch.setenv("RETRAIN_VERTEX_ENDPOINT", vertex.endpoint)
    remote = open_registry(f"vertex://projects/{PROJECT}/locations/{LOCATION}")
    assert isinstance(remote, VertexModelRegistry)
    remote.register(MODEL, "gs://acme-models/fraud/1", {"accuracy": 0.9})
    assert vertex.model_requests("upload")[0].path == f"/v1/{PARENT}/models:upload"


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "s3://bucket/registry",
        "vertex://projects/p",
        "vertex://projects/p/locations/l/models/m",
        "file://host/path",
        "file:relative",
    ],
)
def test_open_registry_refuses_other_uris_naming_them(uri: str) -> None:
    with pytest.raises(RegistryUriError) as caught:
        open_registry(uri)
    assert caught.value.uri == uri
    assert repr(uri) in str(caught.value)


def test_importing_the_registry_loads_no_google_module() -> None:
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import pipeline_client.promotion.registries\n"
        "new = sorted(set(sys.modules) - before)\n"
        "heavy = ('google', 'grpc', 'requests', 'proto', 'yaml', 'kfp', 'numpy')\n"
        "print([m for m in new if m.split('.')[0] in heavy])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# --- Vertex's prebuilt serving containers: the artifact a version needs --------------------------


@pytest.mark.parametrize(
    ("files", "accepted"),
    [
        ({"model.joblib": b"j"}, True),
        ({"model.pkl": b"p"}, True),
        ({"model.joblib": b"j", "README.md": b"other files may sit beside it"}, True),
        ({}, False),
        ({"model.json": b"{}"}, False),
        ({"model.joblib": b"j", "model.pkl": b"p"}, False),
        ({"nested/model.joblib": b"j"}, False),
    ],
    ids=["joblib", "pkl", "joblib-and-more", "empty", "json-only", "both", "nested"],
)
def test_vertex_fake_needs_exactly_one_sklearn_model_file(
    vertex: FakeVertexServer, vertex_registry: VertexModelRegistry, storage: FakeGcsServer,
    files: dict[str, bytes], accepted: bool,
) -> None:
    directory = store_files(storage, "gs://acme-models/candidates/v", files)
    if accepted:
        assert vertex_registry.register(MODEL, directory, {}).version == "1"
        return
    with pytest.raises(RegistryError) as caught:
        vertex_registry.register(MODEL, directory, {})
    assert not isinstance(caught.value, TransientError)
    assert caught.value.reason.startswith("Vertex AI refused: FAILED_PRECONDITION: ")
    assert caught.value.reason.endswith(
        ": Model directory gs://acme-models/candidates/v is expected to contain exactly one "
        "of: [model.pkl, model.joblib]")
    assert vertex.models == {}


@pytest.mark.parametrize(
    ("image", "files", "accepted"),
    [
        ("us-docker.pkg.dev/vertex-ai/prediction/xgboost-cpu.2-1:latest", ["model.bst"], True),
        ("us-docker.pkg.dev/vertex-ai/prediction/xgboost-cpu.2-1:latest", ["model.json"], False),
        ("europe-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest",
         ["saved_model.pb"], True),
        ("europe-docker.pkg.dev/vertex-ai/prediction/tf2-gpu.2-15:latest",
         ["model.joblib"], False),
        ("europe-docker.pkg.dev/acme/serving/custom:1", ["anything.bin"], True),
    ],
    ids=["xgboost", "xgboost-json", "tensorflow", "tensorflow-joblib", "custom-container"],
)
def test_vertex_fake_applies_each_prebuilt_frameworks_rule(
    vertex: FakeVertexServer, storage: FakeGcsServer, image: str, files: list[str],
    accepted: bool,
) -> None:
    registry = VertexModelRegistry(PROJECT, LOCATION, endpoint=vertex.endpoint,
                                   serving_image=image)
    directory = store_files(storage, "gs://acme-models/other/v", {f: b"x" for f in files})
    if accepted:
        assert registry.register(MODEL, directory, {}).version == "1"
    else:
        with pytest.raises(RegistryError, match="is expected to contain exactly one of"):
            registry.register(MODEL, directory, {})


def test_the_pinned_scikit_learn_matches_the_serving_container() -> None:
    import sklearn

    from pipeline_client.promotion.registries import SKLEARN_SERVING_VERSION

    pins = (ROOT / "requirements-pipeline.txt").read_text(encoding="utf-8").splitlines()
    [pinned] = [line.split("==")[1] for line in pins if line.startswith("scikit-learn==")]
    assert pinned.rsplit(".", 1)[0] == SKLEARN_SERVING_VERSION
    assert sklearn.__version__ == pinned  # the environment the tests ran in is the pinned one
    tag = SKLEARN_SERVING_VERSION.replace(".", "-")
    for location, mirror in (("us-central1", "us"), ("europe-west4", "europe"),
                             ("asia-east1", "asia"), ("me-west1", "us")):
        assert default_serving_image(location) == (
            f"{mirror}-docker.pkg.dev/vertex-ai/prediction/sklearn-cpu.{tag}:latest")


# --- the reference pipeline's challenger: registrable on Vertex and servable -------------------


def train_challenger(tmp_path: Path) -> tuple[Path, Path]:
    """Runs the reference pipeline's train step on three days; (its challenger directory, a
    held-out day's CSV), both in prepare_data's format."""
    import numpy as np
    from kfp.dsl import Dataset, Model

    from pipelines.drift import FEATURES, DriftingConcept
    from pipelines.retrain import train_model

    concept = DriftingConcept(examples_per_day=400)
    header = ",".join([*FEATURES, "label"])
    paths = {}
    for part, days in (("train", range(3)), ("holdout", range(3, 4))):
        samples = [concept.sample(day) for day in days]
        table = np.vstack([np.hstack([s.x, s.y.reshape(-1, 1)]) for s in samples])
        paths[part] = tmp_path / f"{part}.csv"
        np.savetxt(paths[part], table, delimiter=",", fmt="%.6g", header=header, comments="")
    challenger = Model(uri=str(tmp_path / "challenger"))
    train_model.python_func(train=Dataset(uri=str(paths["train"])), seed=0, challenger=challenger)
    return Path(challenger.path), paths["holdout"]


def test_the_pipelines_promote_step_registers_its_challenger_on_vertex(
    vertex: FakeVertexServer, storage: FakeGcsServer, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kfp.dsl import Model

    from pipelines.components import promote_model

    challenger_dir, _ = train_challenger(tmp_path)
    # On Vertex the train step writes through /gcs/...: the same files land in the bucket.
    uri = "gs://acme-root/run-7/train-model/challenger"
    store_files(storage, uri, {p.name: p.read_bytes() for p in challenger_dir.iterdir()})
    monkeypatch.setenv("RETRAIN_VERTEX_ENDPOINT", vertex.endpoint)
    report = {"reason": "challenger wins", "checks": [{"metric": "accuracy", "challenger": 0.9}]}

    promoted = promote_model.python_func(
        model=MODEL, trigger_id="t-7", registry=f"vertex://projects/{PROJECT}/locations/{LOCATION}",
        compared_with="", gate_report=json.dumps(report), challenger=Model(uri=uri))

    assert promoted == "1"
    [upload] = vertex.model_requests("upload")
    assert upload.body["model"]["artifactUri"] == uri
    assert upload.body["model"]["containerSpec"]["imageUri"] == default_serving_image(LOCATION)
    champion = VertexModelRegistry(PROJECT, LOCATION, endpoint=vertex.endpoint).champion(MODEL)
    assert champion is not None and champion.version == "1"
    assert champion.artifact_uri == uri and champion.metrics == {"accuracy": 0.9}


def test_the_challenger_artifact_serves_the_scores_the_pipeline_compared(tmp_path: Path) -> None:
    import numpy as np
    from kfp.dsl import Dataset, Model

    from pipelines.components import evaluate_models

    challenger_dir, holdout = train_challenger(tmp_path)
    predictions = Dataset(uri=str(tmp_path / "predictions.json"))
    evaluate_models.python_func(
        model=MODEL, champion_version="", registry="", holdout=Dataset(uri=str(holdout)),
        challenger=Model(uri=str(challenger_dir)), predictions=predictions)
    compared = json.loads(Path(predictions.path).read_text(encoding="utf-8"))["challenger"]
    served_files = sorted(p.name for p in challenger_dir.iterdir())
    assert served_files == ["model.joblib"]
    rows = np.loadtxt(holdout, delimiter=",", skiprows=1)[:, :-1].tolist()

    # What the prebuilt container does: joblib.load the file, predict on the request's rows.
    # A fresh, isolated interpreter (-I): scikit-learn and joblib only, none of this repository.
    serve = ("import json, sys, joblib\n"
             "model = joblib.load(sys.argv[1])\n"
             "rows = json.load(sys.stdin)\n"
             "print(json.dumps(model.predict_proba(rows)[:, 1].tolist()))\n")
    result = subprocess.run(
        [sys.executable, "-I", "-c", serve, str(challenger_dir / "model.joblib")],
        input=json.dumps(rows), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr

    served = json.loads(result.stdout)
    assert len(served) == len(compared) == 400
    assert np.allclose(served, compared, rtol=0.0, atol=1e-12)
    assert len({round(s, 3) for s in served}) > 100  # real scores, not a constant


def test_a_champion_registered_as_model_json_still_loads(tmp_path: Path) -> None:
    from pipelines.logistic import LogisticModel

    old = tmp_path / "v1"
    old.mkdir()
    (old / "model.json").write_text(json.dumps(
        {"kind": "logistic", "weights": [0.5, -1.25], "bias": 0.125, "features": ["a", "b"]}))
    assert LogisticModel.load(old) == LogisticModel((0.5, -1.25), 0.125, ("a", "b"))
    LogisticModel((0.5, -1.25), 0.125, ("a", "b")).save(tmp_path / "v2")
    assert LogisticModel.load(f"file://{tmp_path}/v2") == LogisticModel.load(old)
