"""An exact Theil–Sen fit and Kendall test of a sliding window, updated point by point.

A warm service judges a window that differs from the last one by a point or two: the sorted
pairwise slopes (and so Kendall's discordant count) are kept, not rebuilt, and the old
arithmetic (`thresholds.trend`) is reproduced bit for bit on a narrow band around each rank.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Any

from thresholds.base import Point

DAY = 86_400.0
_UNIT = 2.0 ** -53
_TINY = 1e-280
"""Slopes this close to zero (or nearer) might have underflowed: the full fit is used."""
_REBUILD_FRACTION = 0.25
"""Windows that changed by more than this share of their points are rebuilt from scratch."""


class SlidingPairs:
    """The pairwise slopes of the last window seen, sorted, with the pair of points of each.

    Keys are `(v_later - v_earlier) / (t_later - t_earlier)` (seconds), which do not depend on
    the window's origin, unlike the old per-day slopes; `order_statistic` picks the old slope
    of any rank exactly (see there). Windows with tied times, non-finite values or slopes
    near underflow are not handled (`update` answers False): the caller refits in full.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._slot_of: dict[float, int] = {}
        self._times: list[float] = []
        self._values: list[float] = []
        self._free: list[int] = []
        self._keys: Any = None
        self._earlier: Any = None
        self._later: Any = None
        self.rebuilds = 0
        self.updates = 0

    # ------------------------------------------------------------------ maintenance
    def update(self, window: Sequence[Point]) -> bool:
        """Make the pairs those of `window` (sorted by time); False when it cannot be done
        exactly (the caller falls back to the full fit)."""
        import numpy as np

        times = [p.time for p in window]
        values = [p.value for p in window]
        if len(set(times)) != len(times) or not all(map(math.isfinite, values)):
            self._reset()
            return False
        wanted = dict(zip(times, values, strict=True))
        current = self._slot_of
        removed = [t for t, slot in current.items()
                   if t not in wanted or wanted[t] != self._values[slot]
                   or math.copysign(1.0, wanted[t]) != math.copysign(1.0, self._values[slot])]
        kept = len(current) - len(removed)
        gone = set(removed)
        added = [t for t in times if t not in current or t in gone]
        if self._keys is None or len(removed) + len(added) > _REBUILD_FRACTION * len(times) + 2:
            self._rebuild(times, values)
        else:
            if removed:
                self._remove(removed)
            for t in added:
                self._add(t, wanted[t])
            self.updates += 1
        assert kept + len(added) == len(self._slot_of)
        keys = self._keys
        if keys.size and (not bool(np.isfinite(keys[0])) or not bool(np.isfinite(keys[-1]))):
            return False
        if keys.size and bool(np.any((keys != 0) & (np.abs(keys) < _TINY))):
            return False
        return True

    def _reset(self) -> None:
        self._slot_of, self._times, self._values, self._free = {}, [], [], []
        self._keys = self._earlier = self._later = None

    def _rebuild(self, times: list[float], values: list[float]) -> None:
        import numpy as np

        self._reset()
        self.rebuilds += 1
        order = sorted(range(len(times)), key=times.__getitem__)
        self._times = [times[i] for i in order]
        self._values = [values[i] for i in order]
        self._slot_of = {t: i for i, t in enumerate(self._times)}
        t = np.array(self._times, dtype=float)
        v = np.array(self._values, dtype=float)
        earlier, later = np.triu_indices(len(t), 1)
        with np.errstate(over="ignore", invalid="ignore"):
            keys = (v[later] - v[earlier]) / (t[later] - t[earlier])
        order_ = np.argsort(keys, kind="stable")
        self._keys = keys[order_]
        self._earlier = earlier[order_].astype(np.int32)
        self._later = later[order_].astype(np.int32)

    def _remove(self, removed: list[float]) -> None:
        import numpy as np

        slots = np.array([self._slot_of.pop(t) for t in removed], dtype=np.int32)
        keep = ~(np.isin(self._earlier, slots) | np.isin(self._later, slots))
        self._keys, self._earlier, self._later = (
            self._keys[keep], self._earlier[keep], self._later[keep])
        self._free.extend(int(s) for s in slots)

    def _add(self, time: float, value: float) -> None:
        import numpy as np

        if self._free:
            slot = self._free.pop()
            self._times[slot], self._values[slot] = time, value
        else:
            slot = len(self._times)
            self._times.append(time)
            self._values.append(value)
        others = np.fromiter(self._slot_of.values(), dtype=np.int32, count=len(self._slot_of))
        self._slot_of[time] = slot
        if not others.size:
            return
        t = np.array(self._times, dtype=float)
        v = np.array(self._values, dtype=float)
        other_t = t[others]
        before = other_t < time
        earlier = np.where(before, others, slot).astype(np.int32)
        later = np.where(before, slot, others).astype(np.int32)
        with np.errstate(over="ignore", invalid="ignore"):
            keys = (v[later] - v[earlier]) / (t[later] - t[earlier])
        order = np.argsort(keys, kind="stable")
        keys, earlier, later = keys[order], earlier[order], later[order]
        at = np.searchsorted(self._keys, keys)
        self._keys = np.insert(self._keys, at, keys)
        self._earlier = np.insert(self._earlier, at, earlier)
        self._later = np.insert(self._later, at, later)

    # ------------------------------------------------------------------ queries
    @property
    def count(self) -> int:
        return int(self._keys.size)

    def discordant(self) -> int:
        """Pairs whose later point has the lower value (every pair has distinct times)."""
        import numpy as np

        return int(np.searchsorted(self._keys, 0.0, side="left"))

    def order_statistics(self, ranks: Sequence[int], origin: float) -> dict[int, float]:
        """The slopes of the given ranks (0-based) exactly as `thresholds.trend` computes the
        slopes: `(v_j - v_i) / ((t_j - origin)/DAY - (t_i - origin)/DAY)`, then ranked.

        Both those slopes and the keys (times DAY) are within a relative `rho` of the true
        slope of their pair (`rho` bounds the rounding of days near the window's far end over
        its shortest time step). So the old slope F of rank k lies in [phi(X), psi(X)]
        around the key X of rank k (phi, psi: X moved by 4·rho·|X| down, up), every pair whose
        key lies below the band [phi(phi(X)), psi(psi(X))] has an old slope below F, every
        pair above it one above: F is the (k - below)-th old slope within the band.
        """
        import numpy as np

        t = np.array(self._times, dtype=float)
        v = np.array(self._values, dtype=float)
        days = (t - origin) / DAY
        live = np.fromiter(self._slot_of.values(), dtype=np.int64, count=len(self._slot_of))
        live_t = t[live]
        span = float(np.max(np.abs(days[live]))) if live.size else 0.0
        ordered = np.sort(live_t)
        step = float(np.min(np.diff(ordered))) / DAY if ordered.size > 1 else 1.0
        rho = 16 * _UNIT * (span / step + 2.0)
        if not rho < 1e-3:
            raise ArithmeticError("time steps too small for the sliding fit")
        keys, earlier, later = self._keys, self._earlier, self._later
        answers: dict[int, float] = {}
        for rank in ranks:
            x = float(keys[rank]) * DAY
            low = _down(_down(x, rho), rho) / DAY
            high = _up(_up(x, rho), rho) / DAY
            # the band in key units, widened by a relative ulp or two for the conversion
            low -= abs(low) * 4 * _UNIT
            high += abs(high) * 4 * _UNIT
            start = int(np.searchsorted(keys, low, side="left"))
            stop = int(np.searchsorted(keys, high, side="right"))
            i, j = earlier[start:stop], later[start:stop]
            with np.errstate(over="ignore"):
                slopes = (v[j] - v[i]) / (days[j] - days[i])
            slopes.sort()
            answers[rank] = float(slopes[rank - start])
        return answers

    def window_days(self, origin: float) -> Any:
        """The live points' days before `origin`, in time order (as `_Pairs.days`)."""
        import numpy as np

        t = np.array(sorted(self._slot_of), dtype=float)
        return (t - origin) / DAY

    def sorted_values(self) -> Any:
        import numpy as np

        return np.sort(np.array([self._values[s] for s in self._slot_of.values()], dtype=float))


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
            value_ties = trend._tie_sizes(sorted_values)
            middle = count // 2
            ranks = {middle} if count % 2 else {middle - 1, middle}
            alpha = 1.0 - confidence if confidence > 0.5 else confidence
            z = trend._normal_quantile(alpha / 2.0)
            tied = sum(k * (k - 1) * (2 * k + 5) for k in value_ties)
            variance = 1 / 18.0 * (size * (size - 1) * (2 * size + 5) - tied)
            interval: tuple[int, int] | None = None
            if variance >= 0:
                sigma = math.sqrt(variance)
                interval = (max(round((count + z * sigma) / 2.0) - 1, 0),
                            min(round((count - z * sigma) / 2.0), count - 1))
                ranks.update(interval)
            ordered = pairs.order_statistics(sorted(ranks), origin)
            discordant = pairs.discordant() if decreasing is not None else 0
            days = pairs.window_days(origin)
        except ArithmeticError:
            pairs._reset()
            return None
    slope = (ordered[middle] if count % 2
             else float((_f64(ordered[middle - 1]) + _f64(ordered[middle])) / 2))
    low, high = ((ordered[interval[0]], ordered[interval[1]]) if interval
                 else (float("nan"), float("nan")))
    level = trend._median(sorted_values) - slope * trend._median(days)
    fit = trend.RobustFit(slope=slope, low_slope=low, high_slope=high, level=level,
                          origin=origin)
    if decreasing is None:
        return fit, float("nan")
    return fit, _kendall(size, discordant, value_ties, decreasing)


def _f64(value: float) -> Any:
    import numpy as np

    return np.float64(value)


def _kendall(size: int, discordant: int, value_ties: list[int], decreasing: bool) -> float:
    """`trend._kendall_p_value` for a window without tied times."""
    from scipy.special import ndtr  # type: ignore[import-untyped,unused-ignore]

    from thresholds import trend

    y_tie = sum(k * (k - 1) // 2 for k in value_ties)
    total = size * (size - 1) // 2
    if y_tie == total:
        return float("nan")
    alternative = "less" if decreasing else "greater"
    if y_tie == 0 and (size <= 33 or min(discordant, total - discordant) <= 1):
        return trend._kendall_exact(size, total - discordant, alternative)
    y1 = sum(k * (k - 1) * (2 * k + 5) for k in value_ties)
    m = size * (size - 1.0)
    variance = (m * (2 * size + 5) - y1) / 18 + 0.0 + 0 / (9 * m * (size - 2))
    z = (total - y_tie - 2 * discordant) / math.sqrt(variance)
    return float(ndtr(z) if decreasing else ndtr(-z))
