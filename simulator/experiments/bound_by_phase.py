"""bound-by-phase: the roofline story of LLM serving, operator by operator and end to end.

A decode step multiplies every weight matrix by one row per sequence: about 2 FLOPs per 2-byte weight, so its
arithmetic intensity is about the batch size, far below the GPU's ridge point (peak FLOP/s over bytes/s) -
memory-bound. A prefill multiplies by one row per prompt token: intensity about the prompt length, above the
ridge - compute-bound. Hence decode throughput grows with the batch almost for free until the intensity nears
the ridge (sub-linearly, since attention reads each sequence's own KV), then stops growing when KV memory is
full and the scheduler preempts; and TTFT grows linearly with the prompt.

Scenario: Llama-3.1-8B bf16 on one H100-SXM (the project's default). Operators come from the cost model
(`CostModel.operators`); the throughput and KV curves from simulations of B identical requests arriving together
with max_num_seqs = B.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from simulator.api import resolve_hardware
from simulator.config import SimConfig
from simulator.cost import CostModel, StepShape
from simulator.experiments.base import Experiment, ExperimentResult, claim
from simulator.experiments.common import Job, fixed_requests, run_jobs
from simulator.present.explain import roofline_figure
from simulator.metrics import SimResult

BASE = SimConfig(gpu="h100-sxm", model="llama-3.1-8b")
BATCHES = (1, 8, 32, 64, 128, 256)
PROMPTS = (128, 1024, 4096)
OUTPUTS = (64, 256)
TTFT_PROMPTS = (128, 256, 512, 1024, 2048, 4096)
DECODE_CONTEXT = 1024        # tokens each decoding sequence attends to in the operator table


def cost_model(cfg: SimConfig = BASE) -> CostModel:
    model, gpu = resolve_hardware(cfg)
    return CostModel(model, gpu, dtype=cfg.dtype, kv_dtype=cfg.kv_dtype, cuda_graphs=cfg.cuda_graphs)


def prefill_shape(prompt: int) -> StepShape:
    return StepShape(prefill=((prompt, 0),), num_sampled=1)


def decode_shape(batch: int, context: int = DECODE_CONTEXT) -> StepShape:
    return StepShape(num_decode=batch, decode_context_tokens=batch * context, num_sampled=batch)


def operator_table(cm: CostModel) -> pd.DataFrame:
    """Every operator of prefill (batch 1, each prompt length) and decode (each batch size)."""
    rows = []
    cases = [("prefill", 1, p, prefill_shape(p)) for p in PROMPTS]
    cases += [("decode", b, DECODE_CONTEXT, decode_shape(b)) for b in BATCHES]
    for phase, batch, tokens, shape in cases:
        for op in cm.operators(shape):
            if op.family == "overhead":
                continue
            rows.append({"part": "operator", "phase": phase, "batch": batch, "tokens": tokens, "operator": op.name,
                         "family": op.family, "flops": op.flops, "bytes": op.bytes, "intensity": op.intensity,
                         "seconds": op.seconds, "bound": op.bound})
    return pd.DataFrame(rows)


def gemm_intensity(ops: pd.DataFrame, phase: str, batch: int, tokens: int) -> float:
    """The lowest GEMM intensity of one case (the GEMM that would be memory-bound first)."""
    sel = ops[(ops.phase == phase) & (ops.batch == batch) & (ops.tokens == tokens) & (ops.family == "gemm")]
    return float(sel[sel.operator != "lm_head"].intensity.min())


def compute_bound_batch(cm: CostModel, limit: int = 4096) -> int:
    """The smallest decode batch whose weight GEMMs (all but the LM head) are compute-bound."""
    for batch in range(1, limit + 1):
        ops = [o for o in cm.operators(decode_shape(batch)) if o.family == "gemm" and o.name != "lm_head"]
        if all(o.bound == "compute" for o in ops):
            return batch
    return limit


def measure(result: SimResult) -> dict:
    s = result.summary()
    return {"output_token_throughput": s["output_token_throughput"], "preemptions": s["preemptions"],
            "kv_used_tokens_max": int(result.kv.used_tokens.max()),
            "kv_capacity_tokens": int(result.meta["kv_capacity_tokens"]), "ttft_p50_s": s["ttft_p50_s"]}


def throughput_runs(quick: bool) -> pd.DataFrame:
    batches = (1, 64, 128, 256) if quick else BATCHES
    cases = [(b, p, o) for p in PROMPTS for o in ((256,) if quick else OUTPUTS) for b in batches]
    jobs = [Job(f"B={b} prompt={p} out={o}", BASE.replace(max_num_seqs=b), tuple(fixed_requests(b, p, o)))
            for b, p, o in cases]
    data = run_jobs(jobs, measure)
    return data.assign(part="throughput", batch=[c[0] for c in cases], tokens=[c[1] for c in cases],
                       output_tokens=[c[2] for c in cases])


def ttft_table(cm: CostModel) -> pd.DataFrame:
    """TTFT of a lone request = one prefill step (nothing queued, nothing else running)."""
    return pd.DataFrame({"part": "ttft", "tokens": TTFT_PROMPTS,
                         "seconds": [cm.step_cost(prefill_shape(p)).seconds for p in TTFT_PROMPTS]})


def run(quick: bool = False) -> ExperimentResult:
    cm = cost_model()
    ops, thr, ttft = operator_table(cm), throughput_runs(quick), ttft_table(cm)
    data = pd.concat([ops, thr, ttft], ignore_index=True)
    ridge = cm.peak_flops_per_s / cm.peak_bytes_per_s
    return ExperimentResult(name=EXPERIMENT.name, title=EXPERIMENT.title, source=EXPERIMENT.source,
                            claims=_claims(cm, ops, thr, ttft, ridge), data=data,
                            figure=figure(ops, thr, ttft, ridge, cm), notes=(EXPERIMENT.setup,))


def _claims(cm, ops, thr, ttft, ridge) -> tuple:
    def tput(batch, prompt, out=256):
        sel = thr[(thr.batch == batch) & (thr.tokens == prompt) & (thr.output_tokens == out)]
        return float(sel.output_token_throughput.iloc[0])
    slope, intercept = np.polyfit(ttft.tokens, ttft.seconds, 1)
    r2 = 1 - np.sum((ttft.seconds - (slope * ttft.tokens + intercept)) ** 2) / np.sum(
        (ttft.seconds - ttft.seconds.mean()) ** 2)
    long = thr[(thr.tokens == max(PROMPTS)) & (thr.output_tokens == 256)].set_index("batch")
    return (
        claim("decode at batch 1 is memory-bound: weight-GEMM intensity about 1 FLOP/byte (bf16), within 1.5x",
              "~1 FLOP/byte (2 FLOPs per 2-byte weight)", gemm_intensity(ops, "decode", 1, DECODE_CONTEXT),
              "{:.2f} FLOP/B", lo=1 / 1.5, hi=1.5),
        claim("a 1024-token prefill is compute-bound: weight-GEMM intensity above the ridge point",
              f"~tokens FLOP/byte, above the ridge ({ridge:.0f} FLOP/B on H100)",
              gemm_intensity(ops, "prefill", 1, 1024), "{:.0f} FLOP/B", lo=ridge),
        claim("decode stays memory-bound until the batch nears the ridge point (within 1.5x of it)",
              f"batch ~ peak FLOP/s / bytes/s = {ridge:.0f} (H100; 208 on A100 per kipply)",
              compute_bound_batch(cm), "batch {:.0f}", lo=ridge / 1.5, hi=ridge * 1.5),
        claim("decode throughput grows sub-linearly with batch (64 sequences vs 1, 1024-token prompts)",
              "sub-linear: well below 64x", tput(64, 1024) / tput(1, 1024), "{:.1f}x", lo=1.0, hi=64.0),
        claim("throughput flattens once KV memory is full and preemption starts (256 vs 128 sequences, "
              "4096-token prompts)", "flat (no gain once preempting)", long.output_token_throughput[256] /
              long.output_token_throughput[128] if long.preemptions[256] > 0 else float("nan"), "{:.2f}x",
              hi=1.15),
        claim("TTFT grows linearly with prompt length (R^2 of a line over 128-4096 tokens)", "linear",
              float(r2), "R^2 {:.4f}", lo=0.99),
    )


def figure(ops, thr, ttft, ridge, cm) -> go.Figure:
    fig = make_subplots(rows=2, cols=2, vertical_spacing=0.16, horizontal_spacing=0.1, subplot_titles=(
        "roofline: every operator (prefill 1024 tokens; decode batch 1 and 64)", "output throughput vs batch size",
        "TTFT vs prompt length (one request, idle server)", "KV tokens in use vs concurrency"))
    _roofline(fig, ops, ridge, cm)
    for (p, o), rows in thr.groupby(["tokens", "output_tokens"]):
        pre = rows.preemptions > 0
        fig.add_trace(go.Scatter(x=rows.batch, y=rows.output_token_throughput, mode="lines+markers",
                                 name=f"prompt {p}, output {o}", legendgroup="thr",
                                 marker={"symbol": np.where(pre, "x", "circle"), "size": np.where(pre, 11, 7)}),
                      row=1, col=2)
        if o == 256:
            fig.add_trace(go.Scatter(x=rows.batch, y=rows.kv_used_tokens_max, mode="lines+markers",
                                     name=f"KV in use, prompt {p}", legendgroup="kv"), row=2, col=2)
    cap = float(thr.kv_capacity_tokens.iloc[0])
    fig.add_hline(y=cap, line={"dash": "dash", "color": "gray"}, annotation_text="KV capacity", row=2, col=2)
    fig.add_trace(go.Scatter(x=ttft.tokens, y=1e3 * ttft.seconds, mode="lines+markers", name="TTFT",
                             legendgroup="ttft"), row=2, col=1)
    for r, c in ((1, 2), (2, 2)):
        fig.update_xaxes(type="log", title_text="batch size (sequences, log)", row=r, col=c)
    fig.update_yaxes(title_text="output tokens/s (x: preempted)", row=1, col=2)
    fig.update_yaxes(title_text="peak KV tokens in use", row=2, col=2)
    fig.update_xaxes(title_text="prompt tokens", row=2, col=1)
    fig.update_yaxes(title_text="TTFT (ms)", row=2, col=1)
    fig.update_layout(template="plotly_white", height=860, legend={"orientation": "h", "y": -0.08},
                      title={"x": 0.01, "text": "bound-by-phase: Llama-3.1-8B bf16 on H100-SXM"})
    return fig


def _roofline(fig: go.Figure, ops: pd.DataFrame, ridge: float, cm: CostModel) -> None:
    """Attained FLOP/s of each operator against its intensity, under the datasheet roofline."""
    # The roofs are `servesim explain`'s (datasheet peak, and achievable after the calibration fractions).
    for trace in roofline_figure(cm, cm.operators(decode_shape(1))).data:
        if trace.mode == "lines":
            fig.add_trace(trace.update(legendgroup="roof", name=f"{trace.name} (ridge {ridge:.0f} FLOP/B)"
                                       if trace.name == "peak roof" else trace.name), row=1, col=1)
    cases = (("prefill", 1, 1024, "#EF553B"), ("decode", 1, DECODE_CONTEXT, "#00CC96"),
             ("decode", 64, DECODE_CONTEXT, "#636EFA"))
    for phase, batch, tokens, color in cases:
        sel = ops[(ops.phase == phase) & (ops.batch == batch) & (ops.tokens == tokens) & (ops.flops > 0)]
        fig.add_trace(go.Scatter(x=sel.intensity, y=sel.flops / sel.seconds, mode="markers",
                                 marker={"color": color, "size": 9}, text=sel.operator, legendgroup="roof",
                                 name=f"{phase} batch {batch}" + (f", {tokens} tokens" if phase == "prefill" else ""),
                                 hovertemplate="%{text}: %{x:.1f} FLOP/B, %{y:.3g} FLOP/s"), row=1, col=1)
    fig.update_xaxes(type="log", title_text="arithmetic intensity (FLOP/byte, log)", row=1, col=1)
    fig.update_yaxes(type="log", title_text="attained FLOP/s (log)", row=1, col=1)


EXPERIMENT = Experiment(
    name="bound-by-phase",
    title="Prefill is compute-bound, decode is memory-bound: operators, throughput, TTFT, KV",
    source="Roofline analysis of transformer inference: Chen (kipply), 'Transformer Inference Arithmetic' "
           "(2022); Yuan et al., 'LLM Inference Unveiled: Survey and Roofline Model Insights' (2024)",
    claim="Decode operators have arithmetic intensity ~ batch size (memory-bound), prefill ~ prompt length "
          "(compute-bound); decode throughput grows sub-linearly with batch and flattens when KV memory fills; "
          "TTFT grows linearly with prompt length.",
    setup="Llama-3.1-8B bf16 on one H100-SXM; operator table for prefill of 128/1024/4096 tokens and decode at "
          "batch 1-256 (1024-token contexts); simulations of B identical requests (prompt 128/1024/4096, output "
          "64/256) arriving together with max_num_seqs = B.",
    run_fn=run,
)
