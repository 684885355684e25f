"""Explain one step: every operator's FLOPs, bytes, arithmetic intensity, bound, time and share, and a roofline.

`servesim explain` prints `format_explain_table(explain_step(...))` and, with --html, writes
`roofline_figure(...)`. The numbers are the cost model's own (`CostModel.operators`), so the table adds up to
the step time the simulator uses.
"""
from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go

from simulator.cost import CostModel, Op, StepShape

PHASES = ("prefill", "decode", "mixed")
FAMILY_COLORS = {"gemm": "#1f77b4", "attention": "#d62728", "elementwise": "#2ca02c",
                 "communication": "#9467bd", "overhead": "#7f7f7f"}
COLUMNS = ["operator", "family", "kernels", "flops", "bytes", "intensity", "bound", "seconds", "share"]


class ExplainError(ValueError):
    """Bad arguments to explain; the message is one line."""


def step_shape(phase: str, batch: int, tokens: int, chunk: int = 0, cached: int = 0) -> StepShape:
    """The step `explain` prices: `batch` fresh prompts of `tokens` tokens (prefill), `batch` sequences each
    decoding one token over `tokens` cached ones (decode), or (mixed) a prompt chunk of `chunk` tokens after
    `cached` cached ones in the same step as those `batch` decodes (the chunk is not the prompt's last: no token
    is sampled for it)."""
    if phase not in PHASES:
        raise ExplainError(f"unknown phase '{phase}'; choose one of: {', '.join(PHASES)}")
    if batch < 1:
        raise ExplainError(f"batch must be at least 1, got {batch}")
    if phase == "mixed":
        if chunk < 1 or cached < 0 or tokens < 0:
            raise ExplainError(f"a mixed step needs a chunk of at least 1 token, cached >= 0 and context >= 0, "
                               f"got {chunk}, {cached} and {tokens}")
        return StepShape(prefill=((chunk, cached),), num_decode=batch, decode_context_tokens=batch * (tokens + 1),
                         num_sampled=batch)
    if phase == "prefill":
        if tokens < 1:
            raise ExplainError(f"a prefill needs at least 1 prompt token, got {tokens}")
        return StepShape(prefill=((tokens, 0),) * batch, num_sampled=batch)
    if tokens < 0:
        raise ExplainError(f"context must be non-negative, got {tokens}")
    return StepShape(num_decode=batch, decode_context_tokens=batch * (tokens + 1), num_sampled=batch)


def explain_step(cost_model: CostModel, phase: str, batch: int, prompt_or_context: int, chunk: int = 0,
                 cached: int = 0) -> pd.DataFrame:
    """One row per operator (all layers together) plus a final 'total' row; share is of the step's seconds."""
    shape = step_shape(phase, batch, prompt_or_context, chunk, cached)
    max_len = cost_model.model.max_model_len
    for tokens in (prompt_or_context + 1, chunk + cached):
        if tokens > max_len:
            raise ExplainError(f"{tokens - (tokens == prompt_or_context + 1)} tokens exceed "
                               f"{cost_model.model.name}'s context of {max_len}")
    ops = cost_model.operators(shape)
    cost = cost_model.step_cost(shape)
    rows = [{"operator": o.name, "family": o.family, "kernels": o.kernels, "flops": o.flops, "bytes": o.bytes,
             "intensity": o.intensity if o.bytes else math.nan, "bound": o.bound, "seconds": o.seconds,
             "share": o.seconds / cost.seconds} for o in ops]
    rows.append({"operator": "total", "family": "", "kernels": sum(o.kernels for o in ops), "flops": cost.flops,
                 "bytes": cost.bytes, "intensity": cost.flops / cost.bytes if cost.bytes else math.nan,
                 "bound": cost.bound, "seconds": cost.seconds, "share": 1.0})
    return pd.DataFrame(rows, columns=COLUMNS)


def _si(value: float, unit: str) -> str:
    """1.23e12 -> '1.23 T' + unit."""
    if value == 0 or not math.isfinite(value):
        return f"0 {unit}" if value == 0 else "-"
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def format_explain_table(df: pd.DataFrame, cost_model: CostModel | None = None) -> str:
    """A fixed-width table of `explain_step`'s frame, with a header naming the GPU's roofs when given."""
    lines = []
    if cost_model is not None:
        g = cost_model
        ridge = g.peak_flops_per_s / g.peak_bytes_per_s
        lines.append(f"{g.model.name} on {g.gpu.name} (tp={g.tp}, {g.dtype} weights, {g.kv_dtype} KV, "
                     f"attention={g.attention}): peak {_si(g.peak_flops_per_s, 'FLOP/s')}, "
                     f"{_si(g.peak_bytes_per_s, 'B/s')}, ridge {ridge:.0f} FLOP/byte")
    header = f"{'operator':<20} {'family':<13} {'FLOPs':>11} {'bytes':>10} {'FLOP/B':>8} {'bound':<8} " \
             f"{'time':>10} {'share':>6}"
    lines += [header, "-" * len(header)]
    for r in df.itertuples(index=False):
        if r.operator == "total":
            lines.append("-" * len(header))
        intensity = "-" if not math.isfinite(r.intensity) else f"{r.intensity:.3g}"
        lines.append(f"{r.operator:<20} {r.family:<13} {_si(r.flops, 'FLOP'):>11} {_si(r.bytes, 'B'):>10} "
                     f"{intensity:>8} {r.bound:<8} {r.seconds * 1e3:>8.3f} ms {r.share * 100:>5.1f}%")
    return "\n".join(lines)


