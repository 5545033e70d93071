"""pydantic over the policy dataclasses of `thresholds.spec`: validation with errors naming
the field. Imported only to validate (CLI, cold start without a compiled policy file).

The fields, their constraints and their checks are those of `thresholds.spec` (read through
`thresholds.checks`); nothing here restates them.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter

from thresholds.spec import PolicySpec


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo in a policy file must never be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@cache
def _policy_adapter() -> TypeAdapter[PolicySpec]:
    return TypeAdapter(PolicySpec)


def validate_policy(data: Mapping[str, Any]) -> PolicySpec:
    """The spec of one policy as written in a policy file (raises pydantic's ValidationError)."""
    return _policy_adapter().validate_python(data)
