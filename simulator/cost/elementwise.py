"""Element-wise recipes: how an implementation runs the small operators (norms, RoPE, KV writes, residual adds,
activations), in kernels and in element passes over memory."""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

ACT_BYTES = 2.0          # activations stay bf16/fp16 whatever the weight format (W8A16 / W4A16 kernels)
# FLOPs per element of the elementwise kernels (RMSNorm: square, sum, scale, weight; RoPE: 2 mul + add;
# SiLU*up: about 5). They never bound a step; they are counted so totals are honest.
NORM_FLOPS, ROPE_FLOPS, ACT_FLOPS, ADD_FLOPS, SOFTMAX_FLOPS = 4, 3, 5, 1, 5


class Ew(NamedTuple):
    """How one small operator runs: `kernels` launched, `passes` element passes (elements read plus written per
    element of the operator's tensor, so bytes = passes x elements x bytes per element), and of those the
    `unvec` elements and `unvec_passes` passes that go through PyTorch's non-vectorized elementwise kernels."""

    kernels: int
    passes: float
    unvec: float = 0.0
    unvec_passes: float = 0.0


@dataclass(frozen=True)
class Elementwise:
    """How an implementation runs the small operators (see Ew)."""

    norm: Ew          # one RMSNorm
    rope: Ew          # RoPE on Q and K (per element of Q and K)
    kv_write: Ew      # K and V copied into the cache (a pass reads at 16 bits and writes at the KV dtype)
    residual: Ew      # one residual add (two per layer), 0 kernels when fused into the norm
    act: Ew           # SiLU(gate) * up, per element of the MLP width


ELEMENTWISE: dict[str, Elementwise] = {
    # vLLM's custom ops: fused_add_rms_norm (reads x and residual, writes both; the residual add is folded in),
    # rotary_embedding in place on Q and K, reshape_and_cache, silu_and_mul; varlen attention writes its
    # output in place (vllm/model_executor/layers/{layernorm,rotary_embedding,activation}.py). All vectorized
    # and bandwidth-bound.
    "fused": Elementwise(norm=Ew(1, 4), rope=Ew(1, 2), kv_write=Ew(1, 1), residual=Ew(0, 0), act=Ew(1, 3)),
    # vLLM V1 as compiled (torch.compile + its fusion passes): as 'fused', but RoPE writes the rotated K and the
    # V of each token into the paged cache in the same kernel (the cache write's bytes stay, its launch goes).
    "vllm-v1": Elementwise(norm=Ew(1, 4), rope=Ew(1, 2), kv_write=Ew(0, 1), residual=Ew(0, 0), act=Ew(1, 3)),
    # Plain PyTorch ops, as in the measured reference steps. RMSNorm as x * rsqrt(mean(x^2) + eps) * w: pow
    # (2 passes), mean (1), add and rsqrt on one value a row, then two broadcast multiplies (2 + 2 passes)
    # that run non-vectorized. Rotate-half RoPE on Q and on K (q and k are strided views of the QKV output):
    # neg of a half (1 pass), cat (2), two multiplies (2 + 2) all non-vectorized, and a vectorized add (3).
    # Two copies into the strided cache (non-vectorized). A separate add per residual (3 passes). SiLU on the
    # gate half and the multiply by the up half (strided views of the gate_up output): 2 + 3 passes,
    # non-vectorized. SDPA's output is laid out so the transpose back to [tokens, heads * dim] is a view.
    # Kernel names and counts checked with benchmarks/profile_steps.py (benchmarks/data/*_profile_kernels.csv).
    "unfused": Elementwise(norm=Ew(6, 7, 2, 4), rope=Ew(10, 10, 3.5, 7), kv_write=Ew(2, 1, 1, 1),
                           residual=Ew(1, 3), act=Ew(2, 5, 2, 5)),
}
