"""vLLM V1's attention kernel: one FlashAttention "varlen" launch over the paged KV cache for every sequence of a
step, prompt chunks and decodes together.

Three things a per-request roofline misses, each visible in vLLM's own kernel profiles (casys-kaist/
LLMServingSim, MIT: profiles/<GPU>/<model>/bf16/tp1/attention.csv, the grid of prefill chunk x cached tokens x
decodes x decode context):

1. Query tiles are computed in full. A CTA takes `tile` query rows of one head and sweeps the keys they see, so
   a chunk of 16 tokens after 8,192 cached ones costs as much arithmetic as 64 rows would; with few CTAs the GPU
   is not full (`ctas_per_sm` CTAs fit on an SM at once).
2. Decodes alone are packed: with one query per sequence the kernel folds the grouped query heads of a KV head
   into one tile (FlashAttention's `seqlenq_ngroups_swapped`), so each KV head is read once: a pure bandwidth
   kernel.
3. In a mixed step (any chunk longer than one token) that packing is off: each decode row is its own tile of
   one real row per query head, so its KV head is read once per query head of its group (g = q_heads /
   kv_heads times) and its padded tile is computed in full. The re-reads hit L2 only while the CTAs of the
   g heads of a sequence are resident together: CTAs are issued head after head, (chunk tiles + decodes)
   apart, so the share of re-reads that reach memory rises from `mixed_reread` towards 1 once g x that distance
   passes the `mixed_window` CTAs per SM the GPU holds. Each decode CTA also pays `mixed_cta_s` of SM time.
   This is why a mixed step's decode rows cost 1.7-4x what the same decodes cost alone.

Every function here is written with numpy operations so that the cost model calls it with numbers and
the calibration fitter (hardware/calibrate.py) with arrays of profile points: one formula for both. On plain
numbers, `_maximum`, `_minimum` and `_ceil` skip numpy (the cost model prices a mixed step with them every
step; a numpy call on two floats costs more than the arithmetic) and give the same values.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np


def _maximum(a, b):
    """np.maximum(a, b), as a plain float when both are numbers."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.maximum(a, b)
    return float(a if a >= b else b)


def _minimum(a, b):
    """np.minimum(a, b), as a plain float when both are numbers."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.minimum(a, b)
    return float(a if a <= b else b)


def _ceil(x):
    """np.ceil(x), as a plain float for a number."""
    return np.ceil(x) if isinstance(x, np.ndarray) else float(math.ceil(x))


class VarlenParams(NamedTuple):
    """What the varlen kernel's cost depends on, per GPU of a tensor-parallel group and per layer."""

    q_heads: float
    kv_heads: float             # KV heads read (1 for MLA's shared latent)
    qk_dim: float
    v_dim: float
    kv_bytes_per_token: float   # K and V of one token, all KV heads of this GPU
    attn_flops_per_s: float     # achievable 16-bit matrix rate of attention
    bytes_per_s: float          # achievable memory bandwidth
    num_sms: float
    floor_s: float              # fixed time of the launch
    tile: float                 # query rows per CTA
    ctas_per_sm: float
    mixed_reread: float         # share of a mixed step's grouped-head re-reads that reach memory at low load
    mixed_window: float         # CTAs per SM resident together (the L2-sharing window)
    mixed_sharpness: float      # how fast re-reads go to memory once past the window
    mixed_cta_s: float          # SM time of one decode CTA in a mixed step, beyond its arithmetic and bytes


def group_size(p: VarlenParams) -> float:
    return p.q_heads / p.kv_heads


def prefill_terms(p: VarlenParams, tiles, padded_pairs, kv_tokens, q_tokens):
    """(compute_s, memory_s) of the prompt chunks of a step: `tiles` query tiles (per head), `padded_pairs`
    (query row, key) pairs computed including tile padding, `kv_tokens` keys read, `q_tokens` query rows. With
    fewer CTAs than the GPU holds at once, the arithmetic runs on that share of it."""
    flops = 2.0 * p.q_heads * (p.qk_dim + p.v_dim) * padded_pairs
    fill = _minimum(1.0, _maximum(tiles * p.q_heads, 1.0) / (p.num_sms * p.ctas_per_sm))
    compute = flops / (p.attn_flops_per_s * fill)
    memory = (kv_tokens * p.kv_bytes_per_token + q_tokens * p.q_heads * (p.qk_dim + p.v_dim) * 2.0) / p.bytes_per_s
    return compute, memory


def prefill_seconds(p: VarlenParams, tiles, padded_pairs, kv_tokens, q_tokens):
    """The prompt chunks' launch: its floor plus the longer of its arithmetic and its bytes."""
    compute, memory = prefill_terms(p, tiles, padded_pairs, kv_tokens, q_tokens)
    return p.floor_s + _maximum(compute, memory)


def chunk_tiles(p: VarlenParams, new, cached):
    """(query tiles, padded pairs) of one chunk of `new` tokens after `cached` ones: every tile computes its
    full `tile` rows over the cached keys, and the causal diagonal in tile-wide steps."""
    tiles = _ceil(new / p.tile)
    return tiles, tiles * p.tile * cached + new * (new + p.tile) / 2.0