LABEL_SPOTS = ("top center", "bottom center", "middle right", "middle left", "top right", "bottom right",
               "top left", "bottom left")
PLOT_PX = (900.0, 450.0)          # the plot area a label is measured against (a default plotly figure)


def label_positions(points: list[tuple[float, float, str, float]], x_range: tuple[float, float],
                    y_range: tuple[float, float]) -> dict[str, str | None]:
    """A text position for each (x, y, name, marker px) point on log-log axes such that no two labels overlap;
    None for a point whose label fits nowhere (it keeps its hover text). Larger markers are placed first."""
    sx = PLOT_PX[0] / math.log10(x_range[1] / x_range[0])
    sy = PLOT_PX[1] / math.log10(y_range[1] / y_range[0])
    boxes: list[tuple[float, float, float, float]] = []
    out: dict[str, str | None] = {}
    for x, y, name, marker in sorted(points, key=lambda p: -p[3]):
        cx, cy, w, h, r = math.log10(x) * sx, math.log10(y) * sy, 7.0 * len(name), 14.0, marker / 2
        out[name] = None
        for spot in LABEL_SPOTS:
            vertical, horizontal = spot.split()
            left = {"center": cx - w / 2, "right": cx + r, "left": cx - r - w}[horizontal]
            bottom = {"top": cy + r, "bottom": cy - r - h, "middle": cy - h / 2}[vertical]
            box = (left, bottom, left + w, bottom + h)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in boxes):
                boxes.append(box)
                out[name] = spot
                break
    return out


def roofline_figure(cost_model: CostModel, operators: list[Op], step: str = "") -> go.Figure:
    """Log-log roofline: arithmetic intensity (FLOP/byte) vs achieved FLOP/s of each operator, under the GPU's
    compute roof (datasheet matrix peak) and bandwidth roof (datasheet bytes/s x intensity); dashed lines are
    the achievable roofs after the calibration fractions. Operators with no FLOPs (copies) have no place on a
    roofline and are listed in the title instead."""
    g, gpu = cost_model, cost_model.gpu
    placed = [o for o in operators if o.flops > 0 and o.bytes > 0 and o.seconds > 0]
    skipped = [o.name for o in operators if o not in placed and o.family != "overhead"]
    lo = min([o.intensity for o in placed] + [0.1]) / 3
    hi = max([o.intensity for o in placed] + [g.peak_flops_per_s / g.peak_bytes_per_s]) * 3
    xs = [lo * (hi / lo) ** (i / 64) for i in range(65)]
    fig = go.Figure()
    for name, flops, bw, dash in (
            ("peak roof", g.peak_flops_per_s, g.peak_bytes_per_s, "solid"),
            ("achievable roof", g.peak_flops_per_s * gpu.gemm_efficiency, g.peak_bytes_per_s * gpu.hbm_efficiency,
             "dash")):
        fig.add_trace(go.Scatter(x=xs, y=[min(flops, bw * x) for x in xs], mode="lines", name=name,
                                 line={"color": "black", "dash": dash}))
    total = sum(o.seconds for o in operators) or 1.0
    size = {o.name: 8 + 40 * math.sqrt(o.seconds / total) for o in placed}
    spots = label_positions([(o.intensity, o.flops / o.seconds, o.name, size[o.name]) for o in placed],
                            x_range=(lo, hi), y_range=(min([o.flops / o.seconds for o in placed] + [1.0]) / 3,
                                                       g.peak_flops_per_s * 3))
    for family in FAMILY_COLORS:
        group = [o for o in placed if o.family == family]
        if not group:
            continue
        fig.add_trace(go.Scatter(
            x=[o.intensity for o in group], y=[o.flops / o.seconds for o in group], mode="markers+text",
            name=family, text=[o.name if spots[o.name] else "" for o in group],
            textposition=[spots[o.name] or "top center" for o in group],
            marker={"color": FAMILY_COLORS[family], "size": [size[o.name] for o in group]},
            customdata=[[o.bound, o.seconds * 1e3, 100 * o.seconds / total, o.name] for o in group],
            hovertemplate="%{customdata[3]}<br>%{x:.3g} FLOP/B, %{y:.3g} FLOP/s<br>%{customdata[0]}-bound, "
                          "%{customdata[1]:.3f} ms (%{customdata[2]:.1f}%)<extra></extra>"))
    scales = [f"{what} x{value:g}" for what, value in (("bandwidth", g.bandwidth_scale), ("FLOP/s", g.flops_scale))
              if value != 1]
    title = (f"Roofline: {g.model.name} on {gpu.name}{', ' + step if step else ''}"
             f"{' (what-if: ' + ', '.join(scales) + ')' if scales else ''}; marker area ~ time")
    unlabeled = [o.name for o in placed if not spots[o.name]]
    notes = ([f"not placed (no FLOPs): {', '.join(skipped)}"] if skipped else []) + \
        ([f"unlabeled where labels would overlap (hover them): {', '.join(unlabeled)}"] if unlabeled else [])
    if notes:
        title += "<br><sup>" + "; ".join(notes) + "</sup>"
    fig.update_layout(title=title, xaxis={"type": "log", "title": "arithmetic intensity (FLOP/byte)"},
                      yaxis={"type": "log", "title": "achieved FLOP/s"}, template="plotly_white")
    return fig
