"""`@record` is `@dataclass(frozen=True)` made on first use: the same behaviour, checked side
by side with the standard decorator, and the cold start it is for."""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import FrozenInstanceError, asdict, dataclass, field, replace
from typing import Any

import pytest

from thresholds.records import fields, materialize, record


def _pair() -> tuple[type, type]:
    """The same class declared twice: as a record and as a frozen dataclass."""

    def body() -> dict[str, Any]:
        return {
            "__annotations__": {"name": "str", "value": "float", "tags": "list[str]",
                                "note": "str"},
            "value": 1.5,
            "tags": field(default_factory=list),
            "note": field(default="", compare=False),
            "doubled": lambda self: self.value * 2,
        }

    lazy = record(type("Item", (), body()))
    plain = dataclass(frozen=True)(type("Item", (), body()))
    return lazy, plain


def test_a_record_becomes_a_dataclass_when_first_built_not_when_declared() -> None:
    lazy, _ = _pair()
    assert not dataclasses.is_dataclass(lazy)
    item = lazy("a", 2.0)
    assert dataclasses.is_dataclass(lazy) and dataclasses.is_dataclass(item)
    assert item.doubled() == 4.0


@pytest.mark.parametrize("case", ["eq", "hash", "repr", "frozen", "replace", "asdict",
                                  "defaults", "compare_false", "other_class", "positional"])
def test_a_record_behaves_as_a_frozen_dataclass(case: str) -> None:
    lazy, plain = _pair()
    a, b = lazy("a", 2.0, ["x"], "n1"), plain("a", 2.0, ["x"], "n1")
    if case == "eq":
        assert (a == lazy("a", 2.0, ["x"], "other note")) is (b == plain("a", 2.0, ["x"], "z"))
        assert (a == lazy("a", 3.0, ["x"])) is (b == plain("a", 3.0, ["x"])) is False
    elif case == "hash":
        c, d = lazy("a", 2.0, note="x"), plain("a", 2.0, note="x")
        with pytest.raises(TypeError):  # a list field: unhashable, as a dataclass is
            hash(a)
        with pytest.raises(TypeError):
            hash(b)
        c2, d2 = replace(c, tags=()), replace(d, tags=())  # type: ignore[arg-type]
        assert hash(c2) == hash(replace(c2, note="other"))  # note is not compared
        assert hash(d2) == hash(replace(d2, note="other"))
        assert len({c2, replace(c2, note="y")}) == len({d2, replace(d2, note="y")}) == 1
    elif case == "repr":
        assert repr(a) == repr(b)
    elif case == "frozen":
        for obj in (a, b):
            with pytest.raises(FrozenInstanceError):
                obj.value = 3.0
            with pytest.raises(FrozenInstanceError):
                del obj.value
    elif case == "replace":
        assert replace(a, value=9.0).value == replace(b, value=9.0).value == 9.0
        assert type(replace(a, value=9.0)) is lazy
    elif case == "asdict":
        assert asdict(a) == asdict(b)
        assert [f.name for f in fields(lazy)] == [f.name for f in dataclasses.fields(plain)]
    elif case == "defaults":
        x, y = lazy("z"), plain("z")
        assert (x.value, x.tags, x.note) == (y.value, y.tags, y.note) == (1.5, [], "")
        assert x.tags is not lazy("z").tags  # a fresh list each time, as default_factory
    elif case == "compare_false":
        assert a == lazy("a", 2.0, ["x"], "another note")
    elif case == "other_class":
        other, _ = _pair()
        assert (a == other("a", 2.0, ["x"], "n1")) is (b == _pair()[1]("a", 2.0, ["x"], "n1"))
        assert a != ("a", 2.0, ["x"])
    elif case == "positional":
        with pytest.raises(TypeError):
            lazy("a", 2.0, [], "n", "one too many")
        with pytest.raises(TypeError):
            plain("a", 2.0, [], "n", "one too many")


def test_a_record_derived_from_a_record_builds_its_base_first() -> None:
    @record
    class Base:
        a: int
        b: int = 2

    @record
    class Derived(Base):
        c: int = 3

    assert not dataclasses.is_dataclass(Base)
    d = Derived(1)
    assert (d.a, d.b, d.c) == (1, 2, 3)
    assert Base(1) == Base(1, 2) and Base(1) != Derived(1)
    assert [f.name for f in fields(Derived)] == ["a", "b", "c"]


def test_fields_and_materialize_make_a_record_without_an_instance() -> None:
    @record
    class Thing:
        x: int

    assert [f.name for f in fields(Thing)] == ["x"]
    assert dataclasses.is_dataclass(Thing)
    assert materialize(Thing) is Thing and materialize(int) is int


def test_threads_building_the_first_instances_at_once_all_get_the_dataclass() -> None:
    @record
    class Shared:
        n: int

    start = threading.Barrier(8)
    built: list[Any] = []
    errors: list[BaseException] = []

    def build(n: int) -> None:
        start.wait()
        try:
            built.append(Shared(n))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=build, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(s.n for s in built) == list(range(8))
    assert len(set(built)) == 8 and Shared(3) in set(built)


def test_a_record_unpickled_before_any_is_built_compares_as_a_dataclass(tmp_path: Any) -> None:
    """pickle (and copy) make instances without __init__: in a process where the class was
    never used, two equal records unpickled must still be equal, and print as dataclasses
    (a worker of the backtest's sweep receives its results so)."""
    import pickle
    import subprocess
    import sys

    from tests.conftest import ROOT
    from triggers.state.protocol import RunRecord

    run = RunRecord("r-1", "m", "p", "t", "launching", "why", 1.0, {"run_id": "r-1"})
    data = pickle.dumps((run, RunRecord("r-1", "m", "p", "t", "launching", "why", 1.0,
                                        {"run_id": "r-1"})))
    (tmp_path / "runs.pickle").write_bytes(data)
    code = ("import pickle, sys, dataclasses\n"
            "from triggers.state.protocol import RunRecord\n"
            "assert not dataclasses.is_dataclass(RunRecord)  # never used in this process\n"
            f"a, b = pickle.loads(open({str(tmp_path / 'runs.pickle')!r}, 'rb').read())\n"
            "print(a == b, a is b, repr(a).startswith('RunRecord(run_id='),\n"
            "      dataclasses.is_dataclass(RunRecord))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, timeout=60, env={"PYTHONPATH": str(ROOT),
                                                       "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False", "True", "True"]


def test_a_record_keeps_its_own_eq_and_refuses_its_own_init() -> None:
    @record
    class ById:
        key: str
        note: str = ""

        def __eq__(self, other: object) -> bool:
            return isinstance(other, ById) and other.key == self.key

        __hash__ = None  # type: ignore[assignment]

    assert ById("a", "x") == ById("a", "y")  # its own __eq__, as dataclass(eq=True) keeps it
    with pytest.raises(TypeError, match="defines __init__"):
        record(type("Odd", (), {"__annotations__": {"x": "int"},
                                "__init__": lambda self, x: None}))
