"""gqa-and-quantization: fewer KV heads, fp8 KV cache, int4 weights - bytes per token, concurrency, throughput.

KV bytes per token = 2 (K, V) x layers x KV heads x head_dim x bytes per element. Grouped-query attention
(GQA) shares each K/V head among a group of query heads, multi-query attention (MQA) among all of them, so the
KV cache shrinks by heads / KV heads; an fp8 cache halves it again. More tokens fit, so more sequences decode
together, and decode attention reads fewer bytes per step. Int4 weights cut the weight bytes every decode step
streams by ~3.9x, and free memory for KV.

Scenario: Llama-3.1-8B (32 query heads, GQA with 8 KV heads) on one H100-SXM, rebuilt with 32 KV heads (MHA)
and 1 (MQA) through Hugging Face config files (every other dimension kept), plus the GQA model with an fp8 KV
cache and with int4 (AWQ/GPTQ-layout) weights. Workload: requests of 2048 prompt + 512 output tokens, all at
once, max_num_seqs 1024, so KV memory decides the batch.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from simulator.api import resolve_hardware
from simulator.config import SimConfig
from simulator.cost import CostModel
from simulator.experiments.base import Experiment, ExperimentResult, claim
from simulator.experiments.bound_by_phase import decode_shape
from simulator.experiments.common import Job, fixed_requests, run_jobs
from simulator.metrics import SimResult
from simulator.models import ModelSpec, get_model

BASE = SimConfig(gpu="h100-sxm", max_num_seqs=1024)
BASE_MODEL = "llama-3.1-8b"
PROMPT, OUTPUT = 2048, 512
INT4_GEMM_BATCH = 16       # Marlin's near-ideal speed-up holds up to batch 16-32


@dataclass(frozen=True)
class Variant:
    label: str
    kv_heads: int
    dtype: str = "bf16"
    kv_dtype: str = "bf16"


VARIANTS = (Variant("MHA (32 KV heads)", 32), Variant("GQA-8 (Llama-3.1-8B)", 8), Variant("MQA (1 KV head)", 1),
            Variant("GQA-8, fp8 KV cache", 8, kv_dtype="fp8"), Variant("GQA-8, int4 weights", 8, dtype="int4"))


def hf_config(model: ModelSpec, kv_heads: int) -> dict:
    """A Hugging Face config.json for `model` with `kv_heads` key/value heads."""
    return {"model_type": "llama", "hidden_size": model.hidden_size, "num_hidden_layers": model.num_layers,
            "num_attention_heads": model.num_heads, "num_key_value_heads": kv_heads, "head_dim": model.head_dim,
            "intermediate_size": model.intermediate_size, "vocab_size": model.vocab_size,
            "tie_word_embeddings": model.tied_embeddings, "max_position_embeddings": model.max_model_len}


def write_configs(folder: Path) -> dict[int, str]:
    """One config.json per KV-head count, in folders named after the variant."""
    model, paths = get_model(BASE_MODEL), {}
    for heads in sorted({v.kv_heads for v in VARIANTS}):
        path = folder / f"llama-3.1-8b-kv{heads}" / "config.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(hf_config(model, heads)))
        paths[heads] = str(path)
    return paths


def measure(result: SimResult) -> dict:
    s, steps = result.summary(), result.steps
    decode = steps[steps.num_prefill_tokens == 0]
    return {"output_token_throughput": s["output_token_throughput"],
            "decode_tokens_per_s": float(decode.num_decode_tokens.sum() / decode.duration_s.sum()),
            "max_concurrent_requests": s["max_concurrent_requests"], "preemptions": s["preemptions"],
            "kv_capacity_tokens": int(result.meta["kv_capacity_tokens"]),
            "kv_bytes_per_token": float(result.meta["memory"]["kv_bytes_per_token"])}


def int4_gemm_speedup() -> float:
    """bf16 over int4 GEMM time of a decode step at INT4_GEMM_BATCH (kernel level, as Marlin measures)."""
    model, gpu = resolve_hardware(BASE.replace(model=BASE_MODEL))
    shape = decode_shape(INT4_GEMM_BATCH)
    gemm = {dt: sum(o.seconds for o in CostModel(model, gpu, dtype=dt).operators(shape) if o.family == "gemm")
            for dt in ("bf16", "int4")}
    return gemm["bf16"] / gemm["int4"]


def run(quick: bool = False) -> ExperimentResult:
    requests = tuple(fixed_requests(256 if quick else 1024, PROMPT, OUTPUT))
    with tempfile.TemporaryDirectory() as folder:
        paths = write_configs(Path(folder))
        jobs = [Job(v.label, BASE.replace(model=None, model_config=paths[v.kv_heads], dtype=v.dtype,
                                          kv_dtype=v.kv_dtype), requests) for v in VARIANTS]
        data = run_jobs(jobs, measure)
    data.insert(1, "kv_heads", [v.kv_heads for v in VARIANTS])
    data.insert(2, "dtype", [v.dtype for v in VARIANTS])
    data.insert(3, "kv_dtype", [v.kv_dtype for v in VARIANTS])
    speedup = int4_gemm_speedup()
    return ExperimentResult(name=EXPERIMENT.name, title=EXPERIMENT.title, source=EXPERIMENT.source,
                            claims=_claims(data, speedup), data=data, figure=figure(data),
                            notes=(EXPERIMENT.setup, f"int4 GEMM speed-up at batch {INT4_GEMM_BATCH}: {speedup:.2f}x"))


def _claims(data: pd.DataFrame, int4_speedup: float) -> tuple:
    d = data.set_index("label")
    mha, gqa, mqa = (d.loc[v.label] for v in VARIANTS[:3])
    fp8 = d.loc[VARIANTS[3].label]
    return (
        claim("GQA-8 stores 4x fewer KV bytes per token than MHA (32 / 8 heads)", "4x (heads / KV heads)",
              mha.kv_bytes_per_token / gqa.kv_bytes_per_token, "{:.2f}x", lo=3.99, hi=4.01),
        claim("MQA stores 32x fewer KV bytes per token than MHA", "32x (heads / 1)",
              mha.kv_bytes_per_token / mqa.kv_bytes_per_token, "{:.1f}x", lo=31.9, hi=32.1),
        claim("GQA-8 fits about 4x the concurrent sequences of MHA (within 1.5x)", "~4x (KV memory / bytes per "
              "token)", gqa.max_concurrent_requests / mha.max_concurrent_requests, "{:.2f}x", lo=4 / 1.5, hi=6.0),
        claim("GQA decodes faster than MHA (output throughput, same GPU and workload)",
              "5.4x faster per sample (T5-XXL: 1.51 s MHA vs 0.28 s GQA-8)",
              gqa.output_token_throughput / mha.output_token_throughput, "{:.2f}x", lo=1.0),
        claim("an fp8 KV cache holds 2x the tokens of bf16", "2x (1 byte vs 2 per element)",
              fp8.kv_capacity_tokens / gqa.kv_capacity_tokens, "{:.2f}x", lo=1.95, hi=2.05),
        claim(f"int4 weight GEMMs at batch {INT4_GEMM_BATCH} run near 4x faster than bf16 (within 1.5x)",
              "near-ideal ~4x up to batch 16-32 (Marlin)", int4_speedup, "{:.2f}x", lo=4 / 1.5, hi=4 * 1.5),
    )


def figure(data: pd.DataFrame) -> go.Figure:
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.1, subplot_titles=(
        "KV bytes per token (KiB)", "max concurrent sequences", "output throughput (tokens/s)"))
    colors = ("#EF553B", "#636EFA", "#00CC96", "#AB63FA", "#FFA15A")
    for col, column, scale, fmt in ((1, "kv_bytes_per_token", 1 / 1024, "{:.0f}"),
                                    (2, "max_concurrent_requests", 1, "{:.0f}"),
                                    (3, "output_token_throughput", 1, "{:,.0f}")):
        values = data[column] * scale
        fig.add_trace(go.Bar(x=data.label, y=values, marker_color=colors, showlegend=False,
                             text=[fmt.format(v) for v in values], textposition="auto"), row=1, col=col)
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_layout(template="plotly_white", height=480, margin={"b": 140},
                      title={"x": 0.01, "text": "gqa-and-quantization: Llama-3.1-8B variants on H100-SXM, "
                                                "2048 + 512 tokens per request"})
    return fig


EXPERIMENT = Experiment(
    name="gqa-and-quantization",
    title="MHA vs GQA vs MQA, fp8 KV cache, int4 weights: KV bytes, concurrency, throughput",
    source="Ainslie et al., GQA (EMNLP 2023); Shazeer, MQA (2019); vLLM docs, FP8 KV cache; Frantar et al., "
           "Marlin int4 kernels (IST-DASLab)",
    claim="KV bytes per token shrink by heads / KV heads with GQA and MQA, and by 2x with an fp8 cache; more "
          "sequences fit and decode runs faster; int4 weight GEMMs run near 4x faster at small batch.",
    setup="Llama-3.1-8B on one H100-SXM with 32, 8 or 1 KV heads (HF config files), bf16 or fp8 KV, bf16 or int4 "
          "weights; 1024 requests of 2048 + 512 tokens at once, max_num_seqs 1024.",
    run_fn=run,
)
