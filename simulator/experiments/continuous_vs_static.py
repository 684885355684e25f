"""continuous-vs-static: throughput and p50 latency of static, dynamic and continuous batching (Orca; the
Anyscale continuous-batching benchmark).

Scenario, after the Anyscale benchmark: OPT-13B on one A100-40GB -> Llama-2-13B (same KV bytes per token);
every prompt 512 tokens; output lengths exponential (mean 256 tokens) cut at a maximum of 32, 128, 512 or 1536,
so the cut controls the variance. Throughput: all requests submitted at once. Latency: Poisson arrivals at
multiples of static batching's offline request rate, maximum 1536. Static and dynamic batching hold KV in
max-length contiguous slabs (FasterTransformer), so a batch is as large as memory allows.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from simulator.api import build_parts
from simulator.config import SimConfig
from simulator.experiments.base import Experiment, ExperimentResult, claim
from simulator.experiments.common import SEED, Job, crossing_rate, poisson_arrivals_s, run_jobs, specs
from simulator.metrics import SimResult

PROMPT_TOKENS = 512
OUTPUT_MEAN_TOKENS = 256
MAX_OUTPUTS = (32, 128, 512, 1536)
BASE = SimConfig(gpu="a100-40gb", model="llama-2-13b", max_model_len=PROMPT_TOKENS + max(MAX_OUTPUTS))
LOAD_FACTORS = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)   # x static batching's offline request rate
OPERATING_LOAD = 0.5                                         # the shared operating point for the p50 claim


def systems(batch: int) -> dict[str, dict]:
    """label -> config overrides; `batch` = max-length slabs that fit in KV memory."""
    return {"static": {"batching": "static", "kv": "contiguous", "batch_size": batch},
            "dynamic": {"batching": "dynamic", "kv": "contiguous", "max_batch_size": batch},
            "continuous (contiguous KV)": {"batching": "continuous", "kv": "contiguous"},
            "continuous (paged KV)": {"batching": "continuous", "kv": "paged"}}


def workload(n: int, max_output: int, rate: float | None) -> tuple:
    rng = np.random.default_rng(SEED)
    arrivals = poisson_arrivals_s(n, rate, rng)
    outputs = np.clip(np.ceil(rng.exponential(OUTPUT_MEAN_TOKENS, n)), 1, max_output)
    return tuple(specs(arrivals, np.full(n, PROMPT_TOKENS), outputs))


def measure(result: SimResult) -> dict:
    s = result.summary()
    return {"output_token_throughput": s["output_token_throughput"], "request_throughput": s["request_throughput"],
            "e2e_p50_s": s["e2e_p50_s"], "ttft_p50_s": s["ttft_p50_s"],
            "max_concurrent_requests": s["max_concurrent_requests"]}


def run(quick: bool = False) -> ExperimentResult:
    n = 200 if quick else 1000
    batch = build_parts(BASE).meta["kv_capacity_tokens"] // BASE.max_model_len
    offline_systems = {k: v for k, v in systems(batch).items() if k != "dynamic"}  # same as static offline
    jobs = [Job(label, BASE.replace(**kw), workload(n, mx, None))
            for mx in MAX_OUTPUTS for label, kw in offline_systems.items()]
    offline = run_jobs(jobs, measure).assign(phase="offline", max_output=[mx for mx in MAX_OUTPUTS
                                                                          for _ in offline_systems])
    static_rate = float(offline[(offline.label == "static") & (offline.max_output == 1536)].request_throughput.iloc[0])
    rates = [round(f * static_rate, 4) for f in LOAD_FACTORS]
    jobs = [Job(label, BASE.replace(**kw), workload(n, 1536, rate)) for label, kw in systems(batch).items()
            for rate in rates]
    online = run_jobs(jobs, measure).assign(phase="online", max_output=1536,
                                            rate=[r for _ in systems(batch) for r in rates])
    data = pd.concat([offline, online], ignore_index=True)
    return ExperimentResult(name=EXPERIMENT.name, title=EXPERIMENT.title, source=EXPERIMENT.source,
                            claims=_claims(offline, online, rates), data=data, figure=figure(offline, online),
                            notes=(EXPERIMENT.setup, f"static/dynamic batch: {batch} requests (KV-limited)"))


def _claims(offline: pd.DataFrame, online: pd.DataFrame, rates: list[float]) -> tuple:
    thr = offline.pivot(index="max_output", columns="label", values="output_token_throughput")
    paged, contig = thr["continuous (paged KV)"] / thr["static"], thr["continuous (contiguous KV)"] / thr["static"]
    p50 = online.pivot(index="rate", columns="label", values="e2e_p50_s")
    at = rates[LOAD_FACTORS.index(OPERATING_LOAD)]
    target = p50.loc[at, "static"]
    rate_at_target = crossing_rate(list(p50.index), list(p50["continuous (paged KV)"]), target)
    return (
        claim("continuous batching (paged KV) at least doubles static batching's throughput (max output 1536)",
              "5.8x (vLLM 23x / FasterTransformer 4x over naive batching)", paged[1536], "{:.2f}x", lo=2.0),
        claim("continuous batching without paging (TGI/Orca-style) vs static, about 2x (within a factor 1.5)",
              "2x (TGI 8x / FasterTransformer 4x)", contig[1536], "{:.2f}x", lo=2 / 1.5, hi=2 * 1.5),
        claim("the gain grows with output-length variance (gain at max 1536 over gain at max 32)",
              "grows with the maximum length (largest at 1536)", paged[1536] / paged[32], "{:.2f}x", lo=1.0),
        claim(f"at the same load ({OPERATING_LOAD:g}x static's capacity) continuous batching lowers p50 latency "
              "(static p50 / continuous p50)", "lower p50 ('while reducing p50 latency')",
              target / p50.loc[at, "continuous (paged KV)"], "{:.1f}x", lo=1.0),
        claim("at static's p50 latency, continuous batching sustains at least 2x the request rate",
              "23x throughput at lower p50 (vs naive batching)", rate_at_target / at, "{:.1f}x", lo=2.0),
    )


def figure(offline: pd.DataFrame, online: pd.DataFrame) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, subplot_titles=("offline throughput (all requests at once)",
                                                        "p50 end-to-end latency vs request rate (max output 1536)"))
    colors = {"static": "#EF553B", "dynamic": "#FFA15A", "continuous (contiguous KV)": "#AB63FA",
              "continuous (paged KV)": "#636EFA"}
    for label, rows in offline.groupby("label", sort=False):
        fig.add_trace(go.Bar(x=[str(m) for m in rows.max_output], y=rows.output_token_throughput, name=label,
                             marker_color=colors[label], legendgroup=label), row=1, col=1)
    for label, rows in online.groupby("label", sort=False):
        fig.add_trace(go.Scatter(x=rows.rate, y=rows.e2e_p50_s, mode="lines+markers", name=label,
                                 line={"color": colors[label]}, legendgroup=label,
                                 showlegend=label == "dynamic"), row=1, col=2)
    fig.update_xaxes(title_text="maximum output tokens", row=1, col=1)
    fig.update_yaxes(title_text="output tokens/s", row=1, col=1)
    fig.update_xaxes(title_text="request rate (req/s)", row=1, col=2)
    fig.update_yaxes(title_text="p50 latency (s), log", type="log", row=1, col=2)
    fig.update_layout(template="plotly_white", height=460, barmode="group", legend={"orientation": "h", "y": -0.2},
                      title={"x": 0.01, "text": "continuous-vs-static: Llama-2-13B on A100-40GB, 512-token "
                                                "prompts, exponential outputs"})
    return fig


EXPERIMENT = Experiment(
    name="continuous-vs-static",
    title="Continuous vs static and dynamic batching: throughput and p50 latency",
    source="Yu et al., Orca (OSDI'22); Daniel et al., 'How continuous batching enables 23x throughput in LLM "
           "inference while reducing p50 latency' (Anyscale blog, June 2023)",
    claim="Iteration-level (continuous) batching multiplies throughput over request-level (static) batching "
          "and lowers p50 latency; the gain grows with the variance of output lengths.",
    setup="Llama-2-13B on one A100-40GB; 512-token prompts; outputs exponential, mean 256, cut at 32/128/512/1536; "
          "1000 requests; offline throughput, then Poisson arrivals at 0.25-6x static's offline rate.",
    run_fn=run,
)
