"""pd-disaggregation: splitting prefill and decode onto separate GPUs raises goodput per GPU (DistServe, OSDI'24).

When prefill and decode share a GPU (vLLM without chunked prefill, DistServe's baseline), each new prompt's
prefill step stalls every running decode, so TTFT and TPOT SLOs pull against each other. DistServe gives each
phase its own GPUs and sends the KV cache between them; its abstract reports up to 7.4x more requests served
within both SLOs than vLLM (OPT-13B to 175B on A100s).

Scenario, after DistServe's summarization case (long prompts, a loose TTFT SLO, a tight TPOT SLO): Llama-2-13B on
A100-80GB, 2048-token prompts and 128-token outputs, Poisson arrivals over a rate grid; four GPUs either way: four
colocated replicas behind a least-outstanding router (no chunked prefill, as the vLLM DistServe compared with), or
two prefill and two decode replicas (2P2D) with KV over InfiniBand NDR. SLOs: TTFT 2 s and TPOT 40 ms; goodput is
the highest rate at which at least 90% of requests meet both (interpolated on the grid), per GPU.
"""
from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from simulator.config import SimConfig
from simulator.experiments.base import Experiment, ExperimentResult, claim
from simulator.experiments.common import Job, crossing_rate, run_jobs
from simulator.metrics import SimResult

SLO_TTFT_S, SLO_TPOT_S, ATTAINMENT = 2.0, 0.040, 0.9
GPUS = 4
BASE = SimConfig(gpu="a100-80gb", model="llama-2-13b", prompt_len="2048", output_len="128", chunked_prefill=False,
                 slo_ttft_s=SLO_TTFT_S, slo_tpot_s=SLO_TPOT_S, router="least-outstanding", seed=2)
SYSTEMS = {"colocated: 4 replicas": {"replicas": 4},
           "disaggregated: 2 prefill + 2 decode": {"prefill_replicas": 2, "decode_replicas": 2, "kv_link": "ib-ndr"}}
RATES = (3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0)
QUICK_RATES = (3.0, 5.0, 6.0, 7.0, 9.0)
PUBLISHED_GAIN = 7.4      # DistServe abstract: up to 7.4x more requests within SLOs than vLLM


def measure(result: SimResult) -> dict:
    s = result.summary()
    return {"slo_attainment": s["slo_attainment"], "ttft_p90_s": s["ttft_p90_s"], "tpot_p90_s": s["tpot_p90_s"],
            "goodput": s["goodput"], "kv_transfer_mean_s": s.get("kv_transfer_mean_s", 0.0),
            "ttft_mean_s": s["ttft_mean_s"]}


def run(quick: bool = False) -> ExperimentResult:
    rates = QUICK_RATES if quick else RATES
    n = 300 if quick else 1000
    jobs = [Job(label, BASE.replace(rate=r, num_requests=n, **kw)) for label, kw in SYSTEMS.items() for r in rates]
    data = run_jobs(jobs, measure).assign(rate=[r for _ in SYSTEMS for r in rates])
    data["missed"] = 1.0 - data.slo_attainment
    caps = {label: crossing_rate(list(rows.rate), list(rows.missed), 1.0 - ATTAINMENT)
            for label, rows in data.groupby("label", sort=False)}
    data["goodput_per_gpu"] = data.label.map(lambda lab: caps[lab] / GPUS)
    return ExperimentResult(name=EXPERIMENT.name, title=EXPERIMENT.title, source=EXPERIMENT.source,
                            claims=_claims(data, caps), data=data, figure=figure(data, caps),
                            notes=(EXPERIMENT.setup, "goodput per GPU (req/s): " + ", ".join(
                                f"{lab}: {v / GPUS:.3g}" for lab, v in caps.items())))


def _claims(data: pd.DataFrame, caps: dict) -> tuple:
    colocated, split = SYSTEMS
    gain = caps[split] / caps[colocated] if caps[colocated] > 0 else float("nan")
    rate = min(caps[colocated] if math.isfinite(caps[colocated]) else QUICK_RATES[0], data.rate.max())
    at = data[data.rate == data.rate[data.rate >= rate].min()].set_index("label")
    d = data[data.label == split]
    return (
        claim("goodput per GPU (>= 90% of requests within TTFT 2 s and TPOT 40 ms): 2P2D over 4 colocated "
              "replicas", f"up to {PUBLISHED_GAIN}x more requests within SLOs than vLLM (DistServe abstract)",
              gain, "{:.2f}x", lo=1.0, hi=1.5 * PUBLISHED_GAIN),
        claim("prefill-decode interference: colocated P90 TPOT over disaggregated P90 TPOT, at the first grid rate "
              "at or above the colocated goodput", "colocation inflates TPOT (DistServe section 2.2)",
              at.loc[colocated, "tpot_p90_s"] / at.loc[split, "tpot_p90_s"], "{:.2f}x", lo=1.0),
        claim("KV transfer over InfiniBand NDR as a share of mean TTFT (disaggregated, every rate)",
              "small next to prefill and queueing on fast links (DistServe section 6)",
              float((d.kv_transfer_mean_s / d.ttft_mean_s).max()), "{:.1%}", hi=0.25),
    )


def figure(data: pd.DataFrame, caps: dict) -> go.Figure:
    fig = make_subplots(rows=1, cols=3, subplot_titles=("SLO attainment", "P90 TTFT (s)", "P90 TPOT (ms)"))
    for (label, rows), color in zip(data.groupby("label", sort=False), ("#EF553B", "#636EFA")):
        for col, y in ((1, rows.slo_attainment), (2, rows.ttft_p90_s), (3, 1e3 * rows.tpot_p90_s)):
            fig.add_trace(go.Scatter(x=rows.rate, y=y, mode="lines+markers", name=label, legendgroup=label,
                                     line={"color": color}, showlegend=col == 1), row=1, col=col)
    fig.add_hline(y=ATTAINMENT, line={"dash": "dash", "color": "gray"}, row=1, col=1)
    fig.add_hline(y=SLO_TTFT_S, line={"dash": "dash", "color": "gray"}, row=1, col=2)
    fig.add_hline(y=1e3 * SLO_TPOT_S, line={"dash": "dash", "color": "gray"}, row=1, col=3)
    fig.update_xaxes(title_text="request rate (req/s, 4 GPUs)")
    fig.update_layout(template="plotly_white", height=440, legend={"orientation": "h", "y": -0.25},
                      title={"x": 0.01, "text": "pd-disaggregation: Llama-2-13B on 4x A100-80GB, 2048 in / 128 out"})
    return fig


EXPERIMENT = Experiment(
    name="pd-disaggregation",
    title="Disaggregating prefill and decode raises goodput per GPU under TTFT and TPOT SLOs",
    source="Zhong et al., DistServe: Disaggregating Prefill and Decoding for Goodput-optimized Large Language "
           "Model Serving (OSDI'24)",
    claim="Separate prefill and decode GPUs remove prefill-decode interference, so more requests meet both "
          "latency SLOs per GPU (up to 7.4x more than vLLM in the paper).",
    setup="Llama-2-13B on A100-80GB, 2048-token prompts, 128-token outputs, Poisson arrivals; 4 colocated replicas "
          "(least-outstanding router, no chunked prefill) vs 2 prefill + 2 decode replicas, KV over InfiniBand NDR; "
          "goodput = highest rate with >= 90% of requests within TTFT 2 s and TPOT 40 ms.",
    run_fn=run,
)
