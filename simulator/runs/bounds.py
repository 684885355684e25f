"""What a configuration can do at best, known before simulating it (for `servesim plan`).

Two kinds of answers, from the same cost model the simulation uses:

- **Certain misses** (exact): a request misses its SLOs whatever the load if it is rejected (longer than
  max-model-len or the KV capacity), if prefilling its prompt alone on an idle GPU already takes longer than
  the TTFT SLO, or if a decode step of it alone (batch of one, its prompt as context) already takes longer than
  the TPOT SLO (every step it is part of is at least that long, so its TPOT is too). When these leave fewer
  than `attainment` of the requests able to meet the SLOs, the configuration cannot meet them at any rate.

- **A capacity bound** (an estimate with a safety margin, used to skip work, never to fill in results): at
  saturation the GPU is busy all the time, and a request costs at least its prompt's prefill tokens at the
  marginal prefill cost plus its decode tokens at the per-token cost of a full decode batch. The batch is
  limited by max-num-seqs, by the KV capacity (mean KV held by a running request: prompt + half the output),
  and by the TPOT SLO (the largest decode batch whose step fits in it). Capacity <= BOUND_MARGIN / (that cost),
  for the workload's mean lengths. The plan starts its replica search at the replica count this bound implies
  and checks it by simulation; the margin keeps the bound above every capacity found on the test grids.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from simulator.cost import StepShape

BOUND_MARGIN = 1.5          # capacity bound = margin x the saturation estimate (see the module docstring)
PREFILL_PROBE_TOKENS = 4096  # marginal prefill cost measured between this many tokens and half as many


@dataclass(frozen=True)
class WorkloadStats:
    """Prompt and output lengths of the workload (rate-independent), for the bounds and the cost per token."""

    prompts: tuple[int, ...]
    outputs: tuple[int, ...]

    @classmethod
    def of(cls, specs) -> "WorkloadStats":
        return cls(tuple(s.prompt_tokens for s in specs), tuple(s.output_tokens for s in specs))

    @property
    def mean_prompt(self) -> float:
        return sum(self.prompts) / len(self.prompts)

    @property
    def mean_output(self) -> float:
        return sum(self.outputs) / len(self.outputs)


@dataclass(frozen=True)
class Bound:
    """What is known of one configuration before simulating it."""

    max_rate_per_s: float        # capacity bound (requests/s per replica); 0 when it cannot meet the SLOs
    certain_miss_share: float    # share of requests that miss the SLOs at any rate
    infeasible_reason: str       # why it cannot meet the SLOs at any rate ('' when it might)
    decode_batch: int            # the decode batch the bound assumed


def decode_step_s(cost_model, batch: int, context: float) -> float:
    """A decode-only step of `batch` sequences, each attending `context` tokens."""
    return cost_model.step_cost(StepShape((), batch, int(batch * context), batch)).seconds


def prefill_s(cost_model, prompt: int, budget: int, chunked: bool) -> float:
    """Prefilling one prompt alone: one step, or chunks of `budget` tokens with chunked prefill."""
    if not chunked or prompt <= budget:
        return cost_model.step_cost(StepShape(((prompt, 0),), 0, 0, 1)).seconds
    total, done = 0.0, 0
    while done < prompt:
        n = min(budget, prompt - done)
        total += cost_model.step_cost(StepShape(((n, done),), 0, 0, int(done + n == prompt))).seconds
        done += n
    return total


def first_above(values: list[int], limit: float, seconds) -> int | None:
    """The smallest of the sorted `values` whose seconds(value) exceed `limit` (None if none does), by
    bisection: seconds grows with the value (a longer prompt or context never costs less)."""
    lo, hi = 0, len(values)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if seconds(values[mid]) > limit else (mid + 1, hi)
    return values[lo] if lo < len(values) else None


def certain_misses(cost_model, stats: WorkloadStats, *, slo_ttft_s, slo_tpot_s, fits_tokens: int,
                   budget: int, chunked: bool) -> Counter:
    """Requests that miss their SLOs whatever the load, counted by cause ('rejected', 'ttft', 'tpot')."""
    prompts = sorted(set(stats.prompts))
    ttft_from = first_above(prompts, slo_ttft_s, lambda p: prefill_s(cost_model, p, budget, chunked)) \
        if slo_ttft_s is not None else None
    tpot_from = first_above(prompts, slo_tpot_s, lambda p: decode_step_s(cost_model, 1, p + 1)) \
        if slo_tpot_s is not None else None
    causes: Counter = Counter()
    for prompt, output in zip(stats.prompts, stats.outputs):
        if prompt + output > fits_tokens:
            causes["rejected"] += 1
        elif ttft_from is not None and prompt >= ttft_from:
            causes["ttft"] += 1
        elif tpot_from is not None and output > 1 and prompt >= tpot_from:
            causes["tpot"] += 1
    return causes


def _why(causes: Counter, total: int, cost_model, stats: WorkloadStats, slo_ttft_s, slo_tpot_s,
         budget: int, chunked: bool) -> str:
    """One sentence on the main cause of certain misses."""
    cause, count = causes.most_common(1)[0]
    share = f"{count / total:.0%} of requests"
    if cause == "rejected":
        return f"{share} are longer than max-model-len or the KV capacity (rejected)"
    if cause == "ttft":
        longest = max(stats.prompts)
        return (f"{share} miss the TTFT SLO even alone on an idle GPU (a {longest}-token prompt takes "
                f"{prefill_s(cost_model, longest, budget, chunked):.2f} s to prefill, SLO {slo_ttft_s:g} s)")
    shortest = min(stats.prompts)
    return (f"{share} miss the TPOT SLO even alone (a decode step takes "
            f"{1e3 * decode_step_s(cost_model, 1, shortest + 1):.1f} ms or more, SLO {1e3 * slo_tpot_s:g} ms)")


def marginal_prefill_s(cost_model, tokens: int = PREFILL_PROBE_TOKENS) -> float:
    """Seconds per prompt token in a large prefill (fixed costs removed)."""
    full = cost_model.step_cost(StepShape(((tokens, 0),), 0, 0, 1)).seconds
    half = cost_model.step_cost(StepShape(((tokens // 2, 0),), 0, 0, 1)).seconds
    return max(0.0, (full - half) / (tokens - tokens // 2))


def largest_batch_within(cost_model, limit_s: float, context: float, cap: int) -> int:
    """The largest decode batch (<= cap) whose step takes at most limit_s (0 if even one sequence does not)."""
    if decode_step_s(cost_model, 1, context) > limit_s:
        return 0
    lo, hi = 1, cap
    while lo < hi:                                  # step time grows with the batch
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if decode_step_s(cost_model, mid, context) <= limit_s else (lo, mid - 1)
    return lo


def bound_config(cfg, parts, stats: WorkloadStats, attainment: float) -> Bound:
    """The Bound of a built configuration (`parts` from simulator.api.build_parts)."""
    cost_model, budget = parts.cost_model, cfg.token_budget
    fits = min(parts.max_model_len, parts.policy.kv.max_request_tokens() + 1)
    causes = certain_misses(cost_model, stats, slo_ttft_s=cfg.slo_ttft_s, slo_tpot_s=cfg.slo_tpot_s,
                            fits_tokens=fits, budget=budget, chunked=cfg.chunked_prefill)
    total, missed = len(stats.prompts), sum(causes.values())
    if (total - missed) / total < attainment:
        why = _why(causes, total, cost_model, stats, cfg.slo_ttft_s, cfg.slo_tpot_s, budget, cfg.chunked_prefill)
        return Bound(0.0, missed / total, why, 0)
    context = stats.mean_prompt + stats.mean_output / 2
    batch = max(1, min(cfg.max_num_seqs, int(parts.meta["kv_capacity_tokens"] / context)))
    if cfg.batching != "continuous":
        batch = max(1, min(batch, cfg.batch_size if cfg.batching == "static" else cfg.max_batch_size))
    if cfg.slo_tpot_s is not None:
        batch = max(1, largest_batch_within(cost_model, cfg.slo_tpot_s, context, batch))
    per_request = (stats.mean_prompt * marginal_prefill_s(cost_model)
                   + max(0.0, stats.mean_output - 1) * decode_step_s(cost_model, batch, context) / batch)
    rate = BOUND_MARGIN / per_request if per_request > 0 else math.inf
    return Bound(rate, missed / total, "", batch)
