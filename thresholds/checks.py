"""Field constraints and checks written once, beside the plain dataclasses they describe:
pydantic reads them when a policy file is validated; at run time they are inert annotations.

Nothing here imports pydantic: its hooks (`__get_pydantic_core_schema__`) import
`pydantic_core` only when pydantic itself asks, so the cold start never loads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Annotated, Any, ClassVar

from thresholds.durations import format_duration, parse_duration
from thresholds.records import materialize

_BOUNDS = ("gt", "ge", "lt", "le", "min_length", "max_length", "pattern")


class Check:
    """The constraints of one field (pydantic's names and messages), and its description.

    A plain class, not a dataclass: the policy specs build a few at import (cold start),
    and nothing compares them."""

    __slots__ = (*_BOUNDS, "finite", "description")

    def __init__(self, *, gt: float | None = None, ge: float | None = None,
                 lt: float | None = None, le: float | None = None,
                 min_length: int | None = None, max_length: int | None = None,
                 pattern: str | None = None, finite: bool = False,
                 description: str | None = None) -> None:
        self.gt, self.ge, self.lt, self.le = gt, ge, lt, le
        self.min_length, self.max_length, self.pattern = min_length, max_length, pattern
        self.finite = finite
        """No NaN, no infinity."""
        self.description = description

    def __repr__(self) -> str:
        set_ = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__
                         if getattr(self, name) not in (None, False))
        return f"Check({set_})"

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        schema = handler(source)
        inner = schema
        while inner.get("type") == "nullable":  # `X | None`: the bounds are X's
            inner = inner["schema"]
        for bound in _BOUNDS:
            value = getattr(self, bound)
            if value is not None:
                inner[bound] = value
        if self.finite:
            inner["allow_inf_nan"] = False
        return schema

    def __get_pydantic_json_schema__(self, schema: Any, handler: Any) -> Any:
        json_schema = handler(schema)
        if self.description is not None:
            json_schema["description"] = self.description
        return json_schema


class _DurationText:
    """A timedelta written as in a policy file: '90s', '30m', '24h', '7d', '2w', or seconds."""

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        return core_schema.no_info_before_validator_function(
            parse_duration, handler(source),
            serialization=core_schema.plain_serializer_function_ser_schema(
                format_duration, return_schema=core_schema.str_schema()))

    def __get_pydantic_json_schema__(self, schema: Any, handler: Any) -> Any:
        return {
            "anyOf": [
                {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*[smhdw]?\s*$"},
                {"type": "number", "minimum": 0},
            ],
            "description": "a duration: '90s', '30m', '24h', '7d', '2w', or seconds",
        }


Duration = Annotated[timedelta, _DurationText()]
"""A duration field: a timedelta at run time, text or seconds in the policy file."""


class Checked:
    """A frozen dataclass pydantic can validate: unknown keys are errors (a typo in a policy
    file must never be silently ignored), `prepare` may fill in the raw mapping first and
    `check` rejects what the field constraints cannot (a ValueError names the problem)."""

    __pydantic_config__: ClassVar[Mapping[str, Any]] = {"extra": "forbid"}

    @classmethod
    def prepare(cls, data: Any) -> Any:
        """The raw input as validated (default: unchanged)."""
        return data

    def check(self) -> None:
        """Raise ValueError when the fields, each valid, do not go together."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        materialize(cls)  # a `@record` becomes a dataclass on first use: pydantic reads it now

        def checked(value: Checked) -> Checked:
            value.check()
            return value

        return core_schema.no_info_before_validator_function(
            cls.prepare, core_schema.no_info_after_validator_function(checked, handler(source)))
