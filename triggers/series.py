"""The champion's series: which points a policy judges, read once per warm instance.

`ChampionSeries` is the one reader of a champion's points (the service's, the backtest's);
on a store that keeps a per-series write mark it keeps what it read and checks the mark.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_right
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Protocol, runtime_checkable

from thresholds.base import Point, Policy
from triggers.state.protocol import ModelState, StateStore, StoredPoint

MAX_REEVALUATIONS = 50
"""After a late point, at most this many later points are evaluated again."""

TRIM_SLACK = 256
"""Points kept below what the last reads touched before a kept series is trimmed."""

SeriesKey = tuple[str, str, str]


@runtime_checkable
class SeriesMarks(Protocol):
    """A store that can say cheaply whether a series changed: a mark that every write of one
    of its points replaces (a write count and a random token, read in the caller's
    transaction). Stores without it are read afresh for every event."""

    def series_mark(self, model: str, slice_: str, metric: str) -> object: ...

    def record_points_marked(self, points: Sequence[StoredPoint]) -> Mapping[SeriesKey, object]:
        """`record_points`, answering the mark each written series has now."""
        ...


def lookback_start(lookback: timedelta, as_of: float) -> float:
    """The event time after which a lookback policy's points are read to judge `as_of`."""
    return as_of - lookback.total_seconds() - 1e-6


def is_champion_version(state: ModelState, model_version: str | None) -> bool:
    """Whether a point evaluated on `model_version` counts for the champion's policies (a point
    that names no version always does, and every point does while there is no champion)."""
    return (state.champion_version is None or model_version is None
            or model_version == state.champion_version)


EARLIER_SCAN = 4096
"""At most this many points before a champion's history are read for the earlier champions'
first points (the `cost` policy's fresh level); champions before them do not count."""


def earlier_champion_heads(
    read: Callable[[int], list[StoredPoint]], champion: str | None, wanted: int, count: int,
    usable: Callable[[StoredPoint], bool],
) -> list[StoredPoint]:
    """The first `wanted` usable points of each of the latest `count` earlier champions,
    oldest first. `read(limit)` gives the latest `limit` points before the current champion's
    history, oldest first. An earlier champion is a version other than `champion` with at
    least `wanted` usable points there, ordered by its first point (a challenger's few
    evaluations count for nothing; a version back again, by a rollback, keeps its first
    points). The version of a read's oldest point may have earlier points than the read:
    it counts only once a read reaches the series' start (limits ×4, up to EARLIER_SCAN)."""
    if count <= 0 or champion is None:
        return []
    limit = max(64, 4 * count * wanted)
    while True:
        raw = read(limit)
        reached_start = len(raw) < limit
        cut = raw[0].model_version if raw and not reached_start else None
        heads: dict[str, list[StoredPoint]] = {}
        for point in raw:
            version = point.model_version
            if version is None or version == champion or version == cut:
                continue
            first = heads.setdefault(version, [])
            if len(first) < wanted and usable(point):
                first.append(point)
        complete = [first for first in heads.values() if len(first) == wanted]
        if len(complete) >= count or reached_start or limit >= EARLIER_SCAN:
            return [p for first in complete[-count:] for p in first]
        limit = min(4 * limit, EARLIER_SCAN)


