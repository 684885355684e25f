"""Prefix caching on the paged KV cache, as vLLM V1 does it (automatic prefix caching).

What vLLM V1 does (vllm/v1/core/kv_cache_utils.py `hash_block_tokens`, block_pool.py `BlockPool`,
kv_cache_manager.py `get_computed_blocks` / `allocate_slots` / `free`):
- a full block is identified by a hash chained over its parent block's hash and its own token ids, so one hash
  names a whole prefix;
- a waiting request's leading blocks whose hashes are cached are reused (their reference count goes up) and
  only the rest is computed; at most num_tokens - 1 tokens hit, because the last token must be computed to
  sample the next one (`max_cache_hit_length = request.num_tokens - 1`);
- a block is cached as soon as it is scheduled full (`allocate_slots` -> `cache_blocks`);
- a freed block (reference count 0) keeps its hash and stays cached until its memory is needed; free blocks are
  reused least recently freed first, a request's blocks tail first (`free_blocks` reversed) so that shared
  prefixes outlive their tails; a preempted request is freed the same way, so its recompute hits what survived.

servesim has no token ids: a RequestSpec describes its tokens as `(content id, tokens)` pieces
(workloads/spec.py). A block inside one piece is keyed by (piece id, offset), a block across pieces by its
pieces' (id, offset, length) triples; tokens past the pieces are the request's own. Hashes chain as vLLM's do.

Simplifications, none of which changes a hit: a request's own blocks (no other request can hit them) are hashed
only when it is preempted, the one time they can hit again; blocks holding response tokens are cached when
their request is freed rather than as they fill (only a later request re-sends a response, and it arrives
after the response finished), so runs of decode steps cache nothing. A run may grow into cached free blocks:
`reserve` counts them, and the oldest are evicted before the next change to the cache (`_settle_evictions`),
the same blocks the step-by-step path evicts one step at a time; queries meanwhile treat them as evicted. Deviations: vLLM keeps
one LRU queue of all free blocks, cached or not, while servesim hands out never-cached free blocks first, so a
cached block is evicted only when no other block is free; a block whose hash is already cached elsewhere is not
cached a second time (vLLM keeps both).
"""
from __future__ import annotations

from collections import OrderedDict
from itertools import islice

from simulator.kv_cache.paged import PagedKVCache
from simulator.request import Request


def content_block_hashes(content: tuple[tuple[int, int], ...], block_size: int, max_tokens: int) -> list[int]:
    """Chained hashes of the full blocks that `content` pieces cover within the first `max_tokens` tokens."""
    out: list[int] = []
    h, partial, filled, pos = 0, [], 0, 0
    for cid, n in content:
        n = min(n, max_tokens - pos)
        if n <= 0:
            break
        pos += n
        off = 0
        if filled:                                         # finish the block a previous piece started
            off = min(n, block_size - filled)
            partial.append((cid, 0, off))
            filled += off
            if filled < block_size:
                continue
            h = hash((h, tuple(partial)))
            out.append(h)
            partial, filled = [], 0
        end = off + (n - off) // block_size * block_size
        for o in range(off, end, block_size):              # whole blocks inside this piece
            h = hash((h, cid, o))
            out.append(h)
        if end < n:
            partial, filled = [(cid, end, n - end)], n - end
    return out


