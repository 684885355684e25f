"""validation.html, validation.json and validation.csv: what `servesim validate` writes.

The page is self-contained (plotly.js inline once): the metric table, real and simulated CDFs of TTFT, TPOT,
E2E latency (and ITL when the real run has every gap), and the running / waiting requests over time, real and
simulated overlaid.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from simulator.metrics import _jsonable
from simulator.present.plots import cdf_points, downsample
from simulator.validate.compare import Validation

COLORS = {"real": "#222222", "simulated": "#EF553B"}
CDFS = (("ttft_s", "TTFT (s)", 1.0), ("tpot_s", "TPOT (ms)", 1e3), ("e2e_s", "E2E latency (s)", 1.0))


def write_validation(v: Validation, out: Path) -> None:
    """Write the three files into folder `out` (which exists)."""
    v.table.to_csv(out / "validation.csv", index=False)
    (out / "validation.json").write_text(json.dumps(_jsonable(validation_record(v)), indent=2) + "\n")
    (out / "validation.html").write_text(render_page(v), encoding="utf-8")


def validation_record(v: Validation) -> dict:
    return {"run": v.run.name, "kind": v.run.kind, "requests": len(v.run.specs), "failed_in_real_run": v.run.failed,
            "simulated_completed": int((v.result.requests.status == "finished").sum()),
            "simulated_rejected": int((v.result.requests.status == "rejected").sum()),
            "notes": list(v.run.notes), "mean_error_pct": v.mean_errors(), "config": v.config.to_dict(),
            "metrics": v.table.to_dict(orient="records")}


def cdf_figure(v: Validation) -> go.Figure:
    sim = v.result.requests[v.result.requests.status == "finished"]
    panels = list(CDFS) + ([("itl", "ITL (ms)", 1e3)] if v.run.itl_s is not None else [])
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[t for _, t, _ in panels], horizontal_spacing=0.06)
    for col, (name, title, scale) in enumerate(panels, start=1):
        sides = {"real": v.run.requests[name].to_numpy(float) if name != "itl" else v.run.itl_s,
                 "simulated": sim[name].to_numpy(float) if name != "itl" else _expand_itl(v.result.itl)}
        for side, values in sides.items():
            x, y = cdf_points(np.asarray(values, dtype=float) * scale)
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=side, legendgroup=side, showlegend=col == 1,
                                     line={"color": COLORS[side]}), row=1, col=col)
        fig.update_xaxes(title_text=title, row=1, col=col)
    fig.update_yaxes(title_text="fraction of requests", range=[0, 1.02], row=1, col=1)
    return _layout(fig, "Latency CDFs, real vs simulated", 430)


def _expand_itl(itl: pd.DataFrame, limit: int = 200_000) -> np.ndarray:
    """The simulated gaps as a plain array for the CDF (counts thinned proportionally past `limit`)."""
    counts = itl["count"].to_numpy(np.int64)
    if counts.sum() > limit:
        counts = np.maximum(1, np.round(counts * limit / counts.sum())).astype(np.int64)
    return np.repeat(itl.itl_s.to_numpy(float), counts)


def timeline_figure(v: Validation) -> go.Figure:
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=["running requests", "waiting requests"])
    sides = {"simulated": v.result.kv}
    if v.run.timeline is not None:
        sides = {"real": v.run.timeline, **sides}
    for side, frame in sides.items():
        for row, col in enumerate(("num_running", "num_waiting"), start=1):
            x, y, _ = downsample(frame.time_s.to_numpy(float), frame[col].to_numpy(float))
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=side, legendgroup=side, showlegend=row == 1,
                                     line={"color": COLORS[side], "width": 1.3, "shape": "hv"}), row=row, col=1)
    fig.update_xaxes(title_text="time since the first arrival (s)", row=2, col=1)
    fig.update_yaxes(title_text="requests", rangemode="tozero")
    title = "Running and waiting requests over time" + ("" if v.run.timeline is not None else
                                                        " (simulated only: the real run has no timeline)")
    return _layout(fig, title, 560)


def _layout(fig: go.Figure, title: str, height: int) -> go.Figure:
    fig.update_layout(title={"text": title, "x": 0.01}, height=height, template="plotly_white",
                      margin={"l": 70, "r": 30, "t": 70, "b": 55})
    return fig


def table_html(table: pd.DataFrame) -> str:
    def cell(value: float) -> str:
        return "n/a" if pd.isna(value) else f"{value:,.4g}"
    head = "".join(f"<th>{h}</th>" for h in ("metric", "stat", "unit", "real", "simulated", "error"))
    body = "".join(
        f"<tr><td>{r.metric}</td><td>{r.stat}</td><td>{r.unit}</td><td>{cell(r.real)}</td>"
        f"<td>{cell(r.simulated)}</td><td>{'n/a' if pd.isna(r.error_pct) else f'{r.error_pct:+.1f}%'}</td></tr>"
        for r in table.itertuples())
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = ("body{font-family:system-ui,sans-serif;margin:24px;max-width:1300px}"
         "table{border-collapse:collapse;margin:12px 0}td,th{border:1px solid #ddd;padding:4px 10px;"
         "text-align:right}td:first-child,td:nth-child(2),td:nth-child(3){text-align:left}.notes{color:#555}")


def render_page(v: Validation) -> str:
    title = f"servesim validate: {v.run.name} ({v.run.kind}, {len(v.run.specs)} requests)"
    cfg = v.config
    setup = (f"simulated on {cfg.gpu_file or cfg.gpu} with {cfg.model_config or cfg.model}, engine {cfg.engine}, "
             f"tp {cfg.tp}, prefix caching {'on' if cfg.prefix_cache else 'off'}, "
             f"max_num_seqs {cfg.max_num_seqs}, max_num_batched_tokens {cfg.token_budget}, "
             f"chunked prefill {'on' if cfg.chunked else 'off'}, "
             f"KV blocks {cfg.num_gpu_blocks if cfg.num_gpu_blocks else 'from memory'}")
    notes = "".join(f"<p class=notes>{html.escape(n)}</p>" for n in (setup, *v.run.notes))
    charts = "".join(fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})
                     for fig in (cdf_figure(v), timeline_figure(v)))
    return (f"<!DOCTYPE html>\n<html lang=en><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style><script type='text/javascript'>{get_plotlyjs()}</script></head><body>"
            f"<h1>{html.escape(title)}</h1>{notes}{table_html(v.table)}{charts}</body></html>\n")
