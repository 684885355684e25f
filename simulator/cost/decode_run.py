"""Pricing a run of decode-only steps at once (the engine's fast path).

A decode-only step of n sequences is the operators of `Catalogue.dense(n)` and `Catalogue.head(n)`, which do not
depend on the contexts and are reduced once per n (`DecodeRun.base`), plus one decode-attention operator that is
linear in the tokens attended (`DecodeWork`). `price` adds that operator to the base step after step,
in the same order and with the same roofline as `CostModel.step_cost` does, so each step's numbers are bit for bit
those of step_cost (tests/test_fast_path.py checks). The loop runs once per simulated decode step and makes no
call: the roofline is `hardware.roofline.kernel_time` written out (the call per step was over a quarter of the
loop's time under cProfile), and tests/test_cost_model.py checks that the copy gives kernel_time's seconds and
bound bit for bit over random inputs; varlen's decode_bytes and decode_seconds are written out the same way.
"""
from __future__ import annotations

from functools import partial
from typing import NamedTuple

from simulator.cost.attention import DecodeWork
from simulator.cost.operators import Totals
from simulator.cost.rates import INF, Rates
from simulator.cost.varlen import VarlenParams
from simulator.step import RunCosts

_new_costs = partial(tuple.__new__, RunCosts)   # RunCosts(*fields) without its Python-level __new__ (per run)


class DecodeRun(NamedTuple):
    """What every decode-only step of one batch size shares whatever the contexts."""

    base: Totals          # the step's operators but attention, reduced
    graphed: bool         # whether the step replays a CUDA graph
    work: DecodeWork      # its attention's FLOPs and bytes per token attended
    varlen: VarlenParams | None = None   # vLLM V1's varlen kernel prices the attention (decode_seconds)
    num_seqs: int = 0     # sequences decoding (what varlen's query bytes count)


def price_decode_run(run: DecodeRun, r: Rates, layers: float, step_overhead_s: float, context_tokens: int,
                     context_step: int, max_steps: int, start_s: float, stop_s: float, detail: bool) -> RunCosts:
    """See CostModel.decode_run_costs (which keeps `prepare`'s constants per batch size and calls `price`)."""
    return price(prepare(run, r, layers, step_overhead_s), context_tokens, context_step, max_steps, start_s, stop_s,
                 detail)


class RunConstants(NamedTuple):
    """Every constant `price` reads, in the order it unpacks them (one tuple unpack per run)."""

    g: float                 # the base step's seconds per family (FAMILIES order) ...
    a0: float
    e: float
    c: float
    o: float
    bc0: float               # ... and per bound (BOUNDS order)
    bm0: float
    bl0: float
    flops0: float            # the base step's FLOPs, bytes and eager launch excess
    bytes0: float
    excess0: float
    graphed: bool
    fpt: float               # decode attention per layer: FLOPs per token attended, KV elements and bytes, query
    kv_elems: float
    kvb: float
    query_bytes: float
    rate: float              # the roofline: attention FLOP/s, bytes/s, latency, overlap exponent
    bw: float
    lat: float
    p: float
    blend: bool              # p != INF
    inv_p: float
    launch: float            # the attention operator's kernels x launch cost
    g0: float                # the sum of the families starts at 0
    graphed_over: float      # a graphed step's overhead
    step_overhead_s: float
    layers: float
    use_varlen: bool         # vLLM V1's varlen kernel: its KV bytes per token, bytes/s, floor and query bytes
    kv_bpt: float = 0.0
    v_bw: float = 0.0
    v_floor: float = 0.0
    v_query: float = 0.0


def prepare(run: DecodeRun, r: Rates, layers: float, step_overhead_s: float) -> RunConstants:
    """`price`'s constants: worked out once per batch size, since a run is a few steps long on average and working
    these out per run was a fifth of a one-step run's price (2.3 -> 1.9 us)."""
    (g, a0, e, c, o), (bc0, bm0, bl0) = run.base.family_s, run.base.bound_s
    fpt, kv_elems, kvb, query_bytes = run.work
    varlen, p = run.varlen, r.overlap
    consts = (g, a0, e, c, o, bc0, bm0, bl0, run.base.flops, run.base.bytes, run.base.excess_s, run.graphed,
              fpt, kv_elems, kvb, query_bytes, r.attention, r.bw, r.gemm_latency_s, p, p != INF, 1.0 / p,
              layers * r.launch_s, 0 + g, step_overhead_s + 0.0, step_overhead_s, layers, varlen is not None)
    if varlen is None:
        return RunConstants(*consts)
    # varlen.decode_bytes and decode_seconds written out, the same operations
    v_query = run.num_seqs * varlen.q_heads * (varlen.qk_dim + varlen.v_dim) * 2.0
    return RunConstants(*consts, varlen.kv_bytes_per_token, varlen.bytes_per_s, varlen.floor_s, v_query)


def price(consts: RunConstants, context_tokens: int, context_step: int, max_steps: int, start_s: float, stop_s: float,
          detail: bool) -> RunCosts:
    """A run priced from `prepare`'s constants, one loop pass per step with no call in it (see the module
    docstring). A Python loop on purpose: numpy's vectorized power (the roofline blend) differs from the C
    library's pow in the last bit for a few percent of inputs; step times would drift."""
    (g, a0, e, c, o, bc0, bm0, bl0, flops0, bytes0, excess0, graphed, fpt, kv_elems, kvb, query_bytes, rate, bw, lat,
     p, blend, inv_p, launch, g0, graphed_over, step_overhead_s, layers, use_varlen, kv_bpt, v_bw, v_floor,
     v_query) = consts
    seconds, ends, flops, nbytes, bound, attention, overhead = [], [], [], [], [], [], []
    t, flops_total, bytes_total = start_s, 0.0, 0.0
    for j in range(max_steps):
        ctx = context_tokens + j * context_step
        aflops = fpt * ctx                                   # decode_attention's operator, one layer
        if not use_varlen:                                   # kernel_time(aflops, abytes, rate, bw, lat, p)
            abytes = ctx * kv_elems * kvb + query_bytes
            compute_s = aflops / rate if aflops else 0.0
            memory_s = abytes / bw if abytes else 0.0
            if compute_s >= memory_s:
                big, small, which = compute_s, memory_s, 0
            else:
                big, small, which = memory_s, compute_s, 1
            if big <= 0.0:
                s, which = lat, 2
            else:
                s = lat + (big * (1.0 + (small / big) ** p) ** inv_p if blend else big)
                if lat > big:
                    which = 2
        else:                                                # attention.varlen_attention's decode-only row
            abytes = ctx * kv_bpt + v_query                  # decode_bytes(varlen, num_seqs, ctx)
            s = v_floor + abytes / v_bw                      # decode_seconds(varlen, num_seqs, ctx)
            which = 2 if v_floor > s - v_floor else 1
        s *= layers                                          # scale(op, layers)
        att = a0 + s
        gpu_s = g0 + att + e + c + o                         # sum of the families, in FAMILIES order
        if graphed:
            step = gpu_s + graphed_over
        else:
            over = launch - s
            over = step_overhead_s + (excess0 + (over if over > 0.0 else 0.0))    # max(0.0, launch - s)
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
    over = graphed_over if graphed else overhead
    if detail:
        return _new_costs((seconds, ends, flops, nbytes, bound, g, attention, e, c, over, None, None))
    k = len(seconds)                   # without the per-step breakdown: FLOPs and bytes as totals
    return _new_costs((seconds, ends, [], [], [], [], [], [], [], over, k * flops0 + flops_total * layers,
                       k * bytes0 + bytes_total * layers))
