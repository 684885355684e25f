"""Plotly figures from SimResult DataFrames: each figure answers one question about one or more scenarios.

Pure functions: they take the `requests` / `steps` / `kv` frames of the results contract (or a sweep's load
frame), keyed by scenario label, and return a `plotly.graph_objects.Figure`. No simulation logic lives here.
A scenario keeps one color in every figure (`scenario_colors`) and one `legendgroup`, so the report can toggle
a scenario in all charts at once. Long time series are reduced to at most `MAX_POINTS` points per trace
(binned means, said in the axis title) so a report of many scenarios stays a few MB.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

MAX_POINTS = 500          # per time-series trace; above this, points are averaged into time bins
CDF_POINTS = 300          # quantiles drawn per latency CDF
SCATTER_POINTS = 1500     # requests drawn per scenario in the TTFT-vs-prompt scatter
PALETTE = tuple(qualitative.Plotly) + tuple(qualitative.Dark24)
KV_COLORS = {"used": "#2ca02c", "allocated, empty": "#ff7f0e", "free": "#c7c7c7"}
PHASE_COLORS = {"prefill": "#636EFA", "decode": "#00CC96", "duration": "#222222"}

Frames = Mapping[str, pd.DataFrame]


def scenario_colors(labels: Sequence[str]) -> dict[str, str]:
    """One stable color per scenario label, in the order given (cycles after len(PALETTE))."""
    return {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(labels)}


def _colors(frames: Frames, colors: Mapping[str, str] | None) -> Mapping[str, str]:
    return colors if colors is not None else scenario_colors(list(frames))


def _layout(fig: go.Figure, title: str, height: int = 420) -> go.Figure:
    fig.update_layout(title={"text": title, "x": 0.01}, height=height, template="plotly_white",
                      margin={"l": 70, "r": 30, "t": 70, "b": 55}, legend={"title": {"text": "scenario"}})
    return fig


def downsample(x: np.ndarray, y: np.ndarray, max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray, bool]:
    """Reduce a series to at most max_points by averaging x and y over equal-count bins.

    Returns (x, y, reduced). Equal-count bins keep every sample's weight, so a mean over the plot equals the
    mean of the data; spikes shorter than a bin are smoothed, which the caller states in the axis title.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) <= max_points:
        return f32(x), f32(y), False
    edges = np.linspace(0, len(x), max_points + 1).astype(int)
    counts = np.diff(edges)
    return f32(np.add.reduceat(x, edges[:-1]) / counts), f32(np.add.reduceat(y, edges[:-1]) / counts), True


def f32(values) -> np.ndarray:
    """float32 halves the base64 payload plotly embeds; 7 significant digits are plenty for a chart."""
    return np.asarray(values, dtype=np.float32)


