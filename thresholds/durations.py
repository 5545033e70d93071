"""Durations as written in policy files ("90s", "30m", "24h", "7d", "2w") and back.

A bare number is seconds.
"""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")


def parse_duration(text: str | int | float | timedelta) -> timedelta:
    """Return the timedelta for `text`; raise ValueError naming the accepted forms."""
    if isinstance(text, timedelta):
        return text
    if isinstance(text, bool):
        raise ValueError("a duration must be a number of seconds or a string like '24h'")
    if isinstance(text, (int, float)):
        if text < 0:
            raise ValueError("a duration cannot be negative")
        return timedelta(seconds=float(text))
    match = _PATTERN.match(text)
    if not match:
        raise ValueError(
            f"{text!r} is not a duration; write e.g. '90s', '30m', '24h', '7d' or '2w'"
        )
    number, unit = match.groups()
    return timedelta(seconds=float(number) * _UNITS[unit or "s"])


def format_duration(value: timedelta) -> str:
    """The shortest exact spelling of `value` in the largest whole unit."""
    seconds = value.total_seconds()
    for unit in ("w", "d", "h", "m"):
        size = _UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
