"""What the engine, the cost model and the recorder exchange about a step: its shape and its priced cost.

A leaf module (it imports nothing of servesim), so the batch, the cost model and the metrics all depend on it and
none of them on each other. FAMILIES and BOUNDS are defined here, once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

# The operator families a step's seconds are split into (StepCost.breakdown, the steps frame's *_s columns).
FAMILIES = ("gemm", "attention", "elementwise", "communication", "overhead")
# What bounds a kernel or a step: its arithmetic, its memory traffic, or a fixed latency.
BOUNDS = ("compute", "memory", "latency")


@dataclass(frozen=True, slots=True)
class StepShape:
    """What one step computes, reduced to what its cost depends on.

    prefill: one (new_tokens, cached_tokens) pair per request computing prompt tokens this step, where
        cached_tokens are the tokens already in its KV cache before the step (0 for a fresh prompt).
    num_decode: requests computing exactly one new token from a cached context.
    decode_context_tokens: sum over decode requests of the tokens attended (cached tokens + the new one).
    num_sampled: positions that go through the LM head: the last position of decodes and of prefills that
        complete, and every position of a verify chunk.
    verify: speculative decoding's verify chunks, one (new_tokens, cached_tokens) pair per request checking
        new_tokens - 1 drafts: priced as a prompt chunk of that many tokens over its context (a small prefill),
        though a step of decodes and verify chunks alone still replays a CUDA graph, as vLLM V1's uniform-decode
        graphs of query length K + 1 do.
    """

    prefill: tuple[tuple[int, int], ...] = ()
    num_decode: int = 0
    decode_context_tokens: int = 0
    num_sampled: int = 0
    verify: tuple[tuple[int, int], ...] = ()

    @property
    def num_prefill_tokens(self) -> int:
        return sum(new for new, _ in self.prefill)

    @property
    def num_verify_tokens(self) -> int:
        return sum(new for new, _ in self.verify)

    @property
    def num_tokens(self) -> int:
        tokens = self.num_decode                  # (a loop, not three sums: the cost model asks every step)
        for new, _ in self.prefill:
            tokens += new
        for new, _ in self.verify:
            tokens += new
        return tokens

    @property
    def num_seqs(self) -> int:
        return len(self.prefill) + self.num_decode + len(self.verify)

    @property
    def num_sampling_seqs(self) -> int:
        """Sequences that sample a token this step (a verify chunk samples all its positions, as one sequence)."""
        return self.num_sampled - self.num_verify_tokens + len(self.verify)


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


class RunCosts(NamedTuple):
    """The costs of a run of decode steps as columns: entry j of each list is step j's StepCost field (bound as
    text, families by name), `ends[j]` when step j ends. A family that is the same in every step of the run
    may be one float instead of a list. Priced without detail, the per-step columns but `seconds` and `ends`
    are empty and `flops_total` / `bytes_total` hold the run's sums. A named tuple: one is built per run."""

    seconds: list[float]
    ends: list[float]
    flops: list[float]
    bytes: list[float]
    bound: list[str]
    gemm_s: list[float] | float
    attention_s: list[float] | float
    elementwise_s: list[float] | float
    communication_s: list[float] | float
    overhead_s: list[float] | float
    flops_total: float | None = None       # set instead of the per-step columns when priced without detail
    bytes_total: float | None = None

    @classmethod
    def empty(cls) -> "RunCosts":
        """No step yet: every column an empty list, ready for `append`."""
        return cls([], [], [], [], [], [], [], [], [], [])

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