def cdf_points(values: np.ndarray, max_points: int = CDF_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Empirical CDF (x sorted, y = fraction <= x), as exact quantiles when there are many values."""
    v = np.sort(np.asarray(values, dtype=float)[~np.isnan(np.asarray(values, dtype=float))])
    if len(v) == 0:
        return v, v
    if len(v) <= max_points:
        return f32(v), f32(np.arange(1, len(v) + 1) / len(v))
    probs = np.linspace(0.0, 1.0, max_points)
    return f32(np.quantile(v, probs, method="inverted_cdf")), f32(probs)


LATENCIES = (("ttft_s", "TTFT (s)", 1.0), ("tpot_s", "TPOT (ms)", 1e3), ("e2e_s", "E2E latency (s)", 1.0))


def latency_cdf_figure(requests: Frames, colors: Mapping[str, str] | None = None) -> go.Figure:
    """How are TTFT, TPOT and end-to-end latency distributed? One CDF per scenario and metric."""
    colors = _colors(requests, colors)
    fig = make_subplots(rows=1, cols=3, subplot_titles=[t for _, t, _ in LATENCIES], horizontal_spacing=0.07)
    for label, frame in requests.items():
        done = frame[frame["status"] == "finished"]
        for col, (name, title, scale) in enumerate(LATENCIES, start=1):
            x, y = cdf_points(done[name].to_numpy(dtype=float) * scale)
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=label, legendgroup=label,
                                     showlegend=col == 1, line={"color": colors[label]},
                                     hovertemplate=f"{title}: %{{x:.4g}}<br>fraction: %{{y:.3f}}"),
                          row=1, col=col)
            fig.update_xaxes(title_text=title, row=1, col=col)
    fig.update_yaxes(title_text="fraction of finished requests", range=[0, 1.02], row=1, col=1)
    return _layout(fig, "How long do requests wait? Latency CDFs (TTFT, TPOT, end-to-end)")


LOAD_PANELS = (("output_token_throughput", "output throughput (tok/s)", 1.0, None),
               ("ttft_p99_s", "p99 TTFT (s)", 1.0, "slo_ttft_s"),
               ("tpot_p99_s", "p99 TPOT (ms)", 1e3, "slo_tpot_s"))


def load_figure(load: pd.DataFrame, capacity: pd.DataFrame | None = None, *, slo_ttft_s: float | None = None,
                slo_tpot_s: float | None = None, x_col: str = "rate_per_s",
                x_title: str = "offered load (requests/s)", colors: Mapping[str, str] | None = None) -> go.Figure:
    """Where does each configuration saturate? Throughput and p99 latency versus offered load.

    `load` has one row per (config, load point): config, x_col, output_token_throughput, ttft_p99_s,
    tpot_p99_s. `capacity` (config, capacity_rate_per_s) draws a dotted vertical line per configuration;
    the SLOs draw horizontal red lines on the latency panels.
    """
    configs = list(dict.fromkeys(load["config"]))
    colors = colors if colors is not None else scenario_colors(configs)
    fig = make_subplots(rows=1, cols=3, subplot_titles=[t for _, t, _, _ in LOAD_PANELS], horizontal_spacing=0.07)
    slos = {"slo_ttft_s": slo_ttft_s, "slo_tpot_s": slo_tpot_s}
    for col, (name, title, scale, slo_key) in enumerate(LOAD_PANELS, start=1):
        for config in configs:
            rows = load[load["config"] == config].sort_values(x_col)
            fig.add_trace(go.Scatter(x=rows[x_col], y=rows[name] * scale, mode="lines+markers", name=config,
                                     legendgroup=config, showlegend=col == 1, line={"color": colors[config]},
                                     hovertemplate=f"{x_title}: %{{x:.4g}}<br>{title}: %{{y:.4g}}"),
                          row=1, col=col)
        if slo_key and slos[slo_key] is not None:
            slo = slos[slo_key] * scale
            fig.add_hline(y=slo, line={"color": "red", "dash": "dash"}, row=1, col=col)
            # annotations on a log axis take log10 of the value (shapes do not)
            fig.add_annotation(x=0, xref=f"x{col} domain", y=np.log10(slo), yref=f"y{col}", text=f"SLO {slo:g}",
                               showarrow=False, xanchor="left", yanchor="bottom", font={"color": "red", "size": 11})
        fig.update_xaxes(title_text=x_title, row=1, col=col)
        fig.update_yaxes(title_text=title, row=1, col=col)
    fig.update_yaxes(type="log", row=1, col=2)  # latency spans decades between idle and overload
    fig.update_yaxes(type="log", row=1, col=3)
    if capacity is not None:
        _mark_capacity(fig, capacity, colors)
    what = "offered load" if x_col == "rate_per_s" else x_title.split(" (")[0]
    return _layout(fig, f"Where does each configuration saturate? Throughput and p99 latency vs {what} "
                        "(dashed red: SLO, dotted: capacity)")


def _mark_capacity(fig: go.Figure, capacity: pd.DataFrame, colors: Mapping[str, str]) -> None:
    """A dotted vertical line per configuration in every panel, a star on its throughput curve, and a label
    in the throughput panel (staggered so that nearby capacities stay readable)."""
    rows = [r for r in capacity.to_dict("records") if r["config"] in colors and np.isfinite(r["capacity_rate_per_s"])]
    for k, row in enumerate(rows):
        rate, color = row["capacity_rate_per_s"], colors[row["config"]]
        fig.add_vline(x=rate, line={"color": color, "dash": "dot"})
        fig.add_annotation(x=rate, y=1 - 0.08 * k, xref="x", yref="y domain", xanchor="left", showarrow=False,
                           text=f" capacity {rate:.4g}/s", font={"color": color, "size": 11})
        if "output_token_throughput" in row:
            fig.add_trace(go.Scatter(x=[rate], y=[row["output_token_throughput"]], mode="markers",
                                     name=f"{row['config']} capacity", legendgroup=row["config"], showlegend=False,
                                     marker={"symbol": "star", "size": 14, "color": color,
                                             "line": {"color": "black", "width": 1}},
                                     hovertemplate="capacity %{x:.4g} req/s<br>%{y:.4g} tok/s"), row=1, col=1)


def _scenario_buttons(labels: Sequence[str], traces_per_label: int) -> list[dict]:
    """Dropdown entries that show one scenario's traces and hide the others."""
    buttons = []
    for i, label in enumerate(labels):
        visible = [j // traces_per_label == i for j in range(len(labels) * traces_per_label)]
        buttons.append({"label": label, "method": "restyle", "args": [{"visible": visible}]})
    return buttons


def _add_dropdown(fig: go.Figure, labels: Sequence[str], traces_per_label: int) -> None:
    if len(labels) > 1:
        fig.update_layout(updatemenus=[{"buttons": _scenario_buttons(labels, traces_per_label), "x": 1.0,
                                        "xanchor": "right", "y": 1.13, "yanchor": "bottom", "active": 0}])


def kv_memory_figure(kv: Frames) -> go.Figure:
    """Where does KV memory go? Used, allocated-but-empty and free tokens over time, stacked, per scenario.

    Stacked areas of many scenarios cannot overlay, so a dropdown picks the scenario (the first is shown).
    """
    fig = go.Figure()
    labels, reduced_any = list(kv), False
    for i, (label, frame) in enumerate(kv.items()):
        parts = {"used": frame["used_tokens"],
                 "allocated, empty": frame["allocated_tokens"] - frame["used_tokens"],
                 "free": frame["capacity_tokens"] - frame["allocated_tokens"]}
        for name, values in parts.items():
            x, y, reduced = downsample(frame["time_s"], values)
            reduced_any |= reduced
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines", stackgroup="kv", name=name, legendgroup=name,
                                     showlegend=True, visible=i == 0, line={"color": KV_COLORS[name], "width": 0.5},
                                     hovertemplate=f"{label}<br>{name}: %{{y:.0f}} tokens<extra></extra>"))
    _add_dropdown(fig, labels, 3)
    _time_axis(fig, None, reduced_any)
    fig.update_yaxes(title_text="KV cache (tokens)")
    _layout(fig, f"Where does KV memory go? Used / allocated-but-empty / free over time ({labels[0]}"
                 f"{'; pick a scenario' if len(labels) > 1 else ''})")
    fig.update_layout(legend={"title": {"text": "KV tokens"}})
    return fig


