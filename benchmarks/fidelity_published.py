"""Published single-request check: FasterTransformer, GPT-13B-class model on one A100-40GB.

kipply, "Transformer Inference Arithmetic" (kipp.ly, 2022), compares its latency arithmetic with
FasterTransformer measurements of a 13B GPT on an A100 40GB: a 512-token prompt took 63.17 ms to prefill and
each decoded token 22.0 ms. The model is GPT-3-13B-shaped (hidden 5120, 40 layers, 40 heads of 128, MHA,
GELU MLP of 4 x 5120, GPT-2 vocabulary of 50257), fp16 weights and cache, no tensor parallelism.
FasterTransformer runs fused C++ kernels, so the cost model uses fused elementwise operators, no Python launch
cost and no scheduler overhead. The non-gated MLP (two matrices of 5120 x 20480) is the gated MLP of width
13653 (three matrices) in weights and FLOPs. Target: within 15%.

    python benchmarks/fidelity_published.py
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hardware.gpus import get_gpu  # noqa: E402
from simulator.cost import CostModel, StepShape  # noqa: E402
from simulator.models import ModelSpec  # noqa: E402

PROMPT_TOKENS = 512
MEASURED_PREFILL_MS = 63.17
MEASURED_DECODE_MS = 22.0
TOLERANCE = 0.15

GPT_13B = ModelSpec(name="gpt-13b (FasterTransformer)", hidden_size=5120, num_layers=40, num_heads=40,
                    num_kv_heads=40, head_dim=128, intermediate_size=round(2 * 4 * 5120 / 3), vocab_size=50257,
                    max_model_len=2048, source="GPT-3 13B shape (Brown et al. 2020, table 2.1)")


def predictions() -> dict[str, tuple[float, float]]:
    """{phase: (predicted_ms, measured_ms)} for the prefill of the prompt and one decode step after it."""
    cm = CostModel(GPT_13B, get_gpu("a100-40gb"), dtype="fp16", kv_dtype="fp16", elementwise="fused",
                   cuda_graphs=True, cuda_graph_prefill=True, step_overhead_s=0.0)
    pre = cm.step_cost(StepShape(prefill=((PROMPT_TOKENS, 0),), num_sampled=1)).seconds * 1e3
    dec = cm.step_cost(StepShape(num_decode=1, decode_context_tokens=PROMPT_TOKENS + 1, num_sampled=1)).seconds
    return {"prefill": (pre, MEASURED_PREFILL_MS), "decode": (dec * 1e3, MEASURED_DECODE_MS)}


def main() -> int:
    ok = True
    print(f"{'phase':<8} {'predicted_ms':>12} {'measured_ms':>11} {'error':>7}")
    for phase, (pred, meas) in predictions().items():
        err = pred / meas - 1
        ok &= abs(err) <= TOLERANCE
        print(f"{phase:<8} {pred:>12.2f} {meas:>11.2f} {err * 100:>+6.1f}%")
    print("within 15%" if ok else "OUTSIDE 15%")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
