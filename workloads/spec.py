"""The canonical request a workload hands to the simulator."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One request as the workload describes it: when it arrives and how long it is.

    `prefix_block_ids` (optional) are prefix-chained content hashes, one per `prefix_block_tokens` tokens of the
    prompt (the Mooncake trace uses 512-token blocks); two requests sharing leading ids share that prefix's KV.
    """

    request_id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    prefix_block_ids: tuple[int, ...] = ()
    prefix_block_tokens: int = 0

    def __post_init__(self) -> None:
        if self.arrival_s < 0:
            raise ValueError(f"request {self.request_id}: negative arrival time {self.arrival_s}")
        if self.prompt_tokens < 1:
            raise ValueError(f"request {self.request_id}: prompt_tokens must be >= 1, got {self.prompt_tokens}")
        if self.output_tokens < 1:
            raise ValueError(f"request {self.request_id}: output_tokens must be >= 1, got {self.output_tokens}")