class PrefixCachingPagedKV(PagedKVCache):
    """The paged KV cache with vLLM V1's prefix caching; see the module docstring.

    `prefix_hit(req)` says how many leading tokens of a request that holds nothing are cached;
    `can_allocate` / `allocate` with `cached_tokens` reuse those blocks and add the rest.
    """

    prefix_caching = True

    def __init__(self, capacity_tokens: int, **kwargs) -> None:
        super().__init__(capacity_tokens, **kwargs)
        self.cached: dict[int, int] = {}              # block hash -> block id
        self.block_hash: dict[int, int] = {}          # block id -> its hash (cached blocks only)
        self.refs: dict[int, int] = {}                # cached block id -> requests holding it
        self.lru: OrderedDict[int, None] = OrderedDict()   # cached blocks nobody holds, least recently freed first
        self.num_evictions = 0
        self.shared_tokens = 0                        # tokens stored once but held by more than one request
        self._hashes: dict[int, list[int]] = {}       # request id -> hashes of its content blocks (then own ones)
        self._num_content: dict[int, int] = {}        # request id -> how many of those are content blocks
        self._registered: dict[int, int] = {}         # request id -> leading blocks of its table already cached

    # ---- hashes ----
    def _request_hashes(self, req: Request, num_blocks: int) -> list[int]:
        """The request's block hashes, at least `num_blocks` of them where it has that many tokens."""
        rid = req.request_id
        hashes = self._hashes.get(rid)
        if hashes is None:
            hashes = content_block_hashes(req.spec.content, self.block_size, req.max_tokens)
            self._hashes[rid] = hashes
            self._num_content[rid] = len(hashes)
        if len(hashes) < num_blocks:                  # own blocks: unique to this request
            h = hashes[-1] if hashes else 0
            for i in range(len(hashes), min(num_blocks, req.max_tokens // self.block_size)):
                h = hash((h, -1, rid, i))
                hashes.append(h)
        return hashes

    def prefix_hit(self, req: Request) -> int:
        """Leading tokens of `req` (which holds no KV) whose blocks are cached, in whole blocks, at most
        num_tokens - 1 (vLLM's max_cache_hit_length)."""
        if not req.spec.content and not req.num_preemptions:
            return 0                                  # only its own tokens, never computed before
        limit = (req.num_tokens - 1) // self.block_size
        hashes = self._request_hashes(req, limit if req.num_preemptions else 0)
        cached, n = self.cached, 0
        gone = self._pending_evictions()
        for h in hashes[:limit]:
            if h not in cached or cached[h] in gone:
                break
            n += 1
        return n * self.block_size

    # ---- evictions a run of decode steps has reserved but not yet made ----
    def free_growth_blocks(self) -> int:
        return len(self.free_blocks) + len(self.lru) - self.reserved_blocks

    def reserve(self, num_blocks: int) -> None:
        assert num_blocks <= self.free_growth_blocks(), "reserve beyond the free pool"
        self.reserved_blocks += num_blocks
        assert self.reserved_blocks >= 0

    def _num_pending_evictions(self) -> int:
        return max(0, self.reserved_blocks - len(self.free_blocks))

    def _pending_evictions(self) -> set[int]:
        """The cached free blocks that reserved growth will evict (the oldest), as block ids."""
        n = self._num_pending_evictions()
        return set(islice(self.lru, n)) if n else set()

    def _settle_evictions(self) -> None:
        """Evict the cached blocks that reserved growth took, before anything else changes the cache."""
        if self.lru:                                  # nothing evictable (no content cached): nothing pending
            for _ in range(self.reserved_blocks - len(self.free_blocks)):
                self._evict()

    def _evict(self) -> None:
        block, _ = self.lru.popitem(last=False)
        del self.cached[self.block_hash.pop(block)]
        del self.refs[block]
        self.free_blocks.append(block)
        self.num_evictions += 1

    # ---- allocation ----

    def can_allocate(self, req: Request, num_tokens: int, *, admission: bool = False, cached_tokens: int = 0) -> bool:
        need = self._blocks_needed(req, num_tokens)
        free = len(self.free_blocks) + len(self.lru) - self.reserved_blocks
        if cached_tokens:                             # hit blocks are not taken anew, nor free for the rest
            hit = self._hit_blocks(req, cached_tokens)
            need -= len(hit)
            free -= sum(1 for b in hit if not self.refs[b])
        return need <= free - (self.watermark_blocks if admission else 0)

    def _hit_blocks(self, req: Request, cached_tokens: int) -> list[int]:
        if not cached_tokens:
            return []
        assert req.request_id not in self.block_tables, f"a cache hit for a request holding KV: {req}"
        k = cached_tokens // self.block_size
        hashes = self._request_hashes(req, k)
        return [self.cached[h] for h in hashes[:k]]

    def allocate(self, req: Request, num_tokens: int, *, cached_tokens: int = 0) -> None:
        self._settle_evictions()
        if cached_tokens:
            hit = self._hit_blocks(req, cached_tokens)
            for block in hit:
                self._touch(block)
            self.block_tables[req.request_id] = hit
            self._registered[req.request_id] = len(hit)
        need = self._blocks_needed(req, num_tokens)
        short = need - (len(self.free_blocks) - self.reserved_blocks)
        if short > 0:                                 # evict cached blocks, least recently freed first
            assert short <= len(self.lru), f"allocate without can_allocate: {req}"
            for _ in range(short):
                self._evict()
        self._take(req, need)
        if req.spec.content:                          # prompt blocks of shared content are cached when scheduled
            self._request_hashes(req, 0)
            self._register(req, min(num_tokens // self.block_size, req.prompt_tokens // self.block_size,
                                    self._num_content[req.request_id]))

    def _touch(self, block: int) -> None:
        refs = self.refs[block]
        if refs:
            self.shared_tokens += self.block_size
        else:
            del self.lru[block]
        self.refs[block] = refs + 1

    def settle(self, req: Request, num_tokens: int, *, keep: bool = True) -> None:
        # A finishing request with content takes its blocks anyway: its full content blocks (response included)
        # are cached when it is freed next. Without content nothing of it is cached on finishing.
        self._settle_evictions()
        PagedKVCache.settle(self, req, num_tokens, keep=keep or bool(req.spec.content))

    def _register(self, req: Request, num_blocks: int) -> None:
        """Cache the first `num_blocks` blocks of `req`'s table (those not cached yet)."""
        rid = req.request_id
        start = self._registered.get(rid, 0)
        if num_blocks <= start:
            return
        table = self.block_tables[rid]
        hashes = self._request_hashes(req, num_blocks)
        num_blocks = min(num_blocks, len(hashes), len(table))
        for i in range(start, num_blocks):
            h, block = hashes[i], table[i]
            if h in self.cached or block in self.block_hash:
                continue                              # already cached (as this block, or a twin)
            self.cached[h] = block
            self.block_hash[block] = h
            self.refs[block] = 1
        self._registered[rid] = max(start, num_blocks)

    def free(self, req: Request) -> None:
        self._settle_evictions()
        rid = req.request_id
        if rid in self.block_tables:
            finished = req.is_finished
            if finished:                              # its content blocks, response included, stay cached
                full = min(req.num_computed_tokens, req.spec.content_tokens) // self.block_size
            else:                                     # preempted: everything it computed can hit its recompute
                full = req.num_computed_tokens // self.block_size
            self._register(req, full)
            self._release(self.block_tables.pop(rid))
        self._registered.pop(rid, None)
        if req.is_finished:
            self._hashes.pop(rid, None)
            self._num_content.pop(rid, None)

    def _release(self, table: list[int]) -> None:
        """Give back a request's blocks, tail first (vLLM frees in reverse so that prefixes outlive tails)."""
        if not self.refs or self.refs.keys().isdisjoint(table):   # nothing cached: one C-level extend
            table.reverse()
            self.free_blocks.give_back(table)
            return
        for block in reversed(table):
            refs = self.refs.get(block)
            if refs is None:
                self.free_blocks.append(block)
            elif refs > 1:
                self.refs[block] = refs - 1
                self.shared_tokens -= self.block_size
            else:
                self.refs[block] = 0
                self.lru[block] = None

    def usage(self):
        usage = super().usage()
        b, pending = self.block_size, self._num_pending_evictions()
        lru_tokens = len(self.lru) * b
        return usage._replace(allocated_tokens=usage.allocated_tokens - lru_tokens,
                              free_tokens=usage.free_tokens + lru_tokens,
                              largest_free_hole_tokens=usage.free_tokens + lru_tokens,
                              cached_tokens=(len(self.cached) - pending) * b,
                              evictable_tokens=(len(self.lru) - pending) * b)
