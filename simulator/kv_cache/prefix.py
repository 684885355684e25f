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
pieces' (id, offset, length) triples; tokens past the pieces are the request's own. Hashes chain as vLLM's do,
so a request that follows a finished one (`RequestSpec.after`: the next turn of a conversation, which re-sends
the whole history) resumes the finished one's chain and hashes only its new pieces (`HashChain`).

Cost: a request without content costs what it costs the plain paged cache (nothing is hashed, and no eviction
work is done while no cached block is free); per-block work (hit lookups, reference counts, LRU moves,
evictions) is done by C-level dict and list operations over whole block runs.

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

from collections import OrderedDict, deque
from itertools import compress, islice, repeat
from operator import add, not_
from typing import NamedTuple


from simulator.kv_cache.paged import PagedKVCache
from simulator.request import Request
from workloads.spec import ContentPiece

# Hash chains of finished requests kept for a later request that follows one (the next turn of a conversation,
# `RequestSpec.after`), the most recent ones: a follower that finds none hashes its whole content (same hashes).
KEPT_CHAINS = 4096


class HashChain(NamedTuple):
    """A request's block hashes, and a point to resume hashing from: a longer content that starts with the same
    whole pieces (the next turn of a conversation re-sends the whole history) hashes only the pieces after them."""

    hashes: list[int]                      # chained hashes of the full blocks (a request may append its own after)
    num_blocks: int                        # of those, the content's (within the request's tokens)
    pieces: tuple[ContentPiece, ...]       # resume point: the leading pieces hashed whole,
    tokens: int                            # their tokens,
    partial: tuple[tuple[int, int, int], ...]   # (content id, offset, tokens) of the block begun after them,
    resume_blocks: int                     # and the full blocks they make


def hash_content(content: tuple[ContentPiece, ...], block_size: int, max_tokens: int,
                 start: HashChain | None = None) -> HashChain:
    """Chain the hashes of the full blocks that `content` pieces cover within the first `max_tokens` tokens.
    `start`, a chain whose resume point's pieces begin `content`, within `max_tokens`, is taken as it is: only
    the pieces after them are hashed, with the same result as hashing them all."""
    if start is None:
        out, done, pos, partial = [], 0, 0, []
    else:
        out, done, pos = start.hashes[:start.resume_blocks], len(start.pieces), start.tokens
        partial = list(start.partial)
    h, filled, resume = (out[-1] if out else 0), sum(n for _, _, n in partial), None
    for cid, n in content[done:]:
        if n > max_tokens - pos:                           # cut short: resume from before this piece
            resume = resume or (done, pos, tuple(partial), len(out))
            n = max_tokens - pos
        if n <= 0:
            break
        pos, done, off = pos + n, done + 1, 0
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
    done, pos, whole_partial, whole_blocks = resume or (done, pos, tuple(partial), len(out))
    return HashChain(out, len(out), content[:done], pos, whole_partial, whole_blocks)


def content_block_hashes(content: tuple[ContentPiece, ...], block_size: int, max_tokens: int) -> list[int]:
    """Chained hashes of the full blocks that `content` pieces cover within the first `max_tokens` tokens."""
    return hash_content(content, block_size, max_tokens).hashes


