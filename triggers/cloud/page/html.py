"""The two pages as HTML: the models list and one model's period (charts from `svg`).

Plain HTML and inline CSS; no script, no external resource (browsers may be offline).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import quote

from triggers.cloud.page.data import Mark, ModelPage, ModelSummary
from triggers.cloud.page.svg import metric_chart, timeline_chart, version_colours

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;
background:#fafafa}
header{background:#263238;color:#fff;padding:10px 20px}header a{color:#cfd8dc}
main{padding:12px 20px;max-width:1140px}h1{font-size:20px;margin:0}h2{font-size:16px;
margin:18px 0 6px}table{border-collapse:collapse;background:#fff;width:100%}
td,th{border:1px solid #ddd;padding:4px 7px;text-align:left;vertical-align:top;font-size:13px}
th{background:#eceff1}.chart{width:100%;height:auto;background:#fff;border:1px solid #ddd;
margin:4px 0}.plot{fill:#fff;stroke:#bbb}.grid{stroke:#eee}.tick{font-size:11px;fill:#666}
.label{font-size:13px;font-weight:600;fill:#333}.series{fill:none;stroke-width:1.6}
.guide line{stroke-width:1.4}.guide-label{font-size:11px}.band-label{font-size:11px;fill:#fff}
.mark.trigger path{fill:#ff7f0e;stroke:#b35900}.mark.suppressed circle{fill:#fff;
stroke:#888;stroke-width:1.5}.mark.promotion path{fill:#2ca02c}.mark.rollback path{
fill:#9467bd}.mark.rejected path,.mark.failed path{stroke:#d62728;stroke-width:2.5}
.mark.completed path{stroke:#777;stroke-width:2}.run rect{fill:#ffe0b2;stroke:#fb8c00}
.run[data-state=promoted] rect{fill:#c8e6c9;stroke:#2e7d32}.run[data-state=rejected] rect,
.run[data-state=failed] rect{fill:#ffcdd2;stroke:#c62828}.promotion-line{stroke:#2ca02c;
stroke-dasharray:3 3}.mark:hover{opacity:.7}.kind-fired{color:#b35900;font-weight:600}
.kind-promoted{color:#2e7d32;font-weight:600}.muted{color:#777}form{margin:8px 0}
.legend span{display:inline-block;margin-right:14px}.swatch{display:inline-block;width:12px;
height:12px;vertical-align:middle;margin-right:4px}
"""


def _when(t: float | None) -> str:
    return "—" if t is None else datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M")


def _page(title: str, body: str) -> str:
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>{escape(title)}</title><link rel=\"icon\" href=\"data:,\">"
            f"<style>{STYLE}</style></head><body>"
            f"<header><h1>{escape(title)}</h1><a href=\"/\">all models</a></header>"
            f"<main>{body}</main></body></html>")


def models_page(models: list[ModelSummary]) -> str:
    """Each model with its champion, run in flight, cooldown and budget left, last decision."""
    rows = []
    for m in models:
        run = m.run_in_flight
        last = m.last_decision
        rows.append(
            f"<tr data-model=\"{escape(m.model)}\"><td><a href=\"/models/{quote(m.model)}\">"
            f"{escape(m.model)}</a></td><td>{escape(m.champion_version or '—')}</td>"
            f"<td>{escape(f'{run.run_id} ({run.state})') if run else 'none: armed'}</td>"
            f"<td>{escape(m.guards['cooldown'])}</td><td>{escape(m.guards['budget'])}</td>"
            + (f"<td><span class=\"kind-{escape(last.kind)}\">{escape(last.kind)}</span> "
               f"{_when(last.at)}<br><span class=\"muted\">{escape(last.reason)}</span></td>"
               if last else "<td>—</td>") + "</tr>")
    body = ("<table class=\"models\"><tr><th>model</th><th>champion</th><th>run in flight</th>"
            "<th>cooldown</th><th>budget</th><th>last decision</th></tr>"
            + "".join(rows) + "</table>")
    return _page("retrain-trigger: models", body)