def _time_lines(fig: go.Figure, frames: Frames, colors: Mapping[str, str], time_col: str,
                panels: Sequence[tuple[str, float]], first_row: int = 1) -> bool:
    """Add one line per scenario per panel (column, scale); returns whether any series was binned."""
    reduced_any = False
    for label, frame in frames.items():
        for k, (col, scale) in enumerate(panels):
            x, y, reduced = downsample(frame[time_col], frame[col].to_numpy(dtype=float) * scale)
            reduced_any |= reduced
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=label, legendgroup=label,
                                     showlegend=k == 0, line={"color": colors[label], "width": 1.3}),
                          row=first_row + k, col=1)
    return reduced_any


def _time_axis(fig: go.Figure, row: int | None, reduced: bool) -> None:
    """Title the (bottom) time axis, saying when series were averaged into bins."""
    note = " (binned means)" if reduced else ""
    where = {"row": row, "col": 1} if row is not None else {}
    fig.update_xaxes(title_text=f"simulated time (s){note}", **where)


def fragmentation_figure(kv: Frames, colors: Mapping[str, str] | None = None) -> go.Figure:
    """How much KV memory is wasted? Internal and external fragmentation over time (fraction of capacity)."""
    colors = _colors(kv, colors)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=["internal: allocated but empty / capacity",
                                        "external: free but unusable for the next request / free"])
    reduced = _time_lines(fig, kv, colors, "time_s",
                          (("internal_fragmentation", 1.0), ("external_fragmentation", 1.0)))
    fig.update_yaxes(title_text="fraction", rangemode="tozero")
    _time_axis(fig, 2, reduced)
    return _layout(fig, "How much KV memory is wasted? Fragmentation over time", height=560)


def queue_figure(steps: Frames, colors: Mapping[str, str] | None = None) -> go.Figure:
    """Is the server keeping up? Running and waiting requests, and batch size, per step over time."""
    colors = _colors(steps, colors)
    panels = (("num_running", "running requests (admitted, holding KV)"),
              ("num_waiting", "waiting requests (queued)"), ("batch_size", "batch size (requests in the step)"))
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=[t for _, t in panels])
    reduced = _time_lines(fig, steps, colors, "start_s", [(c, 1.0) for c, _ in panels])
    for row, (_, title) in enumerate(panels, start=1):
        fig.update_yaxes(title_text="requests", rangemode="tozero", row=row, col=1)
    _time_axis(fig, 3, reduced)
    return _layout(fig, "Is the server keeping up? Running / waiting requests and batch size over time",
                   height=720)


