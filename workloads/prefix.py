"""The prefix-cache hits a workload allows at best: every earlier request's content cached forever.

A request can reuse the longest run of leading content pieces that earlier requests (in arrival order) also
began with, in whole KV blocks and at most all but its last prompt token (the last one is computed to sample).
With unlimited KV memory, and every request arriving after the earlier ones were scheduled, a prefix cache
reaches exactly this; a finite cache reaches less once it evicts.
"""
from __future__ import annotations

from workloads.spec import RequestSpec


def ideal_prefix_hits(specs: list[RequestSpec], block_size: int) -> list[int]:
    """Cached prompt tokens of each request (in the order given, which should be arrival order)."""
    seen: set[int] = set()
    hits = []
    for spec in specs:
        key, shared, tokens, run = 0, 0, 0, True
        for piece in spec.content:
            key = hash((key, piece))
            tokens += piece[1]
            if run and key in seen:
                shared = tokens
            else:
                run = False
            seen.add(key)
        hits.append(min(shared, spec.prompt_tokens - 1) // block_size * block_size)
    return hits
