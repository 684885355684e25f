"""report.html: one self-contained, offline HTML file with a summary table and the plotly charts.

plotly.js is embedded once, in a single <script> in the head; every chart is a div plus a small script that
draws it, so ten scenarios cost little more than one. A short script ties the legends together: clicking a
scenario in any chart's legend shows or hides it in every chart.
"""
from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from simulator.present import plots
from simulator.present.replicas import replicas_figure


class ResultLike(Protocol):
    """What the report reads from a SimResult: the three frames of the results contract and summary()."""

    requests: pd.DataFrame
    steps: pd.DataFrame
    kv: pd.DataFrame

    def summary(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class SummaryColumn:
    """One column of the comparison table: summary key, header with unit, scale to that unit, and which
    direction is better ('max', 'min', or '' for columns that are not ranked)."""

    key: str
    header: str
    scale: float = 1.0
    better: str = ""
    fmt: str = "{:.3g}"


SUMMARY_COLUMNS: tuple[SummaryColumn, ...] = (
    SummaryColumn("completed", "done", better="max", fmt="{:.0f}"),
    SummaryColumn("rejected", "rejected", better="min", fmt="{:.0f}"),
    SummaryColumn("request_throughput", "req/s", better="max"),
    SummaryColumn("output_token_throughput", "out tok/s", better="max", fmt="{:.0f}"),
    SummaryColumn("goodput", "goodput req/s", better="max"),
    SummaryColumn("slo_attainment", "SLO met %", 100.0, "max", "{:.1f}"),
    SummaryColumn("ttft_p50_s", "TTFT p50 ms", 1e3, "min"),
    SummaryColumn("ttft_p99_s", "TTFT p99 ms", 1e3, "min"),
    SummaryColumn("tpot_p50_s", "TPOT p50 ms", 1e3, "min"),
    SummaryColumn("tpot_p99_s", "TPOT p99 ms", 1e3, "min"),
    SummaryColumn("e2e_p99_s", "E2E p99 s", 1.0, "min"),
    SummaryColumn("kv_utilization_mean", "KV used %", 100.0, "max", "{:.1f}"),
    SummaryColumn("internal_fragmentation_mean", "int. frag %", 100.0, "min", "{:.1f}"),
    SummaryColumn("preemptions", "preempt", better="min", fmt="{:.0f}"),
    SummaryColumn("mfu", "MFU %", 100.0, "max", "{:.1f}"),
    SummaryColumn("mbu", "MBU %", 100.0, "max", "{:.1f}"),
)


def summary_frame(summaries: Sequence[tuple[str, dict[str, Any]]]) -> pd.DataFrame:
    """One row per scenario (index = label), one column per SUMMARY_COLUMNS entry, in display units."""
    rows = {label: {**{c.header: _number(s.get(c.key)) * c.scale for c in SUMMARY_COLUMNS},
                    SATURATED: bool(s.get("saturated"))} for label, s in summaries}
    return pd.DataFrame.from_dict(rows, orient="index", columns=[c.header for c in SUMMARY_COLUMNS] + [SATURATED])


SATURATED = "saturated"     # summary_frame's column marking scenarios whose offered load exceeds what they serve


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def best_labels(frame: pd.DataFrame) -> dict[str, set[str]]:
    """For each ranked column, the scenario labels holding its best value as displayed: every cell that reads
    the same as the best one wins (so 9.15 is never starred next to an unstarred 9.15); NaN never wins.

    A column where every scenario shows the same value has no best and is left out.
    """
    best: dict[str, set[str]] = {}
    sustained = ~frame[SATURATED].astype(bool) if SATURATED in frame else pd.Series(True, index=frame.index)
    for col in SUMMARY_COLUMNS:
        values = frame.loc[sustained, col.header].dropna()     # a saturated scenario is never best
        if not col.better or values.empty:
            continue
        shown = values.map(lambda v, c=col: format_value(c, v))
        target = format_value(col, values.max() if col.better == "max" else values.min())
        winners = set(shown.index[shown == target])
        if len(winners) < len(frame):
            best[col.header] = winners
    return best


def format_value(column: SummaryColumn, value: float) -> str:
    """The column's format; large values as whole numbers with thousands separators (no 6.5e+05)."""
    if not math.isfinite(value):
        return "–"
    return f"{value:,.0f}" if abs(value) >= 1000 else column.fmt.format(value)


def summary_table_html(frame: pd.DataFrame) -> str:
    """The summary table as HTML, best value of each column highlighted (class 'best')."""
    best = best_labels(frame)
    head = "".join(f"<th title='{'higher' if c.better == 'max' else 'lower' if c.better else 'not'} is better'>"
                   f"{html.escape(c.header)}</th>" for c in SUMMARY_COLUMNS)
    body = []
    for label, row in frame.iterrows():
        cells = "".join(
            f"<td{' class=best' if label in best.get(c.header, ()) else ''}>{format_value(c, row[c.header])}</td>"
            for c in SUMMARY_COLUMNS)
        mark = " <span class=saturated title='offered load exceeds what it serves'>SATURATED</span>" \
            if row.get(SATURATED) else ""
        body.append(f"<tr><th>{html.escape(str(label))}{mark}</th>{cells}</tr>")
    return (f"<table class=summary><thead><tr><th>scenario</th>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")


@dataclass(frozen=True)
class LoadCurves:
    """A sweep's results: one row per (config, load point), one row per config's capacity, and the SLOs."""

    load: pd.DataFrame
    capacity: pd.DataFrame | None = None
    slo_ttft_s: float | None = None
    slo_tpot_s: float | None = None
    x_col: str = "rate_per_s"
    x_title: str = "offered load (requests/s)"


@dataclass(frozen=True)
class Roofline:
    """Which scenario's average step to place on the roofline, and its GPU's peaks (FLOP/s, bytes/s)."""

    label: str
    peak_flops_per_s: float
    peak_bytes_per_s: float


@dataclass(frozen=True)
class ReportInputs:
    """Everything one report shows: scenarios in order, optional load curves, optional roofline."""

    runs: Sequence[tuple[str, ResultLike]]
    load: LoadCurves | None = None
    roofline: Roofline | None = None
    title: str = "servesim report"
    notes: Sequence[str] = field(default_factory=tuple)


def report_figures(inputs: ReportInputs) -> list[tuple[str, go.Figure]]:
    """The report's charts in page order, as (div id, figure). The count is what a browser must render."""
    labels = [label for label, _ in inputs.runs]
    if not labels:
        raise ValueError("a report needs at least one scenario")
    colors = plots.scenario_colors(labels)
    requests = {label: r.requests for label, r in inputs.runs}
    steps = {label: _first_replica(r.steps) for label, r in inputs.runs}
    kv = {label: _first_replica(r.kv) for label, r in inputs.runs}
    figs = [("latency-cdf", plots.latency_cdf_figure(requests, colors))]
    if inputs.load is not None and len(inputs.load.load):
        lc = inputs.load
        figs.append(("load", plots.load_figure(lc.load, lc.capacity, slo_ttft_s=lc.slo_ttft_s,
                                               slo_tpot_s=lc.slo_tpot_s, x_col=lc.x_col, x_title=lc.x_title)))
    figs += [("kv-memory", plots.kv_memory_figure(kv)),
             ("fragmentation", plots.fragmentation_figure(kv, colors)),
             ("queue", plots.queue_figure(steps, colors)),
             ("preemptions", plots.preemption_figure(steps, colors)),
             ("step-timeline", plots.step_timeline_figure(steps)),
             ("ttft-vs-prompt", plots.ttft_vs_prompt_figure(requests, colors))]
    if any("cached_tokens" in f and f.cached_tokens.any() for f in kv.values()):    # only with prefix caching
        figs.append(("prefix-cache", plots.prefix_cache_figure(requests, kv, colors)))
    for i, (label, r) in enumerate(inputs.runs):
        table = getattr(r, "replicas", None)
        if table is not None and len(table) and "replica" in r.requests:
            figs.append((f"replicas-{i}", replicas_figure(label, r.requests, table)))
    if inputs.roofline is not None and len(steps[inputs.roofline.label]):
        rl = inputs.roofline
        figs.append(("roofline", plots.roofline_figure(
            steps[rl.label], peak_flops_per_s=rl.peak_flops_per_s, peak_bytes_per_s=rl.peak_bytes_per_s,
            label=rl.label, color=colors[rl.label])))
    for div_id, fig in figs:
        for why, row in empty_reasons(div_id, inputs, steps, requests):
            say_why(fig, why, row)
    return figs


STEP_CHARTS = ("kv-memory", "fragmentation", "queue", "preemptions", "step-timeline")


def empty_reasons(div_id: str, inputs: ReportInputs, steps: dict, requests: dict) -> list[tuple[str, int | None]]:
    """Why a chart (or one of its panels, by row) has nothing to show; [] when it has."""
    if div_id in STEP_CHARTS:
        bare = [label for label, frame in steps.items() if not len(frame)]
        if bare:
            who = "this result" if len(bare) == len(steps) else "summary-only results (" + ", ".join(bare) + ")"
            return [(f"Not drawn for {who}: this chart needs per-step rows, which --summary-only on does not "
                     "keep; re-run without it to see them", None)]
    if div_id == "preemptions" and all(r.summary().get("preemptions", 0) == 0 for _, r in inputs.runs):
        return [("No preemptions in any scenario: KV memory never ran out, so the count stays at 0", None)]
    if div_id == "fragmentation":
        if all((getattr(r, "config", None) or {}).get("kv", "paged") == "paged" for _, r in inputs.runs):
            return [("Paged KV cache: no external fragmentation (any free block serves any request), so this "
                     "panel stays at 0", 2)]
    if div_id in ("latency-cdf", "ttft-vs-prompt") and not any(len(f) for f in requests.values()):
        return [("No per-request rows in memory (they streamed to requests.parquet past --max-request-rows)",
                 None)]
    return []


def say_why(fig: go.Figure, text: str, row: int | None = None) -> None:
    """Write `text` across a chart (or across subplot `row`) that has nothing to show."""
    axis = "" if row in (None, 1) else str(row)
    fig.add_annotation(text=text, xref=f"x{axis} domain", yref=f"y{axis} domain", x=0.5, y=0.5, showarrow=False,
                       font={"size": 13, "color": "#555"}, bgcolor="rgba(255,255,255,0.85)")


def _first_replica(frame: pd.DataFrame) -> pd.DataFrame:
    """A cluster's per-step frames hold every replica's rows: the time-series charts show replica 0 (the
    per-replica chart compares them all)."""
    return frame[frame.replica == 0] if "replica" in frame else frame


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222}
h1{font-size:22px;margin:0 0 6px} p.notes{color:#555;margin:2px 0}
table.summary{border-collapse:collapse;font-size:13px;margin:14px 0 22px}
table.summary th,table.summary td{border:1px solid #ddd;padding:4px 8px;text-align:right;white-space:nowrap}
table.summary thead th{background:#f4f4f6} table.summary tbody th{text-align:left}
td.best{background:#d9f2dd;font-weight:600} .saturated{color:#b00020;font-weight:600;font-size:.8em}
section.chart{margin:0 0 18px;border-top:1px solid #eee;padding-top:6px}
"""

# Clicking a scenario in one chart's legend toggles that scenario in every chart (same legendgroup).
LEGEND_SYNC_JS = """
window.addEventListener('load', function () {
  var groups = new Set(%s);
  var divs = Array.prototype.slice.call(document.querySelectorAll('.js-plotly-plot'));
  divs.forEach(function (gd) {
    gd.on('plotly_legendclick', function (ev) {
      var group = ev.data[ev.curveNumber].legendgroup;
      if (!groups.has(group)) { return true; }
      var show = ev.data[ev.curveNumber].visible === 'legendonly';
      divs.forEach(function (other) {
        var idx = [];
        other.data.forEach(function (t, i) { if (t.legendgroup === group) { idx.push(i); } });
        if (idx.length) { Plotly.restyle(other, {visible: show ? true : 'legendonly'}, idx); }
      });
      return false;
    });
  });
});
"""


def _figure_html(div_id: str, fig: go.Figure) -> str:
    body = fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                       config={"displaylogo": False, "responsive": True})
    return f"<section class=chart id='chart-{div_id}'>{body}</section>"


def render_report(inputs: ReportInputs) -> str:
    """The whole report as one HTML string (plotly.js inline once; no network access needed to view it)."""
    figs = report_figures(inputs)
    summaries = [(label, r.summary()) for label, r in inputs.runs]
    notes = "".join(f"<p class=notes>{html.escape(n)}</p>" for n in inputs.notes)
    labels = json.dumps([label for label, _ in inputs.runs]).replace("</", "<\\/")  # no early </script>
    charts = "\n".join(_figure_html(div_id, fig) for div_id, fig in figs)
    return (f"<!DOCTYPE html>\n<html lang=en><head><meta charset='utf-8'>"
            f"<meta name='servesim-charts' content='{len(figs)}'>"
            f"<title>{html.escape(inputs.title)}</title><style>{STYLE}</style>"
            f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>"
            f"<h1>{html.escape(inputs.title)}</h1>{notes}"
            f"{summary_table_html(summary_frame(summaries))}\n{charts}\n"
            f"<script>{LEGEND_SYNC_JS % labels}</script></body></html>\n")


def write_report(path: str | os.PathLike, inputs: ReportInputs) -> Path:
    """Render and write the report atomically (a temporary file renamed into place: no partial file)."""
    path = Path(path)
    text = render_report(inputs)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
