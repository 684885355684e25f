"""Unit tests that drive a KV manager and a batching policy directly, without the engine: each call's effect on
the manager's blocks or slabs, and each schedule/commit on the queues, hand-checked."""
from __future__ import annotations

import pytest

from simulator.batching import PolicyParams, make_policy
from simulator.kv_cache import KVCacheManager, KVUsage, make_kv_cache
from simulator.kv_cache.contiguous import ContiguousKVCache
from simulator.kv_cache.paged import PagedKVCache
from simulator.request import Request, RequestStatus
from workloads.spec import RequestSpec


def req(i: int, prompt: int, output: int = 4) -> Request:
    return Request(RequestSpec(i, 0.0, prompt, output))


# ---------------------------------------------------------------- paged KV
def test_paged_allocates_whole_blocks_on_demand_and_frees_them():
    kv = PagedKVCache(160, block_size=16, max_model_len=160, watermark=0.0)     # 10 blocks
    a, b = req(0, 20), req(1, 100)
    assert kv.can_allocate(a, 20)
    kv.allocate(a, 20)                                   # 2 blocks
    assert kv.allocated_tokens(a) == 32 and kv.usage() == KVUsage(32, 160, 128, 128)
    kv.allocate(a, 32)                                   # still 2 blocks: no new one until token 33
    assert kv.allocated_tokens(a) == 32
    assert kv.can_allocate(b, 128) and not kv.can_allocate(b, 129)           # 8 blocks left
    kv.allocate(b, 100)                                  # 7 blocks
    assert kv.num_holders() == 2 and kv.usage().free_tokens == 16
    kv.free(a)
    assert kv.usage().free_tokens == 48 and kv.allocated_tokens(a) == 0 and kv.num_holders() == 1
    kv.free(a)                                           # freeing twice is a no-op
    assert kv.usage().free_tokens == 48


def test_paged_admission_keeps_the_watermark_free_but_running_requests_may_use_it():
    kv = PagedKVCache(1600, block_size=16, max_model_len=1600, watermark=0.05)   # 100 blocks, 5 kept
    a = req(0, 95 * 16)
    assert kv.can_allocate(a, 95 * 16, admission=True) and not kv.can_allocate(a, 95 * 16 + 1, admission=True)
    kv.allocate(a, 95 * 16)
    assert kv.can_allocate(a, 100 * 16) and not kv.can_allocate(a, 100 * 16 + 1)
    assert kv.max_request_tokens() == 95 * 16


def test_paged_reserve_and_settle_hand_out_blocks_grown_in_a_run():
    kv = PagedKVCache(160, block_size=16, max_model_len=160, watermark=0.0)
    a = req(0, 16)
    kv.allocate(a, 16)
    assert kv.growth_block_tokens == 16 and kv.free_growth_blocks() == 9
    kv.reserve(1)                                        # a run grew `a` to 17 tokens: one block, not yet named
    assert kv.free_growth_blocks() == 8 and kv.usage().free_tokens == 128 and kv.allocated_tokens(a) == 16
    kv.settle(a, 17)
    assert kv.allocated_tokens(a) == 32 and kv.reserved_blocks == 0 and kv.usage().free_tokens == 128
    kv.reserve(1)
    kv.settle(a, 33, keep=False)                         # about to be freed: the block goes back unnamed
    assert kv.allocated_tokens(a) == 32 and kv.usage().free_tokens == 128


# ---------------------------------------------------------------- contiguous KV
def test_contiguous_places_slabs_first_fit_and_merges_freed_holes():
    kv = ContiguousKVCache(100, max_model_len=30, watermark=0.0)             # slabs of 30 tokens
    a, b, c, d = (req(i, 10) for i in range(4))
    for r in (a, b, c):
        kv.allocate(r, 10)
    assert kv.slabs == {0: (0, 30), 1: (30, 30), 2: (60, 30)} and kv.holes == [(90, 10)]
    assert not kv.can_allocate(d, 10)                     # 10 free tokens, in one hole too small for a slab
    kv.free(b)
    assert kv.usage() == KVUsage(60, 100, 40, 30)         # two holes, of 30 and 10: externally fragmented
    kv.allocate(d, 5)
    assert kv.slabs[3] == (30, 30)                        # first fit: b's old place
    kv.free(a)
    kv.free(d)
    assert kv.holes == [(0, 60), (90, 10)]                # neighbours merged
    assert kv.can_allocate(c, 30) and not kv.can_allocate(c, 31)             # a slab never grows
    assert kv.growth_block_tokens == 0