def _consume(iterator) -> None:
    """Run `iterator` to its end in C (itertools' `consume` recipe): per-block dict updates without a Python loop."""
    deque(iterator, maxlen=0)


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
        self._chains: dict[int, HashChain] = {}       # request id -> its block hashes (content, then own ones)
        self._finished_chains: OrderedDict[int, HashChain] = OrderedDict()   # see KEPT_CHAINS, oldest first
        self._registered: dict[int, int] = {}         # request id -> leading blocks of its table already cached

    # ---- hashes ----
    def _request_hashes(self, req: Request, num_blocks: int) -> list[int]:
        """The request's block hashes, at least `num_blocks` of them where it has that many tokens."""
        rid = req.request_id
        chain = self._chains.get(rid)
        if chain is None:
            chain = hash_content(req.spec.content, self.block_size, req.max_tokens, self._leading_chain(req))
            self._chains[rid] = chain
        hashes = chain.hashes
        if len(hashes) < num_blocks:                  # own blocks: unique to this request
            h = hashes[-1] if hashes else 0
            for i in range(len(hashes), min(num_blocks, req.max_tokens // self.block_size)):
                h = hash((h, -1, rid, i))
                hashes.append(h)
        return hashes

    def _leading_chain(self, req: Request) -> HashChain | None:
        """The hash chain of the finished request `req` follows, if its resume point fits `req`'s content."""
        if req.spec.after < 0:
            return None
        chain = self._finished_chains.pop(req.spec.after, None)
        if chain is None or chain.tokens > req.max_tokens or req.spec.content[:len(chain.pieces)] != chain.pieces:
            return None
        return chain

    def _keep_chain(self, req: Request) -> None:
        """Keep a finished request's hash chain for a request that may follow it (see KEPT_CHAINS)."""
        chain = self._chains.pop(req.request_id, None)
        if chain is None or not chain.pieces:
            return                                    # no content hashed whole
        self._finished_chains[req.request_id] = chain
        if len(self._finished_chains) > KEPT_CHAINS:
            self._finished_chains.popitem(last=False)

    def prefix_hit(self, req: Request) -> int:
        """Leading tokens of `req` (which holds no KV) whose blocks are cached, in whole blocks, at most
        num_tokens - 1 (vLLM's max_cache_hit_length)."""
        if not req.spec.content and not req.num_preemptions:
            return 0                                  # only its own tokens, never computed before
        limit = (req.num_tokens - 1) // self.block_size
        hashes = self._request_hashes(req, limit if req.num_preemptions else 0)
        present = list(map(self.cached.__contains__, hashes[:limit]))
        present.append(False)
        n = present.index(False)                      # leading blocks that are cached
        gone = self._pending_evictions()
        if gone:
            blocks = list(map(self.cached.__getitem__, hashes[:n]))
            if not gone.isdisjoint(blocks):
                n = next(i for i, block in enumerate(blocks) if block in gone)
        return n * self.block_size

    # ---- evictions a run of decode steps has reserved but not yet made ----
    def free_growth_blocks(self) -> int:
        return self.free_blocks.num_free + len(self.lru) - self.reserved_blocks

    def reserve(self, num_blocks: int) -> None:
        assert num_blocks <= self.free_growth_blocks(), "reserve beyond the free pool"
        self.reserved_blocks += num_blocks
        assert self.reserved_blocks >= 0

    def _num_pending_evictions(self) -> int:
        return max(0, self.reserved_blocks - self.free_blocks.num_free)

    def _pending_evictions(self) -> set[int]:
        """The cached free blocks that reserved growth will evict (the oldest), as block ids."""
        n = self._num_pending_evictions()
        return set(islice(self.lru, n)) if n else set()

    def _settle_evictions(self) -> None:
        """Evict the cached blocks that reserved growth took, before anything else changes the cache."""
        if self.lru and self.reserved_blocks > self.free_blocks.num_free:   # no cached free block: nothing pending
            self._evict(self.reserved_blocks - self.free_blocks.num_free)

    def _evict(self, num_blocks: int) -> None:
        """Evict the `num_blocks` least recently freed cached blocks (none if it is not positive): they lose their
        hash and go to the free pool, the oldest pushed first."""
        if num_blocks <= 0:
            return
        victims = list(islice(self.lru, num_blocks))
        assert len(victims) == num_blocks, "evicting more blocks than are cached and free"
        _consume(map(self.lru.pop, victims))
        _consume(map(self.cached.pop, map(self.block_hash.pop, victims)))
        _consume(map(self.refs.pop, victims))
        self.free_blocks.give_back(victims)
        self.num_evictions += num_blocks

    # ---- allocation ----

    def can_allocate(self, req: Request, num_tokens: int, *, admission: bool = False, cached_tokens: int = 0) -> bool:
        need = self._blocks_needed(req, num_tokens)
        free = self.free_blocks.num_free + len(self.lru) - self.reserved_blocks
        if cached_tokens:                             # hit blocks are not taken anew, nor free for the rest
            hit = self._hit_blocks(req, cached_tokens)
            need -= len(hit)
            free -= list(map(self.refs.__getitem__, hit)).count(0)
        return need <= free - (self.watermark_blocks if admission else 0)

    def _hit_blocks(self, req: Request, cached_tokens: int) -> list[int]:
        if not cached_tokens:
            return []
        assert req.request_id not in self.block_tables, f"a cache hit for a request holding KV: {req}"
        k = cached_tokens // self.block_size
        hashes = self._request_hashes(req, k)
        return list(map(self.cached.__getitem__, hashes[:k]))

    def allocate(self, req: Request, num_tokens: int, *, cached_tokens: int = 0) -> None:
        self._settle_evictions()
        if cached_tokens:
            hit = self._hit_blocks(req, cached_tokens)
            self._touch(hit)
            self.block_tables[req.request_id] = hit
            self._registered[req.request_id] = len(hit)
        need = self._blocks_needed(req, num_tokens)
        short = need - (self.free_blocks.num_free - self.reserved_blocks)
        if short > 0:                                 # evict cached blocks, least recently freed first
            assert short <= len(self.lru), f"allocate without can_allocate: {req}"
            self._evict(short)
        self._take(req, need)
        if req.spec.content:                          # prompt blocks of shared content are cached when scheduled
            self._request_hashes(req, 0)
            self._register(req, min(num_tokens // self.block_size, req.prompt_tokens // self.block_size,
                                    self._chains[req.request_id].num_blocks))

    def _touch(self, hit: list[int]) -> None:
        """One more request holds the cached blocks `hit`: free ones leave the LRU queue, held ones are shared."""
        refs = list(map(self.refs.__getitem__, hit))
        idle = refs.count(0)
        self.shared_tokens += (len(hit) - idle) * self.block_size
        if idle:
            _consume(map(self.lru.pop, compress(hit, map(not_, refs))))
        self.refs.update(zip(hit, map(add, refs, (1,) * len(refs))))

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
        new, blocks = hashes[start:num_blocks], table[start:num_blocks]
        if (self.cached.keys().isdisjoint(new) and self.block_hash.keys().isdisjoint(blocks)
                and len(set(new)) == len(new)):      # the usual case: all new, in C
            self.cached.update(zip(new, blocks))
            self.block_hash.update(zip(blocks, new))
            self.refs.update(dict.fromkeys(blocks, 1))
        else:
            for h, block in zip(new, blocks):
                if h in self.cached or block in self.block_hash:
                    continue                          # already cached (as this block, or a twin)
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
            self._keep_chain(req)

    def _release(self, table: list[int]) -> None:
        """Give back a request's blocks, tail first (vLLM frees in reverse so that prefixes outlive tails)."""
        table.reverse()
        if not self.refs or self.refs.keys().isdisjoint(table):   # nothing cached: one C-level extend
            self.free_blocks.give_back(table)
            return
        refs = list(map(self.refs.get, table, repeat(0)))   # 0: not cached (a held cached block has refs >= 1)
        uncached, last = refs.count(0), refs.count(1)
        if uncached:                                  # never cached: straight back to the pool
            self.free_blocks.give_back(list(compress(table, map(not_, refs))))
        if last:                                      # nobody else holds them: cached and free, newest last
            idle = dict.fromkeys(compress(table, map((1).__eq__, refs)))
            self.lru.update(idle)
            self.refs.update(dict.fromkeys(idle, 0))
        if uncached + last < len(table):              # still held by others
            self.refs.update((block, n - 1) for block, n in zip(table, refs) if n > 1)
            self.shared_tokens -= (len(table) - uncached - last) * self.block_size

    def usage(self):
        usage = super().usage()
        if not self.cached:                           # nothing cached (nor free and cached): the plain snapshot
            return usage
        b, pending = self.block_size, self._num_pending_evictions()
        lru_tokens = len(self.lru) * b
        return usage._replace(allocated_tokens=usage.allocated_tokens - lru_tokens,
                              free_tokens=usage.free_tokens + lru_tokens,
                              largest_free_hole_tokens=usage.free_tokens + lru_tokens,
                              cached_tokens=(len(self.cached) - pending) * b,
                              evictable_tokens=(len(self.lru) - pending) * b)
