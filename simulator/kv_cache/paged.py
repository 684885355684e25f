"""Paged KV cache (vLLM's PagedAttention): fixed-size blocks on demand through a per-request block table.

Waste is only the unfilled tail of each request's last block; any free block serves any request, so there is
no external fragmentation.

A run of decode steps (simulator/batching/lazy.py) grows many requests at once: it `reserve`s the blocks they
cross into as one count, and each request `settle`s its share (takes block ids) when it is next looked at.
Reserved blocks are no longer free; which ids they get does not change any result, since any block serves.
"""
from __future__ import annotations

from functools import partial

from simulator.kv_cache.base import KVCacheManager, KVUsage
from simulator.request import Request


# KVUsage(*fields) without the named tuple's Python-level __new__ (every field given, in order)
_new_usage = partial(tuple.__new__, KVUsage)


class BlockPool:
    """The free block ids: a stack that pops block 0 first, then 1, 2, ...; freed ids go back on top.

    Ids never handed out are one counter, not a list, so memory grows with the blocks in use, never with the
    capacity (a small model on a big GPU has billions of blocks). Pop order equals that of a full list stack.
    """

    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self.returned: list[int] = []      # freed ids, popped last-in first-out
        self.next_fresh = 0                # ids >= this were never handed out
        self.num_free = num_blocks         # len(self), kept as a count (asked several times a step)

    def __len__(self) -> int:
        return self.num_free

    def __iter__(self):
        yield from self.returned
        yield from range(self.next_fresh, self.num_blocks)

    def take(self, need: int) -> list[int]:
        """`need` ids in pop order: freed ids, last freed first, then fresh ones."""
        self.num_free -= need
        returned = self.returned
        if need == 1 and returned:         # a request growing by one block (most takes)
            return [returned.pop()]
        if need <= len(returned):
            cut = len(returned) - need
            taken = returned[cut:]
            del returned[cut:]
            taken.reverse()
            return taken
        taken = returned[::-1]             # every freed id, then fresh ones
        returned.clear()
        fresh = need - len(taken)
        taken.extend(range(self.next_fresh, self.next_fresh + fresh))
        self.next_fresh += fresh
        return taken

    def give_back(self, ids: list[int]) -> None:
        """Push ids; the last one pops first."""
        self.returned.extend(ids)
        self.num_free += len(ids)

    def append(self, block: int) -> None:
        """Push one id (it pops next)."""
        self.returned.append(block)
        self.num_free += 1


class PagedKVCache(KVCacheManager):
    def __init__(self, capacity_tokens: int, **kwargs) -> None:
        super().__init__(capacity_tokens, **kwargs)
        self.num_blocks = capacity_tokens // self.block_size
        if self.num_blocks < 1:
            raise ValueError(f"KV capacity {capacity_tokens} tokens holds no block of {self.block_size} tokens")
        # vLLM v0 BlockSpaceManager keeps watermark * num_blocks free when admitting (default 0.01).
        self.watermark_blocks = int(self.watermark * self.num_blocks)
        self.free_blocks = BlockPool(self.num_blocks)
        self.block_tables: dict[int, list[int]] = {}
        self.reserved_blocks = 0          # taken by run growth, not yet in a block table
        self.growth_block_tokens = self.block_size

    def _blocks_needed(self, req: Request, num_tokens: int) -> int:
        need = -(-num_tokens // self.block_size) - len(self.block_tables.get(req.request_id, ()))
        return need if need > 0 else 0

    def free_growth_blocks(self) -> int:
        return self.free_blocks.num_free - self.reserved_blocks

    def can_allocate(self, req: Request, num_tokens: int, *, admission: bool = False, cached_tokens: int = 0) -> bool:
        assert not cached_tokens, f"{type(self).__name__} shares no prefixes"
        reserve = self.watermark_blocks if admission else 0
        return self._blocks_needed(req, num_tokens) <= self.free_blocks.num_free - self.reserved_blocks - reserve

    def allocate(self, req: Request, num_tokens: int, *, cached_tokens: int = 0) -> None:
        assert not cached_tokens, f"{type(self).__name__} shares no prefixes"
        need = self._blocks_needed(req, num_tokens)
        assert need <= self.free_blocks.num_free - self.reserved_blocks, f"allocate without can_allocate: {req}"
        self._take(req, need)

    def _take(self, req: Request, need: int) -> None:
        table = self.block_tables.setdefault(req.request_id, [])
        if need:                                   # pop `need` ids off the stack, in pop order
            table.extend(self.free_blocks.take(need))

    def reserve(self, num_blocks: int) -> None:
        assert num_blocks <= self.free_blocks.num_free - self.reserved_blocks, "reserve beyond the free pool"
        self.reserved_blocks += num_blocks
        assert self.reserved_blocks >= 0

    def settle(self, req: Request, num_tokens: int, *, keep: bool = True) -> None:
        need = self._blocks_needed(req, num_tokens)
        assert need <= self.reserved_blocks, f"settle beyond the reservation: {req}"
        self.reserved_blocks -= need
        if keep:
            self._take(req, need)

    def free(self, req: Request) -> None:
        table = self.block_tables.pop(req.request_id, None)
        if table:
            table.reverse()
            self.free_blocks.give_back(table)

    def allocated_tokens(self, req: Request) -> int:
        return len(self.block_tables.get(req.request_id, ())) * self.block_size

    def usage(self) -> KVUsage:
        capacity = self.num_blocks * self.block_size
        free = (self.free_blocks.num_free - self.reserved_blocks) * self.block_size
        # allocated, capacity, free, largest free hole (any block serves): all six fields, as it is taken every step
        return _new_usage((capacity - free, capacity, free, free, 0, 0))

    def max_request_tokens(self) -> int:
        return (self.num_blocks - self.watermark_blocks) * self.block_size

    def num_holders(self) -> int:
        return len(self.block_tables)
