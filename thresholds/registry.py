"""Which policy class implements which kind of rule; each kind's module is imported when a
policy of that kind is first built (a policy file of absolute rules never loads the fits)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from importlib import import_module

from thresholds.base import Policy
from thresholds.spec import POLICY_KINDS, PolicyKind, PolicySpec


class _PolicyClasses(Mapping[PolicyKind, type[Policy]]):
    """kind → policy class, read-only, importing the kind's module on first use: the class
    `<Kind>Policy` of `thresholds.<kind>`."""

    def __getitem__(self, kind: PolicyKind) -> type[Policy]:
        if kind not in POLICY_KINDS:
            raise KeyError(kind)
        module = import_module(f"thresholds.{kind}")
        cls: type[Policy] = getattr(module, f"{kind.capitalize()}Policy")
        return cls

    def __iter__(self) -> Iterator[PolicyKind]:
        return iter(POLICY_KINDS)

    def __len__(self) -> int:
        return len(POLICY_KINDS)


POLICY_CLASSES: Mapping[PolicyKind, type[Policy]] = _PolicyClasses()


def build_policy(spec: PolicySpec) -> Policy:
    """The policy object for a validated spec."""
    return POLICY_CLASSES[spec.kind](spec)
