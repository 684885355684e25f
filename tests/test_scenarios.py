"""Scenario-level properties on the real cost model: paged vs contiguous, continuous vs static, determinism."""
from __future__ import annotations

import pytest

from simulator.api import simulate
from simulator.config import SimConfig

# A memory-constrained H100 serving ShareGPT-like lengths at a rate above what it can hold.
LOADED = SimConfig(num_requests=300, rate=50.0, kv_capacity_tokens=200_000, seed=1)


@pytest.fixture(scope="module")
def paged_vs_contiguous():
    return {kv: simulate(LOADED, kv=kv).summary() for kv in ("paged", "contiguous")}


def test_paged_kv_uses_memory_better_than_contiguous(paged_vs_contiguous):
    paged, contig = paged_vs_contiguous["paged"], paged_vs_contiguous["contiguous"]
    assert paged["kv_utilization_mean"] > 2 * contig["kv_utilization_mean"]
    assert paged["internal_fragmentation_mean"] < 0.04          # only the last block of each request is partial
    assert contig["internal_fragmentation_mean"] > 0.5          # max-length slabs are mostly empty
    assert paged["max_concurrent_requests"] > 2 * contig["max_concurrent_requests"]
    assert paged["request_throughput"] > contig["request_throughput"]


def test_contiguous_external_fragmentation_is_real():
    # Slabs of request size ('request' reservation) leave holes between them once requests of different
    # lengths finish out of order; with requests waiting, part of the free memory cannot serve the next one.
    s = simulate(LOADED, kv="contiguous", kv_reservation="request").summary()
    assert s["external_fragmentation_mean"] > 0.0


def test_continuous_beats_static_throughput():
    cfg = SimConfig(num_requests=200, rate=50.0, seed=2)
    cont = simulate(cfg, batching="continuous").summary()
    static = simulate(cfg, batching="static", batch_size=32).summary()
    assert cont["request_throughput"] > 1.5 * static["request_throughput"]
    assert cont["e2e_p50_s"] < static["e2e_p50_s"]


def test_same_seed_same_bytes_different_seed_different_arrivals(tmp_path):
    cfg = SimConfig(num_requests=100, rate=8.0, seed=7)
    a = simulate(cfg).save(tmp_path / "a")
    b = simulate(cfg).save(tmp_path / "b")
    c = simulate(cfg, seed=8).save(tmp_path / "c")
    for name in ("requests.csv", "steps.csv", "kv.csv", "itl.csv", "summary.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "requests.csv").read_bytes() != (c / "requests.csv").read_bytes()


def test_results_folder_round_trips(tmp_path):
    res = simulate(SimConfig(num_requests=50, rate=5.0))
    loaded = type(res).load(res.save(tmp_path / "r"))
    before, after = res.summary(), loaded.summary()
    assert after.pop("rejected_reasons") == before.pop("rejected_reasons")
    assert after == pytest.approx(before)
    assert loaded.config["rate"] == 5.0
    assert loaded.meta["kv_capacity_tokens"] == res.meta["kv_capacity_tokens"]


def test_trace_replay_is_not_capped_by_default(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n" + "".join(f"{i * 0.1},50,5\n" for i in range(2500)))
    res = simulate(SimConfig(trace=str(trace)))
    assert len(res.requests) == 2500
    assert len(simulate(SimConfig(trace=str(trace), num_requests=10)).requests) == 10
