"""Per-replica charts of a cluster run: how the router spread the load, and what each replica's users saw."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from simulator.present.plots import downsample

MAX_LINES = 16                       # replicas drawn over time (the bars show them all)


def outstanding_series(requests: pd.DataFrame, replica: int) -> tuple[np.ndarray, np.ndarray]:
    """(times, requests in the system) of one replica: +1 at each arrival, -1 at each finish (a finish first
    when both happen at once). Rejected requests never enter."""
    mine = requests[(requests.replica == replica) & (requests.status == "finished")]
    times = np.concatenate([mine.arrival_s.to_numpy(), mine.finish_s.to_numpy()])
    delta = np.concatenate([np.ones(len(mine), np.int64), -np.ones(len(mine), np.int64)])
    order = np.lexsort((delta, times))
    return times[order], np.cumsum(delta[order])


def replicas_figure(label: str, requests: pd.DataFrame, replicas: pd.DataFrame) -> go.Figure:
    """Four panels: requests routed to each replica, TTFT p50/p99 per replica, mean and peak outstanding per
    replica, and outstanding requests over time (one line per replica, the first MAX_LINES)."""
    fig = make_subplots(rows=2, cols=2, subplot_titles=("requests routed", "TTFT p50 / p99 (ms)",
                                                        "outstanding: mean / peak", "outstanding over time"))
    names = [f"r{i}" for i in replicas.replica]
    fig.add_trace(go.Bar(x=names, y=replicas.num_requests, name="requests", showlegend=False), 1, 1)
    fig.add_trace(go.Bar(x=names, y=1e3 * replicas.ttft_p50_s, name="TTFT p50"), 1, 2)
    fig.add_trace(go.Bar(x=names, y=1e3 * replicas.ttft_p99_s, name="TTFT p99"), 1, 2)
    fig.add_trace(go.Bar(x=names, y=replicas.mean_outstanding, name="mean outstanding"), 2, 1)
    fig.add_trace(go.Bar(x=names, y=replicas.peak_outstanding, name="peak outstanding"), 2, 1)
    for i in replicas.replica[:MAX_LINES]:
        t, n = outstanding_series(requests, int(i))
        t, n, _ = downsample(t, n.astype(float), max_points=600)
        fig.add_trace(go.Scatter(x=t, y=n, mode="lines", line={"shape": "hv", "width": 1}, name=f"r{i}",
                                 legendgroup=f"replica-{i}"), 2, 2)
    more = f" (first {MAX_LINES} replicas)" if len(replicas) > MAX_LINES else ""
    fig.update_xaxes(title_text=f"time (s){more}", row=2, col=2)
    fig.update_layout(title=f"{label}: per replica", height=640, barmode="group", margin={"t": 70})
    return fig
