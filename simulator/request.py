"""A request's progress through the server: counters and timestamps; phases are derived, never stored."""
from __future__ import annotations

import enum

from workloads.spec import RequestSpec


class RequestStatus(enum.IntEnum):
    """Lifecycle, ordered: anything after PREEMPTED is finished (one comparison answers `is_finished`)."""

    WAITING = 0
    RUNNING = 1
    SWAPPED = 2      # evicted to host memory; resumes where it was once swapped back in
    PREEMPTED = 3    # evicted by recompute; waits again and recomputes its KV
    FINISHED = 4
    REJECTED = 5


class Request:
    """Mutable progress of one request.

    `num_computed_tokens` catches up with `num_tokens` (prompt + outputs so far); a step that brings it level
    samples one output token. One rule covers whole prefill, chunked prefill, decode and recompute.
    """

    __slots__ = ("spec", "request_id", "arrival_s", "prompt_tokens", "output_tokens", "num_computed_tokens",
                 "num_output_tokens", "status", "scheduled_s", "first_token_s", "finish_s", "last_token_s",
                 "num_preemptions", "recomputed_tokens", "swapped_bytes", "reject_reason", "num_cached_tokens",
                 "num_verify_steps", "seat", "lazy_step", "lazy_id")

    def __init__(self, spec: RequestSpec) -> None:
        self.spec = spec
        self.request_id = spec.request_id
        self.arrival_s = spec.arrival_s
        self.prompt_tokens = spec.prompt_tokens
        self.output_tokens = spec.output_tokens
        self.num_computed_tokens = 0
        self.num_output_tokens = 0
        self.num_cached_tokens = 0       # prompt tokens served from a shared prefix cache, never computed
        self.status = RequestStatus.WAITING
        self.scheduled_s: float | None = None
        self.first_token_s: float | None = None
        self.finish_s: float | None = None
        self.last_token_s: float | None = None
        self.num_preemptions = 0
        self.recomputed_tokens = 0
        self.swapped_bytes = 0.0
        self.reject_reason = ""
        self.num_verify_steps = 0        # speculative decoding: verify steps so far (indexes its acceptance draws)
        # Bookkeeping of the decode-run fast path (simulator/batching/lazy.py): `seat` orders the running set,
        # and while `lazy_id` >= 0 the counters above lag by the decode steps run since step `lazy_step`.
        self.seat = 0
        self.lazy_step = 0
        self.lazy_id = -1

    @property
    def num_tokens(self) -> int:
        """Tokens known so far: the prompt plus every sampled output token."""
        return self.prompt_tokens + self.num_output_tokens

    @property
    def max_tokens(self) -> int:
        """KV slots the request needs at most: the last sampled token is never fed back."""
        return self.prompt_tokens + self.output_tokens - 1

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.prompt_tokens + self.num_output_tokens - self.num_computed_tokens     # num_tokens, written out

    @property
    def is_finished(self) -> bool:
        return self.status > RequestStatus.PREEMPTED

    def __repr__(self) -> str:
        return (f"Request({self.request_id}, {self.status.name}, computed={self.num_computed_tokens}, "
                f"out={self.num_output_tokens}/{self.output_tokens})")
