"""The plan on screen and in plan.html: the cheapest configurations, the cost / p99 latency Pareto frontier,
capacity per GPU by configuration, and why the other configurations are out."""
from __future__ import annotations

import html
import json
import math
from collections import defaultdict
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from simulator.present import plots

MAX_BARS = 60
TABLE_COLUMNS = (("replicas", "replicas", "{:.0f}"), ("gpus", "GPUs", "{:.0f}"),
                 ("usd_per_gpu_hour", "$/GPU-h", "{:.2f}"), ("cost_per_hour", "$/h", "{:,.2f}"),
                 ("cost_per_million_output_tokens", "$/M out tok", "{:.2f}"),
                 ("rate_per_replica", "req/s per replica", "{:.3g}"), ("ttft_p99_s", "TTFT p99 ms", "{:.0f}"),
                 ("tpot_p99_s", "TPOT p99 ms", "{:.1f}"), ("e2e_p99_s", "E2E p99 s", "{:.1f}"),
                 ("cluster_slo_attainment", "cluster SLO %", "{:.1f}"))
SCALE = {"ttft_p99_s": 1e3, "tpot_p99_s": 1e3, "cluster_slo_attainment": 100.0}


def _cell(row, key: str, fmt: str) -> str:
    value = row[key]
    if value is None or (isinstance(value, float) and not math.isfinite(value)) or pd.isna(value):
        return "–"
    return fmt.format(value * SCALE.get(key, 1.0))


def option_columns(outcome) -> list[str]:
    return [name for name in outcome.axes if len(outcome.axes[name]) > 1]


def headline(outcome) -> list[str]:
    """What was asked, what the numbers assume, and how much work the search did."""
    spec, base, c = outcome.spec, outcome.base, outcome.counts
    slos = ", ".join(f"{name} <= {value:g} s" for name, value in (("TTFT", base.slo_ttft_s), ("TPOT", base.slo_tpot_s))
                     if value is not None)
    return [f"target {spec.target_rate:g} requests/s of {base.model} ({base.prompt_len} prompts, {base.output_len} "
            f"outputs, {base.arrival} arrivals); SLOs {slos} for at least {spec.attainment:.0%} of requests",
            "replicas: the fewest n such that one replica meets the SLOs at target/n requests/s (arrivals split "
            "evenly at random; no router simulated)",
            "prices are inputs, not facts: " + "; ".join(f"{gpu} ${usd:g}/GPU-h ({source})"
                                                        for gpu, (usd, source) in _prices(outcome).items()),
            f"{c['configurations']} configurations: {c['ok']} meet the SLOs, {c['cannot meet SLO']} cannot at any "
            f"rate ({c['ruled_out_by_bounds']} found by bounds without simulating), {c['does not fit']} do not fit, "
            f"{c['invalid']} invalid, {c['skipped']} skipped by the cost bound",
            f"{c['simulations']} simulations run ({c['stopped_early']} stopped early once their verdict was "
            f"certain), {c['reused']} reused from a run with a larger max-num-seqs that never filled"
            + (f"; {c['cluster_simulations']} whole deployments simulated behind a {spec.cluster_router} router "
               "(column 'cluster SLO %')" if spec.cluster_router else "")]


def _prices(outcome) -> dict[str, tuple[float, str]]:
    from simulator.api import resolve_hardware
    out = {}
    for cand in outcome.candidates:
        if cand.config is None or not math.isfinite(cand.usd_per_gpu_hour):
            continue
        _, gpu = resolve_hardware(cand.config)
        given = gpu.name in outcome.spec.prices or cand.config.gpu in outcome.spec.prices
        out[gpu.name] = (cand.usd_per_gpu_hour, "--price" if given else (gpu.price_source or "GPU file"))
    return out


def reasons(outcome, per_status: int = 3) -> list[str]:
    """Per status other than ok: how many, and a few configurations with their reason."""
    groups: dict[str, list] = defaultdict(list)
    for cand in outcome.candidates:
        if cand.status != "ok":
            groups[cand.status].append(cand)
    lines = []
    for status in ("cannot meet SLO", "does not fit", "invalid", "skipped"):
        members = groups.get(status, [])
        if members:
            lines.append(f"{status} ({len(members)}): " + "; ".join(f"{c.label}: {c.reason}"
                                                                   for c in members[:per_status])
                         + (" ..." if len(members) > per_status else ""))
    return lines


