"""Attention operators: the only ones whose cost depends on the sequences' contexts, so priced every step.

'flash' attention reads Q, K, V and writes the output once (FlashAttention), one kernel for the prompt chunks and
one for the decodes; 'naive' writes the score matrix to HBM and reads it back (QK^T, softmax, P x V as three
kernels); 'varlen' is vLLM V1's single FlashAttention varlen launch over every sequence of the step, whose decode
rows cost more when a prompt chunk shares the launch (simulator/cost/varlen.py).
"""
from __future__ import annotations

import math
from typing import NamedTuple

from hardware.roofline import kernel_time
from simulator.cost.elementwise import ACT_BYTES, SOFTMAX_FLOPS
from simulator.cost.operators import Dims, Op, scale
from simulator.cost.rates import Rates
from simulator.cost.varlen import (VarlenParams, chunk_tiles, decode_bytes, decode_seconds, group_size,
                                   mixed_decode_seconds, prefill_terms, reread_share)
from simulator.step import StepShape

ATTENTION_KINDS = ("flash", "naive", "varlen")
ATTN_TILE = 128          # FlashAttention query/key tile rows (FA2/FA3 use 128 on Hopper and Ampere)


class DecodeWork(NamedTuple):
    """Decode attention of num_seqs sequences is linear in the tokens attended, ctx:
    flops = flops_per_token * ctx and bytes = ctx * kv_elems * kv_bytes + query_bytes (queries in, outputs out)."""

    flops_per_token: float
    kv_elems: float
    kv_bytes: float
    query_bytes: float


def decode_work(d: Dims, num_seqs: int) -> DecodeWork:
    """What a decode step's attention reads and computes per token attended; intensity ~ q_heads/kv_heads."""
    return DecodeWork(2.0 * d.q_heads * (d.qk_dim + d.v_dim), d.kv_elems, d.kv_bytes,
                      num_seqs * d.q_heads * (d.qk_dim + d.v_dim) * 2)


def attention_ops(d: Dims, r: Rates, kind: str, shape: StepShape, varlen: VarlenParams | None = None) -> list[Op]:
    """Attention of all layers: one prefill kernel (three when naive) for the prompt chunks, one decode kernel;
    or, 'varlen' (with its `varlen` parameters), one launch for both."""
    if kind == "varlen":
        return [scale(op, d.layers) for op in varlen_attention(d, varlen, shape)]
    ops = []
    if shape.prefill or shape.verify:                 # verify chunks attend as small prompt chunks do
        ops += prefill_attention(d, r, kind, shape.prefill + shape.verify)
    if shape.num_decode:
        ops.append(decode_attention(d, r, shape.num_decode, shape.decode_context_tokens))
    return [scale(op, d.layers) for op in ops]


def decode_attention(d: Dims, r: Rates, num_seqs: int, context_tokens: int) -> Op:
    """Decode: each sequence's one query reads its whole KV cache (one layer)."""
    w = decode_work(d, num_seqs)
    flops = w.flops_per_token * context_tokens
    num_bytes = context_tokens * w.kv_elems * w.kv_bytes + w.query_bytes
    seconds, bound = kernel_time(flops, num_bytes, r.attention, r.bw, r.gemm_latency_s, r.overlap)
    return Op("attention_decode", "attention", flops, num_bytes, seconds, bound, 1)


def prefill_attention(d: Dims, r: Rates, kind: str, prefill: tuple[tuple[int, int], ...]) -> list[Op]:
    """Causal attention of prompt chunks over their cached prefix plus themselves (one layer)."""
    qh, d_qk, d_v, a = d.q_heads, d.qk_dim, d.v_dim, ACT_BYTES
    pairs = qk_pairs = kv_tokens = q_tokens = tiles = padded = 0.0
    for n, c in prefill:
        qk_pairs += n * (c + (n + 1) / 2.0)                  # causal: query i sees c + i keys
        padded += n * (c + n / 2.0 + ATTN_TILE / 2.0)        # diagonal tiles are computed in full
        pairs += n * (c + n)
        kv_tokens += c + n
        q_tokens += n
        tiles += math.ceil(n / ATTN_TILE)
    flops = 2.0 * qh * (d_qk + d_v) * qk_pairs
    io = q_tokens * qh * (d_qk + d_v) * a + kv_tokens * d.kv_elems * d.kv_bytes
    if kind == "naive":
        return naive_attention(d, r, io, qh * pairs)
    rate = r.attention * (qk_pairs / padded)
    if r.num_sms:
        rate *= min(1.0, tiles * qh / r.num_sms)             # too few (query tile, head) blocks to fill the GPU
    seconds, bound = kernel_time(flops, io, rate, r.bw, r.gemm_latency_s, r.overlap)
    return [Op("attention_prefill", "attention", flops, io, seconds, bound, 1)]