def preemption_figure(steps: Frames, colors: Mapping[str, str] | None = None) -> go.Figure:
    """When does memory pressure evict requests? Cumulative preemptions over time."""
    colors = _colors(steps, colors)
    fig = go.Figure()
    for label, frame in steps.items():
        end_s = (frame["start_s"] + frame["duration_s"]).to_numpy(dtype=float)
        total = np.cumsum(frame["num_preempted"].to_numpy(dtype=float))
        # keep only the steps where the count changes (plus both ends): a step function loses nothing
        keep = np.r_[True, np.diff(total) != 0] if len(total) else np.zeros(0, bool)
        if len(keep):
            keep[-1] = True
        x, y, _ = downsample(end_s[keep], total[keep])
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", line_shape="hv", name=label, legendgroup=label,
                                 line={"color": colors[label]}))
    fig.update_xaxes(title_text="simulated time (s)")
    fig.update_yaxes(title_text="preemptions so far (count)", rangemode="tozero")
    return _layout(fig, "When does memory pressure evict requests? Cumulative preemptions over time")


def step_timeline_figure(steps: Frames) -> go.Figure:
    """What does each step compute, and how long does it take? Prefill vs decode tokens and step duration.

    One scenario at a time (dropdown): prefill and decode tokens per step as stacked areas, the step duration
    on a second axis.
    """
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    labels, reduced_any = list(steps), False
    for i, frame in enumerate(steps.values()):
        for name, col in (("prefill", "num_prefill_tokens"), ("decode", "num_decode_tokens")):
            x, y, reduced = downsample(frame["start_s"], frame[col])
            reduced_any |= reduced
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines", stackgroup="tokens", name=f"{name} tokens",
                                     legendgroup=name, visible=i == 0, line={"color": PHASE_COLORS[name]}),
                          secondary_y=False)
        x, y, _ = downsample(frame["start_s"], frame["duration_s"] * 1e3)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name="step duration", legendgroup="duration",
                                 visible=i == 0, line={"color": PHASE_COLORS["duration"], "width": 1}),
                      secondary_y=True)
    _add_dropdown(fig, labels, 3)
    fig.update_yaxes(title_text="tokens per step", secondary_y=False, rangemode="tozero")
    fig.update_yaxes(title_text="step duration (ms)", secondary_y=True, rangemode="tozero", showgrid=False)
    _time_axis(fig, None, reduced_any)
    _layout(fig, f"What does each step compute? Prefill vs decode tokens and step duration ({labels[0]}"
                 f"{'; pick a scenario' if len(labels) > 1 else ''})")
    fig.update_layout(legend={"title": {"text": "per step"}})
    return fig


def linear_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float] | None:
    """Least-squares (slope, intercept) of y on x; None when x has fewer than two distinct values."""
    ok = np.isfinite(x) & np.isfinite(y)
    if len(np.unique(x[ok])) < 2:
        return None
    slope, intercept = np.polyfit(x[ok], y[ok], 1)
    return float(slope), float(intercept)


def ttft_vs_prompt_figure(requests: Frames, colors: Mapping[str, str] | None = None) -> go.Figure:
    """Do long prompts wait longer? TTFT versus prompt length per request, with a least-squares line."""
    colors = _colors(requests, colors)
    fig = go.Figure()
    for label, frame in requests.items():
        done = frame[frame["status"] == "finished"]
        x, y = done["prompt_tokens"].to_numpy(dtype=float), done["ttft_s"].to_numpy(dtype=float)
        step = max(1, int(np.ceil(len(x) / SCATTER_POINTS)))  # every k-th request: deterministic thinning
        fig.add_trace(go.Scatter(x=f32(x[::step]), y=f32(y[::step]), mode="markers", name=label, legendgroup=label,
                                 marker={"color": colors[label], "size": 5, "opacity": 0.55},
                                 hovertemplate="prompt %{x:.0f} tokens<br>TTFT %{y:.4g} s"))
        fit = linear_fit(x, y)
        if fit is not None:
            xs = np.array([x.min(), x.max()])
            fig.add_trace(go.Scatter(x=xs, y=fit[0] * xs + fit[1], mode="lines", name=f"{label} fit",
                                     legendgroup=label, showlegend=False,
                                     line={"color": colors[label], "dash": "dash"},
                                     hovertemplate=f"fit: {fit[0] * 1e3:.3g} ms/token + {fit[1]:.3g} s"))
    fig.update_xaxes(title_text="prompt length (tokens)")
    fig.update_yaxes(title_text="TTFT (s)", rangemode="tozero")
    return _layout(fig, "Do long prompts wait longer? TTFT vs prompt length (dashed: least-squares fit)")


