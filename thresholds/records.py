"""`@record`: a frozen dataclass whose methods are generated when it is first used, not when
its module is imported. The standard decorator compiles about six methods per class at import
(~0.5 ms each class); a cold start then pays only for the records it builds.

A record is a `dataclasses.dataclass(frozen=True)` in every way once used: building an
instance, or asking for its `fields`, makes it one (`materialize`). Code that inspects a class
before building any instance (pydantic, `dataclasses.fields(cls)`) calls `fields` or
`materialize` here first.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from operator import attrgetter
from typing import Any, TypeVar, dataclass_transform

C = TypeVar("C", bound=type)

_LOCK = threading.RLock()
_PENDING = "__record_pending__"
"""Set on a class decorated and not yet made a dataclass (its own `__dict__` only)."""


@dataclass_transform(frozen_default=True)
def record(cls: C) -> C:
    """`@dataclasses.dataclass(frozen=True)`, done on first use (see the module)."""
    taken = [name for name in ("__init__", "__setstate__") if name in cls.__dict__]
    if taken:  # (the placeholders would replace them)
        raise TypeError(f"@record {cls.__qualname__} defines {', '.join(taken)}: use a "
                        "__post_init__, or @dataclasses.dataclass(frozen=True)")

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        materialize(cls)
        cls.__dict__["__init__"](self, *args, **kwargs)  # the dataclass's, from now on

    def __setstate__(self: Any, state: Any) -> None:
        # an instance made without __init__ (unpickled, copied) makes the class a dataclass
        # too: its __eq__ and __repr__ must be the dataclass's as soon as an instance exists
        materialize(cls)
        self.__dict__.update(state)

    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    __setstate__.__qualname__ = f"{cls.__qualname__}.__setstate__"
    setattr(cls, "__init__", __init__)  # noqa: B010 - (mypy: a method assigned to a class)
    setattr(cls, "__setstate__", __setstate__)  # noqa: B010
    setattr(cls, _PENDING, True)  # noqa: B010
    return cls


def materialize(cls: type) -> type:
    """Make `cls` (a `@record`, and any `@record` it derives from) the dataclass it declares;
    a class that is already one, or not a record, is left as it is."""
    if _PENDING not in cls.__dict__:
        return cls
    with _LOCK:
        if _PENDING not in cls.__dict__:  # another thread did it meanwhile
            return cls
        for base in reversed(cls.__mro__[1:]):
            materialize(base)
        delattr(cls, "__init__")
        delattr(cls, "__setstate__")
        delattr(cls, _PENDING)
        dataclasses.dataclass(frozen=True, eq=False)(cls)
        _compare_by_fields(cls)
    return cls


def _compare_by_fields(cls: type) -> None:
    """`__eq__` and `__hash__` as a frozen dataclass has them (the fields as a tuple, compared
    only with the same class), built from `operator.attrgetter` rather than compiled: for a
    record of many fields, compiling them costs more than all its other methods."""
    names = tuple(f.name for f in dataclasses.fields(cls) if f.compare)
    hashed = tuple(f.name for f in dataclasses.fields(cls)
                   if (f.compare if f.hash is None else f.hash))
    values = _tuple_getter(names)
    hash_values = values if hashed == names else _tuple_getter(hashed)
    own = cls.__dict__  # a class's own __eq__ or __hash__ stays, as with dataclass(eq=True)

    def __eq__(self: Any, other: object) -> bool:
        if other.__class__ is self.__class__:
            return bool(values(self) == values(other))
        return NotImplemented

    def __hash__(self: Any) -> int:
        return hash(hash_values(self))

    __eq__.__qualname__ = f"{cls.__qualname__}.__eq__"
    __hash__.__qualname__ = f"{cls.__qualname__}.__hash__"
    if "__eq__" not in own:
        setattr(cls, "__eq__", __eq__)  # noqa: B010
        if "__hash__" not in own:
            setattr(cls, "__hash__", __hash__)  # noqa: B010


def _tuple_getter(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    if len(names) == 1:  # attrgetter of one name answers the value, not a 1-tuple
        name = names[0]
        return lambda obj: (getattr(obj, name),)
    if not names:
        return lambda obj: ()
    return attrgetter(*names)


def fields(cls_or_instance: Any) -> tuple[dataclasses.Field[Any], ...]:
    """`dataclasses.fields`, for a record not yet used too."""
    materialize(cls_or_instance if isinstance(cls_or_instance, type) else type(cls_or_instance))
    return dataclasses.fields(cls_or_instance)
