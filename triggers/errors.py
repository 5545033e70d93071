"""The service's exceptions: the shared ones (`pipeline_client.errors`, at the bottom so the
pipeline's steps need nothing of `triggers`) and the service's own, for events and requests.
"""

from __future__ import annotations

from typing import Any

from pipeline_client.errors import (
    ConfigError,
    LaunchRejectedError,
    PolicyConfigError,
    RetrainError,
    TransientError,
)

__all__ = [
    "ConfigError",
    "InvalidEventError",
    "LaunchRejectedError",
    "ModelNotConfiguredError",
    "PolicyConfigError",
    "RequestError",
    "RetrainError",
    "TransientError",
    "UnknownModelError",
]


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


class ModelNotConfiguredError(RetrainError):
    """A request names a model that the policy file does not configure."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.field = "model"
        super().__init__(f"model {model!r} is not configured")


class RequestError(RetrainError):
    """An HTTPS request to the manual trigger is invalid (answered with a 4xx)."""

    def __init__(self, status: int, error: str, field: str | None = None) -> None:
        self.status = status
        self.error = error
        self.field = field
        super().__init__(error)
