"""Pricing a run of decode-only steps at once (the engine's fast path).

A decode-only step of n sequences is the operators of `Catalogue.dense(n)` and `Catalogue.head(n)`, which do not
depend on the contexts and are reduced once per n (`DecodeRun.base`), plus one decode-attention operator that is
linear in the tokens attended (`DecodeWork`). `price_decode_run` adds that operator to the base step after step,
in the same order and with the same roofline function as `CostModel.step_cost` does, so each step's numbers are
bit for bit those of step_cost (tests/test_fast_path.py checks).
"""
from __future__ import annotations

from typing import NamedTuple

from hardware.roofline import kernel_time
from simulator.cost.attention import DecodeWork
from simulator.cost.operators import BOUND_INDEX, Totals
from simulator.cost.rates import Rates
from simulator.cost.varlen import VarlenParams, decode_bytes, decode_seconds
from simulator.step import RunCosts


class DecodeRun(NamedTuple):
    """What every decode-only step of one batch size shares whatever the contexts."""

    base: Totals          # the step's operators but attention, reduced
    graphed: bool         # whether the step replays a CUDA graph
    work: DecodeWork      # its attention's FLOPs and bytes per token attended
    varlen: VarlenParams | None = None   # vLLM V1's varlen kernel prices the attention (decode_seconds)
    num_seqs: int = 0     # sequences decoding (what varlen's query bytes count)


def price_decode_run(run: DecodeRun, r: Rates, layers: float, step_overhead_s: float, context_tokens: int,
                     context_step: int, max_steps: int, start_s: float, stop_s: float, detail: bool) -> RunCosts:
    """See CostModel.decode_run_costs. A Python loop on purpose: the roofline blend raises to the power
    `roofline_overlap`, and numpy's vectorized power differs from the C library's pow (which Python uses) in the
    last bit for a few percent of inputs, so vectorized step times would drift from step-by-step ones."""
    g, a0, e, c, o = run.base.family_s
    bc0, bm0, bl0 = run.base.bound_s
    flops0, bytes0, excess0, graphed = run.base.flops, run.base.bytes, run.base.excess_s, run.graphed
    fpt, kv_elems, kvb, query_bytes = run.work
    varlen, num_seqs = run.varlen, run.num_seqs
    rate, bw, lat, p = r.attention, r.bw, r.gemm_latency_s, r.overlap
    launch = layers * r.launch_s                             # the attention operator's kernels x launch cost
    seconds, ends, flops, nbytes, bound, attention, overhead = [], [], [], [], [], [], []
    t, flops_total, bytes_total = start_s, 0.0, 0.0
    for j in range(max_steps):
        ctx = context_tokens + j * context_step
        aflops = fpt * ctx                                   # decode_attention's operator, one layer
        abytes = ctx * kv_elems * kvb + query_bytes
        if varlen is None:
            s, which = kernel_time(aflops, abytes, rate, bw, lat, p)
        else:                                                # attention.varlen_attention's decode-only row
            abytes = decode_bytes(varlen, num_seqs, ctx)
            s = decode_seconds(varlen, num_seqs, ctx)
            which = "latency" if varlen.floor_s > s - varlen.floor_s else "memory"
        s *= layers                                          # scale(op, layers)
        att = a0 + s
        gpu_s = 0 + g + att + e + c + o                      # sum of the families, in FAMILIES order
        if graphed:
            step = gpu_s + (step_overhead_s + 0.0)
        else:
            over = step_overhead_s + (excess0 + max(0.0, launch - s))
            overhead.append(over)
            step = gpu_s + over
        if detail:
            i = BOUND_INDEX[which]
            bc, bm, bl = (bc0 + s, bm0, bl0) if i == 0 else (bc0, bm0 + s, bl0) if i == 1 else (bc0, bm0, bl0 + s)
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
    over = step_overhead_s + 0.0 if graphed else overhead
    if detail:
        return RunCosts(seconds, ends, flops, nbytes, bound, g, attention, e, c, over)
    k = len(seconds)
    return RunCosts(seconds, ends, overhead_s=over, flops_total=k * flops0 + flops_total * layers,
                    bytes_total=k * bytes0 + bytes_total * layers)
