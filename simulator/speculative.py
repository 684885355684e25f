"""Speculative decoding: how many draft tokens a request verifies per step and how many of them are accepted.

A drafter proposes up to K tokens after every step a request samples in; the next step verifies them: the target
model computes the request's last sampled token plus its drafts (K + 1 positions), as vLLM V1's scheduler does
(`num_new_tokens = num_tokens_with_spec - num_computed_tokens`, vllm/v1/core/sched/scheduler.py). The rejection
sampler (vllm/v1/sample/rejection_sampler.py, after Leviathan et al. 2023) accepts the longest prefix of drafts
that agrees with the target and then samples one more token: the target's correction at the first rejection, or
a "bonus" token when every draft was accepted. So a verify step emits accepted + 1 tokens, and the request's KV
keeps accepted + 1 of the K + 1 positions computed: the scheduler rolls `num_computed_tokens` back by the number
rejected (Scheduler.update_from_output).

The acceptance model gives P(draft position i is accepted), i = 1..K: vLLM's per-position acceptance rate
(accepted at position i / verify steps), which cannot grow with i since position i needs every earlier one.
`--acceptance-rate A` is the i.i.d. model of Leviathan et al. (each draft accepted with probability A given the
earlier ones were), i.e. position i with probability A**i. A verify step draws one uniform u and accepts the
positions whose probability exceeds u: P(accepted >= i) = p_i exactly. Each u is a hash of (seed, request,
verify step): the draws do not depend on how steps are batched, timed or advanced (the fast path, batch size,
preemption), so two runs of one seed see the same acceptances for the same request.
"""
from __future__ import annotations

from dataclasses import dataclass

DRAFT_METHODS = ("ngram", "eagle")        # plus any model preset, through --draft-model
_MASK = (1 << 64) - 1


def parse_acceptance_profile(text: str) -> tuple[float, ...]:
    """'0.8,0.6,0.4' -> (0.8, 0.6, 0.4); ValueError (one line) unless each is in [0, 1] and none grows."""
    try:
        rates = tuple(float(part) for part in str(text).split(","))
    except ValueError:
        raise ValueError(f"acceptance-profile must be comma-separated numbers, got '{text}'") from None
    if any(not 0.0 <= r <= 1.0 for r in rates):
        raise ValueError(f"acceptance-profile rates must lie in [0, 1], got '{text}'")
    if any(b > a for a, b in zip(rates, rates[1:])):
        raise ValueError(f"acceptance-profile must not increase with the position (position i is accepted only "
                         f"if every earlier one is), got '{text}'")
    return rates


def _mix(x: int) -> int:
    """splitmix64's finalizer (Steele, Lea and Flood, OOPSLA 2014): a 64-bit integer to a well-mixed one."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _MASK
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _MASK
    return x ^ (x >> 31)


def uniform(seed: int, request_id: int, step: int) -> float:
    """A uniform draw in [0, 1) that depends only on (seed, request_id, step)."""
    h = _mix((seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) & _MASK)
    h = _mix((h ^ (request_id & _MASK)) * 0x9E3779B97F4A7C15 & _MASK)
    h = _mix((h ^ (step & _MASK)) * 0x9E3779B97F4A7C15 & _MASK)
    return (h >> 11) * (1.0 / (1 << 53))


@dataclass(frozen=True)
class Speculation:
    """K draft tokens a verify step, their acceptance model (per-position rates) and the seed of the draws."""

    position_rates: tuple[float, ...]
    seed: int = 0

    @classmethod
    def from_rate(cls, num_tokens: int, rate: float, seed: int = 0) -> "Speculation":
        """Each draft accepted with probability `rate` given the earlier ones were: position i with rate**i."""
        return cls(tuple(rate ** i for i in range(1, num_tokens + 1)), seed)

    @property
    def num_tokens(self) -> int:
        return len(self.position_rates)

    def num_drafts(self, remaining_outputs: int) -> int:
        """Drafts to verify for a request that still owes `remaining_outputs` tokens: K, but never more than it can
        still emit after the step's own sampled token (a draft past the request's end could never be kept)."""
        return max(0, min(self.num_tokens, remaining_outputs - 1))

    def accepted(self, request_id: int, step: int, num_drafts: int) -> int:
        """Drafts accepted among the first `num_drafts` at the request's `step`-th verify step."""
        u = uniform(self.seed, request_id, step)
        n = 0
        while n < num_drafts and u < self.position_rates[n]:
            n += 1
        return n

    def expected_accepted(self) -> float:
        """E[accepted drafts per verify step of K drafts] = sum_i p_i (since P(accepted >= i) = p_i)."""
        return float(sum(self.position_rates))

    def variance_accepted(self) -> float:
        """Var[accepted] = sum_i (2i - 1) p_i - (sum_i p_i)^2 (from E[X^2] = sum_i (2i - 1) P(X >= i))."""
        second = sum((2 * i - 1) * p for i, p in enumerate(self.position_rates, start=1))
        return float(second - self.expected_accepted() ** 2)


@dataclass
class SpecStats:
    """Run totals: verify steps, draft tokens proposed (verified) and accepted."""

    verify_steps: int = 0
    draft_tokens: int = 0
    accepted_tokens: int = 0

    def add(self, drafts: int, accepted: int) -> None:
        self.verify_steps += 1
        self.draft_tokens += drafts
        self.accepted_tokens += accepted

    def as_dict(self) -> dict[str, float]:
        """vLLM's spec-decode metrics: mean accepted drafts per verify step, acceptance rate (accepted / proposed),
        and mean acceptance length (tokens a verify step emits: accepted + 1)."""
        steps, drafts = self.verify_steps, self.draft_tokens
        mean = self.accepted_tokens / steps if steps else float("nan")
        return {"spec_verify_steps": steps, "spec_draft_tokens": drafts, "spec_accepted_tokens": self.accepted_tokens,
                "spec_mean_accepted_tokens": mean,
                "spec_acceptance_rate": self.accepted_tokens / drafts if drafts else float("nan"),
                "spec_mean_acceptance_length": mean + 1.0}
