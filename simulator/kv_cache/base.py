"""The KV-cache manager interface: where each request's K/V lives, in tokens.

Memory operations are atomic query/commit pairs: `can_allocate` answers without changing anything, and
`allocate` either grows a request's allocation fully or fails an assertion. Managers count token slots;
bytes are slots x KV bytes per token, which the engine knows.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import NamedTuple

from simulator.request import Request


class KVUsage(NamedTuple):
    """A snapshot of KV memory, in token slots (a named tuple: it is taken every engine step)."""

    allocated_tokens: int           # slots held by requests (reserved slabs, or whole blocks)
    capacity_tokens: int            # C: every slot the cache has
    free_tokens: int
    largest_free_hole_tokens: int   # the largest contiguous free run (equals free_tokens when any slot serves)
    cached_tokens: int = 0          # slots of blocks in the prefix cache (held or free); 0 without prefix caching
    evictable_tokens: int = 0       # of those, free ones (nobody holds them): taken, oldest first, when memory runs out


class KVCacheManager(ABC):
    """Tracks KV slots per request. Subclasses decide the granularity and placement.

    Args:
        capacity_tokens: KV capacity C in token slots.
        block_size: tokens per block (paged) or allocation granularity.
        max_model_len: the longest sequence (prompt + output) the server accepts.
        reservation: 'max-model-len' reserves max_model_len per request; 'request' reserves exactly
            prompt + output (only managers that reserve up front use it).
        watermark: fraction of capacity kept free when admitting new requests (running ones may use it).
    """

    def __init__(self, capacity_tokens: int, *, block_size: int = 16, max_model_len: int = 8192,
                 reservation: str = "max-model-len", watermark: float = 0.01) -> None:
        if capacity_tokens <= 0:
            raise ValueError(f"KV capacity must be positive, got {capacity_tokens} tokens")
        self.capacity_tokens = capacity_tokens
        self.block_size = block_size
        self.max_model_len = max_model_len
        self.reservation = reservation
        self.watermark = watermark

    @abstractmethod
    def can_allocate(self, req: Request, num_tokens: int, *, admission: bool = False, cached_tokens: int = 0) -> bool:
        """Could `req` hold `num_tokens` KV tokens in total? `admission` also keeps the watermark free;
        `cached_tokens` (a request holding nothing) are its first tokens taken from the prefix cache, as
        `prefix_hit` gave them."""

    @abstractmethod
    def allocate(self, req: Request, num_tokens: int, *, cached_tokens: int = 0) -> None:
        """Grow `req`'s allocation to hold `num_tokens` tokens, the first `cached_tokens` from the prefix cache.
        Call only after `can_allocate` said yes with the same arguments."""

    @abstractmethod
    def free(self, req: Request) -> None:
        """Release everything `req` holds (a no-op if it holds nothing)."""

    @abstractmethod
    def allocated_tokens(self, req: Request) -> int:
        """Token slots `req` holds now."""

    @abstractmethod
    def usage(self) -> KVUsage:
        """A snapshot of the whole cache."""

    @abstractmethod
    def max_request_tokens(self) -> int:
        """The most KV tokens one request could ever be given (a longer request is rejected)."""

    @abstractmethod
    def num_holders(self) -> int:
        """How many requests hold KV now."""

    # ---- prefix caching (simulator/kv_cache/prefix.py); managers without it share nothing ----
    prefix_caching = False
    shared_tokens = 0                 # tokens stored once but held by several requests (counted once as used)
    num_evictions = 0                 # cached blocks whose memory was taken for other tokens

    def prefix_hit(self, req: Request) -> int:
        """Leading tokens of `req` (holding nothing) already in the cache, to allocate with `cached_tokens`."""
        return 0

    # ---- decode runs: the fast path's KV protocol (contract: simulator/batching/lazy.py) ----
    # A run of decode steps grows every running request by one token per step, and the fast path accounts that
    # growth in bulk. `growth_block_tokens` says how a manager grows, and the protocol fails closed:
    #   None (this default): the manager does not say, so continuous batching plans no decode runs with it and
    #       every step goes through schedule() and commit() (slower, never different);
    #   0: running requests never need more memory (slabs reserved up front: ContiguousKVCache);
    #   b > 0: a request takes one more block of b tokens each time it grows past a multiple of b (PagedKVCache);
    #       the manager must then implement free_growth_blocks, reserve and settle.
    growth_block_tokens: int | None = None

    def free_growth_blocks(self) -> int:
        """Blocks a running request's growth may take now (no watermark: running requests may use it)."""
        self._no_block_growth("free_growth_blocks")
        return 0

    def reserve(self, num_blocks: int) -> None:
        """Take `num_blocks` from the free pool for requests that grew in a run, before naming which ones
        (a negative count gives back what an earlier call took)."""
        assert num_blocks == 0, f"{type(self).__name__} cannot grow running requests"

    def settle(self, req: Request, num_tokens: int, *, keep: bool = True) -> None:
        """Hand `req` the reserved blocks it grew into, so it holds `num_tokens` tokens (see `reserve`); with
        `keep` False the request is about to be freed, so they go straight back to the pool instead."""
        self._no_block_growth("settle")

    def _no_block_growth(self, method: str) -> None:
        if self.growth_block_tokens:
            raise NotImplementedError(f"{type(self).__name__} grows by blocks of {self.growth_block_tokens} "
                                      f"tokens in decode runs but does not implement {method}")