class _Kept:
    """What a warm instance knows of one series: every point with window_end > `lower`,
    sorted, as of the store's `mark`; and each point's `Point` (built once, in `plain`)."""

    __slots__ = ("mark", "lower", "times", "points", "plain", "touched", "versions")

    def __init__(self, mark: object) -> None:
        self.mark = mark
        self.lower = math.inf  # nothing known yet
        self.times: list[float] = []
        self.points: list[StoredPoint] = []
        self.plain: list[Point] = []
        self.touched = math.inf
        self.versions: set[str | None] = set()
        """Every model_version of a point put or learnt (a superset of the kept points')."""

    def answer(self, since: float | None, until: float | None, limit: int | None,
               oldest: bool) -> list[StoredPoint] | None:
        """The store's answer to `points(...)` if it follows from what is kept, else None."""
        times = self.times
        high = len(times) if until is None else bisect_right(times, until)
        low_bound = -math.inf if since is None else since
        if low_bound >= self.lower:
            low = bisect_right(times, low_bound)
            if limit is not None:
                if oldest:
                    high = min(high, low + limit)
                else:
                    low = max(low, high - limit)
        elif limit is not None and not oldest and high >= limit:
            low = high - limit  # the latest `limit` all lie in the kept range
        else:
            return None
        if low < high:
            self.touched = min(self.touched, times[low])
        return self.points[low:high]

    def learn(self, since: float | None, until: float | None, limit: int | None,
              oldest: bool, result: list[StoredPoint]) -> None:
        """Extend what is kept downwards with a store answer that reaches the kept range."""
        self.versions.update(p.model_version for p in result)
        low = -math.inf if since is None else since
        high = math.inf if until is None else until
        if limit is not None and len(result) >= limit:
            if oldest:
                high = result[-1].window_end
            else:
                low = math.nextafter(result[0].window_end, -math.inf)
        if high < self.lower or low >= self.lower:
            return
        below = [p for p in result if p.window_end <= self.lower and p.window_end > low]
        self.times[:0] = [p.window_end for p in below]
        self.points[:0] = below
        self.plain[:0] = [_plain(p) for p in below]
        self.lower = low
        if below:
            self.touched = min(self.touched, below[0].window_end)

    def run_of(self, stored: Sequence[StoredPoint]) -> list[Point] | None:
        """The `Point`s of `stored` if it is a run of consecutive kept points, else None."""
        if not stored:
            return []
        points, size = self.points, len(stored)
        first = bisect_right(self.times, stored[0].window_end) - 1
        if (first < 0 or first + size > len(points) or points[first] is not stored[0]
                or points[first + size - 1] is not stored[-1]):
            return None  # (kept times are distinct and sorted: same ends, same length, same run)
        return self.plain[first:first + size]

    def plain_of(self, point: StoredPoint) -> Point:
        """`point`'s `Point`: the kept one if `point` is kept, else a new one."""
        index = bisect_right(self.times, point.window_end) - 1
        if index >= 0 and self.points[index] is point:
            return self.plain[index]
        return _plain(point)

    def put(self, point: StoredPoint) -> None:
        """A point this instance wrote (the same key again replaces it)."""
        t = point.window_end
        self.versions.add(point.model_version)
        if t <= self.lower:
            return
        times = self.times
        if not times or t > times[-1]:
            times.append(t)
            self.points.append(point)
            self.plain.append(_plain(point))
            return
        index = bisect_right(times, t)
        if index and times[index - 1] == t:
            self.points[index - 1] = point
            self.plain[index - 1] = _plain(point)
            return
        times.insert(index, t)
        self.points.insert(index, point)
        self.plain.insert(index, _plain(point))

    def trim(self) -> None:
        """Forget the points no read reached since the last trim (beyond some slack)."""
        if self.touched == math.inf:
            return
        cut = bisect_right(self.times, self.touched) - 1 - TRIM_SLACK
        if cut > TRIM_SLACK:
            self.lower = math.nextafter(self.times[cut], -math.inf)
            del self.times[:cut]
            del self.points[:cut]
            del self.plain[:cut]
        self.touched = math.inf


def _latest_points(kept: _Kept, policy: Policy, state: ModelState,
                   as_of: float | None) -> list[StoredPoint] | None:
    """What `ChampionSeries._window` answers for a rule that counts the latest points (no
    lookback, no first points), judged as of the newest point, when every kept point counts
    and is usable: the last `evaluation_points + 1` kept, sliced at once (the common case of
    a warm instance, and of every in-order backtest step). None: take the general way."""
    spec, champion, times = policy.spec, state.champion_version, kept.times
    if (spec.baseline is not None or spec.cost is not None or spec.min_examples
            or not times or (as_of is not None and as_of != times[-1])
            or not (champion is None or kept.versions <= {champion, None})):
        return None
    answer = kept.answer(state.history_start, None, spec.evaluation_points + 1, False)
    return answer or None


def _plain(p: StoredPoint) -> Point:
    return Point(p.window_end, p.value, p.examples)