def naive_attention(d: Dims, r: Rates, io: float, scores: float) -> list[Op]:
    """Unfused attention: scores = QK^T written to HBM, softmax read and written, then P x V reads them.

    Every (query, key) pair is computed (the causal mask only zeroes scores), in 16-bit.
    """
    s_bytes = scores * ACT_BYTES
    qk_flops, pv_flops = 2.0 * scores * d.qk_dim, 2.0 * scores * d.v_dim
    qk = kernel_time(qk_flops, io / 2 + s_bytes, r.attention, r.bw, r.gemm_latency_s, r.overlap)
    sm = kernel_time(SOFTMAX_FLOPS * scores, 2 * s_bytes, r.gemm, r.bw, r.latency_s, r.overlap)
    pv = kernel_time(pv_flops, io / 2 + s_bytes, r.attention, r.bw, r.gemm_latency_s, r.overlap)
    return [Op("attention_scores", "attention", qk_flops, io / 2 + s_bytes, *qk, 1),
            Op("attention_softmax", "attention", SOFTMAX_FLOPS * scores, 2 * s_bytes, *sm, 1),
            Op("attention_pv", "attention", pv_flops, io / 2 + s_bytes, *pv, 1)]


def varlen_attention(d: Dims, p: VarlenParams, shape: StepShape) -> list[Op]:
    """vLLM V1's one varlen launch (one layer), as rows: the prompt chunks, the decodes as they would cost alone
    (packed), and, when both share the launch, `attention_mixed`: what the unpacked decode rows cost beyond
    that (grouped-head KV re-reads, padded tiles, their CTAs). The rows add up to varlen.step_seconds."""
    ops, qd = [], 2.0 * d.q_heads * (d.qk_dim + d.v_dim)
    tiles = padded = kv_tokens = q_tokens = pairs = 0.0
    chunks = shape.prefill + shape.verify             # verify chunks attend as small prompt chunks do
    for n, c in chunks:
        t, pp = chunk_tiles(p, n, c)
        tiles, padded, kv_tokens, q_tokens = tiles + t, padded + pp, kv_tokens + c + n, q_tokens + n
        pairs += n * (c + (n + 1) / 2.0)
    if chunks:
        compute, memory = (float(x) for x in prefill_terms(p, tiles, padded, kv_tokens, q_tokens))
        body = max(compute, memory)
        bound = "latency" if p.floor_s > body else "compute" if compute >= memory else "memory"
        io = kv_tokens * p.kv_bytes_per_token + q_tokens * p.q_heads * (p.qk_dim + p.v_dim) * ACT_BYTES
        ops.append(Op("attention_prefill", "attention", qd * pairs, io, p.floor_s + body, bound, 1))
    if shape.num_decode:
        n, ctx = shape.num_decode, shape.decode_context_tokens
        alone = decode_seconds(p, n, ctx)
        num_bytes = decode_bytes(p, n, ctx)
        if not chunks:
            bound = "latency" if p.floor_s > alone - p.floor_s else "memory"
            ops.append(Op("attention_decode", "attention", qd * ctx, num_bytes, alone, bound, 1))
        else:
            packed = alone - p.floor_s                      # the launch's floor is the prefill row's
            extra = float(mixed_decode_seconds(p, tiles, n, ctx)) - packed
            reread = (group_size(p) - 1.0) * float(reread_share(p, tiles, n)) * ctx * p.kv_bytes_per_token
            ops.append(Op("attention_decode", "attention", qd * ctx, num_bytes, packed, "memory", 0))
            ops.append(Op("attention_mixed", "attention", 0.0, reread, extra, "memory", 0))
    return ops
