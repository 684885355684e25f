"""Batch: the requests of one engine step and how many new tokens each computes."""
from __future__ import annotations

from dataclasses import dataclass, field

from simulator.request import Request


@dataclass
class Batch:
    """One step's work.

    `num_new_tokens[i]` tokens of `requests[i]` are computed this step. `padding_context_tokens` lists the
    context of finished sequences that a run-to-completion batch still computes as padding (one token each).
    `swap_bytes` is KV moved between GPU and host memory before the step can run. `lazy_decode` more requests,
    advanced lazily by the fast path (simulator/batching/lazy.py) and so not listed, decode one token each,
    attending `lazy_context` tokens in all (their computed tokens plus the new one).
    """

    requests: list[Request]
    num_new_tokens: list[int]
    padding_context_tokens: list[int] = field(default_factory=list)
    swap_bytes: float = 0.0
    num_preempted: int = 0
    lazy_decode: int = 0
    lazy_context: int = 0

    def __post_init__(self) -> None:
        assert len(self.requests) == len(self.num_new_tokens)
        assert not self.num_new_tokens or min(self.num_new_tokens) > 0

    @property
    def batch_size(self) -> int:
        return len(self.requests) + len(self.padding_context_tokens) + self.lazy_decode

    @property
    def num_batched_tokens(self) -> int:
        return sum(self.num_new_tokens) + self.lazy_decode

    def shape_fields(self) -> tuple[tuple[tuple[int, int], ...], int, int, int, tuple[tuple[int, int], ...]]:
        """StepShape's fields (prefill, num_decode, decode_context_tokens, num_sampled, verify) as a plain tuple.

        A request with one uncomputed token decodes it, or, scheduled with more (its speculative drafts),
        verifies them; any other request computes a prompt chunk (or recomputes after preemption)."""
        prefill: list[tuple[int, int]] = []
        verify: list[tuple[int, int]] = []
        num_decode = len(self.padding_context_tokens)
        decode_context = sum(self.padding_context_tokens) + num_decode + self.lazy_context
        num_decode += self.lazy_decode
        num_sampled = num_decode
        for req, n in zip(self.requests, self.num_new_tokens):
            if req.num_uncomputed_tokens != 1:
                prefill.append((n, req.num_computed_tokens))
                num_sampled += req.num_computed_tokens + n == req.num_tokens
            elif n == 1:
                num_decode += 1
                decode_context += req.num_computed_tokens + 1
                num_sampled += 1
            else:
                verify.append((n, req.num_computed_tokens))
                num_sampled += n
        return tuple(prefill), num_decode, decode_context, num_sampled, tuple(verify)
