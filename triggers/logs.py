"""How the service logs: `log_event(logger, level, message, labels={...}, **fields)` puts the
labels and fields on the record; `cloud.logs` formats them as Cloud Logging's structured JSON.
"""

from __future__ import annotations

import logging
from typing import Any


def log_event(
    logger: logging.Logger,
    level: int,
    message: str,
    labels: dict[str, Any] | None = None,
    exc_info: bool = False,
    **fields: Any,
) -> None:
    logger.log(level, message, exc_info=exc_info, extra={"labels": labels or {}, "fields": fields})
