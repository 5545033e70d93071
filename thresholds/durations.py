"""Durations as written in policy files ("90s", "30m", "24h", "7d", "2w") and back.

A bare number is seconds.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from decimal import Decimal

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
MAX_DAYS = timedelta.max.days


def parse_duration(text: str | int | float | timedelta) -> timedelta:
    """Return the timedelta for `text`; raise ValueError naming the accepted forms."""
    if isinstance(text, timedelta):
        return text
    if isinstance(text, bool):
        raise ValueError("a duration must be a number of seconds or a string like '24h'")
    if isinstance(text, (int, float)):
        try:
            seconds = float(text)
        except OverflowError:  # an int beyond any float: too long, see `_seconds`
            seconds = math.inf if text > 0 else -math.inf
        if math.isnan(seconds):
            raise ValueError("a duration must be a number of seconds, not NaN")
        if seconds < 0:
            raise ValueError("a duration cannot be negative")
        return _seconds(seconds)
    match = _PATTERN.match(text) if isinstance(text, str) else None
    if not match:
        raise ValueError(
            f"{text!r} is not a duration; write e.g. '90s', '30m', '24h', '7d' or '2w'"
        )
    number, unit = match.groups()
    return _seconds(float(number) * _UNITS[unit or "s"])


def _seconds(seconds: float) -> timedelta:
    try:
        return timedelta(seconds=seconds)
    except OverflowError:  # beyond timedelta's 999999999 days
        raise ValueError(f"a duration of {seconds:g} seconds is too long; "
                         f"at most {MAX_DAYS} days") from None


def format_duration(value: timedelta) -> str:
    """The shortest exact spelling of `value` in the largest whole unit."""
    seconds = value.total_seconds()
    for unit in ("w", "d", "h", "m"):
        size = _UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    # Positional, exact and shortest: `:g` wrote "1e+06s", which `parse_duration` refuses.
    if seconds.is_integer():
        return f"{int(seconds)}s"
    return f"{Decimal(repr(seconds)):f}s"
