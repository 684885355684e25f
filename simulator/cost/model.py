"""Step cost: price one engine step (a mixed batch of prefill chunks and decodes) operator by operator.

Every operator of a decoder layer (QKV, attention, output projection, MLP, norms / RoPE / activations, and
the tensor-parallel all-reduces) plus the LM head on the sampled positions is a kernel priced by
`hardware.roofline.kernel_time`: a fixed latency plus the FLOP time and the byte time blended near the ridge.
Rates are the datasheet peaks times the GPU's calibration fractions (hardware/gpus.py). Elementwise kernels
stream bytes at the achievable bandwidth, except plain PyTorch's non-vectorized ones (the "unfused" recipe),
which are bound by per-element work at a rate per SM per clock. Eager steps pay a CPU launch cost per kernel
that CUDA graphs remove.

The engine calls `CostModel.step_cost(StepShape) -> StepCost` once per step. It must be cheap: everything
that depends only on the number of tokens (all GEMMs, elementwise kernels and communication) is computed once
per token count and kept; only attention, which depends on each sequence's context, is priced per step.
`CostModel.operators(shape)` lists the same numbers per operator (for `servesim explain`); the two agree.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import NamedTuple

from hardware.gpus import GPUSpec
from hardware.roofline import arithmetic_intensity, kernel_time
from simulator.models import BYTES_PER_ELEMENT, KV_DTYPES, WEIGHT_BYTES_PER_PARAM, WEIGHT_DTYPES, ModelSpec

FAMILIES = ("gemm", "attention", "elementwise", "communication", "overhead")
ATTENTION_KINDS = ("flash", "naive")
ACT_BYTES = 2.0          # activations stay bf16/fp16 whatever the weight format (W8A16 / W4A16 kernels)
ATTN_TILE = 128          # FlashAttention query/key tile rows (FA2/FA3 use 128 on Hopper and Ampere)
# vLLM captures CUDA graphs for decode batches up to 512 sequences by default (vllm/config: the largest
# cudagraph capture size is 512); bigger batches run eagerly.
CUDA_GRAPH_MAX_BATCH = 512
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


class CostModelError(ValueError):
    """A cost model that cannot be built from its arguments; the message is one line."""


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


@dataclass(frozen=True, slots=True)
class OperatorCost:
    """One operator over the whole step (all layers): what `servesim explain` prints, one row each.

    bound: 'compute' or 'memory' (the larger roofline term), or 'latency' when the kernel's fixed latency
    (or, for overhead rows, CPU work) is more than either.
    """

    name: str
    family: str
    flops: float
    bytes: float
    seconds: float
    bound: str
    kernels: int = 1

    @property
    def intensity(self) -> float:
        """FLOPs per byte of memory traffic."""
        return arithmetic_intensity(self.flops, self.bytes)


# An operator before it is wrapped: (name, family, flops, bytes, seconds, bound, kernels), per layer or per step.
_Op = tuple


class CostModel:
    """Operator-level roofline cost of a step of `model` on `gpu`.

    Keyword options: dtype (weights), kv_dtype, tp (tensor parallel: weights and heads split, two all-reduces
    per layer), pp (pipeline stages run one after another for a step, so a step's latency pays the hand-offs and
    the bubbles), cuda_graphs with cuda_graph_max_batch (decode-only steps up to that batch replay a graph),
    cuda_graph_prefill (also graph steps with prefill tokens, as vLLM V1's piecewise graphs or a fully captured
    forward pass do), attention ('flash', or 'naive': the score matrix goes through HBM), bandwidth_scale and
    flops_scale (what-if multipliers of the datasheet rates), step_overhead_s (default: the GPU entry's), link
    (the GPU-to-GPU interconnect by name, hardware/links.py; default: the GPU entry's).
    """

    def __init__(self, model: ModelSpec, gpu: GPUSpec, *, dtype: str = "bf16", kv_dtype: str = "bf16",
                 tp: int = 1, pp: int = 1, cuda_graphs: bool = True, cuda_graph_max_batch: int = CUDA_GRAPH_MAX_BATCH,
                 cuda_graph_prefill: bool = False, attention: str = "flash", elementwise: str = "fused",
                 bandwidth_scale: float = 1.0, flops_scale: float = 1.0, step_overhead_s: float | None = None,
                 link: str | None = None) -> None:
        self.link = link
        _validate(model, gpu, dtype, kv_dtype, tp, pp, attention, elementwise, bandwidth_scale, flops_scale,
                  cuda_graph_max_batch)
        self.model, self.gpu, self.dtype, self.kv_dtype = model, gpu, dtype, kv_dtype
        self.tp, self.pp, self.attention, self.elementwise = tp, pp, attention, elementwise
        self._impl = ELEMENTWISE[elementwise]
        self.cuda_graphs, self.cuda_graph_max_batch, self.cuda_graph_prefill = (
            cuda_graphs, cuda_graph_max_batch, cuda_graph_prefill)
        self.bandwidth_scale, self.flops_scale = bandwidth_scale, flops_scale
        self.step_overhead_s = gpu.step_overhead_s if step_overhead_s is None else step_overhead_s
        self._init_rates(gpu)
        self._init_dims(model)
        self._dense: dict[int, tuple] = {}
        self._head: dict[int, tuple] = {}
        self._decode: dict[int, tuple] = {}
        self.step_cost = lru_cache(maxsize=1 << 16)(self._step_cost)

    # ------------------------------------------------------------------ setup
    def _init_rates(self, gpu: GPUSpec) -> None:
        """Achievable rates: datasheet peak x what-if scale x calibration fraction."""
        self.peak_flops_per_s = gpu.matrix_flops_per_s(self.dtype) * self.flops_scale
        self.peak_attn_flops_per_s = gpu.bf16_flops_per_s * self.flops_scale   # attention runs in 16-bit
        self.peak_bytes_per_s = gpu.hbm_bytes_per_s * self.bandwidth_scale
        self._gemm_rate = self.peak_flops_per_s * gpu.gemm_efficiency
        self._attn_rate = self.peak_attn_flops_per_s * gpu.attention_efficiency
        self._bw = self.peak_bytes_per_s * gpu.hbm_efficiency
        self._gemm_bw = self.peak_bytes_per_s * gpu.gemm_hbm_efficiency
        self._vec_rate = (gpu.vector_flops_per_s * self.flops_scale) or self._gemm_rate
        # PyTorch's non-vectorized elementwise kernels are bound by their per-element index arithmetic: a rate
        # per SM per clock, not a share of the memory bandwidth (inf where the entry gives no SMs or clock).
        unvec = gpu.num_sms * gpu.sm_clock() * gpu.unvectorized_elements_per_clock * self.flops_scale
        self._unvec_rate = unvec or INF
        self._lat = gpu.kernel_floor_s
        self._gemm_lat = gpu.gemm_floor_s
        self._p = gpu.roofline_overlap
        self._sms = gpu.num_sms
        link = gpu.interconnect(self.link)              # NCCL bus bandwidth and latencies (hardware/links.py)
        self._link = link.bus_bytes_per_s
        self._coll_lat = link.latency_s
        self._ring_lat = 2 * (self.tp - 1) * link.step_latency_s

    def _init_dims(self, m: ModelSpec) -> None:
        """Per-GPU widths after the tensor-parallel split (KV heads are replicated when fewer than tp)."""
        tp = self.tp
        self._h = m.hidden_size
        # Pipeline stages hold num_layers / pp layers each but run one after another for a step, so a step's
        # latency still covers every layer (each GPU idles (pp - 1) / pp of it: the bubble).
        self._layers = float(m.num_layers)
        self._qh = m.num_heads / tp
        self._kvh = max(1.0, m.num_kv_heads / tp)
        self._wb = WEIGHT_BYTES_PER_PARAM[self.dtype]
        self._kvb = BYTES_PER_ELEMENT[self.kv_dtype]
        if m.is_mla:
            # Absorbed MLA: every head attends over the shared latent (+ RoPE key); values are the latent.
            self._qk_dim, self._v_dim = m.kv_lora_rank + m.qk_rope_head_dim, m.kv_lora_rank
            self._kv_elems = (m.kv_lora_rank + m.qk_rope_head_dim) * 1.0     # one shared latent, all heads
        else:
            self._qk_dim = self._v_dim = m.head_dim
            self._kv_elems = 2.0 * self._kvh * m.head_dim
        self._attn_weights = m.attention_matmul_params_per_layer() / tp
        self._vocab = m.vocab_size / tp
        self._inter = m.intermediate_size / tp
        self._moe_fraction = m.num_moe_layers / m.num_layers if m.is_moe else 0.0

    # ------------------------------------------------------------------ kernels
    def _gemm(self, name: str, m_rows: float, n: float, k: float, weight_elems: float | None = None) -> _Op:
        """One GEMM (M x N x K): weights N*K (or `weight_elems`) read once, activations in and out at 16 bits.

        No wave-quantization term: cuBLAS picks tile shapes, split-K and stream-K so that small-M GEMMs fill the
        SMs (a fixed 128x128 tiling would price M=128 x N=4096 at a quarter of the GPU, which the measured steps
        contradict). Small-M GEMMs stream weights at gemm_hbm_efficiency; the fixed gemm_floor_s covers
        prologue, tail and the split-K reduction.
        """
        flops = 2.0 * m_rows * n * k
        w = n * k if weight_elems is None else weight_elems
        num_bytes = w * self._wb + (m_rows * k + m_rows * n) * ACT_BYTES
        seconds, bound = kernel_time(flops, num_bytes, self._gemm_rate, self._gemm_bw, self._gemm_lat, self._p)
        return (name, "gemm", flops, num_bytes, seconds, bound, 1)

    def _stream(self, name: str, family: str, flops: float, num_bytes: float, kernels: int = 1) -> _Op:
        """A memory-streaming kernel (embedding gather, copy)."""
        seconds, bound = kernel_time(flops, num_bytes, self._vec_rate, self._bw, self._lat * kernels, self._p)
        return (name, family, flops, num_bytes, seconds, bound, kernels)

    def _elementwise(self, name: str, flops_per_elem: float, elems: float, ew: Ew, count: float = 1.0,
                     pass_bytes: float = ACT_BYTES) -> _Op:
        """`count` runs of a small operator over `elems` elements, as the implementation's Ew says it runs.

        Vectorized kernels stream their bytes at the achievable bandwidth. Non-vectorized ones (strided or
        broadcast operands in plain PyTorch) take the longer of their bytes and their per-element work at
        _unvec_rate; on an H100 or H200 that work is the longer one, so these kernels do not speed up with
        bandwidth (measured: benchmarks/data/*_profile_kernels.csv).
        """
        total = ew.passes * elems * pass_bytes * count
        unvec_bytes = ew.unvec_passes * elems * pass_bytes * count
        flops, kernels = flops_per_elem * elems * count, ew.kernels * count
        lat = self._lat * kernels
        vec_s, vec_bound = kernel_time(flops, total - unvec_bytes, self._vec_rate, self._bw, 0.0, self._p)
        unvec_s, unvec_bound = 0.0, "latency"
        if ew.unvec:
            unvec_s, unvec_bound = kernel_time(ew.unvec * elems * count, unvec_bytes, self._unvec_rate, self._bw,
                                               0.0, self._p)
        body = vec_s + unvec_s
        bound = "latency" if lat > body else (unvec_bound if unvec_s > vec_s else vec_bound)
        return (name, "elementwise", flops, total, lat + body, bound, kernels)

    # ------------------------------------------------------------------ dense part (depends on tokens only)
    def _layer_ops(self, t: int) -> list[_Op]:
        """The operators of one decoder layer for t tokens, attention excluded (it is inserted after rope)."""
        m, h, a, impl = self.model, self._h, ACT_BYTES, self._impl
        qk_dims = self._qh * self._qk_dim + self._kvh * m.head_dim
        ops = [self._elementwise("input_norm", NORM_FLOPS, t * h, impl.norm)]
        ops.append(self._qkv(t))
        if m.qk_norm:
            ops.append(self._elementwise("qk_norm", NORM_FLOPS, t * qk_dims, impl.norm))
        ops.append(self._elementwise("rope", ROPE_FLOPS, t * qk_dims, impl.rope))
        ops.append(self._elementwise("kv_cache_write", 0.0, t * self._kv_elems, impl.kv_write,
                                     pass_bytes=a + self._kvb))
        ops.append(self._gemm("o_proj", t, h, self._qh * self._v_dim))
        extra_norms = m.norms_per_layer - 1
        if impl.residual.kernels:
            ops.append(self._elementwise("residual_add", ADD_FLOPS, t * h, impl.residual, count=2))
        ops.append(self._elementwise("post_attn_norm", NORM_FLOPS, t * h, impl.norm, count=extra_norms))
        ops.extend(self._mlp_ops(t))
        if self.tp > 1:
            ops.append(self._allreduce(t))
        return ops

    def _qkv(self, t: int) -> _Op:
        """The fused QKV projection: all attention weights but the output projection's."""
        h = self._h
        o_weights = self._qh * self._v_dim * h
        w = self._attn_weights - o_weights
        return self._gemm("qkv_proj", t, w / h, h, w)

    def _mlp_ops(self, t: int) -> list[_Op]:
        """Gated MLP: fused gate+up GEMM, SiLU x up, down GEMM; MoE layers read only the experts hit."""
        ops = []
        if self._moe_fraction < 1.0:
            f = 1.0 - self._moe_fraction
            ops += [_scale(self._gemm("gate_up_proj", t, 2 * self._inter, self._h), f),
                    _scale(self._elementwise("silu_mul", ACT_FLOPS, t * self._inter, self._impl.act), f),
                    _scale(self._gemm("down_proj", t, self._h, self._inter), f)]
        if self._moe_fraction > 0.0:
            ops += [_scale(op, self._moe_fraction) for op in self._moe_ops(t)]
        return ops

    def _moe_ops(self, t: int) -> list[_Op]:
        """Router, grouped expert GEMMs (weights of the distinct experts hit), shared experts."""
        m, h = self.model, self._h
        e, k = m.num_experts, m.num_experts_per_tok
        inter = m.moe_intermediate_size / self.tp
        # Expected distinct experts hit when t tokens each pick k of e uniformly: e * (1 - (1 - k/e)^t).
        hit = e * (1.0 - (1.0 - k / e) ** t)
        rows = t * k                                   # token-expert pairs
        ops = [self._gemm("router", t, e, h)]
        up = self._gemm("experts_gate_up", rows, 2 * inter, h, hit * 2 * inter * h)
        down = self._gemm("experts_down", rows, h, inter, hit * inter * h)
        ops += [up, self._elementwise("experts_silu_mul", ACT_FLOPS, rows * inter, self._impl.act), down]
        if m.num_shared_experts:
            s = m.num_shared_experts * inter
            ops += [self._gemm("shared_gate_up", t, 2 * s, h), self._gemm("shared_down", t, h, s)]
        return ops

    def _allreduce(self, t: int) -> _Op:
        """Two ring all-reduces of the layer's output per layer (after attention and after the MLP)."""
        payload = t * self._h * ACT_BYTES
        wire = 2.0 * (self.tp - 1) / self.tp * payload
        latency = self._coll_lat + self._ring_lat
        seconds = 2 * (latency + wire / self._link)
        bound = "latency" if latency > wire / self._link else "memory"
        return ("allreduce", "communication", 2 * t * self._h, 2 * wire, seconds, bound, 2)

    def _dense_totals(self, t: int) -> tuple:
        """(seconds per family, flops, bytes, seconds per bound, eager excess) of all layers for t tokens."""
        hit = self._dense.get(t)
        if hit is None:
            ops = [_scale(op, self._layers) for op in self._layer_ops(t)]
            ops.append(self._stream("embedding", "elementwise", 0.0, 2 * t * self._h * ACT_BYTES))
            if self.pp > 1:
                ops.append(self._pp_send(t))
            hit = self._dense[t] = _totals(ops, self.gpu.launch_overhead_s)
        return hit

    def _pp_send(self, t: int) -> _Op:
        """Hand-offs between pipeline stages: (pp - 1) sends of the hidden states of the step's tokens."""
        wire = t * self._h * ACT_BYTES
        seconds = (self.pp - 1) * (self._coll_lat + wire / self._link)
        return ("pipeline_send", "communication", 0.0, (self.pp - 1) * wire, seconds, "latency", self.pp - 1)

    def _head_ops(self, s: int) -> list[_Op]:
        """Final norm and LM head on the s sampled positions (vocabulary split over tp)."""
        if s <= 0:
            return []
        h = self._h
        return [self._elementwise("final_norm", NORM_FLOPS, s * h, self._impl.norm),
                self._gemm("lm_head", s, self._vocab, h, self._vocab * h * 2.0 / self._wb)]

    def _head_totals(self, s: int) -> tuple:
        hit = self._head.get(s)
        if hit is None:
            hit = self._head[s] = _totals(self._head_ops(s), self.gpu.launch_overhead_s)
        return hit

    # ------------------------------------------------------------------ attention (depends on contexts)
    def _attention_ops(self, shape: StepShape) -> list[_Op]:
        """Attention of all layers: one prefill kernel for the prompt chunks, one decode kernel."""
        ops = []
        if shape.prefill:
            ops += self._prefill_attention(shape.prefill)
        if shape.num_decode:
            ops.append(self._decode_attention(shape.num_decode, shape.decode_context_tokens))
        return [_scale(op, self._layers) for op in ops]

    def _decode_attention(self, num_seqs: int, context_tokens: int) -> _Op:
        """Decode: each sequence's one query reads its whole KV cache; intensity ~ q_heads/kv_heads FLOP/byte."""
        qh = self._qh
        flops = 2.0 * qh * (self._qk_dim + self._v_dim) * context_tokens
        num_bytes = context_tokens * self._kv_elems * self._kvb + num_seqs * qh * (self._qk_dim + self._v_dim) * 2
        seconds, bound = kernel_time(flops, num_bytes, self._attn_rate, self._bw, self._gemm_lat, self._p)
        return ("attention_decode", "attention", flops, num_bytes, seconds, bound, 1)

    def _prefill_attention(self, prefill: tuple[tuple[int, int], ...]) -> list[_Op]:
        """Causal attention of prompt chunks over their cached prefix plus themselves."""
        qh, d_qk, d_v, a = self._qh, self._qk_dim, self._v_dim, ACT_BYTES
        pairs = qk_pairs = kv_tokens = q_tokens = tiles = padded = 0.0
        for n, c in prefill:
            qk_pairs += n * (c + (n + 1) / 2.0)                  # causal: query i sees c + i keys
            padded += n * (c + n / 2.0 + ATTN_TILE / 2.0)        # diagonal tiles are computed in full
            pairs += n * (c + n)
            kv_tokens += c + n
            q_tokens += n
            tiles += math.ceil(n / ATTN_TILE)
        flops = 2.0 * qh * (d_qk + d_v) * qk_pairs
        io = q_tokens * qh * (d_qk + d_v) * a + kv_tokens * self._kv_elems * self._kvb
        if self.attention == "naive":
            return self._naive_attention(io, qh * pairs)
        rate = self._attn_rate * (qk_pairs / padded)
        if self._sms:
            rate *= min(1.0, tiles * qh / self._sms)             # too few (query tile, head) blocks to fill the GPU
        seconds, bound = kernel_time(flops, io, rate, self._bw, self._gemm_lat, self._p)
        return [("attention_prefill", "attention", flops, io, seconds, bound, 1)]

    def _naive_attention(self, io: float, scores: float) -> list[_Op]:
        """Unfused attention: scores = QK^T written to HBM, softmax read and written, then P x V reads them.

        Every (query, key) pair is computed (the causal mask only zeroes scores), in 16-bit.
        """
        s_bytes = scores * ACT_BYTES
        qk_flops, pv_flops = 2.0 * scores * self._qk_dim, 2.0 * scores * self._v_dim
        qk = kernel_time(qk_flops, io / 2 + s_bytes, self._attn_rate, self._bw, self._gemm_lat, self._p)
        sm = kernel_time(SOFTMAX_FLOPS * scores, 2 * s_bytes, self._gemm_rate, self._bw, self._lat, self._p)
        pv = kernel_time(pv_flops, io / 2 + s_bytes, self._attn_rate, self._bw, self._gemm_lat, self._p)
        return [("attention_scores", "attention", qk_flops, io / 2 + s_bytes, qk[0], qk[1], 1),
                ("attention_softmax", "attention", SOFTMAX_FLOPS * scores, 2 * s_bytes, sm[0], sm[1], 1),
                ("attention_pv", "attention", pv_flops, io / 2 + s_bytes, pv[0], pv[1], 1)]

    # ------------------------------------------------------------------ the step
    def graphed(self, shape: StepShape) -> bool:
        """Whether this step replays a CUDA graph (no per-kernel launch cost)."""
        if not self.cuda_graphs or shape.num_seqs > self.cuda_graph_max_batch:
            return False
        return self.cuda_graph_prefill or not shape.prefill

    def _step_cost(self, shape: StepShape) -> StepCost:
        t = shape.num_tokens
        if t <= 0:
            return StepCost(self.step_overhead_s, 0.0, 0.0, "latency", (("overhead", self.step_overhead_s),))
        dense, head = self._dense_totals(t), self._head_totals(shape.num_sampled)
        fam = {f: dense[0][i] + head[0][i] for i, f in enumerate(FAMILIES)}
        flops, num_bytes = dense[1] + head[1], dense[2] + head[2]
        by_bound = [dense[3][i] + head[3][i] for i in range(3)]
        excess, launch = dense[4] + head[4], self.gpu.launch_overhead_s
        for op in self._attention_ops(shape):
            fam[op[1]] += op[4]
            flops += op[2]
            num_bytes += op[3]
            by_bound[_BOUND_INDEX[op[5]]] += op[4]
            excess += max(0.0, op[6] * launch - op[4])
        gpu_s = sum(fam.values())
        launch_s = 0.0 if self.graphed(shape) else excess
        fam["overhead"] = self.step_overhead_s + launch_s
        bound = _BOUNDS[max(range(3), key=by_bound.__getitem__)]
        return StepCost(seconds=gpu_s + fam["overhead"], flops=flops, bytes=num_bytes, bound=bound,
                        breakdown=tuple((f, fam[f]) for f in FAMILIES))

    def operators(self, shape: StepShape) -> list[OperatorCost]:
        """Every operator of the step over all layers, in execution order, plus overhead rows.

        Their seconds add up to `step_cost(shape).seconds`.
        """
        t = shape.num_tokens
        ops = [] if t <= 0 else [_scale(op, self._layers) for op in self._layer_ops(t)]
        if t > 0:
            ops.insert(0, self._stream("embedding", "elementwise", 0.0, 2 * t * self._h * ACT_BYTES))
            at = 1 + next(i for i, op in enumerate(ops) if op[0] == "kv_cache_write")
            ops[at:at] = self._attention_ops(shape)
            ops += self._head_ops(shape.num_sampled)
            if self.pp > 1:
                ops.append(self._pp_send(t))
        rows = [OperatorCost(o[0], o[1], o[2], o[3], o[4], o[5], int(round(o[6]))) for o in ops]
        launch = 0.0 if self.graphed(shape) else _totals(ops, self.gpu.launch_overhead_s)[4]
        if launch:
            rows.append(OperatorCost("kernel_launch", "overhead", 0.0, 0.0, launch, "latency", 0))
        if self.step_overhead_s:
            rows.append(OperatorCost("step_overhead", "overhead", 0.0, 0.0, self.step_overhead_s, "latency", 0))
        return rows

    # ------------------------------------------------------------------ other engine-facing costs
    def swap_seconds(self, num_bytes: float) -> float:
        """Time to move KV bytes between GPU and host memory over the host link."""
        return num_bytes / self.gpu.host_link_bytes_per_s

    def activation_workspace_bytes(self, max_num_batched_tokens: int) -> float:
        """Peak activation memory of one step, reserved out of KV memory (as vLLM's profiling run does)."""
        m = self.model
        per_token = (4 * m.hidden_size + 2 * m.intermediate_size + m.num_heads * m.head_dim) * 2
        return max_num_batched_tokens * per_token / self.tp + m.vocab_size * 4 * 256

    # ------------------------------------------------------------------ decode runs (the engine's fast path)
    def decode_run_costs(self, num_seqs: int, context_tokens: int, context_step: int, max_steps: int,
                         start_s: float = 0.0, stop_s: float = float("inf"), detail: bool = True) -> RunCosts:
        """Decode-only steps one after another from `start_s`: step j decodes `num_seqs` sequences attending
        `context_tokens + j * context_step` tokens. Stops after `max_steps`, or after the first step that ends at
        or after `stop_s`; `ends` holds the running sums of the step times, added as the engine adds them.

        Each step's numbers are bit-for-bit those of step_cost(StepShape((), num_seqs, context, num_seqs)) (a
        test checks): the same float operations in the same order, with everything that does not depend on
        the context taken once per batch size. It stays a Python loop on purpose: the roofline blend raises to
        the power `roofline_overlap`, and numpy's vectorized power differs from the C library's pow (which
        Python uses) in the last bit for a few percent of inputs, so vectorized step times would drift from
        step-by-step ones. Without `detail` only the times are kept per step, and the FLOPs and bytes as totals.
        """
        fam, flops0, bytes0, (bc0, bm0, bl0), excess0, graphed, f1, seq_bytes = self._decode_constants(num_seqs)
        g, a0, e, c, o = fam
        layers, kv_elems, kvb, rate, bw, lat, p = (self._layers, self._kv_elems, self._kvb, self._attn_rate, self._bw,
                                                   self._gemm_lat, self._p)
        launch, step_s, inv_p = self._layers * self.gpu.launch_overhead_s, self.step_overhead_s, 1.0 / p
        blend = p != INF
        seconds, ends, flops, nbytes, bound, attention, overhead = [], [], [], [], [], [], []
        t, flops_total, bytes_total = start_s, 0.0, 0.0
        for j in range(max_steps):
            ctx = context_tokens + j * context_step
            aflops = f1 * ctx                                    # as _decode_attention computes them
            abytes = ctx * kv_elems * kvb + seq_bytes
            # hardware.roofline.kernel_time, inlined; `which` indexes _BOUNDS
            compute_s = aflops / rate if aflops else 0.0
            memory_s = abytes / bw if abytes else 0.0
            big, small, which = (compute_s, memory_s, 0) if compute_s >= memory_s else (memory_s, compute_s, 1)
            if big <= 0.0:
                s, which = lat, 2
            else:
                s = lat + (big * (1.0 + (small / big) ** p) ** inv_p if blend else big)
                which = 2 if lat > big else which
            s *= layers                                          # _scale(op, layers)
            att = a0 + s
            gpu_s = 0 + g + att + e + c + o                      # sum(fam.values()), in FAMILIES order
            if graphed:
                step = gpu_s + (step_s + 0.0)
            else:
                over = step_s + (excess0 + max(0.0, launch - s))
                overhead.append(over)
                step = gpu_s + over
            if detail:
                bc, bm, bl = ((bc0 + s, bm0, bl0) if which == 0 else (bc0, bm0 + s, bl0) if which == 1
                              else (bc0, bm0, bl0 + s))
                bound.append("compute" if bc >= bm and bc >= bl else "memory" if bm >= bl else "latency")
                flops.append(flops0 + aflops * layers)
                nbytes.append(bytes0 + abytes * layers)
                attention.append(att)
            else:
                flops_total += aflops
                bytes_total += abytes
            seconds.append(step)
            t = t + step
            ends.append(t)
            if t >= stop_s:
                break
        if detail:
            return RunCosts(seconds, ends, flops, nbytes, bound, g, attention, e, c,
                            step_s + 0.0 if graphed else overhead)
        k = len(seconds)
        return RunCosts(seconds, ends, overhead_s=step_s + 0.0 if graphed else overhead,
                        flops_total=k * flops0 + flops_total * layers, bytes_total=k * bytes0 + bytes_total * layers)

    def _decode_constants(self, num_seqs: int) -> tuple:
        """What every decode-only step of `num_seqs` sequences shares whatever the context (kept per size)."""
        hit = self._decode.get(num_seqs)
        if hit is None:
            dense, head = self._dense_totals(num_seqs), self._head_totals(num_seqs)
            hit = self._decode[num_seqs] = (
                [dense[0][i] + head[0][i] for i in range(len(FAMILIES))], dense[1] + head[1], dense[2] + head[2],
                tuple(dense[3][i] + head[3][i] for i in range(3)), dense[4] + head[4],
                self.graphed(StepShape((), num_seqs, 0, num_seqs)), 2.0 * self._qh * (self._qk_dim + self._v_dim),
                num_seqs * self._qh * (self._qk_dim + self._v_dim) * 2)
        return hit


_BOUNDS = ("compute", "memory", "latency")
INF = float("inf")
_BOUND_INDEX = {b: i for i, b in enumerate(_BOUNDS)}
_FAMILY_INDEX = {f: i for i, f in enumerate(FAMILIES)}


def _scale(op: _Op, k: float) -> _Op:
    """An operator repeated k times (layers, or the share of MoE layers)."""
    return (op[0], op[1], op[2] * k, op[3] * k, op[4] * k, op[5], op[6] * k)


def _totals(ops: list[_Op], launch_s: float) -> tuple:
    """(seconds per family, flops, bytes, seconds per bound, eager excess) of a list of operators.

    Eager excess: without a CUDA graph the CPU issues each kernel in launch_s, so an operator of k kernels
    takes at least k * launch_s; its excess is what that adds to its GPU time. The CPU may not run ahead
    across operators, which over-counts a little where long GEMMs follow runs of tiny kernels.
    """
    fam, by_bound = [0.0] * len(FAMILIES), [0.0, 0.0, 0.0]
    flops = num_bytes = excess = 0.0
    for op in ops:
        fam[_FAMILY_INDEX[op[1]]] += op[4]
        by_bound[_BOUND_INDEX[op[5]]] += op[4]
        flops += op[2]
        num_bytes += op[3]
        excess += max(0.0, op[6] * launch_s - op[4])
    return fam, flops, num_bytes, by_bound, excess


def _validate(model: ModelSpec, gpu: GPUSpec, dtype: str, kv_dtype: str, tp: int, pp: int, attention: str,
              elementwise: str, bandwidth_scale: float, flops_scale: float, cuda_graph_max_batch: int) -> None:
    """One-line errors naming the bad argument and the valid choices."""
    if dtype not in WEIGHT_DTYPES:
        raise CostModelError(f"unknown weight dtype '{dtype}'; choose one of: {', '.join(WEIGHT_DTYPES)}")
    if kv_dtype not in KV_DTYPES:
        raise CostModelError(f"unknown KV cache dtype '{kv_dtype}'; choose one of: {', '.join(KV_DTYPES)}")
    if attention not in ATTENTION_KINDS:
        raise CostModelError(f"unknown attention '{attention}'; choose one of: {', '.join(ATTENTION_KINDS)}")
    if elementwise not in ELEMENTWISE:
        raise CostModelError(f"unknown elementwise '{elementwise}'; choose one of: {', '.join(ELEMENTWISE)}")
    for name, value in (("tp", tp), ("pp", pp)):
        if not isinstance(value, int) or value < 1:
            raise CostModelError(f"{name} must be a positive integer, got {value!r}")
    if model.num_heads % tp:
        raise CostModelError(f"tp={tp} does not divide {model.name}'s {model.num_heads} attention heads")
    kv = model.num_kv_heads
    if not model.is_mla and (kv % tp if kv >= tp else tp % kv):
        # As vLLM requires: KV heads split evenly over the GPUs, or each replicated on tp / kv_heads of them.
        raise CostModelError(f"tp={tp} and {model.name}'s {kv} KV heads: one must divide the other")
    if tp > 1 and not gpu.link and gpu.link_bytes_per_s <= 0:
        raise CostModelError(f"tp={tp} needs a GPU-to-GPU link, and {gpu.name} has none in its entry")
    for name, value in (("bandwidth_scale", bandwidth_scale), ("flops_scale", flops_scale)):
        if not value > 0:
            raise CostModelError(f"{name} must be positive, got {value!r}")
    if cuda_graph_max_batch < 0:
        raise CostModelError(f"cuda_graph_max_batch must be >= 0, got {cuda_graph_max_batch}")


# ---------------------------------------------------------------------- decode runs (the engine's fast path)
@dataclass
class RunCosts:
    """The costs of a run of decode steps as columns: entry j of each list is step j's StepCost field (bound as
    text, families by name), `ends[j]` when step j ends. A family that is the same in every step of the run
    may be one float instead of a list."""

    seconds: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)
    flops: list[float] = field(default_factory=list)
    bytes: list[float] = field(default_factory=list)
    bound: list[str] = field(default_factory=list)
    gemm_s: list[float] | float = field(default_factory=list)
    attention_s: list[float] | float = field(default_factory=list)
    elementwise_s: list[float] | float = field(default_factory=list)
    communication_s: list[float] | float = field(default_factory=list)
    overhead_s: list[float] | float = field(default_factory=list)
    flops_total: float | None = None       # set instead of the per-step columns when priced without detail
    bytes_total: float | None = None

    def append(self, cost: StepCost, end_s: float) -> None:
        """Add one step that ends at `end_s` (every column must be a list)."""
        fam = dict(cost.breakdown)
        self.seconds.append(cost.seconds)
        self.ends.append(end_s)
        self.flops.append(cost.flops)
        self.bytes.append(cost.bytes)
        self.bound.append(cost.bound)
        for f in FAMILIES:
            getattr(self, f"{f}_s").append(fam.get(f, 0.0))