def step_classes(steps: pd.DataFrame) -> dict[str, tuple[float, float, float]]:
    """(total FLOPs, total bytes, total seconds) of all steps, of decode-only steps and of steps with prefill.

    The 'average step' of a class is its totals: intensity = FLOPs / bytes, achieved rate = FLOPs / seconds.
    Empty classes are left out.
    """
    has_prefill = steps["num_prefill_tokens"] > 0
    classes = {"average step": steps, "average decode-only step": steps[~has_prefill],
               "average step with prefill": steps[has_prefill]}
    return {name: (float(s["flops"].sum()), float(s["bytes"].sum()), float(s["duration_s"].sum()))
            for name, s in classes.items() if len(s) and s["bytes"].sum() > 0 and s["duration_s"].sum() > 0}


def roofline_figure(steps: pd.DataFrame, *, peak_flops_per_s: float, peak_bytes_per_s: float,
                    label: str, color: str = PALETTE[0]) -> go.Figure:
    """How close is the average step to the GPU's limits? The roofline of one scenario's average step.

    Roof: attainable FLOP/s = min(peak FLOP/s, peak bytes/s x intensity); the ridge sits at peak FLOP/s over
    peak bytes/s. Points: achieved FLOP/s (FLOPs over wall time, overheads included) at each class's intensity.
    """
    classes = step_classes(steps)
    ridge = peak_flops_per_s / peak_bytes_per_s
    intensities = [f / b for f, b, _ in classes.values()] or [ridge]
    lo, hi = min(min(intensities), ridge) / 10, max(max(intensities), ridge) * 10
    xs = np.geomspace(lo, hi, 200)
    fig = go.Figure(go.Scatter(x=xs, y=np.minimum(peak_flops_per_s, peak_bytes_per_s * xs) / 1e12, mode="lines",
                               name="roof (datasheet peak)", line={"color": "black"}))
    symbols = iter(("circle", "triangle-up", "square"))
    for name, (flops, nbytes, seconds) in classes.items():
        fig.add_trace(go.Scatter(x=[flops / nbytes], y=[flops / seconds / 1e12], mode="markers",
                                 name=name, marker={"color": color, "size": 13, "symbol": next(symbols)},
                                 hovertemplate="intensity %{x:.3g} FLOP/byte<br>%{y:.4g} TFLOP/s"))
    # the ridge as a trace, not a shape: shapes on log axes upset plotly's autorange
    floor = min([peak_bytes_per_s * lo] + [f / s for f, _, s in classes.values()]) / 1e12
    fig.add_trace(go.Scatter(x=[ridge, ridge], y=[floor, peak_flops_per_s / 1e12], mode="lines",
                             name=f"ridge: {ridge:.0f} FLOP/byte", line={"color": "gray", "dash": "dot"}))
    fig.update_xaxes(type="log", title_text="arithmetic intensity (FLOP/byte)",
                     range=[np.log10(lo), np.log10(hi)])
    fig.update_yaxes(type="log", title_text="achieved TFLOP/s (FLOPs / step time)")
    _layout(fig, f"How close is the average step to the GPU's limits? Roofline of {label}")
    fig.update_layout(legend={"title": {"text": label}})
    return fig


def prefix_cache_figure(requests: Frames, kv: Frames, colors: Mapping[str, str] | None = None) -> go.Figure:
    """How much does the prefix cache serve? Hit rate so far (cached / prompt tokens of the requests scheduled
    so far) and the tokens the cache holds (blocks held or free but not evicted), over time."""
    colors = _colors(kv, colors)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=["hit rate so far: cached / prompt tokens of requests scheduled by then",
                                        "tokens in the prefix cache (held or evictable)"])
    rates = {}
    for label, frame in requests.items():
        done = frame[frame.scheduled_s.notna()].sort_values("scheduled_s")
        rates[label] = pd.DataFrame({"time_s": done.scheduled_s.to_numpy(),
                                     "hit_rate": done.cached_tokens.cumsum().to_numpy()
                                     / np.maximum(done.prompt_tokens.cumsum().to_numpy(), 1)})
    reduced = _time_lines(fig, rates, colors, "time_s", (("hit_rate", 1.0),))
    reduced |= _time_lines(fig, kv, colors, "time_s", (("cached_tokens", 1.0),), first_row=2)
    fig.update_yaxes(title_text="hit rate", tickformat=".0%", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title_text="tokens", rangemode="tozero", row=2, col=1)
    _time_axis(fig, 2, reduced)
    return _layout(fig, "How much does the prefix cache serve? Hit rate and cached tokens over time", height=560)
