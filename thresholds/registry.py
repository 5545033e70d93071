"""Which policy class implements which kind of rule; each kind's module is imported when a
policy of that kind is first built (a policy file of absolute rules never loads the fits)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from importlib import import_module

from thresholds.base import Policy
from thresholds.spec import POLICY_KINDS, PolicyKind, PolicySpec

_MODULES: Mapping[PolicyKind, str] = {kind: f"thresholds.{kind}" for kind in POLICY_KINDS}
"""Each kind's module: `thresholds.<kind>`, whose `<Kind>Policy` implements it."""


class _PolicyClasses(Mapping[PolicyKind, type[Policy]]):
    """kind → policy class, read-only, importing the kind's module on first use."""

    def __getitem__(self, kind: PolicyKind) -> type[Policy]:
        module = import_module(_MODULES[kind])
        cls: type[Policy] = getattr(module, f"{kind.capitalize()}Policy")
        return cls

    def __iter__(self) -> Iterator[PolicyKind]:
        return iter(_MODULES)

    def __len__(self) -> int:
        return len(_MODULES)


POLICY_CLASSES: Mapping[PolicyKind, type[Policy]] = _PolicyClasses()


def build_policy(spec: PolicySpec) -> Policy:
    """The policy object for a validated spec."""
    return POLICY_CLASSES[spec.kind](spec)
