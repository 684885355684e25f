"""bandwidth-what-if: the same GPU with twice the HBM bandwidth, and H100 versus H200.

Decode streams every weight (and each sequence's KV) once per step, so more bandwidth speeds it up, but by less
than the bandwidth ratio: the per-step CPU overhead, kernel latencies and the LM head's small kernels do not
scale with bandwidth. Prefill is compute-bound, so it barely moves. H200 is an H100 die with 1.43x the
bandwidth and 1.76x the memory; on a model that barely fits an H100, the extra memory buys a larger batch, and
that compounds the bandwidth gain.

Scenario: Llama-3.1-8B bf16 on H100-SXM for the what-if (cost model, 1024-token contexts); for H100 vs H200,
TensorRT-LLM's H200 launch benchmark: Llama-2-70B in fp8 (weights and KV) on one GPU, 2048-token prompts,
128 output tokens, every request submitted at once (max throughput).
"""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from simulator.api import resolve_hardware
from simulator.config import SimConfig
from simulator.cost import CostModel
from simulator.experiments.base import Experiment, ExperimentResult, claim
from simulator.experiments.bound_by_phase import decode_shape, prefill_shape
from simulator.experiments.common import Job, fixed_requests, run_jobs
from simulator.metrics import SimResult

WHAT_IF = SimConfig(gpu="h100-sxm", model="llama-3.1-8b")
BATCHES = (1, 8, 32, 64, 128, 256)
PROMPTS = (128, 512, 1024, 4096)
# TensorRT-LLM H200 launch blog (v0.5.0 docs, "H200 achieves nearly 12,000 tokens/sec on Llama2-13B"):
# offline summarization, ISL/OSL 2048/128, Llama-70B on a single H200 is 1.9x an H100; FP8.
H200_BENCH = SimConfig(model="llama-2-70b", dtype="fp8", kv_dtype="fp8", max_model_len=4096)
H200_PROMPT, H200_OUTPUT, PUBLISHED_H200 = 2048, 128, 1.9


def what_if_table() -> pd.DataFrame:
    """Step time at 1x and 2x bandwidth for decode batches and single prefills."""
    model, gpu = resolve_hardware(WHAT_IF)
    base, fast = CostModel(model, gpu), CostModel(model, gpu, bandwidth_scale=2.0)
    cases = [("decode", b, decode_shape(b)) for b in BATCHES] + [("prefill", p, prefill_shape(p)) for p in PROMPTS]
    rows = []
    for phase, size, shape in cases:
        t1, t2 = base.step_cost(shape).seconds, fast.step_cost(shape).seconds
        rows.append({"part": "what-if", "phase": phase, "size": size, "step_s_bw1": t1, "step_s_bw2": t2,
                     "speedup": t1 / t2, "bound": base.step_cost(shape).bound})
    return pd.DataFrame(rows)


def measure(result: SimResult) -> dict:
    s = result.summary()
    return {"output_token_throughput": s["output_token_throughput"], "ttft_p50_s": s["ttft_p50_s"],
            "max_concurrent_requests": s["max_concurrent_requests"], "preemptions": s["preemptions"],
            "kv_capacity_tokens": int(result.meta["kv_capacity_tokens"])}


def gpu_runs(quick: bool) -> pd.DataFrame:
    n = 128 if quick else 512
    requests = tuple(fixed_requests(n, H200_PROMPT, H200_OUTPUT))
    jobs = [Job(gpu, H200_BENCH.replace(gpu=gpu), requests) for gpu in ("h100-sxm", "h200")]
    data = run_jobs(jobs, measure).assign(part="h100-vs-h200")
    model = resolve_hardware(H200_BENCH.replace(gpu="h100-sxm"))[0]
    prefill = {g: CostModel(model, resolve_hardware(H200_BENCH.replace(gpu=g))[1], dtype="fp8", kv_dtype="fp8")
               .step_cost(prefill_shape(H200_PROMPT)).seconds for g in ("h100-sxm", "h200")}
    return data.assign(prefill_s=data.label.map(prefill))


def run(quick: bool = False) -> ExperimentResult:
    table, gpus = what_if_table(), gpu_runs(quick)
    data = pd.concat([table, gpus], ignore_index=True)
    return ExperimentResult(name=EXPERIMENT.name, title=EXPERIMENT.title, source=EXPERIMENT.source,
                            claims=_claims(table, gpus), data=data, figure=figure(table, gpus),
                            notes=(EXPERIMENT.setup,))


