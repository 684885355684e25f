"""The decode-run fast path gives exactly the step-by-step results.

Every scenario runs twice: with the fast path (runs of decode steps advanced at once, requests advanced lazily)
and without it (one SimPy timeout and one commit per step). Per-request timestamps, the per-step and KV rows
and the inter-token gaps must be identical to the last bit: the fast path adds the same step durations in the
same order, so there is no tolerance to state.
"""
from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import RoundCostModel, specs_from
from simulator.api import build_parts, workload
from simulator.batching import BATCHING_POLICIES, PolicyParams, make_policy
from simulator.config import SimConfig
from simulator.engine import Engine, EngineParts
from simulator.kv_cache import KV_CACHE_MANAGERS, make_kv_cache

FRAMES = ("requests", "steps", "kv", "itl")


def assert_identical(fast, slow) -> None:
    for name in FRAMES:
        pd.testing.assert_frame_equal(getattr(fast, name), getattr(slow, name), check_exact=True, obj=name)


def engine(specs, fast_path, *, batching="continuous", kv="paged", capacity_tokens=100_000, max_model_len=4096,
           block_size=16, reservation="max-model-len", watermark=0.01, **params) -> Engine:
    """An engine on the conftest's round-number cost model (10 ms a step + 0.1 ms a prefill token)."""
    manager = make_kv_cache(kv, capacity_tokens, block_size=block_size, max_model_len=max_model_len,
                            reservation=reservation, watermark=watermark)
    parts = EngineParts(policy=make_policy(batching, manager, PolicyParams(**params)), cost_model=RoundCostModel(),
                        max_model_len=max_model_len, config={}, meta={})
    return Engine(parts, specs, fast_path=fast_path)


def both(specs, **kwargs):
    """Results with and without the fast path, and the fast engine (to look at how it ran)."""
    fast_engine = engine(specs, True, **kwargs)
    return fast_engine.run(), engine(specs, False, **kwargs).run(), fast_engine


def both_real(cfg: SimConfig, specs=None):
    """The same on the real cost model and a SimConfig (as simulate() builds it)."""
    specs = workload(cfg) if specs is None else specs
    return (Engine(build_parts(cfg), specs, fast_path=True).run(),
            Engine(build_parts(cfg), specs, fast_path=False).run())


workloads = st.lists(
    st.tuples(st.sampled_from([0.0, 0.01, 0.02, 0.05]) | st.floats(0, 0.5, allow_nan=False),
              st.integers(1, 300), st.integers(1, 80)), min_size=1, max_size=25)


@pytest.mark.parametrize("kv", sorted(KV_CACHE_MANAGERS))
@pytest.mark.parametrize("batching", sorted(BATCHING_POLICIES))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=workloads, chunked=st.booleans(), swap=st.booleans(), block_size=st.sampled_from([1, 4, 16]),
       capacity=st.sampled_from([600, 1024, 4096]))
def test_fast_path_matches_step_by_step(batching, kv, rows, chunked, swap, block_size, capacity):
    # Round arrival times land exactly on step ends (10 ms steps), so ties between an arrival and a step end
    # are exercised; small capacities force preemption by recompute or swap.
    fast, slow, _ = both(specs_from(rows), batching=batching, kv=kv, capacity_tokens=capacity, max_model_len=512,
                         block_size=block_size, max_num_batched_tokens=512, max_num_seqs=8, batch_size=4,
                         max_batch_size=4, max_wait_s=0.05, kv_bytes_per_token=1.0, swap_space_bytes=300,
                         chunked_prefill=chunked, preemption="swap" if swap else "recompute")
    assert_identical(fast, slow)
