"""Step cost: price one engine step (a mixed batch of prefill chunks and decodes) on a GPU.

The interface the engine uses is `CostModel.step_cost(StepShape) -> StepCost`. A StepShape is hashable, so
costs are memoized by shape.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from hardware.gpus import GPUSpec
from hardware.roofline import roofline_time
from simulator.models import BYTES_PER_ELEMENT, ModelSpec


@dataclass(frozen=True, slots=True)
class StepShape:
    """What one step computes, reduced to what its cost depends on.

    prefill: one (new_tokens, cached_tokens) pair per request computing prompt tokens this step, where
        cached_tokens are the tokens already in its KV cache before the step (0 for a fresh prompt).
    num_decode: requests computing exactly one new token from a cached context.
    decode_context_tokens: sum over decode requests of the tokens attended (cached tokens + the new one).
    num_sampled: sequences whose last position goes through the LM head (decodes, and prefills that complete).
    """

    prefill: tuple[tuple[int, int], ...] = ()
    num_decode: int = 0
    decode_context_tokens: int = 0
    num_sampled: int = 0

    @property
    def num_prefill_tokens(self) -> int:
        return sum(new for new, _ in self.prefill)

    @property
    def num_tokens(self) -> int:
        return self.num_prefill_tokens + self.num_decode

    @property
    def num_seqs(self) -> int:
        return len(self.prefill) + self.num_decode


@dataclass(frozen=True, slots=True)
class StepCost:
    """Seconds of one step, with what drove them. `breakdown` maps operator family -> seconds."""

    seconds: float
    flops: float
    bytes: float
    bound: str
    breakdown: tuple[tuple[str, float], ...] = ()

    def family_seconds(self, family: str) -> float:
        return dict(self.breakdown).get(family, 0.0)


class CostModel:
    """Roofline cost of a step of `model` on `gpu` at the given precisions and tensor parallelism."""

    def __init__(self, model: ModelSpec, gpu: GPUSpec, *, dtype: str = "bf16", kv_dtype: str = "bf16",
                 tp: int = 1, cuda_graphs: bool = True) -> None:
        self.model, self.gpu, self.dtype, self.kv_dtype = model, gpu, dtype, kv_dtype
        self.tp, self.cuda_graphs = tp, cuda_graphs
        self.step_cost = lru_cache(maxsize=65536)(self._step_cost)

    def _step_cost(self, shape: StepShape) -> StepCost:
        m, g = self.model, self.gpu
        tokens = shape.num_tokens
        wbytes = BYTES_PER_ELEMENT[self.dtype]
        kvb = m.kv_bytes_per_token(self.kv_dtype)
        body_params = m.num_params(active=True) - m.vocab_size * m.hidden_size * (1 if m.tied_embeddings else 2)
        gemm_flops = 2 * tokens * body_params + 2 * shape.num_sampled * m.vocab_size * m.hidden_size
        gemm_bytes = (body_params + m.vocab_size * m.hidden_size) * wbytes
        q_dim = m.num_heads * m.head_dim
        attn_flops = 4 * m.num_layers * q_dim * (
            shape.decode_context_tokens + sum(n * (c + (n + 1) / 2) for n, c in shape.prefill))
        attn_bytes = kvb * (shape.decode_context_tokens + sum(n + c for n, c in shape.prefill))
        rate = g.matrix_flops_per_s(self.dtype) * g.gemm_efficiency * self.tp
        bw = g.hbm_bytes_per_s * g.hbm_efficiency * self.tp
        gemm_s, gemm_bound = roofline_time(gemm_flops, gemm_bytes / self.tp * self.tp, rate, bw)
        attn_s, _ = roofline_time(attn_flops, attn_bytes, rate, bw)
        overhead_s = g.step_overhead_s
        seconds = gemm_s + attn_s + overhead_s
        return StepCost(seconds=seconds, flops=gemm_flops + attn_flops, bytes=gemm_bytes + attn_bytes,
                        bound=gemm_bound,
                        breakdown=(("gemm", gemm_s), ("attention", attn_s), ("overhead", overhead_s)))

    def swap_seconds(self, num_bytes: float) -> float:
        """Time to move KV bytes between GPU and host memory over the host link."""
        return num_bytes / self.gpu.host_link_bytes_per_s

    def activation_workspace_bytes(self, max_num_batched_tokens: int) -> float:
        """Peak activation memory of one step, reserved out of KV memory (as vLLM's profiling run does)."""
        m = self.model
        per_token = (4 * m.hidden_size + 2 * m.intermediate_size + m.num_heads * m.head_dim) * 2
        return max_num_batched_tokens * per_token / self.tp + m.vocab_size * 4 * 256
