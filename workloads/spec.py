"""The canonical request a workload hands to the simulator."""
from __future__ import annotations

import numbers
from dataclasses import dataclass

# One piece of a request's token content: (content id, tokens). Token i of a piece is the same token in every
# request whose piece has that content id, so equal leading pieces mean a shared prefix.
ContentPiece = tuple[int, int]


MAX_ARRIVAL_S = 1e9        # about 32 years of simulated time: later arrivals are a unit mistake
MAX_TOKENS = 10**9         # one request's prompt or output tokens


def _check_integer(spec: "RequestSpec", name: str) -> None:
    """A TypeError unless field `name` is an integer (numpy integers too; never a bool or a float like 2.5)."""
    value = getattr(spec, name)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"request {spec.request_id!r}: {name} must be an integer, got {value!r}")


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One request as the workload describes it: when it arrives and how long it is.

    `content` (optional) describes the request's tokens as pieces `(content id, tokens)` from its first token on:
    Mooncake `hash_ids` become one 512-token piece per id, a trace with token ids one piece per token, a shared
    system prompt one piece, a conversation's history its earlier messages and responses. Pieces may run past the
    prompt into the output (a multi-turn session names each response, so the next turn can re-send it). Tokens
    past the pieces are the request's own: no other request shares them.

    `after` (optional) makes the request closed-loop: it arrives `think_s` seconds after request `after`
    finishes (and not before `arrival_s`), as the next turn of a conversation does.
    """

    request_id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    content: tuple[ContentPiece, ...] = ()
    after: int = -1
    think_s: float = 0.0

    def __post_init__(self) -> None:
        if not type(self.request_id) is type(self.prompt_tokens) is type(self.output_tokens) is type(self.after) is int:
            for name in ("request_id", "prompt_tokens", "output_tokens", "after"):   # (workloads give plain ints)
                _check_integer(self, name)
        if not 0 <= self.arrival_s <= MAX_ARRIVAL_S:             # also refuses NaN
            raise ValueError(f"request {self.request_id}: arrival_s must be in [0, {MAX_ARRIVAL_S:g}] s, "
                             f"got {self.arrival_s!r}")
        if not 1 <= self.prompt_tokens <= MAX_TOKENS:
            raise ValueError(f"request {self.request_id}: prompt_tokens must be in 1..{MAX_TOKENS:,}, "
                             f"got {self.prompt_tokens}")
        if not 1 <= self.output_tokens <= MAX_TOKENS:
            raise ValueError(f"request {self.request_id}: output_tokens must be in 1..{MAX_TOKENS:,}, "
                             f"got {self.output_tokens}")
        if not 0 <= self.think_s <= MAX_ARRIVAL_S:
            raise ValueError(f"request {self.request_id}: think_s must be in [0, {MAX_ARRIVAL_S:g}] s, "
                             f"got {self.think_s!r}")

    @property
    def content_tokens(self) -> int:
        return sum(n for _, n in self.content)
