"""Prefix caching (simulator/kv_cache/prefix.py): hand-checked hits, LRU eviction, preemption, reference counts.

Engine traces use the conftest's round-number cost model: 10 ms a step + 0.1 ms a prefill token.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import make_engine
from simulator.kv_cache import make_kv_cache
from simulator.kv_cache import prefix
from simulator.kv_cache.prefix import PrefixCachingPagedKV, content_block_hashes, hash_content
from simulator.request import Request, RequestStatus
from workloads.prefix import ideal_prefix_hits
from workloads.spec import RequestSpec
from workloads.traces import read_trace

DATA = Path(__file__).parent / "data"
SHARED_TRACES = Path(__file__).resolve().parents[2] / "shared" / "reference" / "traces"
SYSTEM = ((7, 48),)       # a 48-token shared prefix: three 16-token blocks


def run(specs, **kwargs):
    engine = make_engine(specs, prefix_caching=True, **kwargs)
    return engine.run(), engine.policy.kv


def assert_empty(kv: PrefixCachingPagedKV) -> None:
    """Every reference released, every block free (cached or not), nothing held or shared."""
    assert not kv.block_tables and kv.shared_tokens == 0 and kv.reserved_blocks == 0
    assert all(refs == 0 for refs in kv.refs.values())
    assert len(kv.free_blocks) + len(kv.lru) == kv.num_blocks
    assert kv.usage().allocated_tokens == 0


def test_second_request_prefills_only_its_tail():
    # A (60-token prompt, 48 of them the shared prefix) at 0: prefill 60 -> 0.016, decode -> 0.026 (done).
    # B (70 tokens, same prefix) at 0.05: its 3 prefix blocks are cached, so it prefills 70 - 48 = 22 tokens:
    # 0.05 + 0.010 + 0.0022 = 0.0622 (first token), decode -> 0.0722.
    specs = [RequestSpec(0, 0.0, 60, 2, SYSTEM), RequestSpec(1, 0.05, 70, 2, SYSTEM)]
    res, kv = run(specs)
    df = res.requests.set_index("request_id")
    assert list(df.cached_tokens) == [0, 48]
    assert list(res.steps.num_prefill_tokens) == [60, 0, 22, 0]
    assert (round(df.first_token_s[1], 6), round(df.finish_s[1], 6)) == (0.0622, 0.0722)
    assert res.summary()["prefix_cache_hit_rate"] == pytest.approx(48 / 130)
    assert_empty(kv)


def test_without_prefix_caching_nothing_hits():
    specs = [RequestSpec(0, 0.0, 60, 2, SYSTEM), RequestSpec(1, 0.05, 70, 2, SYSTEM)]
    res = make_engine(specs).run()
    assert list(res.requests.cached_tokens) == [0, 0]
    assert list(res.steps.num_prefill_tokens) == [60, 0, 70, 0]
    assert res.summary()["prefix_cache_hit_rate"] == 0.0


def test_requests_in_the_same_step_share_blocks_with_reference_counts():
    # B is admitted in the same step as A and hits the blocks A was just given (vLLM caches blocks when they
    # are scheduled); while both run the prefix is stored once.
    specs = [RequestSpec(0, 0.0, 60, 3, SYSTEM), RequestSpec(1, 0.0, 70, 3, SYSTEM)]
    engine = make_engine(specs, prefix_caching=True, fast_path=False)
    kv = engine.policy.kv
    seen = []
    step = engine.policy.commit

    def commit(batch, start, end):
        seen.append((kv.shared_tokens, sorted(kv.refs.values())))
        return step(batch, start, end)
    engine.policy.commit = commit
    res = engine.run()
    assert list(res.requests.cached_tokens) == [0, 48]
    assert list(res.steps.num_prefill_tokens[:1]) == [60 + 22]
    assert seen[0] == (48, [2, 2, 2])          # three blocks held twice: 48 tokens stored once
    assert (res.kv.used_tokens <= res.kv.allocated_tokens).all()
    assert_empty(kv)


def kv_manager(num_blocks: int) -> PrefixCachingPagedKV:
    return make_kv_cache("paged", num_blocks * 16, block_size=16, watermark=0.0, prefix_caching=True)


def admit(kv, spec: RequestSpec, extra_tokens: int = 0) -> Request:
    req = Request(spec)
    hit = kv.prefix_hit(req)
    total = req.prompt_tokens + extra_tokens
    assert kv.can_allocate(req, total, cached_tokens=hit)
    kv.allocate(req, total, cached_tokens=hit)
    req.num_computed_tokens = total
    return req


def finish(kv, req: Request) -> None:
    req.status = RequestStatus.FINISHED
    kv.free(req)


def test_eviction_is_least_recently_freed_first():
    kv = kv_manager(6)
    x = admit(kv, RequestSpec(0, 0.0, 33, 1, ((1, 32),)))      # blocks 0, 1 cached (content), block 2 own
    y = admit(kv, RequestSpec(1, 0.0, 33, 1, ((2, 32),)))      # blocks 3, 4 cached, block 5 own
    finish(kv, x)
    finish(kv, y)
    assert list(kv.lru) == [1, 0, 4, 3]                        # freed tail first, X before Y
    assert sorted(kv.free_blocks) == [2, 5]
    z = admit(kv, RequestSpec(2, 0.0, 64, 1))                  # 4 blocks: the 2 uncached, then evict X's
    assert kv.block_tables[2] == [5, 2, 1, 0] or sorted(kv.block_tables[2]) == [0, 1, 2, 5]
    assert kv.num_evictions == 2 and list(kv.lru) == [4, 3]
    assert kv.prefix_hit(Request(RequestSpec(3, 0.0, 40, 1, ((1, 32),)))) == 0     # X's prefix is gone
    assert kv.prefix_hit(Request(RequestSpec(4, 0.0, 40, 1, ((2, 32),)))) == 32    # Y's survives
    finish(kv, z)
    assert_empty(kv)


def test_hit_stops_before_the_last_prompt_token():
    kv = kv_manager(8)
    finish(kv, admit(kv, RequestSpec(0, 0.0, 48, 1, SYSTEM)))
    # a 48-token prompt equal to the cached prefix may reuse only 2 blocks: its last token must be computed
    assert kv.prefix_hit(Request(RequestSpec(1, 0.0, 48, 1, SYSTEM))) == 32
    assert kv.prefix_hit(Request(RequestSpec(2, 0.0, 49, 1, SYSTEM))) == 48


def test_preempted_request_recomputes_with_cache_hits():
    kv = kv_manager(8)
    req = admit(kv, RequestSpec(0, 0.0, 32, 20), extra_tokens=8)   # no shared content: 40 tokens computed
    req.num_output_tokens = 9                                      # 41 tokens known
    kv.free(req)                                                   # preempted (still RUNNING when freed)
    req.num_computed_tokens, req.num_preemptions = 0, 1
    assert kv.prefix_hit(req) == 32                                # its own two full blocks survived
    assert kv.prefix_hit(Request(RequestSpec(1, 0.0, 41, 1))) == 0  # nobody else has them


def test_preemption_under_memory_pressure_recomputes_less():
    # Six requests that outgrow 20 blocks: preempted ones find their own blocks again.
    specs = [RequestSpec(i, 0.0, 64, 120) for i in range(6)]
    res, kv = run(specs, capacity_tokens=320, max_model_len=512, max_num_seqs=6)
    df = res.requests
    assert df.num_preemptions.sum() > 0
    lost = res.steps.num_prefill_tokens.sum() + res.steps.num_decode_tokens.sum()
    needed = (df.prompt_tokens + df.output_tokens - 1 - df.cached_tokens + df.recomputed_tokens).sum()
    assert lost == needed                                      # every computed token is accounted for
    plain = make_engine(specs, capacity_tokens=320, max_model_len=512, max_num_seqs=6).run()
    assert df.recomputed_tokens.sum() < plain.requests.recomputed_tokens.sum()
    assert_empty(kv)


def test_content_block_hashes_follow_pieces_not_their_split():
    one = content_block_hashes(((5, 40),), 16, 1000)
    assert len(one) == 2                                       # 40 tokens: two full blocks
    assert content_block_hashes(((5, 40), (6, 24)), 16, 1000)[:2] == one
    mixed = content_block_hashes(((5, 40), (6, 24)), 16, 1000)
    assert len(mixed) == 4 and len(set(mixed)) == 4
    assert content_block_hashes(((5, 40), (6, 24)), 16, 47) == one   # only tokens the request holds
    assert content_block_hashes(((9, 40),), 16, 1000) != one


@pytest.mark.parametrize("cut", [0, 1, 40, 41])
def test_hashing_resumed_from_an_earlier_content_equals_hashing_it_all(cut):
    # A conversation's turn 2 re-sends turn 1 (pieces 1-3, 90 tokens) and adds two pieces. Turn 1 holds its
    # tokens but the last `cut` of its response (the last sampled token is never stored), so its chain resumes
    # from before the cut piece: 0 from 90 tokens, 1 and 40 from 50, 41 (cut into the 2nd piece) from 30.
    turn1 = ((1, 30), (2, 20), (3, 40))
    turn2 = turn1 + ((4, 25), (5, 7))
    first = hash_content(turn1, 16, 90 - cut)
    assert first.hashes == content_block_hashes(turn1, 16, 90 - cut)
    assert first.tokens == {0: 90, 1: 50, 40: 50, 41: 30}[cut] and first.pieces == turn1[:len(first.pieces)]
    for max_tokens in (122, 110, first.tokens):
        resumed = hash_content(turn2, 16, max_tokens, first)
        assert resumed == hash_content(turn2, 16, max_tokens)
    assert hash_content(turn2, 16, 122, first).hashes[:first.resume_blocks] == first.hashes[:first.resume_blocks]


PIECES = st.lists(st.tuples(st.integers(0, 5), st.integers(1, 40)), max_size=8).map(tuple)


@settings(max_examples=200, deadline=None)
@given(PIECES, PIECES, st.integers(0, 400), st.integers(0, 400), st.sampled_from([1, 4, 16]))
def test_resumed_hashing_equals_hashing_from_the_start(head, tail, cut1, cut2, block_size):
    # Any content, any extension of it, each cut anywhere: resuming the first's chain gives the second's hashes
    # (under the same conditions the cache resumes: the resume point's pieces begin it, within its tokens).
    first = hash_content(head, block_size, cut1)
    whole = hash_content(head + tail, block_size, cut2)
    if first.tokens <= cut2:
        assert hash_content(head + tail, block_size, cut2, first) == whole
    assert first.hashes == content_block_hashes(head, block_size, cut1)


def test_the_next_turn_of_a_session_hashes_only_its_new_pieces(monkeypatch):
    # Turn 1 (prompt 40 + response 30) finishes; turn 2 (its history + a 20-token message) resumes turn 1's
    # chain from before its response (stored but its last token), so it hashes 30 + 20 tokens, not 120.
    hashed = []
    real = prefix.hash_content
    monkeypatch.setattr(prefix, "hash_content", lambda content, b, n, start=None:
                        hashed.append(sum(t for _, t in content[len(start.pieces) if start else 0:]))
                        or real(content, b, n, start))
    turn1 = ((1, 40), (2, 30))
    specs = [RequestSpec(0, 0.0, 40, 30, turn1), RequestSpec(1, 0.0, 90, 5, turn1 + ((3, 20), (4, 5)), after=0)]
    res, kv = run(specs)
    assert hashed == [70, 55]
    assert list(res.requests.cached_tokens) == [0, 64]         # 4 whole blocks of turn 1's 69 stored tokens
    assert_empty(kv)


def test_contiguous_cache_refuses_prefix_caching():
    with pytest.raises(ValueError, match="^the contiguous KV cache does not share prefixes"):
        make_kv_cache("contiguous", 10_000, prefix_caching=True)


def replay_hit_rates(specs, **kwargs):
    res, kv = run(specs, **kwargs)
    ideal = ideal_prefix_hits(specs, 16)
    df = res.requests.set_index("request_id")
    return list(df.cached_tokens), ideal, kv


def test_mooncake_replay_with_unlimited_kv_reaches_the_ideal_hits():
    specs = read_trace(DATA / "workloads_mooncake.jsonl")
    got, ideal, kv = replay_hit_rates(specs, capacity_tokens=1 << 20, max_model_len=4096)
    # request 1 (blocks 0,2,3) follows request 0 (block 0): 512 tokens; request 2 (0,1) hits block 0 only
    assert ideal == [0, 512, 512, 0]
    assert got == ideal
    assert_empty(kv)


@pytest.mark.skipif(not SHARED_TRACES.is_dir(), reason="needs the shared reference traces")
def test_real_mooncake_conversation_prefix_with_unlimited_kv_reaches_the_ideal_hits():
    specs = read_trace(SHARED_TRACES / "mooncake_fast25" / "conversation_trace.jsonl", max_requests=150)
    specs = [s for s in specs if s.prompt_tokens + s.output_tokens <= 32_768]
    specs = [RequestSpec(i, s.arrival_s, s.prompt_tokens, s.output_tokens, s.content) for i, s in enumerate(specs)]
    got, ideal, _ = replay_hit_rates(specs, capacity_tokens=1 << 24, max_model_len=32_768,
                                     max_num_batched_tokens=32_768)
    assert sum(ideal) > 0
    assert got == ideal
