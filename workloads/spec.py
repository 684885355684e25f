"""The canonical request a workload hands to the simulator."""
from __future__ import annotations

from dataclasses import dataclass

# One piece of a request's token content: (content id, tokens). Token i of a piece is the same token in every
# request whose piece has that content id, so equal leading pieces mean a shared prefix.
ContentPiece = tuple[int, int]


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
        if self.arrival_s < 0:
            raise ValueError(f"request {self.request_id}: negative arrival time {self.arrival_s}")
        if self.prompt_tokens < 1:
            raise ValueError(f"request {self.request_id}: prompt_tokens must be >= 1, got {self.prompt_tokens}")
        if self.output_tokens < 1:
            raise ValueError(f"request {self.request_id}: output_tokens must be >= 1, got {self.output_tokens}")
        if self.think_s < 0:
            raise ValueError(f"request {self.request_id}: negative think time {self.think_s}")

    @property
    def content_tokens(self) -> int:
        return sum(n for _, n in self.content)