def _claims(table: pd.DataFrame, gpus: pd.DataFrame) -> tuple:
    dec = table[table.phase == "decode"].set_index("size").speedup
    pre = table[table.phase == "prefill"].set_index("size").speedup
    g = gpus.set_index("label")
    return (
        claim("2x HBM bandwidth speeds a batch-1 decode step up by more than 1.1x but less than 2x",
              "< 2x (per-step overheads and small kernels do not scale)", dec[1], "{:.2f}x", lo=1.1, hi=1.999),
        claim("2x HBM bandwidth barely moves a 4096-token prefill (under 1.1x)",
              "~1x: prefill is compute-bound", pre[4096], "{:.3f}x", hi=1.1),
        claim("H200 vs H100, Llama-70B fp8 on one GPU, 2048/128 offline: throughput ratio (within 1.5x)",
              f"{PUBLISHED_H200}x (TensorRT-LLM H200 launch)", g.loc["h200", "output_token_throughput"] /
              g.loc["h100-sxm", "output_token_throughput"], "{:.2f}x", lo=PUBLISHED_H200 / 1.5,
              hi=PUBLISHED_H200 * 1.5),
        claim("H200 keeps H100's time to first token (2048-token prefill time ratio H100/H200, under 1.1x)",
              "similar TTFT: first-token latency is compute-bound", g.loc["h100-sxm", "prefill_s"] /
              g.loc["h200", "prefill_s"], "{:.3f}x", hi=1.1),
    )


def figure(table: pd.DataFrame, gpus: pd.DataFrame) -> go.Figure:
    fig = make_subplots(rows=1, cols=3, column_widths=[0.38, 0.38, 0.24], horizontal_spacing=0.08,
                        subplot_titles=("decode step speed-up at 2x bandwidth", "prefill speed-up at 2x bandwidth",
                                        "H200 vs H100: Llama-70B fp8, 2048/128"))
    for col, phase, xtitle in ((1, "decode", "batch size (log)"), (2, "prefill", "prompt tokens (log)")):
        rows = table[table.phase == phase]
        fig.add_trace(go.Scatter(x=rows["size"], y=rows.speedup, mode="lines+markers", name=phase,
                                 showlegend=False), row=1, col=col)
        fig.add_hline(y=2.0, line={"dash": "dash", "color": "gray"}, annotation_text="bandwidth ratio 2x",
                      row=1, col=col)
        fig.add_hline(y=1.0, line={"dash": "dot", "color": "gray"}, row=1, col=col)
        fig.update_xaxes(type="log", title_text=xtitle, row=1, col=col)
        fig.update_yaxes(range=[0.9, 2.1], title_text="speed-up (x)", row=1, col=col)
    fig.add_trace(go.Bar(x=gpus.label, y=gpus.output_token_throughput, marker_color=["#636EFA", "#EF553B"],
                         text=[f"{t:,.0f} tok/s<br>{c} running" for t, c in
                               zip(gpus.output_token_throughput, gpus.max_concurrent_requests)],
                         textposition="auto", showlegend=False), row=1, col=3)
    fig.update_yaxes(title_text="output tokens/s", row=1, col=3)
    fig.update_layout(template="plotly_white", height=440,
                      title={"x": 0.01, "text": "bandwidth-what-if: Llama-3.1-8B on H100 with 2x HBM bandwidth; "
                                                "H100 vs H200"})
    return fig


EXPERIMENT = Experiment(
    name="bandwidth-what-if",
    title="Twice the HBM bandwidth: decode speeds up by less than 2x, prefill barely moves; H100 vs H200",
    source="Roofline reasoning; NVIDIA TensorRT-LLM H200 launch blog (Nov 2023): H200 up to 1.9x H100 on "
           "Llama-70B, similar TTFT",
    claim="With HBM bandwidth x2 and FLOPs unchanged, decode step time falls by less than 2x at small batch and "
          "prefill barely moves; H200 serves Llama-70B up to 1.9x faster than H100 with similar TTFT.",
    setup="What-if: Llama-3.1-8B bf16 on H100-SXM, bandwidth_scale 2, cost model only. H100 vs H200: Llama-2-70B "
          "fp8 weights and KV on one GPU, 512 requests of 2048 prompt + 128 output tokens submitted at once.",
    run_fn=run,
)
