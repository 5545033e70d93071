"""The decision path: parse ▸ dedupe ▸ record point ▸ evaluate ▸ guard ▸ launch ▸ audit.

`RetrainService` (event_path) is what every entry point (Pub/Sub, HTTPS, CLI, backtest) calls;
a run's life after its claim is in `runs`, the manual retrain and rollback in `manual`, what the
service answers in `results`.
"""

from __future__ import annotations

from triggers.service.event_path import RetrainService, unsettled_gap
from triggers.service.results import EventResult, PendingLaunch, RetrainResult
from triggers.service.runs import HISTORY_EPSILON, HISTORY_SCAN, INFERRED_ENDS

__all__ = [
    "HISTORY_EPSILON",
    "HISTORY_SCAN",
    "INFERRED_ENDS",
    "EventResult",
    "PendingLaunch",
    "RetrainResult",
    "RetrainService",
    "unsettled_gap",
]