def emit(outcome, fmt: str) -> None:
    """The best rows as a table (with the headline and reasons), or every row as CSV or JSON."""
    frame = outcome.frame()
    if fmt == "csv":
        print(frame.to_csv(index=False), end="")
        return
    if fmt == "json":
        print(json.dumps({"counts": outcome.counts, "plan": json.loads(frame.to_json(orient="records"))}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table
    console = Console() if Console().is_terminal else Console(width=250)
    options = option_columns(outcome)
    table = Table(title=f"servesim plan: the {outcome.spec.top} cheapest configurations for "
                        f"{outcome.spec.target_rate:g} req/s", caption="full list: plan.csv")
    for name in ["rank"] + options:
        table.add_column(name.replace("_", "-"))
    for _, header, _ in TABLE_COLUMNS:
        table.add_column(header, justify="right")
    for _, row in outcome.best().iterrows():
        table.add_row(str(row["rank"]), *(str(row[o]) for o in options),
                      *(_cell(row, key, fmt_) for key, _, fmt_ in TABLE_COLUMNS))
    console.print(table)
    for line in headline(outcome) + reasons(outcome):
        console.print(line, markup=False, highlight=False)


# ---- plan.html -----------------------------------------------------------------------------------------------------
def pareto(frame: pd.DataFrame, cost: str, latency: str) -> pd.DataFrame:
    """The configurations no other beats on both cost and latency (lower is better on each)."""
    points = frame.dropna(subset=[cost, latency]).sort_values([cost, latency], kind="stable")
    keep, best = [], math.inf
    for index, row in points.iterrows():
        if row[latency] < best:
            keep.append(index)
            best = row[latency]
    return points.loc[keep]


def frontier_figure(frame: pd.DataFrame) -> go.Figure:
    """Cost per hour versus p99 TTFT and p99 TPOT at the operating point, frontier drawn in each."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("p99 TTFT at the operating point",
                                                        "p99 TPOT at the operating point"))
    colors = plots.scenario_colors(sorted(frame["gpu_name"].unique()))
    for col, latency in enumerate(("ttft_p99_s", "tpot_p99_s"), start=1):
        for gpu, group in frame.groupby("gpu_name", sort=True):
            fig.add_trace(go.Scatter(x=group["cost_per_hour"], y=group[latency] * 1e3, mode="markers",
                                     name=gpu, legendgroup=gpu, showlegend=col == 1,
                                     marker=dict(color=colors[gpu], size=8), text=group["config"],
                                     hovertemplate="%{text}<br>$%{x:,.2f}/h<br>%{y:.1f} ms<extra></extra>"), 1, col)
        front = pareto(frame, "cost_per_hour", latency)
        fig.add_trace(go.Scatter(x=front["cost_per_hour"], y=front[latency] * 1e3, mode="lines",
                                 line=dict(color="black", dash="dot", shape="hv"), name="Pareto frontier",
                                 legendgroup="frontier", showlegend=col == 1, hoverinfo="skip"), 1, col)
        fig.update_xaxes(title_text="cost, $/hour (all replicas)", row=1, col=col)
        fig.update_yaxes(title_text="ms", row=1, col=col)
    fig.update_layout(title="Cost versus p99 latency (lower left is better)", height=480, template="plotly_white")
    return fig


def capacity_figure(frame: pd.DataFrame) -> go.Figure:
    """Requests/s each GPU carries at the operating point (a lower bound of its capacity), by configuration."""
    top = frame.sort_values("capacity_per_gpu_at_least", ascending=False).head(MAX_BARS)
    colors = plots.scenario_colors(sorted(frame["gpu_name"].unique()))
    fig = go.Figure(go.Bar(x=top["capacity_per_gpu_at_least"], y=top["config"], orientation="h",
                           marker_color=[colors[g] for g in top["gpu_name"]],
                           hovertemplate="%{y}<br>%{x:.3g} req/s per GPU<extra></extra>"))
    fig.update_layout(title=f"Capacity per GPU by configuration (req/s per GPU meeting the SLOs; best "
                            f"{len(top)})", height=max(360, 22 * len(top) + 120), template="plotly_white",
                      yaxis=dict(autorange="reversed"), xaxis_title="requests/s per GPU (at least)")
    return fig


def write_plan_html(path: Path, outcome) -> Path:
    """One self-contained HTML file: headline, best rows, the two charts, and the reasons."""
    frame = outcome.frame()
    ok = frame[frame["status"] == "ok"]
    parts = [f"<h1>servesim plan: {outcome.spec.target_rate:g} requests/s</h1>",
             "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in headline(outcome)) + "</ul>",
             "<h2>The cheapest configurations</h2>", _table_html(outcome)]
    include = True
    if len(ok):
        for figure in (frontier_figure(ok), capacity_figure(ok)):
            parts.append(figure.to_html(full_html=False, include_plotlyjs=include))
            include = False
    else:
        parts.append("<p>No configuration meets the SLOs at the target rate.</p>")
    parts += ["<h2>Configurations out of the plan</h2>",
              "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in reasons(outcome, per_status=20))
              + "</ul>", "<p>Every configuration, with its reason: plan.csv.</p>"]
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>servesim plan</title>"
            "<style>body{font-family:sans-serif;margin:2em} table{border-collapse:collapse} "
            "td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}</style></head><body>"
            + "\n".join(parts) + "</body></html>")
    Path(path).write_text(page, encoding="utf-8")
    return Path(path)


def _table_html(outcome) -> str:
    best = outcome.best()
    options = option_columns(outcome)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["rank", *options, *(t for _, t, _ in TABLE_COLUMNS)])
    rows = ["<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in
                             [row["rank"], *(row[o] for o in options),
                              *(_cell(row, key, fmt) for key, _, fmt in TABLE_COLUMNS)]) + "</tr>"
            for _, row in best.iterrows()]
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"