def model_page(page: ModelPage) -> str:
    """The model's period: charts, policies and what would fire them, runs, decisions."""
    points = [p for series in page.series.values() for p in series]
    points.sort(key=lambda p: p.window_end)
    colours = version_colours([p.model_version for p in points])
    versions: list[tuple[float, str | None]] = []
    for p in points:
        if not versions or versions[-1][1] != p.model_version:
            versions.append((p.window_end, p.model_version))
    panel_of = {v.name: (v.slice, v.metric) for v in page.policies}
    on_panel: dict[tuple[str, str], list[Mark]] = {}
    elsewhere: list[Mark] = []
    for m in page.marks:
        key = panel_of.get(m.decision.policy or "")
        if m.decision.kind in ("fired", "suppressed") and key in page.series:
            on_panel.setdefault(key, []).append(m)
        else:
            elsewhere.append(m)
    promotions = [m for m in page.marks if m.decision.kind == "promoted"]
    charts = [timeline_chart(elsewhere, page.marks, page.runs, page.period, versions, colours)]
    for (slice_, metric), series in page.series.items():
        guides = [g for v in page.policies if (v.slice, v.metric) == (slice_, metric)
                  and v.outlook is not None for g in v.outlook.guides]
        charts.append(metric_chart(slice_, metric, series, guides,
                                   on_panel.get((slice_, metric), []), promotions,
                                   page.period, colours))
    legend = "".join(f"<span><i class=\"swatch\" style=\"background:{c}\"></i>"
                     f"champion v{escape(v or '?')}</span>" for v, c in colours.items())
    legend += ("<span>▼ trigger fired</span><span>○ suppressed</span><span>▲ promoted</span>"
               "<span>◆ rollback</span><span>✕ rejected or failed</span>"
               "<span class=\"muted\">hover a mark for its reason</span>")
    flying = [r for r in page.runs if r.in_flight]
    disarmed = (f"disarmed until run {flying[0].run_id} ends; then " if flying else "")
    policies = "".join(
        f"<tr data-policy=\"{escape(v.name)}\"><td>{escape(v.name)}</td><td>{v.kind}</td>"
        f"<td>{escape(v.metric)} · {escape(v.slice)}<br><span class=\"muted\">"
        f"{escape(v.rule)}</span></td>"
        + (f"<td><span class=\"kind-{v.outlook.verdict.status}\">{v.outlook.verdict.status}"
           f"</span><br><span class=\"muted\">{escape(v.outlook.verdict.reason)}</span></td>"
           f"<td class=\"next-fire\">{escape(disarmed + v.outlook.next_fire)}</td>"
           if v.outlook else
           "<td>—</td><td class=\"next-fire\">an open incident of its alerting policy</td>")
        + "</tr>" for v in page.policies)
    in_period = {m.decision.run_id for m in page.marks if m.decision.run_id}
    runs = "".join(
        f"<tr data-run=\"{escape(r.run_id)}\"><td>{escape(r.run_id)}</td><td>"
        f"{escape(r.policy)}</td><td>{escape(r.state)}</td><td>{_when(r.created_at)}</td>"
        f"<td>{_when(r.ended_at)}</td><td>{escape(_gate(r.outcome))}</td></tr>"
        for r in page.runs if r.run_id in in_period or r.in_flight)
    def rows(marks: list[Mark]) -> str:
        return "".join(
            f"<tr><td>{_when(m.time)}</td><td><span class=\"kind-{escape(m.decision.kind)}\">"
            f"{escape(m.decision.kind)}</span></td><td>{escape(m.decision.policy or '')}</td>"
            f"<td>{escape(m.decision.reason)}</td></tr>" for m in reversed(marks))

    head = "<tr><th>event time</th><th>kind</th><th>policy</th><th>reason</th></tr>"
    held = [m for m in page.marks if m.decision.kind == "suppressed"]
    decisions = (f"<table class=\"decisions\">{head}"
                 f"{rows([m for m in page.marks if m.decision.kind != 'suppressed'])}</table>"
                 f"<details><summary>{len(held)} suppressed (held back by a guard)</summary>"
                 f"<table class=\"decisions\">{head}{rows(held)}</table></details>")
    period = page.period
    body = (
        f"<p>champion <b>v{escape(page.champion_version or '?')}</b> since "
        f"{_when(page.history_start)} · cooldown {escape(page.guards['cooldown'])} · budget "
        f"{escape(page.guards['budget'])}</p>"
        f"<form method=\"get\">period from <input name=\"from\" type=\"date\" value=\""
        f"{_day(period.start)}\"> to <input name=\"to\" type=\"date\" value=\""
        f"{_day(period.end)}\"> <button>show</button> <span class=\"muted\">(at most 400 days;"
        f" shown: {_when(period.start)} to {_when(period.end)} UTC, event time)</span></form>"
        f"<div class=\"legend\">{legend}</div>" + "".join(charts)
        + "<h2>Policies: now, and what it would take to fire next</h2><table class=\"policies\">"
        "<tr><th>policy</th><th>kind</th><th>watches</th><th>verdict now</th>"
        f"<th>fires next on</th></tr>{policies}</table>"
        "<h2>Runs</h2><table class=\"runs\"><tr><th>run</th><th>policy</th><th>outcome</th>"
        f"<th>started</th><th>ended</th><th>gate</th></tr>{runs}</table>"
        f"<h2>Decisions in the period</h2>{decisions}")
    return _page(f"retrain-trigger: {page.model}", body)


def _day(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d")


def _gate(outcome: Mapping[str, Any] | None) -> str:
    report = (outcome or {}).get("report")
    if isinstance(report, Mapping):
        return str(report.get("summary") or report.get("error") or "")
    return ""
