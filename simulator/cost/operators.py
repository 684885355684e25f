"""The operator catalogue: every kernel of a step as an `Op` counting its FLOPs, bytes and kernels, priced on the
roofline (`hardware.roofline.kernel_time`) at the rates of `simulator.cost.rates`.

`Catalogue` lists a step's operators in execution order: the embedding gather, each decoder layer's operators
before attention (norm, QKV, RoPE, KV write), attention (simulator/cost/attention.py), the layer's operators after
it (output projection, residual, norm, MLP or MoE, all-reduces), the LM head on the sampled positions, and the
pipeline hand-offs. Per-layer operators are `scale`d by the number of layers. `totals` reduces a list of
operators to what a StepCost needs.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from operator import add
from typing import NamedTuple

from hardware.roofline import arithmetic_intensity, kernel_time
from simulator.cost.elementwise import ACT_BYTES, ACT_FLOPS, ADD_FLOPS, NORM_FLOPS, ROPE_FLOPS, Elementwise, Ew
from simulator.cost.rates import Rates
from simulator.models import BYTES_PER_ELEMENT, WEIGHT_BYTES_PER_PARAM, ModelSpec
from simulator.step import BOUNDS, FAMILIES


class Op(NamedTuple):
    """One operator: over one layer, or over the whole step once scaled (then `kernels` may be fractional, as
    for the share of MoE layers; `CostModel.operators` rounds it).

    bound: 'compute' or 'memory' (the larger roofline term), or 'latency' when the kernel's fixed latency
    (or, for overhead rows, CPU work) is more than either.
    """

    name: str
    family: str
    flops: float
    bytes: float
    seconds: float
    bound: str
    kernels: float = 1

    @property
    def intensity(self) -> float:
        """FLOPs per byte of memory traffic."""
        return arithmetic_intensity(self.flops, self.bytes)


# Op(*fields) for the pricers below, which build thousands a simulated second: tuple.__new__ skips the named
# tuple's Python-level __new__ (building one takes less than half the time); every field must be given.
_op = partial(tuple.__new__, Op)


def scale(op: Op, k: float) -> Op:
    """An operator repeated k times (layers, or the share of MoE layers)."""
    return _op((op.name, op.family, op.flops * k, op.bytes * k, op.seconds * k, op.bound, op.kernels * k))


BOUND_INDEX = {b: i for i, b in enumerate(BOUNDS)}
FAMILY_INDEX = {f: i for i, f in enumerate(FAMILIES)}


class Totals(NamedTuple):
    """A list of operators reduced: seconds per family (FAMILIES order), FLOPs, bytes, seconds per bound (BOUNDS
    order) and the eager excess (see `totals`)."""

    family_s: tuple[float, ...]
    flops: float
    bytes: float
    bound_s: tuple[float, ...]
    excess_s: float

    def plus(self, other: Totals) -> Totals:
        return _totals((tuple(map(add, self.family_s, other.family_s)), self.flops + other.flops,
                        self.bytes + other.bytes, tuple(map(add, self.bound_s, other.bound_s)),
                        self.excess_s + other.excess_s))


_totals = partial(tuple.__new__, Totals)        # as _op for Op: Totals(*fields) without its Python-level __new__


ZERO = Totals((0.0,) * len(FAMILIES), 0.0, 0.0, (0.0,) * len(BOUNDS), 0.0)


def totals(ops: list[Op], launch_s: float, start: Totals = ZERO, k: float = 1.0) -> Totals:
    """`start` plus the operators `ops`, each repeated `k` times (`scale(op, k)`, float for float, without
    building the scaled copies), added one by one in order.

    Eager excess: without a CUDA graph the CPU issues each kernel in launch_s, so an operator of k kernels
    takes at least k * launch_s; its excess is what that adds to its GPU time. The CPU may not run ahead
    across operators, which over-counts a little where long GEMMs follow runs of tiny kernels.
    """
    fam, by_bound = list(start.family_s), list(start.bound_s)
    flops, num_bytes, excess = start.flops, start.bytes, start.excess_s
    for _, family, op_flops, op_bytes, seconds, bound, kernels in ops:
        seconds *= k
        fam[FAMILY_INDEX[family]] += seconds
        by_bound[BOUND_INDEX[bound]] += seconds
        flops += op_flops * k
        num_bytes += op_bytes * k
        over = kernels * k * launch_s - seconds
        if over > 0.0:                                   # max(0.0, over)
            excess += over
    return _totals((tuple(fam), flops, num_bytes, tuple(by_bound), excess))


# ---------------------------------------------------------------------- kernels
def gemm(r: Rates, weight_bytes: float, name: str, m_rows: float, n: float, k: float,
         weight_elems: float | None = None) -> Op:
    """One GEMM (M x N x K): weights N*K (or `weight_elems`) read once, activations in and out at 16 bits.

    No wave-quantization term: cuBLAS picks tile shapes, split-K and stream-K so that small-M GEMMs fill the
    SMs (a fixed 128x128 tiling would price M=128 x N=4096 at a quarter of the GPU, which the measured steps
    contradict). Small-M GEMMs stream weights at gemm_hbm_efficiency; the fixed gemm_floor_s covers
    prologue, tail and the split-K reduction.
    """
    flops = 2.0 * m_rows * n * k
    w = n * k if weight_elems is None else weight_elems
    num_bytes = w * weight_bytes + (m_rows * k + m_rows * n) * ACT_BYTES
    seconds, bound = kernel_time(flops, num_bytes, r.gemm, r.gemm_bw, r.gemm_latency_s, r.overlap)
    return _op((name, "gemm", flops, num_bytes, seconds, bound, 1))


def stream(r: Rates, name: str, family: str, flops: float, num_bytes: float, kernels: int = 1) -> Op:
    """A memory-streaming kernel (embedding gather, copy)."""
    seconds, bound = kernel_time(flops, num_bytes, r.vector, r.bw, r.latency_s * kernels, r.overlap)
    return _op((name, family, flops, num_bytes, seconds, bound, kernels))


def elementwise(r: Rates, name: str, flops_per_elem: float, elems: float, ew: Ew, count: float = 1.0,
                pass_bytes: float = ACT_BYTES) -> Op:
    """`count` runs of a small operator over `elems` elements, as the implementation's Ew says it runs.

    Vectorized kernels stream their bytes at the achievable bandwidth. Non-vectorized ones (strided or
    broadcast operands in plain PyTorch) take the longer of their bytes and their per-element work at
    the `unvec` rate; on an H100 or H200 that work is the longer one, so these kernels do not speed up with
    bandwidth (measured: benchmarks/data/*_profile_kernels.csv).
    """
    total = ew.passes * elems * pass_bytes * count
    unvec_bytes = ew.unvec_passes * elems * pass_bytes * count
    flops, kernels = flops_per_elem * elems * count, ew.kernels * count
    lat = r.latency_s * kernels
    vec_s, vec_bound = kernel_time(flops, total - unvec_bytes, r.vector, r.bw, 0.0, r.overlap)
    unvec_s, unvec_bound = 0.0, "latency"
    if ew.unvec:
        unvec_s, unvec_bound = kernel_time(ew.unvec * elems * count, unvec_bytes, r.unvec, r.bw, 0.0, r.overlap)
    body = vec_s + unvec_s
    bound = "latency" if lat > body else (unvec_bound if unvec_s > vec_s else vec_bound)
    return _op((name, "elementwise", flops, total, lat + body, bound, kernels))


# ---------------------------------------------------------------------- per-GPU widths
@dataclass(frozen=True, slots=True)
class Dims:
    """Per-GPU widths after the tensor-parallel split (KV heads are replicated when fewer than tp)."""

    hidden: int
    layers: float             # every layer: pipeline stages run one after another for a step
    q_heads: float
    kv_heads: float
    weight_bytes: float       # per parameter
    kv_bytes: float           # per KV element
    qk_dim: float             # per head, of a query-key product
    v_dim: float              # per head, of a value
    kv_elems: float           # KV elements cached per token
    attn_weights: float       # QKV and output projection parameters per layer
    vocab: float
    inter: float
    moe_fraction: float       # share of the layers that are MoE


def dims(m: ModelSpec, dtype: str, kv_dtype: str, tp: int) -> Dims:
    """The widths of `m` split over `tp` GPUs."""
    kvh = max(1.0, m.num_kv_heads / tp)
    if m.is_mla:
        # Absorbed MLA: every head attends over the shared latent (+ RoPE key); values are the latent.
        qk_dim, v_dim = m.kv_lora_rank + m.qk_rope_head_dim, m.kv_lora_rank
        kv_elems = (m.kv_lora_rank + m.qk_rope_head_dim) * 1.0     # one shared latent, all heads
    else:
        qk_dim = v_dim = m.head_dim
        kv_elems = 2.0 * kvh * m.head_dim
    # Pipeline stages hold num_layers / pp layers each but run one after another for a step, so a step's
    # latency still covers every layer (each GPU idles (pp - 1) / pp of it: the bubble).
    return Dims(hidden=m.hidden_size, layers=float(m.num_layers), q_heads=m.num_heads / tp, kv_heads=kvh,
                weight_bytes=WEIGHT_BYTES_PER_PARAM[dtype], kv_bytes=BYTES_PER_ELEMENT[kv_dtype], qk_dim=qk_dim,
                v_dim=v_dim, kv_elems=kv_elems, attn_weights=m.attention_matmul_params_per_layer() / tp,
                vocab=m.vocab_size / tp, inter=m.intermediate_size / tp,
                moe_fraction=m.num_moe_layers / m.num_layers if m.is_moe else 0.0)


# ---------------------------------------------------------------------- the catalogue
class Catalogue:
    """The operators of `model` split over tp GPUs (and pp stages), run with the elementwise recipe `impl`."""

    def __init__(self, model: ModelSpec, d: Dims, r: Rates, impl: Elementwise, tp: int, pp: int) -> None:
        self.model, self.d, self.r, self.impl, self.tp, self.pp = model, d, r, impl, tp, pp
        self._gemm = partial(gemm, r, d.weight_bytes)      # (name, m_rows, n, k, weight_elems=None) -> Op
        self._ew = partial(elementwise, r)                 # (name, flops_per_elem, elems, ew, count, pass_bytes)

    def embedding(self, t: int) -> Op:
        """The token-embedding gather: t rows of the hidden width read and written."""
        return stream(self.r, "embedding", "elementwise", 0.0, 2 * t * self.d.hidden * ACT_BYTES)

    def before_attention(self, t: int) -> list[Op]:
        """One decoder layer's operators before attention for t tokens: norm, QKV, (QK norm), RoPE, KV write."""
        d, impl = self.d, self.impl
        qk_dims = d.q_heads * d.qk_dim + d.kv_heads * self.model.head_dim
        ops = [self._ew("input_norm", NORM_FLOPS, t * d.hidden, impl.norm), self._qkv(t)]
        if self.model.qk_norm:
            ops.append(self._ew("qk_norm", NORM_FLOPS, t * qk_dims, impl.norm))
        ops.append(self._ew("rope", ROPE_FLOPS, t * qk_dims, impl.rope))
        ops.append(self._ew("kv_cache_write", 0.0, t * d.kv_elems, impl.kv_write, pass_bytes=ACT_BYTES + d.kv_bytes))
        return ops

    def after_attention(self, t: int) -> list[Op]:
        """One decoder layer's operators after attention: output projection, residual adds, norm, MLP, all-reduce."""
        d, impl = self.d, self.impl
        ops = [self._gemm("o_proj", t, d.hidden, d.q_heads * d.v_dim)]
        if impl.residual.kernels:
            ops.append(self._ew("residual_add", ADD_FLOPS, t * d.hidden, impl.residual, count=2))
        ops.append(self._ew("post_attn_norm", NORM_FLOPS, t * d.hidden, impl.norm, count=self.model.norms_per_layer - 1))
        ops.extend(self._mlp(t))
        if self.tp > 1:
            ops.append(self._allreduce(t))
        return ops

    def dense(self, t: int) -> list[Op]:
        """Every operator of a step of t tokens that does not depend on the contexts (attention and the head
        excluded), over all layers: `dense_per_layer(t)` scaled by the layers, then `dense_per_step(t)`."""
        return [scale(op, self.d.layers) for op in self.dense_per_layer(t)] + self.dense_per_step(t)

    def dense_per_layer(self, t: int) -> list[Op]:
        """One decoder layer's operators for t tokens but attention."""
        return self.before_attention(t) + self.after_attention(t)

    def dense_per_step(self, t: int) -> list[Op]:
        """The operators run once a step: the embedding gather and the pipeline hand-offs."""
        return [self.embedding(t), self.pp_send(t)] if self.pp > 1 else [self.embedding(t)]

    def _qkv(self, t: int) -> Op:
        """The fused QKV projection: all attention weights but the output projection's."""
        d = self.d
        o_weights = d.q_heads * d.v_dim * d.hidden
        w = d.attn_weights - o_weights
        return self._gemm("qkv_proj", t, w / d.hidden, d.hidden, w)

    def _mlp(self, t: int) -> list[Op]:
        """Gated MLP: fused gate+up GEMM, SiLU x up, down GEMM; MoE layers read only the experts hit."""
        d, ops = self.d, []
        if d.moe_fraction < 1.0:
            ops = [self._gemm("gate_up_proj", t, 2 * d.inter, d.hidden),
                   self._ew("silu_mul", ACT_FLOPS, t * d.inter, self.impl.act),
                   self._gemm("down_proj", t, d.hidden, d.inter)]
        if d.moe_fraction > 0.0:                       # (a dense model's share 1.0 would scale no bit)
            ops = [scale(op, 1.0 - d.moe_fraction) for op in ops]
            ops += [scale(op, d.moe_fraction) for op in self._moe(t)]
        return ops

    def _moe(self, t: int) -> list[Op]:
        """Router, grouped expert GEMMs (weights of the distinct experts hit), shared experts."""
        m, h = self.model, self.d.hidden
        e, k = m.num_experts, m.num_experts_per_tok
        inter = m.moe_intermediate_size / self.tp
        # Expected distinct experts hit when t tokens each pick k of e uniformly: e * (1 - (1 - k/e)^t).
        hit = e * (1.0 - (1.0 - k / e) ** t)
        rows = t * k                                   # token-expert pairs
        ops = [self._gemm("router", t, e, h)]
        up = self._gemm("experts_gate_up", rows, 2 * inter, h, hit * 2 * inter * h)
        down = self._gemm("experts_down", rows, h, inter, hit * inter * h)
        ops += [up, self._ew("experts_silu_mul", ACT_FLOPS, rows * inter, self.impl.act), down]
        if m.num_shared_experts:
            s = m.num_shared_experts * inter
            ops += [self._gemm("shared_gate_up", t, 2 * s, h), self._gemm("shared_down", t, h, s)]
        return ops

    def _allreduce(self, t: int) -> Op:
        """Two ring all-reduces of the layer's output per layer (after attention and after the MLP)."""
        r = self.r
        payload = t * self.d.hidden * ACT_BYTES
        wire = 2.0 * (self.tp - 1) / self.tp * payload
        latency = r.collective_latency_s + r.ring_latency_s
        seconds = 2 * (latency + wire / r.link)
        bound = "latency" if latency > wire / r.link else "memory"
        return Op("allreduce", "communication", 2 * t * self.d.hidden, 2 * wire, seconds, bound, 2)

    def pp_send(self, t: int) -> Op:
        """Hand-offs between pipeline stages: (pp - 1) sends of the hidden states of the step's tokens."""
        r = self.r
        wire = t * self.d.hidden * ACT_BYTES
        seconds = (self.pp - 1) * (r.collective_latency_s + wire / r.link)
        return Op("pipeline_send", "communication", 0.0, (self.pp - 1) * wire, seconds, "latency", self.pp - 1)

    def head(self, s: int) -> list[Op]:
        """Final norm and LM head on the s sampled positions (vocabulary split over tp)."""
        if s <= 0:
            return []
        d = self.d
        return [self._ew("final_norm", NORM_FLOPS, s * d.hidden, self.impl.norm),
                self._gemm("lm_head", s, d.vocab, d.hidden, d.vocab * d.hidden * 2.0 / d.weight_bytes)]