class ChampionSeries:
    """Reads and windows a champion's points for its policies: only the champion's version,
    from its history start, bounded by what each policy reads.

    On a store with `SeriesMarks`, the points read stay in memory: a warm instance checks the
    series' mark (in the caller's transaction) and extends what it kept with the points it
    writes itself (`record`); a mark it did not expect — another instance wrote — drops them.
    """

    def __init__(self, store: StateStore, keep: bool = True) -> None:
        self.store = store
        self._marks: SeriesMarks | None = (
            store if keep and isinstance(store, SeriesMarks) else None)
        """The store, if it keeps marks and points are kept (a runtime protocol check is
        slow: made once here, not per event)."""
        self.keep = self._marks is not None
        self._kept: dict[SeriesKey, _Kept] = {}
        self._lock = threading.RLock()
        self._local = threading.local()  # .marks: the marks of `one_transaction`, if open

    @contextmanager
    def one_transaction(self) -> Iterator[None]:
        """Entered inside one store transaction (`store.atomic()`): a series' mark, once read
        or written in it, is not read again (no other writer can replace it meanwhile)."""
        outer = getattr(self._local, "marks", None) is None
        if outer:
            self._local.marks = {}
        try:
            yield
        finally:
            if outer:
                self._local.marks = None

    def _mark(self, key: SeriesKey) -> object:
        """The store's mark of `key` (remembered within `one_transaction`)."""
        marks: dict[SeriesKey, object] | None = getattr(self._local, "marks", None)
        if marks is not None and key in marks:
            return marks[key]
        store = self._marks
        assert store is not None  # (`keep` only)
        mark = store.series_mark(*key)
        if marks is not None:
            marks[key] = mark
        return mark

    # ------------------------------------------------------------------ writes
    def record(self, points: Sequence[StoredPoint]) -> None:
        """`store.record_points(points)`, keeping what is kept in step."""
        if not self.keep:
            self.store.record_points(points)
            return
        store = self._marks
        assert store is not None
        with self._lock:
            keys = {(p.model, p.slice, p.metric) for p in points}
            before = {key: self._mark(key) for key in keys}
            try:
                written = store.record_points_marked(points)
            except BaseException:
                marks = getattr(self._local, "marks", None)
                for key in keys:
                    self._kept.pop(key, None)
                    if marks is not None:
                        marks.pop(key, None)
                raise
            marks = getattr(self._local, "marks", None)
            for key in keys:
                after = written[key]
                if marks is not None:
                    marks[key] = after
                kept = self._kept.get(key)
                if kept is None or kept.mark != before[key]:
                    self._kept.pop(key, None)
                    continue
                kept.trim()
                for p in points:
                    if (p.model, p.slice, p.metric) == key:
                        kept.put(p)
                kept.mark = after

    def forget(self) -> None:
        """Drop everything kept (a transaction that recorded points was rolled back)."""
        with self._lock:
            self._kept.clear()

    # ------------------------------------------------------------------ reads
    def points(self, model: str, slice_: str, metric: str, *, since: float | None = None,
               until: float | None = None, limit: int | None = None,
               oldest: bool = False, kept: _Kept | None = None) -> list[StoredPoint]:
        """`store.points(...)`, from what is kept where it answers."""
        if kept is not None:
            answer = kept.answer(since, until, limit, oldest)
            if answer is not None:
                return answer
        result = self.store.points(model, slice_, metric, since=since, until=until,
                                   limit=limit, oldest=oldest)
        if kept is not None:
            kept.learn(since, until, limit, oldest, result)
        return result

    def _checked(self, key: SeriesKey) -> _Kept | None:
        """What is kept of `key`, valid as of the store's mark now (None: not keeping)."""
        if not self.keep:
            return None
        mark = self._mark(key)
        kept = self._kept.get(key)
        if kept is None or kept.mark != mark:
            kept = self._kept[key] = _Kept(mark)
        return kept

    def as_points(self, model: str, policy: Policy, stored: Sequence[StoredPoint],
                  champion: str | None = None) -> list[Point]:
        """The policy's `Point`s of `stored` (built once per kept point); for a `cost`
        policy, the leading points of versions other than `champion` (the earlier champions'
        first points that `window` read) tagged as theirs."""
        earlier = 0
        if policy.spec.cost is not None and champion is not None:
            while (earlier < len(stored) and stored[earlier].model_version is not None
                   and stored[earlier].model_version != champion):
                earlier += 1
        tagged = [Point(p.window_end, p.value, p.examples, p.model_version)
                  for p in stored[:earlier]]
        rest = stored[earlier:] if earlier else stored
        kept = self._kept.get((model, policy.spec.slice, policy.metric)) if self.keep else None
        if kept is None:
            return tagged + [Point(p.window_end, p.value, p.examples) for p in rest]
        run = kept.run_of(rest)
        if run is None:
            run = [kept.plain_of(p) for p in rest]
        return tagged + run if tagged else run

    def window(
        self, model: str, policy: Policy, state: ModelState, as_of: float | None = None
    ) -> tuple[list[StoredPoint], float]:
        """What `policy` needs to judge the champion as of `as_of` (default: its latest point)
        and as of each of the next MAX_REEVALUATIONS points, oldest first; and the time from
        which the points are contiguous (a baseline's first points stand apart).

        Bounded reads: the lookback window, or the latest points the rule counts (and the
        champion's first points for a baseline), plus one predecessor for the gap check.
        """
        with self._lock:
            kept = self._checked((model, policy.spec.slice, policy.metric))
            if kept is not None and policy.lookback is None:
                latest = _latest_points(kept, policy, state, as_of)
                if latest is not None:
                    return latest, latest[0].window_end
            return self._window(model, policy, state, as_of, kept)

    def _window(
        self, model: str, policy: Policy, state: ModelState, as_of: float | None,
        kept: _Kept | None,
    ) -> tuple[list[StoredPoint], float]:
        spec = policy.spec
        start = state.history_start

        def read(**bounds: float | int | bool | None) -> list[StoredPoint]:
            return self.points(model, spec.slice, policy.metric, kept=kept, **bounds)  # type: ignore[arg-type]

        champion = state.champion_version

        def counts(p: StoredPoint) -> bool:
            return is_champion_version(state, p.model_version)

        def counted(points: list[StoredPoint]) -> list[StoredPoint]:
            """`points` that count for the champion (`counts`, inlined: it is the hot loop)."""
            if champion is None or kept is not None and kept.versions <= {champion, None}:
                return points  # (every point read went through `kept`: put or learnt)
            return [p for p in points
                    if p.model_version == champion or p.model_version is None]

        def usable(p: StoredPoint) -> bool:
            return counts(p) and (p.examples is None or p.examples >= spec.min_examples)

        # every point read counts and is usable: no need to count the usable ones
        all_usable = not spec.min_examples and (
            champion is None or kept is not None and kept.versions <= {champion, None})

        def usable_any(p: StoredPoint) -> bool:
            return p.examples is None or p.examples >= spec.min_examples

        def fetch(wanted: int, oldest: bool = False, **bounds: float | None) -> list[StoredPoint]:
            """At least `wanted` usable points at the near end (or all there are)."""
            limit = wanted
            while True:
                raw = read(limit=limit, oldest=oldest, **bounds)
                if len(raw) < limit or all_usable or sum(map(usable, raw)) >= wanted:
                    return counted(raw)
                limit *= 4

        if as_of is None:
            latest = read(since=start, limit=1)
            if not latest:
                return [], 0.0
            as_of = latest[0].window_end
        lookback = policy.lookback

        def up_to(until: float | None) -> list[StoredPoint]:
            """The points judging `as_of` needs, and those after it up to `until`."""
            if lookback is None:
                return fetch(spec.evaluation_points + 1, since=start, until=until)

            def since(lower: float) -> list[StoredPoint]:
                return counted(read(since=max(lower, start or lower), until=until))

            lower = lookback_start(lookback, as_of)
            window = since(lower)
            judged = ([p for p in window if p.window_end <= as_of] if spec.min_examples
                      else None)
            if judged and not usable(judged[-1]):
                # The policy ignores unusable points: its window ends at the newest usable one.
                usable_ends = [p.window_end for p in fetch(1, since=start, until=as_of)
                               if usable(p)]
                if usable_ends:
                    lower = lookback_start(lookback, max(usable_ends))
                    window = since(lower)
            if window and window[0].window_start is not None:  # its predecessor, for gaps
                window = fetch(1, since=start, until=lower) + window
            return window

        before, after = up_to(None), []
        if before and before[-1].window_end > as_of:  # a late point: bounded re-evaluation
            before = up_to(as_of)
            after = fetch(MAX_REEVALUATIONS, oldest=True, since=as_of)
        head: list[StoredPoint] = []
        if spec.baseline is not None:
            head = fetch(spec.baseline.reference_points, oldest=True, since=start)
        elif spec.cost is not None:  # the champions' first points: the fresh level
            head = fetch(spec.cost.reference_points, oldest=True, since=start)
            if start is not None:
                head = earlier_champion_heads(
                    lambda limit: read(until=start, limit=limit), champion,
                    spec.cost.reference_points, spec.cost.champions - 1, usable_any) + head
        contiguous = before[0].window_end if before else as_of
        if not head and not after:  # already sorted, one point per time
            return before, contiguous
        merged = {p.window_end: p for p in (*head, *before, *after)}
        return [merged[t] for t in sorted(merged)], contiguous
