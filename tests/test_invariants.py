"""Invariants over every registered batching policy x KV manager, on hypothesis-generated workloads."""
from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_engine, specs_from
from workloads.spec import RequestSpec
from simulator.batching import BATCHING_POLICIES
from simulator.kv_cache import KV_CACHE_MANAGERS
from simulator.kv_cache.paged import PagedKVCache
from simulator.request import RequestStatus

CAPACITY, MAX_LEN, BUDGET = 1024, 512, 512

workloads = st.lists(
    st.tuples(st.floats(0, 0.5, allow_nan=False), st.integers(1, 400), st.integers(1, 60)), min_size=1, max_size=25)


class StepChecker:
    """Called after every step: checks KV and token-budget invariants while the run is in flight."""

    def __init__(self) -> None:
        self.engine = None
        self.steps = 0

    def __call__(self, now_s: float, done: int, total: int) -> None:
        policy = self.engine.policy
        usage = policy.kv.usage()
        stored = policy.kv_used_tokens - policy.kv.shared_tokens      # shared prefix blocks are stored once
        assert 0 <= stored <= usage.allocated_tokens <= usage.capacity_tokens
        assert usage.allocated_tokens + usage.free_tokens == usage.capacity_tokens
        if isinstance(policy.kv, PagedKVCache):
            owned = [b for table in policy.kv.block_tables.values() for b in table]
            counts = Counter(owned)
            refs = getattr(policy.kv, "refs", {})
            assert all(n == 1 or refs.get(b) == n for b, n in counts.items()), "a block is shared uncounted"
            assert all(refs[b] == n for b, n in counts.items() if b in refs), "a reference count is off"
            assert not set(owned) & set(policy.kv.free_blocks), "a block is both owned and free"
            assert not set(owned) & set(getattr(policy.kv, "lru", ())), "a block is both owned and evictable"
        self.steps += 1


def run_checked(rows, batching, kv, **params):
    checker = StepChecker()
    engine = make_engine(specs_from(rows), batching=batching, kv=kv, capacity_tokens=CAPACITY, max_model_len=MAX_LEN,
                         progress=checker, max_num_batched_tokens=BUDGET, max_num_seqs=8, batch_size=4,
                         max_batch_size=4, max_wait_s=0.05, kv_bytes_per_token=1.0, swap_space_bytes=300, **params)
    checker.engine = engine
    return engine, engine.run()


@pytest.mark.parametrize("kv", sorted(KV_CACHE_MANAGERS))
@pytest.mark.parametrize("batching", sorted(BATCHING_POLICIES))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=workloads, chunked=st.booleans(), swap=st.booleans())
def test_invariants(batching, kv, rows, chunked, swap):
    engine, res = run_checked(rows, batching, kv, chunked_prefill=chunked,
                              preemption="swap" if swap else "recompute")
    req = res.requests
    # every arrived request finishes or is rejected with a reason, exactly once
    assert len(req) == len(rows) and req.request_id.is_unique
    assert set(req.status) <= {"finished", "rejected"}
    assert (req.reject_reason[req.status == "rejected"] != "").all()
    assert all(r.status in (RequestStatus.FINISHED, RequestStatus.REJECTED) for r in engine.requests)
    # tokens produced equal tokens requested
    for r in engine.requests:
        if r.status == RequestStatus.FINISHED:
            assert r.num_output_tokens == r.output_tokens
            assert r.first_token_s <= r.finish_s
    # KV in use never exceeds capacity and returns to zero at the end
    assert (res.kv.used_tokens <= res.kv.allocated_tokens).all()
    assert (res.kv.allocated_tokens <= res.kv.capacity_tokens).all()
    assert engine.policy.kv_used_tokens == 0 and engine.policy.kv.usage().allocated_tokens == 0
    assert engine.policy.kv.num_holders() == 0
    # the token budget per step is never exceeded (continuous batching; run-to-completion prefills whole batches)
    if batching == "continuous" and len(res.steps):
        assert (res.steps.num_prefill_tokens + res.steps.num_decode_tokens <= BUDGET).all()
    # busy time never exceeds the makespan
    if len(res.steps):
        assert res.steps.duration_s.sum() <= req.finish_s.max() + 1e-9


# (arrival, prompt, output, shared prefix id or -1, shared prefix tokens)
shared_workloads = st.lists(
    st.tuples(st.floats(0, 0.5, allow_nan=False), st.integers(1, 400), st.integers(1, 60), st.integers(-1, 2),
              st.integers(1, 300)), min_size=1, max_size=25)


def shared_specs(rows) -> list[RequestSpec]:
    return [RequestSpec(i, a, p, o, ((pid, min(n, p)),) if pid >= 0 else ()) for i, (a, p, o, pid, n) in
            enumerate(rows)]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=shared_workloads, chunked=st.booleans(), swap=st.booleans())
def test_invariants_with_prefix_caching(rows, chunked, swap):
    checker = StepChecker()
    engine = make_engine(shared_specs(rows), capacity_tokens=CAPACITY, max_model_len=MAX_LEN, progress=checker,
                         max_num_batched_tokens=BUDGET, max_num_seqs=8, kv_bytes_per_token=1.0,
                         swap_space_bytes=300, chunked_prefill=chunked, preemption="swap" if swap else "recompute",
                         prefix_caching=True)
    checker.engine = engine
    res = engine.run()
    req = res.requests
    assert len(req) == len(rows) and set(req.status) <= {"finished", "rejected"}
    kv = engine.policy.kv
    assert engine.policy.kv_used_tokens == 0 and kv.shared_tokens == 0 and not kv.block_tables
    assert all(n == 0 for n in kv.refs.values()) and len(kv.free_blocks) + len(kv.lru) == kv.num_blocks
    assert (res.kv.used_tokens <= res.kv.allocated_tokens).all()
    assert (req.cached_tokens < req.prompt_tokens).all()
    # every token computed is a prompt or output token not served from the cache, or a recomputed one
    done = req[req.status == "finished"]
    computed = res.steps.num_prefill_tokens.sum() + res.steps.num_decode_tokens.sum()
    assert computed == (done.prompt_tokens + done.output_tokens - 1 - done.cached_tokens
                        + done.recomputed_tokens).sum()


def test_generated_workloads_do_preempt():
    # The invariants above are only meaningful if memory pressure happens: this workload must preempt.
    rows = [(0.0, 300, 60)] * 6
    for preemption in ("recompute", "swap"):
        _, res = run_checked(rows, "continuous", "paged", preemption=preemption)
        assert res.summary()["preemptions"] > 0


@pytest.mark.parametrize("kv", sorted(KV_CACHE_MANAGERS))
@pytest.mark.parametrize("batching", sorted(BATCHING_POLICIES))
def test_too_long_requests_are_rejected_and_counted(batching, kv):
    rows = [(0.0, 100, 10), (0.0, MAX_LEN, 10), (0.1, 50, 5)]        # the second is longer than max_model_len
    _, res = run_checked(rows, batching, kv)
    req = res.requests.set_index("request_id")
    assert list(req.status) == ["finished", "rejected", "finished"]
    assert req.reject_reason[1] == f"longer than max_model_len ({MAX_LEN} tokens)"
    assert res.summary()["rejected_reasons"] == {req.reject_reason[1]: 1}
