"""The page's charts drawn server-side as SVG: a metric's history per slice coloured by
champion version, policies' guides, decision marks with their reasons as <title> (hover)."""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape
from itertools import groupby

from triggers.cloud.page.data import Mark, Period
from triggers.cloud.page.next_fire import Guide
from triggers.state.protocol import RunRecord, StoredPoint, iso

WIDTH, HEIGHT = 960, 250
LEFT, RIGHT, TOP, BOTTOM = 60, 200, 12, 26
LABEL_CHARS = 30
"""A guide's label beside the chart is cut to this (the whole label is in its hover title)."""
LABEL_GAP = 12
MAX_DRAWN = 1500
"""Points drawn per series at most (min and max of buckets beyond that); marks are all drawn."""
DOTS_UP_TO = 300
"""Series this short get a dot per point, with its value on hover."""
PALETTE = ("#1f77b4", "#9467bd", "#17becf", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#393b79", "#637939", "#843c39")
GUIDE_COLOURS = {"threshold": "#d62728", "reference": "#2ca02c", "fit": "#ff7f0e",
                 "limit": "#ff7f0e"}
OUTCOME_MARKS = {"promoted": "promotion", "rollback": "rollback",
                 "rejected_challenger": "rejected", "failed": "failed", "timed_out": "failed",
                 "launch_failed": "failed", "completed": "completed"}


def version_colours(versions: Sequence[str | None]) -> dict[str | None, str]:
    """A colour per champion version, in order of first appearance."""
    colours: dict[str | None, str] = {}
    for version in versions:
        if version not in colours:
            colours[version] = PALETTE[len(colours) % len(PALETTE)]
    return colours


def downsample(points: Sequence[StoredPoint], limit: int = MAX_DRAWN) -> list[StoredPoint]:
    """At most about `limit` points with the series' shape: each bucket's lowest and highest."""
    if len(points) <= limit:
        return list(points)
    buckets = max(1, limit // 2)
    size = len(points) / buckets
    kept: list[StoredPoint] = []
    for index in range(buckets):
        chunk = points[int(index * size): int((index + 1) * size)]
        if not chunk:
            continue
        low = min(chunk, key=lambda p: p.value)
        high = max(chunk, key=lambda p: p.value)
        kept.extend(sorted({id(low): low, id(high): high}.values(), key=lambda p: p.window_end))
    return kept


class _Scale:
    def __init__(self, start: float, end: float, low: float, high: float) -> None:
        self.start, self.end = start, max(end, start + 1.0)
        if not (math.isfinite(low) and math.isfinite(high)):
            low, high = 0.0, 1.0
        pad = (high - low) * 0.06 or abs(high) * 0.01 or 0.01
        self.low, self.high = low - pad, high + pad
        self.inner_w = WIDTH - LEFT - RIGHT
        self.inner_h = HEIGHT - TOP - BOTTOM

    def x(self, t: float) -> float:
        return round(LEFT + (t - self.start) / (self.end - self.start) * self.inner_w, 1)

    def y(self, v: float) -> float:
        v = min(max(v, self.low), self.high)
        return round(TOP + (self.high - v) / (self.high - self.low) * self.inner_h, 1)


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M")


def _axes(scale: _Scale, label: str) -> list[str]:
    out = [f'<rect x="{LEFT}" y="{TOP}" width="{scale.inner_w}" height="{scale.inner_h}" '
           'class="plot"/>']
    for i in range(6):
        t = scale.start + (scale.end - scale.start) * i / 5
        x = scale.x(t)
        out.append(f'<line x1="{x}" y1="{TOP}" x2="{x}" y2="{HEIGHT - BOTTOM}" class="grid"/>'
                   f'<text x="{x}" y="{HEIGHT - 8}" class="tick" text-anchor="middle">'
                   f'{datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d")}</text>')
    for i in range(5):
        v = scale.low + (scale.high - scale.low) * i / 4
        y = scale.y(v)
        out.append(f'<line x1="{LEFT}" y1="{y}" x2="{WIDTH - RIGHT}" y2="{y}" class="grid"/>'
                   f'<text x="{LEFT - 6}" y="{y + 4}" class="tick" text-anchor="end">'
                   f'{v:.4g}</text>')
    out.append(f'<text x="{LEFT + 6}" y="{TOP + 14}" class="label">{escape(label)}</text>')
    return out


def _title(mark: Mark) -> str:
    d = mark.decision
    head = f"{d.kind}" + (f" · {d.policy}" if d.policy else "") + f" · {_when(mark.time)}"
    return escape(f"{head}\n{d.reason}")


def metric_chart(slice_: str, metric: str, points: Sequence[StoredPoint],
                 guides: Sequence[Guide], marks: Sequence[Mark], promotions: Sequence[Mark],
                 period: Period, colours: dict[str | None, str]) -> str:
    """One metric's chart: its points, the policies' guides, the policies' decision marks."""
    span = period.end - period.start
    end = max([period.end] + [min(g.t1, period.end + span / 4) for g in guides])
    values = [p.value for p in points] + [v for g in guides for v in (g.v0, g.v1)
                                          if math.isfinite(v)]
    if points:  # guides far off the data would flatten it: keep them within reach
        lo, hi = min(p.value for p in points), max(p.value for p in points)
        reach = max(hi - lo, abs(hi) * 0.02, 1e-9)
        values = [v for v in values if lo - reach <= v <= hi + reach]
    scale = _Scale(period.start, end, min(values, default=0.0), max(values, default=1.0))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
           f'class="chart" data-slice="{escape(slice_)}" data-metric="{escape(metric)}" '
           f'role="img" aria-label="{escape(metric)} ({escape(slice_)})">']
    out += _axes(scale, f"{metric} · slice {slice_}")
    for m in promotions:
        x = scale.x(m.time)
        out.append(f'<line x1="{x}" y1="{TOP}" x2="{x}" y2="{HEIGHT - BOTTOM}" '
                   'class="promotion-line"/>')
    for version, group in groupby(downsample(points), key=lambda q: q.model_version):
        coords = " ".join(f"{scale.x(q.window_end)},{scale.y(q.value)}" for q in group)
        out.append(f'<polyline class="series" data-version="{escape(version or "")}" '
                   f'stroke="{colours.get(version, PALETTE[0])}" points="{coords}"/>')
    if len(points) <= DOTS_UP_TO:
        for p in points:
            out.append(f'<circle class="dot" cx="{scale.x(p.window_end)}" '
                       f'cy="{scale.y(p.value)}" r="2.5" '
                       f'fill="{colours.get(p.model_version, PALETTE[0])}"><title>'
                       f'{escape(_when(p.window_end))} · {escape(metric)} {p.value:.6g}'
                       f'{" · v" + escape(p.model_version) if p.model_version else ""}'
                       f'{f" · {p.examples} examples" if p.examples is not None else ""}'
                       '</title></circle>')
    label_ys: list[float] = []
    for g in guides:
        colour = GUIDE_COLOURS.get(g.role, "#555")
        dash = ' stroke-dasharray="6 4"' if g.role in ("threshold", "limit") else ""
        x1, y1 = scale.x(min(g.t1, end)), scale.y(g.v1 if g.t1 <= end else
                                                  g.v0 + (g.v1 - g.v0) * (end - g.t0)
                                                  / max(g.t1 - g.t0, 1e-9))
        out.append(f'<g class="guide" data-policy="{escape(g.policy)}" data-role="{g.role}">'
                   f'<line x1="{scale.x(max(g.t0, period.start))}" y1="{scale.y(g.v0)}" '
                   f'x2="{x1}" y2="{y1}" stroke="{colour}"{dash}/>'
                   + (f'<text x="{WIDTH - RIGHT + 4}" y="{_free_y(label_ys, y1) + 4}" '
                      f'class="guide-label" fill="{colour}">{escape(_cut(g.label))}</text>'
                      if g.role != "limit" else "") +
                   f'<title>{escape(g.label)}</title></g>')
    times = [p.window_end for p in points]
    for m in marks:
        x = scale.x(m.time)
        index = bisect.bisect_left(times, m.time)
        near = [points[i] for i in (index - 1, index) if 0 <= i < len(points)]
        value = min(near, key=lambda p: abs(p.window_end - m.time)).value if near else None
        y = scale.y(value) if value is not None else TOP + 8
        if m.decision.kind == "fired":
            out.append(f'<g class="mark trigger" data-mark="trigger" '
                       f'data-decision="{escape(m.decision.decision_id)}">'
                       f'<path d="M{x - 6},{y - 16} L{x + 6},{y - 16} L{x},{y - 5} Z"/>'
                       f'<title>{_title(m)}</title></g>')
        else:
            out.append(f'<g class="mark suppressed" data-mark="suppressed" '
                       f'data-decision="{escape(m.decision.decision_id)}">'
                       f'<circle cx="{x}" cy="{y - 11}" r="4.5"/>'
                       f'<title>{_title(m)}</title></g>')
    out.append("</svg>")
    return "".join(out)


def timeline_chart(marks: Sequence[Mark], placed: Sequence[Mark], runs: Sequence[RunRecord],
                   period: Period, versions: Sequence[tuple[float, str | None]],
                   colours: dict[str | None, str]) -> str:
    """Champion versions over time, runs (trigger to end) and their outcomes, and the
    decisions no metric chart holds (manual triggers, rollbacks)."""
    height = 120
    scale = _Scale(period.start, period.end, 0.0, 1.0)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" '
           'class="chart timeline" role="img" aria-label="champions, runs and outcomes">',
           f'<rect x="{LEFT}" y="4" width="{scale.inner_w}" height="{height - 26}" '
           'class="plot"/>']
    for label, y in (("champion", 22), ("runs", 56), ("outcomes", 86)):
        out.append(f'<text x="{LEFT - 6}" y="{y + 4}" class="tick" text-anchor="end">'
                   f'{label}</text>')
    for i in range(6):
        t = period.start + (period.end - period.start) * i / 5
        out.append(f'<text x="{scale.x(t)}" y="{height - 8}" class="tick" '
                   f'text-anchor="middle">{datetime.fromtimestamp(t, UTC):%Y-%m-%d}</text>')
    for index, (start, version) in enumerate(versions):
        stop = versions[index + 1][0] if index + 1 < len(versions) else period.end
        x0, x1 = scale.x(max(start, period.start)), scale.x(stop)
        out.append(f'<g class="champion-band" data-version="{escape(version or "")}">'
                   f'<rect x="{x0}" y="14" width="{max(x1 - x0, 1)}" height="16" '
                   f'fill="{colours.get(version, PALETTE[0])}"/>'
                   f'<title>champion v{escape(version or "?")} from {_when(start)}</title></g>')
        if x1 - x0 > 30:
            out.append(f'<text x="{x0 + 4}" y="26" class="band-label">v{escape(version or "?")}'
                       '</text>')
    by_run: dict[str, list[Mark]] = {}
    for m in placed:  # every mark of the period: a run spans its trigger to its end
        if m.decision.run_id:
            by_run.setdefault(m.decision.run_id, []).append(m)
    for run in runs:
        spans = by_run.get(run.run_id)
        if not spans:
            continue
        t0, t1 = spans[0].time, spans[-1].time
        x0, x1 = scale.x(t0), scale.x(t1)
        report = (run.outcome or {}).get("report") or {}
        verdict = report.get("summary") or report.get("error") or "" if isinstance(
            report, dict) else ""
        out.append(f'<g class="run" data-mark="run" data-state="{escape(run.state)}" '
                   f'data-run="{escape(run.run_id)}"><rect x="{x0 - 2}" y="49" '
                   f'width="{max(x1 - x0, 0) + 4}" height="14" rx="3"/><title>'
                   f'{escape(f"run {run.run_id} ({run.policy}): {run.state}")}'
                   f'{escape(chr(10) + str(verdict)) if verdict else ""}</title></g>')
    for m in marks:
        kind = m.decision.kind
        x = scale.x(m.time)
        if kind in OUTCOME_MARKS:
            name = OUTCOME_MARKS[kind]
            shape = {"promotion": f"M{x - 7},{94} L{x + 7},{94} L{x},{80} Z",
                     "rollback": f"M{x},{79} L{x + 7},{87} L{x},{95} L{x - 7},{87} Z",
                     }.get(name, f"M{x - 5},{82} L{x + 5},{92} M{x + 5},{82} L{x - 5},{92}")
            out.append(f'<g class="mark {name}" data-mark="{name}" '
                       f'data-decision="{escape(m.decision.decision_id)}"><path d="{shape}"/>'
                       f'<title>{_title(m)}</title></g>')
        elif kind == "fired":
            out.append(f'<g class="mark trigger" data-mark="trigger" '
                       f'data-decision="{escape(m.decision.decision_id)}">'
                       f'<path d="M{x - 6},{40} L{x + 6},{40} L{x},{51} Z"/>'
                       f'<title>{_title(m)}</title></g>')
        elif kind == "suppressed":
            out.append(f'<g class="mark suppressed" data-mark="suppressed" '
                       f'data-decision="{escape(m.decision.decision_id)}">'
                       f'<circle cx="{x}" cy="44" r="4.5"/><title>{_title(m)}</title></g>')
    out.append("</svg>")
    return "".join(out)


__all__ = ["iso", "metric_chart", "timeline_chart", "version_colours"]


def _cut(label: str) -> str:
    return label if len(label) <= LABEL_CHARS else label[:LABEL_CHARS - 1] + "…"


def _free_y(taken: list[float], y: float) -> float:
    """`y`, moved down past the labels already placed so that no two overlap."""
    while any(abs(y - other) < LABEL_GAP for other in taken):
        y += LABEL_GAP
    taken.append(y)
    return y