def test_contiguous_request_reservation_sizes_slabs_to_the_request():
    kv = ContiguousKVCache(100, max_model_len=80, reservation="request", watermark=0.0)
    a = req(0, 10, 5)
    kv.allocate(a, 10)
    assert kv.allocated_tokens(a) == 14 and kv.max_request_tokens() == 100   # the last token is never fed back


# ---------------------------------------------------------------- the KV protocol fails closed
class Minimal(KVCacheManager):
    """Only the abstract methods: every request fits (enough for the protocol's defaults)."""

    def can_allocate(self, req, num_tokens, *, admission=False, cached_tokens=0):
        return True

    def allocate(self, req, num_tokens, *, cached_tokens=0):
        pass

    def free(self, req):
        pass

    def allocated_tokens(self, req):
        return 0

    def usage(self):
        return KVUsage(0, self.capacity_tokens, self.capacity_tokens, self.capacity_tokens)

    def max_request_tokens(self):
        return self.capacity_tokens

    def num_holders(self):
        return 0


def test_a_manager_that_does_not_say_how_it_grows_gets_no_decode_runs():
    kv = Minimal(1000)
    assert kv.growth_block_tokens is None
    policy = make_policy("continuous", kv, PolicyParams())
    policy.enable_fast_path()
    assert policy.lazy is None and policy.plan_run(0.0) is None


def test_a_block_manager_without_the_run_hooks_fails_loudly():
    class Blocks(Minimal):
        growth_block_tokens = 16
    with pytest.raises(NotImplementedError, match="Blocks grows by blocks of 16 tokens in decode runs but does "
                                                  "not implement free_growth_blocks"):
        Blocks(1000).free_growth_blocks()
    with pytest.raises(NotImplementedError, match="does not implement settle"):
        Blocks(1000).settle(req(0, 1), 2)


# ---------------------------------------------------------------- continuous batching, schedule by schedule
def continuous(capacity=1600, **params):
    kv = make_kv_cache("paged", capacity, block_size=16, max_model_len=capacity, watermark=0.0)
    return make_policy("continuous", kv, PolicyParams(**params))


def test_continuous_admits_fcfs_within_the_token_budget_then_decodes_together():
    policy = continuous(max_num_batched_tokens=300)
    a, b, c = req(0, 100, 2), req(1, 150, 2), req(2, 100, 2)
    for r in (a, b, c):
        policy.add_request(r)
    batch = policy.schedule(0.0)
    assert batch.requests == [a, b] and batch.num_new_tokens == [100, 150]      # c's 100 would exceed 300
    assert list(policy.waiting) == [c] and a.status == RequestStatus.RUNNING
    out = policy.commit(batch, 0.0, 0.1)
    assert (a.num_output_tokens, a.first_token_s, out.finished) == (1, 0.1, [])
    batch = policy.schedule(0.1)                          # c is admitted: a prefill step (vLLM v0 puts them first)
    assert batch.requests == [c] and batch.num_new_tokens == [100]
    policy.commit(batch, 0.1, 0.2)
    batch = policy.schedule(0.2)                          # nothing waits: every running request decodes
    assert batch.requests == [a, b, c] and batch.num_new_tokens == [1, 1, 1]
    out = policy.commit(batch, 0.2, 0.25)
    assert out.finished == [a, b, c] and out.itl_gaps == pytest.approx([0.15, 0.15, 0.05])
    assert not policy.has_work() and policy.kv.num_holders() == 0 and policy.kv_used_tokens == 0


def test_continuous_chunked_prefill_splits_a_prompt_after_the_decodes():
    policy = continuous(max_num_batched_tokens=64, chunked_prefill=True)
    a, b = req(0, 10, 3), req(1, 100, 1)
    policy.add_request(a)
    policy.commit(policy.schedule(0.0), 0.0, 0.1)         # a prefilled
    policy.add_request(b)
    batch = policy.schedule(0.1)
    assert batch.requests == [a, b] and batch.num_new_tokens == [1, 63]          # decode first, then a chunk
    policy.commit(batch, 0.1, 0.2)
    assert b.num_computed_tokens == 63 and b.first_token_s is None               # no token from a chunk