def decode_bytes(p: VarlenParams, num_decode, context_tokens):
    """Bytes decodes read and write once each: their KV (`context_tokens` attended in all) and queries/outputs."""
    return context_tokens * p.kv_bytes_per_token + num_decode * p.q_heads * (p.qk_dim + p.v_dim) * 2.0


def decode_seconds(p: VarlenParams, num_decode, context_tokens):
    """Decodes alone (packed grouped heads): each KV head read once; a bandwidth-bound kernel.

    simulator/cost/decode_run.py writes this and decode_bytes out in its per-step loop, the same operations:
    change them together (tests/test_fast_path.py compares decode runs with step_cost on V1 cost models)."""
    return p.floor_s + decode_bytes(p, num_decode, context_tokens) / p.bytes_per_s


def reread_share(p: VarlenParams, tiles, num_decode):
    """Share of the grouped-head re-reads of a mixed step's decode rows that miss L2 (see the module notes)."""
    distance = (tiles + num_decode) * group_size(p)
    window = p.mixed_window * p.num_sms
    return p.mixed_reread + (1.0 - p.mixed_reread) / (1.0 + (window / _maximum(distance, 1e-9)) ** p.mixed_sharpness)


def mixed_decode_seconds(p: VarlenParams, tiles, num_decode, context_tokens):
    """The decode rows of a mixed step (unpacked): the longer of their padded tiles' arithmetic and their KV
    bytes with re-reads, plus their CTAs' fixed SM time. No launch floor: they share the prefill's launch."""
    g = group_size(p)
    kv_bytes = context_tokens * p.kv_bytes_per_token * (1.0 + (g - 1.0) * reread_share(p, tiles, num_decode))
    flops = 2.0 * p.q_heads * (p.qk_dim + p.v_dim) * p.tile * context_tokens
    body = _maximum(flops / p.attn_flops_per_s, kv_bytes / p.bytes_per_s)
    return body + num_decode * p.q_heads * p.mixed_cta_s / p.num_sms


def step_seconds(p: VarlenParams, tiles, padded_pairs, kv_tokens, q_tokens, num_decode, context_tokens):
    """One varlen launch (arrays or numbers): prompt chunks, plus decodes packed when alone, unpacked when
    mixed with a chunk. `tiles` = 0 means no chunk; `num_decode` = 0 no decode."""
    has_prefill, has_decode = tiles > 0, num_decode > 0
    pre = np.where(has_prefill, prefill_seconds(p, tiles, padded_pairs, kv_tokens, q_tokens), 0.0)
    alone = np.where(has_decode & ~has_prefill, decode_seconds(p, num_decode, context_tokens), 0.0)
    mixed = np.where(has_decode & has_prefill, mixed_decode_seconds(p, tiles, num_decode, context_tokens), 0.0)
    return pre + alone + mixed


def varlen_params(gpu, model, *, tp: int = 1, kv_dtype: str = "bf16", flops_scale: float = 1.0,
                  bandwidth_scale: float = 1.0) -> VarlenParams:
    """The kernel's parameters for `model` (a ModelSpec) split `tp` ways on `gpu` (a GPUSpec)."""
    from simulator.models import BYTES_PER_ELEMENT
    q_heads = model.num_heads / tp
    if model.is_mla:          # absorbed MLA: every head attends over the one shared latent (+ RoPE key)
        kv_heads, qk_dim, v_dim = 1.0, model.kv_lora_rank + model.qk_rope_head_dim, model.kv_lora_rank
        kv_elems = float(model.kv_lora_rank + model.qk_rope_head_dim)
    else:
        kv_heads, qk_dim = max(1.0, model.num_kv_heads / tp), model.head_dim
        v_dim, kv_elems = model.head_dim, 2.0 * max(1.0, model.num_kv_heads / tp) * model.head_dim
    return VarlenParams(
        q_heads=q_heads, kv_heads=kv_heads, qk_dim=qk_dim, v_dim=v_dim,
        kv_bytes_per_token=kv_elems * BYTES_PER_ELEMENT[kv_dtype],
        attn_flops_per_s=gpu.bf16_flops_per_s * flops_scale * gpu.attention_efficiency,
        bytes_per_s=gpu.hbm_bytes_per_s * bandwidth_scale * gpu.hbm_efficiency, num_sms=float(gpu.num_sms or 1),
        floor_s=gpu.attention_floor_s, tile=gpu.varlen_query_tile, ctas_per_sm=gpu.attention_ctas_per_sm,
        mixed_reread=gpu.mixed_reread, mixed_window=gpu.mixed_window, mixed_sharpness=gpu.mixed_sharpness,
        mixed_cta_s=gpu.mixed_cta_s)


def sampler_seconds(floor_s: float, passes: float, vocab: float, bytes_per_s: float, num_seqs):
    """vLLM's GPU sampler over `num_seqs` sequences: a few small kernels (`floor_s`), then `passes` fp32 passes
    over each sequence's logits (softmax, top-k / top-p, the draw). Fitted on per_sequence.csv's sampler rows."""
    return floor_s + passes * num_seqs * vocab * 4.0 / bytes_per_s
