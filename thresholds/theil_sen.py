"""An exact Theil–Sen fit and Kendall test of a sliding window, updated point by point.

A warm service judges a window that differs from the last one by a point or two: only the
pairwise slopes near the ranks it needs are kept sorted (with counts of those below and of the
negative ones), and the old arithmetic (`thresholds.trend`) is reproduced bit for bit on a
narrow band around each rank.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

from thresholds.base import Point

DAY = 86_400.0
_UNIT = 2.0 ** -53
_TINY = 1e-280
"""Slopes this close to zero (or nearer) might have underflowed: the full fit is used."""
_REBUILD_FRACTION = 0.25
"""Windows that changed by more than this share of their points are rebuilt from scratch."""
_SHIFT = 15
_SLOTS = 1 << _SHIFT
"""Points a sliding window may hold (a pair's two slots are packed in one int32)."""
_REBUILD_PAIRS = 4096
"""A band that grew (with its window) by twice its size and this many pairs is rebuilt."""
_MARGIN_POINTS = 3
"""Ranks kept sorted on each side of the ranks asked for, per point of the window: each point
that enters or leaves moves a rank by less than one window, so a band lasts several events."""


class SlidingPairs:
    """The pairwise slopes of the last window seen: those within a band of ranks sorted, with
    the pair of points of each; those below the band and those below zero counted.

    Keys are `(v_later - v_earlier) / (t_later - t_earlier)` (seconds), which do not depend on
    the window's origin, unlike the old per-day slopes; `order_statistics` picks the old slope
    of any rank exactly (see there). A pair leaving the window has its key computed again, the
    same way, to be taken off the counts. Windows with tied times, non-finite values, a value
    -0.0 or slopes near underflow are not handled (`update` answers False, `order_statistics`
    None): the caller refits in full.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rebuilds = 0
        self.updates = 0
        self._reset()

    def _reset(self) -> None:
        import numpy as np

        self._slot_of: dict[float, int] = {}
        self._t: Any = np.empty(0)
        self._v: Any = np.empty(0)
        self._free: list[int] = []
        self._last: tuple[list[float], list[float]] = ([], [])
        """The window last taken (times, values), sorted by time: the next is compared to it."""
        self._stale = True  # the counts and band must be rebuilt from the points
        self._low = -math.inf  # the band: every key in [low, high] is in _keys
        self._high = math.inf
        self._below = 0  # keys < low
        self._negative = 0  # keys < 0 (Kendall's discordant pairs)
        self._bad = 0  # keys that are not finite, or might have underflowed
        self._keys: Any = np.empty(0)
        self._built = 0  # how many pairs the band held when built
        self._codes: Any = np.empty(0, dtype=np.int32)  # earlier slot * _SLOTS + later slot
        self._live_slots: Any = None

    # ------------------------------------------------------------------ maintenance
    def update(self, window: Sequence[Point]) -> bool:
        """Make the pairs those of `window` (sorted by time); False when it cannot be done
        exactly (the caller falls back to the full fit)."""
        times = [p.time for p in window]
        values = [p.value for p in window]
        if (len(set(times)) != len(times) or not all(map(math.isfinite, values))
                or 0.0 in values and any(math.copysign(1.0, v) < 0 for v in values if v == 0)):
            # (a value -0.0 makes some zero slopes -0.0: which zero the full fit ranks
            # where depends on its sort, not on the slopes)
            self._reset()
            return False
        removed, added = self._changes(times, values)
        if self._stale or len(removed) + len(added) > _REBUILD_FRACTION * len(times) + 2:
            self._load(times, values)
            return True
        wanted = dict(zip(times, values, strict=True))
        for t in removed:
            self._remove(t)
        for t in added:
            self._add(t, wanted[t])
        self._last = (times, values)
        self.updates += 1
        return True

    def _changes(self, times: list[float], values: list[float]) -> tuple[list[float], list[float]]:
        """The times of the points to take off (gone, or with another value) and to put in."""
        last_times, last_values = self._last
        if times and last_times:  # the usual step: older points left, newer ones came
            skip = bisect_left(last_times, times[0])
            kept = len(last_times) - skip
            if (kept <= len(times) and times[:kept] == last_times[skip:]
                    and values[:kept] == last_values[skip:] and 0.0 not in values):
                return last_times[:skip], times[kept:]
        current = self._slot_of
        v = self._v.tolist()
        wanted = dict(zip(times, values, strict=True))
        removed = []
        for t, slot in current.items():
            new, old = wanted.get(t), v[slot]
            if new is None or new != old or math.copysign(1.0, new) != math.copysign(1.0, old):
                removed.append(t)
        gone = set(removed)
        return removed, [t for t in times if t not in current or t in gone]

    def _load(self, times: list[float], values: list[float]) -> None:
        """Take the window's points; counts and band are built when ranks are asked for."""
        import numpy as np

        self._reset()
        order = sorted(range(len(times)), key=times.__getitem__)
        self._t = np.array([times[i] for i in order], dtype=float)
        self._v = np.array([values[i] for i in order], dtype=float)
        self._slot_of = {float(t): i for i, t in enumerate(self._t.tolist())}
        self._last = (times, values)

    def _rebuild(self, ranks: Sequence[int], rho: float) -> None:
        """Every key computed and sorted; the band kept around `ranks` (and around the keys'
        neighbourhoods `order_statistics` looks into)."""
        import numpy as np

        self.rebuilds += 1
        if self._t.size > _SLOTS:
            raise ArithmeticError("too many points for the sliding fit")
        live = self._live()
        live = live[np.argsort(self._t[live], kind="stable")]
        i, j = np.triu_indices(live.size, 1)
        earlier, later = live[i], live[j]
        keys = self._pair_keys(earlier, later)
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        count = keys.size
        self._negative = int(np.searchsorted(keys, 0.0, side="left"))
        self._bad = self._bad_count(keys)
        margin = _MARGIN_POINTS * live.size + 64
        first = min(ranks, default=0) - margin
        last = max(ranks, default=0) + margin
        self._low = float(keys[first]) if 0 < first < count else -math.inf
        self._high = float(keys[last]) if 0 <= last < count - 1 else math.inf
        for rank in ranks:
            if 0 <= rank < count:
                low, high = _neighbourhood(float(keys[rank]), rho)
                self._low, self._high = min(self._low, low), max(self._high, high)
        start = int(np.searchsorted(keys, self._low, side="left"))
        stop = int(np.searchsorted(keys, self._high, side="right"))
        self._below = start
        self._keys = keys[start:stop]
        self._codes = (earlier * _SLOTS + later)[order[start:stop]].astype(np.int32)
        self._built = stop - start
        self._stale = False

    def _pair_keys(self, earlier: Any, later: Any) -> Any:
        import numpy as np

        t, v = self._t, self._v
        with np.errstate(over="ignore", invalid="ignore"):
            return (v[later] - v[earlier]) / (t[later] - t[earlier])

    @staticmethod
    def _bad_count(keys: Any) -> int:
        import numpy as np

        with np.errstate(invalid="ignore"):
            tiny = (keys != 0) & (np.abs(keys) < _TINY)
            return int(np.count_nonzero(~np.isfinite(keys) | tiny))

    def _pairs_with(self, slot: int) -> tuple[Any, Any]:
        """The keys of `slot` with every other live point, sorted, and each pair's code."""
        import numpy as np

        others = self._live()
        others = others[others != slot]
        before = self._t[others] < self._t[slot]
        earlier = np.where(before, others, slot)
        later = np.where(before, slot, others)
        keys = self._pair_keys(earlier, later)
        order = np.argsort(keys, kind="stable")
        return keys[order], (earlier * _SLOTS + later)[order].astype(np.int32)

    def _count(self, keys: Any, sign: int) -> tuple[int, int]:
        """Add (sign 1) or take off (-1) the counts of sorted `keys`; where the band's are."""
        import numpy as np

        start, negative, below_tiny = (int(i) for i in np.searchsorted(
            keys, [self._low, 0.0, _TINY], side="left"))
        stop, above_zero, above_minus_tiny = (int(i) for i in np.searchsorted(
            keys, [self._high, 0.0, -_TINY], side="right"))
        # keys in (-TINY, 0) and (0, TINY) might have underflowed
        bad = (negative - above_minus_tiny) + (below_tiny - above_zero)
        if keys.size and not (math.isfinite(keys[0]) and math.isfinite(keys[-1])):
            bad += int(np.count_nonzero(~np.isfinite(keys)))
        self._below += sign * int(start)
        self._negative += sign * int(negative)
        self._bad += sign * bad
        return int(start), stop

    def _remove(self, time: float) -> None:
        slot = self._slot_of[time]
        keys, _ = self._pairs_with(slot)
        self._count(keys, -1)
        codes = self._codes
        keep = ((codes >> _SHIFT) != slot) & ((codes & (_SLOTS - 1)) != slot)
        self._keys, self._codes = self._keys[keep], codes[keep]
        del self._slot_of[time]
        self._live_slots = None
        self._free.append(slot)

    def _add(self, time: float, value: float) -> None:
        import numpy as np

        if self._free:
            slot = self._free.pop()
        else:
            slot = self._t.size
            grown = max(2 * slot, 16)
            if grown > _SLOTS:
                raise ArithmeticError("too many points for the sliding fit")
            self._t = np.resize(self._t, grown)
            self._v = np.resize(self._v, grown)
            self._free.extend(range(grown - 1, slot, -1))
        self._t[slot], self._v[slot] = time, value
        self._slot_of[time] = slot
        self._live_slots = None
        keys, codes = self._pairs_with(slot)
        start, stop = self._count(keys, 1)
        if start >= stop:
            return
        keys, codes = keys[start:stop], codes[start:stop]
        at = np.searchsorted(self._keys, keys)
        self._keys = np.insert(self._keys, at, keys)
        self._codes = np.insert(self._codes, at, codes)

    def _live(self) -> Any:
        """The live slots (an array, rebuilt after a change)."""
        import numpy as np

        if self._live_slots is None:
            self._live_slots = np.fromiter(self._slot_of.values(), dtype=np.int64,
                                           count=len(self._slot_of))
        return self._live_slots

    # ------------------------------------------------------------------ queries
    @property
    def count(self) -> int:
        size = len(self._slot_of)
        return size * (size - 1) // 2

    @property
    def kept(self) -> int:
        """The pairs kept sorted (those in the band)."""
        return int(self._keys.size)

    def discordant(self) -> int:
        """Pairs whose later point has the lower value (every pair has distinct times)."""
        return self._negative

    def order_statistics(self, ranks: Sequence[int], origin: float) -> dict[int, float] | None:
        """The slopes of the given ranks (0-based) exactly as `thresholds.trend` computes the
        slopes: `(v_j - v_i) / ((t_j - origin)/DAY - (t_i - origin)/DAY)`, then ranked; None
        when some slope is not finite or might have underflowed.

        Both those slopes and the keys (times DAY) are within a relative `rho` of the true
        slope of their pair (`rho` bounds the rounding of days near the window's far end over
        its shortest time step). So the old slope F of rank k lies in [phi(X), psi(X)]
        around the key X of rank k (phi, psi: X moved by 4·rho·|X| down, up), every pair whose
        key lies below the band [phi(phi(X)), psi(psi(X))] has an old slope below F, every
        pair above it one above: F is the (k - below)-th old slope within the band.
        """
        days, rho = self._days(origin)
        if self._stale:
            self._rebuild(ranks, rho)
        if self._bad:
            return None
        answers = self._select(ranks, days, rho)
        if answers is None or self._keys.size > 2 * self._built + _REBUILD_PAIRS:
            # the ranks drifted out of the kept band, or it grew with the window
            self._rebuild(ranks, rho)
            answers = self._select(ranks, days, rho)
            if answers is None:
                raise ArithmeticError("the kept band does not hold the ranks")
        return answers

    def _days(self, origin: float) -> tuple[Any, float]:
        """Each slot's days before `origin`, and `rho` (see `order_statistics`)."""
        import numpy as np

        live = self._live()
        days = (self._t - origin) / DAY
        span = float(np.max(np.abs(days[live]))) if live.size else 0.0
        ordered = np.sort(self._t[live])
        step = float(np.min(np.diff(ordered))) / DAY if ordered.size > 1 else 1.0
        rho = 16 * _UNIT * (span / step + 2.0)
        if not rho < 1e-3:
            raise ArithmeticError("time steps too small for the sliding fit")
        return days, rho

    def _select(self, ranks: Sequence[int], days: Any, rho: float) -> dict[int, float] | None:
        import numpy as np

        keys, codes, below = self._keys, self._codes, self._below
        v = self._v
        answers: dict[int, float] = {}
        for rank in ranks:
            if not below <= rank < below + keys.size:
                return None
            x = float(keys[rank - below])
            low, high = _neighbourhood(x, rho)
            if low < self._low or high > self._high:
                return None
            if x == 0.0:  # the band holds keys +0.0 only: pairs of equal values, slope +0.0
                answers[rank] = 0.0
                continue
            start = int(np.searchsorted(keys, low, side="left"))
            stop = int(np.searchsorted(keys, high, side="right"))
            i, j = codes[start:stop] >> _SHIFT, codes[start:stop] & (_SLOTS - 1)
            with np.errstate(over="ignore"):
                slopes = (v[j] - v[i]) / (days[j] - days[i])
            slopes.sort()
            answers[rank] = float(slopes[rank - below - start])
        return answers

    def window_days(self, origin: float) -> Any:
        """The live points' days before `origin`, in time order (as `AllPairs.days`)."""
        import numpy as np

        t = np.array(sorted(self._slot_of), dtype=float)
        return (t - origin) / DAY

    def sorted_values(self) -> Any:
        import numpy as np

        return np.sort(self._v[self._live()])


def _neighbourhood(key: float, rho: float) -> tuple[float, float]:
    """The keys whose old slopes may fall on either side of the old slope of `key`'s pair."""
    x = key * DAY
    low = _down(_down(x, rho), rho) / DAY
    high = _up(_up(x, rho), rho) / DAY
    # the band in key units, widened by a relative ulp or two for the conversion
    return low - abs(low) * 4 * _UNIT, high + abs(high) * 4 * _UNIT


def _down(x: float, rho: float) -> float:
    return x - 4 * rho * abs(x)


def _up(x: float, rho: float) -> float:
    return x + 4 * rho * abs(x)


def sliding_statistics(
    pairs: SlidingPairs, window: Sequence[Point], confidence: float, decreasing: bool | None
) -> tuple[Any, float] | None:
    """The Theil–Sen fit (and, unless `decreasing` is None, Kendall's one-sided p-value) of
    `window`, bit-identical to `thresholds.trend`'s full refit; None when the sliding pairs
    cannot give it exactly (the caller refits in full)."""
    from thresholds import trend

    with pairs.lock:
        try:
            if not pairs.update(window):
                return None
            origin = window[-1].time
            count, size = pairs.count, len(window)
            sorted_values = pairs.sorted_values()
            value_ties = trend.tie_sizes(sorted_values)
            middle = count // 2
            ranks = {middle} if count % 2 else {middle - 1, middle}
            alpha = 1.0 - confidence if confidence > 0.5 else confidence
            z = trend.normal_quantile(alpha / 2.0)
            tied = sum(k * (k - 1) * (2 * k + 5) for k in value_ties)
            variance = 1 / 18.0 * (size * (size - 1) * (2 * size + 5) - tied)
            interval: tuple[int, int] | None = None
            if variance >= 0:
                sigma = math.sqrt(variance)
                interval = (max(round((count + z * sigma) / 2.0) - 1, 0),
                            min(round((count - z * sigma) / 2.0), count - 1))
                ranks.update(interval)
            ordered = pairs.order_statistics(sorted(ranks), origin)
            if ordered is None:
                return None
            discordant = pairs.discordant() if decreasing is not None else 0
            days = pairs.window_days(origin)
        except ArithmeticError:
            pairs._reset()
            return None
    slope = (ordered[middle] if count % 2
             else float((_f64(ordered[middle - 1]) + _f64(ordered[middle])) / 2))
    low, high = ((ordered[interval[0]], ordered[interval[1]]) if interval
                 else (float("nan"), float("nan")))
    level = trend.median_of_sorted(sorted_values) - slope * trend.median_of_sorted(days)
    fit = trend.RobustFit(slope=slope, low_slope=low, high_slope=high, level=level,
                          origin=origin)
    if decreasing is None:
        return fit, float("nan")
    return fit, _kendall(size, discordant, value_ties, decreasing)


def _f64(value: float) -> Any:
    import numpy as np

    return np.float64(value)


def _kendall(size: int, discordant: int, value_ties: list[int], decreasing: bool) -> float:
    """`trend.kendall_p_value_of_pairs` for a window without tied times."""
    from scipy.special import ndtr  # type: ignore[import-untyped,unused-ignore]

    from thresholds import trend

    y_tie = sum(k * (k - 1) // 2 for k in value_ties)
    total = size * (size - 1) // 2
    if y_tie == total:
        return float("nan")
    alternative = "less" if decreasing else "greater"
    if y_tie == 0 and (size <= 33 or min(discordant, total - discordant) <= 1):
        return trend.kendall_exact(size, total - discordant, alternative)
    y1 = sum(k * (k - 1) * (2 * k + 5) for k in value_ties)
    m = size * (size - 1.0)
    variance = (m * (2 * size + 5) - y1) / 18 + 0.0 + 0 / (9 * m * (size - 2))
    z = (total - y_tie - 2 * discordant) / math.sqrt(variance)
    return float(ndtr(z) if decreasing else ndtr(-z))