def test_a_mixed_step_keeps_the_decoders_lazy_and_prices_them_as_listed():
    # The same two requests with the fast path on: a decodes lazily (not listed, not synced) while b's prompt
    # is chunked after it; the batch counts a in its shape as the step-by-step batch [a, b] does.
    policy = continuous(max_num_batched_tokens=64, chunked_prefill=True)
    policy.enable_fast_path()
    a, b = req(0, 10, 3), req(1, 100, 1)
    policy.add_request(a)
    policy.commit(policy.schedule(0.0), 0.0, 0.1)         # a prefilled, then tracked
    assert policy.lazy.num_tracked == 1
    policy.add_request(b)
    batch = policy.schedule(0.1)
    assert batch.requests == [b] and batch.num_new_tokens == [63] and (batch.lazy_decode, batch.lazy_context) == (1, 11)
    assert batch.shape_fields() == (((63, 0),), 1, 11, 1, ()) and batch.batch_size == 2
    out = policy.commit(batch, 0.1, 0.2)
    assert (out.itl_gaps, out.itl_counts, out.finished) == ([0.2 - 0.1], [1], [])
    assert a.num_computed_tokens == 10 and policy.kv_used_tokens == 74          # a lags; the totals do not
    batch = policy.schedule(0.2)                          # b's last 37 tokens beside a's third token
    assert batch.requests == [b] and batch.num_new_tokens == [37] and batch.lazy_context == 12
    out = policy.commit(batch, 0.2, 0.3)
    assert out.finished == [a, b] and out.itl_gaps == [0.3 - 0.2]              # released in running order
    assert (a.num_computed_tokens, a.num_output_tokens, a.finish_s, b.first_token_s) == (12, 3, 0.3, 0.3)
    assert not policy.has_work() and policy.kv.num_holders() == 0 and policy.kv_used_tokens == 0


def test_continuous_preempts_the_newest_request_when_kv_runs_out():
    policy = continuous(capacity=64, max_num_batched_tokens=512)                # 4 blocks
    a, b = req(0, 32, 8), req(1, 32, 8)
    for r in (a, b):
        policy.add_request(r)
    policy.commit(policy.schedule(0.0), 0.0, 0.1)         # both prefilled: 2 blocks each, the cache is full
    batch = policy.schedule(0.1)                          # a needs a 3rd block: b (newest) is preempted
    assert batch.requests == [a] and batch.num_preempted == 1
    assert b.status == RequestStatus.PREEMPTED and list(policy.waiting) == [b] and b.num_computed_tokens == 0
    assert b.recomputed_tokens == 32 and policy.num_preemptions == {"recompute": 1, "swap": 0}


def test_the_admission_rule_is_asked_not_copied():
    policy = continuous(max_num_batched_tokens=100)
    a = req(0, 150)
    policy.add_request(a)
    assert policy._pick_next(100) is None                # a whole prompt must fit the budget
    assert policy._pick_next(150) == (a, 150, 0)
    assert list(policy.waiting) == [a]                    # asking admits nothing


# ---------------------------------------------------------------- static batching
def test_static_batching_waits_for_a_full_batch_and_reserves_whole_sequences():
    kv = make_kv_cache("contiguous", 1000, max_model_len=100, watermark=0.0)
    policy = make_policy("static", kv, PolicyParams(batch_size=2))
    a, b = req(0, 10, 5), req(1, 20, 2)
    policy.add_request(a)
    assert policy.schedule(0.0) is None                   # one of two waiting
    policy.add_request(b)
    batch = policy.schedule(0.0)
    assert batch.requests == [a, b] and kv.allocated_tokens(a) == 100           # max_model_len slabs
    policy.commit(batch, 0.0, 0.1)
    policy.commit(policy.schedule(0.1), 0.1, 0.2)         # b's 2nd token: b finishes, stays as padding
    # of its whole context: prompt + outputs - 1 (the last sampled token is never fed back)
    batch = policy.schedule(0.2)
    assert batch.requests == [a] and batch.padding_context_tokens == [21] and kv.allocated_tokens(b) == 100


def test_the_block_pool_pops_and_counts_as_a_list_stack_of_every_id():
    # BlockPool keeps never-used ids as a counter and its free count as a number: random takes and give-backs
    # must hand out the ids a plain list stack (block 0 on top) would, and count the same.
    import random
    from simulator.kv_cache.paged import BlockPool
    rng = random.Random(3)
    for _ in range(200):
        n = rng.randint(1, 100)
        pool, stack, held = BlockPool(n), list(range(n - 1, -1, -1)), []
        for _ in range(100):
            if held and rng.random() < 0.45:
                ids = held.pop(rng.randrange(len(held)))[::-1]
                pool.give_back(ids)
                stack.extend(ids)
            elif stack:
                need = rng.randint(0, min(len(stack), 9))
                taken = stack[len(stack) - need:][::-1]
                del stack[len(stack) - need:]
                assert pool.take(need) == taken
                held.append(taken)
            assert len(pool) == len(stack) and sorted(pool) == sorted(stack)
