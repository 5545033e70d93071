"""The service's exceptions: one base class, flat subclasses, each carrying its data.

Permanent errors (bad input, bad config) are distinct from transient ones (retry will help).
"""

from __future__ import annotations

from typing import Any


class RetrainError(Exception):
    """Base class of every error the service raises on purpose."""


class InvalidEventError(RetrainError):
    """A metric event (or its envelope) is malformed: permanent, never retried."""

    def __init__(self, field: str, reason: str, value: Any = None) -> None:
        self.field = field
        self.reason = reason
        self.value = value
        super().__init__(f"{field}: {reason}")


class UnknownModelError(InvalidEventError):
    """The event names a model that the policy file does not configure."""

    def __init__(self, model: str) -> None:
        super().__init__("model", f"model {model!r} is not configured in the policy file", model)
        self.model = model


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


class RequestError(RetrainError):
    """An HTTPS request to the manual trigger is invalid (answered with a 4xx)."""

    def __init__(self, status: int, error: str, field: str | None = None) -> None:
        self.status = status
        self.error = error
        self.field = field
        super().__init__(error)
