"""Which policy class implements which kind of rule."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from thresholds.absolute import AbsolutePolicy
from thresholds.alert import AlertPolicy
from thresholds.base import Policy
from thresholds.baseline import BaselinePolicy
from thresholds.cost import CostPolicy
from thresholds.forecast import ForecastPolicy
from thresholds.spec import PolicyKind, PolicySpec
from thresholds.trend import TrendPolicy

POLICY_CLASSES: Mapping[PolicyKind, type[Policy]] = MappingProxyType(
    {cls.kind: cls for cls in (AbsolutePolicy, BaselinePolicy, TrendPolicy, ForecastPolicy,
                                    CostPolicy, AlertPolicy)}
)


def build_policy(spec: PolicySpec) -> Policy:
    """The policy object for a validated spec."""
    return POLICY_CLASSES[spec.kind](spec)
