"""Contiguous KV cache: one slab per request, reserved at admission, placed first-fit in a linear space.

This is how systems before PagedAttention held KV (FasterTransformer, Orca): a slab sized for the longest
possible sequence. Unused reservation is internal waste; free memory split into holes too small for the next
slab is external fragmentation.
"""
from __future__ import annotations

from bisect import insort

from simulator.kv_cache.base import KVCacheManager, KVUsage
from simulator.request import Request


class ContiguousKVCache(KVCacheManager):
    growth_block_tokens = 0        # decode runs: a slab is reserved whole at admission, so running requests never grow

    def __init__(self, capacity_tokens: int, **kwargs) -> None:
        super().__init__(capacity_tokens, **kwargs)
        if self.reservation not in ("max-model-len", "request"):
            raise ValueError(f"unknown KV reservation '{self.reservation}'; choose max-model-len or request")
        if self.reservation == "max-model-len" and self.max_model_len > capacity_tokens:
            raise ValueError(f"KV capacity {capacity_tokens} tokens cannot hold one max_model_len slab of "
                             f"{self.max_model_len} tokens; lower --max-model-len or use --kv-reservation request")
        self.holes: list[tuple[int, int]] = [(0, capacity_tokens)]   # (start, length), sorted by start
        self.slabs: dict[int, tuple[int, int]] = {}                  # request_id -> (start, length)

    def slab_tokens(self, req: Request) -> int:
        """The slab reserved for `req`: max_model_len, or exactly prompt + output with reservation='request'."""
        return self.max_model_len if self.reservation == "max-model-len" else req.max_tokens

    def _first_fit(self, length: int) -> int | None:
        for i, (_, hole) in enumerate(self.holes):
            if hole >= length:
                return i
        return None

    def can_allocate(self, req: Request, num_tokens: int, *, admission: bool = False, cached_tokens: int = 0) -> bool:
        assert not cached_tokens, f"{type(self).__name__} shares no prefixes"
        slab = self.slabs.get(req.request_id)
        if slab is not None:
            return num_tokens <= slab[1]
        length = self.slab_tokens(req)
        if num_tokens > length:
            return False
        if admission and self.usage().free_tokens - length < self.watermark * self.capacity_tokens:
            return False
        return self._first_fit(length) is not None

    def allocate(self, req: Request, num_tokens: int, *, cached_tokens: int = 0) -> None:
        assert not cached_tokens, f"{type(self).__name__} shares no prefixes"
        if req.request_id in self.slabs:
            assert num_tokens <= self.slabs[req.request_id][1], f"{req} outgrew its slab"
            return
        length = self.slab_tokens(req)
        i = self._first_fit(length)
        assert i is not None and num_tokens <= length, f"allocate without can_allocate: {req}"
        start, hole = self.holes[i]
        self.slabs[req.request_id] = (start, length)
        if hole == length:
            del self.holes[i]
        else:
            self.holes[i] = (start + length, hole - length)

    def free(self, req: Request) -> None:
        slab = self.slabs.pop(req.request_id, None)
        if slab is None:
            return
        insort(self.holes, slab)
        self._merge_holes()

    def _merge_holes(self) -> None:
        merged: list[tuple[int, int]] = []
        for start, length in self.holes:
            if merged and merged[-1][0] + merged[-1][1] == start:
                merged[-1] = (merged[-1][0], merged[-1][1] + length)
            else:
                merged.append((start, length))
        self.holes = merged

    def allocated_tokens(self, req: Request) -> int:
        slab = self.slabs.get(req.request_id)
        return slab[1] if slab else 0

    def usage(self) -> KVUsage:
        free = sum(length for _, length in self.holes)
        largest = max((length for _, length in self.holes), default=0)
        return KVUsage(allocated_tokens=self.capacity_tokens - free, capacity_tokens=self.capacity_tokens,
                       free_tokens=free, largest_free_hole_tokens=largest)

    def max_request_tokens(self) -> int:
        return self.max_model_len if self.reservation == "max-model-len" else self.capacity_tokens

    def num_holders(self) -> int:
        return len(self.slabs)
