"""The exceptions shared by the service and the pipeline's steps: one base class, flat
subclasses, each carrying its data. At the bottom: it imports nothing of this repository.

Permanent errors (bad input, bad config) are distinct from transient ones (retry will help).
`triggers.errors` re-exports these beside the service's own (events, requests).
"""

from __future__ import annotations

from typing import Any


class RetrainError(Exception):
    """Base class of every error the service raises on purpose."""


class PolicyConfigError(RetrainError):
    """The policy file is invalid; `field` is a dotted path into it."""

    def __init__(self, field: str, value: Any, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"{field}: {reason}" + (f" (got {value!r})" if value is not None else ""))


class ConfigError(RetrainError):
    """An environment variable is missing or invalid."""

    def __init__(self, variable: str, reason: str) -> None:
        self.variable = variable
        self.reason = reason
        super().__init__(f"{variable}: {reason}")


class TransientError(RetrainError):
    """A dependency (store, launcher) is unavailable right now; the caller should retry."""


class LaunchRejectedError(RetrainError):
    """The pipeline service refused the run for good (bad template, permission denied)."""

    def __init__(self, run_id: str, reason: str) -> None:
        self.run_id = run_id
        self.reason = reason
        super().__init__(f"run {run_id}: {reason}")
