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
from simulator.batching import BATCHING_POLICIES, PolicyParams
from simulator.batching.continuous import Admission, ContinuousBatching
from simulator.batching.lazy import LazyDecoders
from simulator.config import SimConfig
from simulator.engines import cost_model_options, get_engine
from simulator.engine import Engine, EngineParts
from simulator.kv_cache import KV_CACHE_MANAGERS, KVCacheManager, KVUsage, make_kv_cache
from workloads.spec import RequestSpec

FRAMES = ("requests", "steps", "kv", "itl")


def assert_identical(fast, slow) -> None:
    for name in FRAMES:
        pd.testing.assert_frame_equal(getattr(fast, name), getattr(slow, name), check_exact=True, obj=name)


def engine(specs, fast_path, *, batching="continuous", kv="paged", capacity_tokens=100_000, max_model_len=4096,
           block_size=16, reservation="max-model-len", watermark=0.01, prefix_caching=False, **params) -> Engine:
    """An engine on the conftest's round-number cost model (10 ms a step + 0.1 ms a prefill token); `batching`
    and `kv` are registered names or classes."""
    options = dict(block_size=block_size, max_model_len=max_model_len, reservation=reservation, watermark=watermark)
    manager = (make_kv_cache(kv, capacity_tokens, prefix_caching=prefix_caching, **options) if isinstance(kv, str)
               else kv(capacity_tokens, **options))
    policy = (BATCHING_POLICIES[batching] if isinstance(batching, str) else batching)(manager, PolicyParams(**params))
    parts = EngineParts(policy=policy, cost_model=RoundCostModel(), max_model_len=max_model_len, config={}, meta={})
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
@given(rows=workloads, chunked=st.booleans(), whole=st.booleans(), swap=st.booleans(),
       block_size=st.sampled_from([1, 4, 16]), capacity=st.sampled_from([600, 1024, 4096]),
       budget=st.sampled_from([16, 64, 512]))
def test_fast_path_matches_step_by_step(batching, kv, rows, chunked, whole, swap, block_size, capacity, budget):
    # Round arrival times land exactly on step ends (10 ms steps), so ties between an arrival and a step end
    # are exercised; small capacities force preemption by recompute or swap; small token budgets (chunked
    # prefill) cut prompts into many chunks that share steps with lazily advanced decodes.
    fast, slow, _ = both(specs_from(rows), batching=batching, kv=kv, capacity_tokens=capacity, max_model_len=512,
                         block_size=block_size, max_num_batched_tokens=budget if chunked else 512, max_num_seqs=8,
                         batch_size=4, max_batch_size=4, max_wait_s=0.05, kv_bytes_per_token=1.0,
                         swap_space_bytes=300, chunked_prefill=chunked, admit_whole_sequence=whole,
                         preemption="swap" if swap else "recompute")
    assert_identical(fast, slow)


# ---------------------------------------------------------------- extensions the fast path must follow
class SkipAheadBatching(ContinuousBatching):
    """Continuous batching that admits past the queue head: the first waiting request that fits (only the
    admission rule changes, so the fast path must ask this rule, not a copy of FCFS)."""

    def _pick_next(self, budget: int) -> Admission | None:
        if self.swapped or len(self.running) >= self.params.max_num_seqs or budget <= 0:
            return None
        return next(filter(None, (self._admission(req, budget) for req in self.waiting)), None)


class CountedBlocks(KVCacheManager):
    """Paged KV written against the abstract methods only (blocks counted, not named; no fast-path hooks), as
    the README's recipe says. It must give the paged manager's results, with or without the fast path."""

    def __init__(self, capacity_tokens: int, **kwargs) -> None:
        super().__init__(capacity_tokens, **kwargs)
        self.num_blocks = capacity_tokens // self.block_size
        self.keep = int(self.watermark * self.num_blocks)
        self.held: dict[int, int] = {}
        self.used = 0

    def _need(self, req, num_tokens: int) -> int:
        return max(0, -(-num_tokens // self.block_size) - self.held.get(req.request_id, 0))

    def can_allocate(self, req, num_tokens: int, *, admission: bool = False, cached_tokens: int = 0) -> bool:
        return self._need(req, num_tokens) <= self.num_blocks - self.used - (self.keep if admission else 0)

    def allocate(self, req, num_tokens: int, *, cached_tokens: int = 0) -> None:
        need = self._need(req, num_tokens)
        self.held[req.request_id] = self.held.get(req.request_id, 0) + need
        self.used += need

    def free(self, req) -> None:
        self.used -= self.held.pop(req.request_id, 0)

    def allocated_tokens(self, req) -> int:
        return self.held.get(req.request_id, 0) * self.block_size

    def usage(self) -> KVUsage:
        free, cap = (self.num_blocks - self.used) * self.block_size, self.num_blocks * self.block_size
        return KVUsage(cap - free, cap, free, free)

    def max_request_tokens(self) -> int:
        return (self.num_blocks - self.keep) * self.block_size

    def num_holders(self) -> int:
        return len(self.held)


PRESSURE = dict(capacity_tokens=600, max_model_len=512, max_num_batched_tokens=512, max_num_seqs=8,
                kv_bytes_per_token=1.0, swap_space_bytes=300)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=workloads, chunked=st.booleans(), swap=st.booleans(), block_size=st.sampled_from([1, 4, 16]))
def test_admission_past_the_queue_head_keeps_the_fast_path_exact(rows, chunked, swap, block_size):
    fast, slow, _ = both(specs_from(rows), batching=SkipAheadBatching, block_size=block_size, chunked_prefill=chunked,
                         preemption="swap" if swap else "recompute", **PRESSURE)
    assert_identical(fast, slow)


def test_admission_past_the_queue_head_really_skips_and_runs():
    # A (400 prompt tokens) holds most of the cache; B (450) cannot fit, so C (20) is admitted past it; the
    # decode runs in between must see that C would be admitted.
    rows = [(0.0, 400, 30), (0.001, 450, 5), (0.002, 20, 30), (0.15, 20, 5)]
    fast, slow, eng = both(specs_from(rows), batching=SkipAheadBatching, block_size=16, **PRESSURE)
    assert_identical(fast, slow)
    req = fast.requests.set_index("request_id")
    assert req.loc[2, "scheduled_s"] < req.loc[1, "scheduled_s"]
    assert eng.num_run_steps > 0


@pytest.mark.parametrize("batching", sorted(BATCHING_POLICIES))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=workloads, chunked=st.booleans(), swap=st.booleans(), block_size=st.sampled_from([1, 4, 16]))
def test_kv_manager_without_fast_path_hooks_runs_step_by_step_correctly(batching, rows, chunked, swap, block_size):
    kwargs = dict(batching=batching, block_size=block_size, chunked_prefill=chunked, batch_size=4, max_batch_size=4,
                  max_wait_s=0.05, preemption="swap" if swap else "recompute", **PRESSURE)
    fast, slow, eng = both(specs_from(rows), kv=CountedBlocks, **kwargs)
    assert_identical(fast, slow)
    assert_identical(fast, engine(specs_from(rows), True, kv="paged", **kwargs).run())   # what paged KV gives
    if batching == "continuous":
        assert eng.num_run_steps == 0            # it does not say how running requests grow: no decode runs


shared_workloads = st.lists(
    st.tuples(st.sampled_from([0.0, 0.01, 0.02, 0.05]) | st.floats(0, 0.5, allow_nan=False),
              st.integers(1, 300), st.integers(1, 80), st.integers(-1, 2), st.integers(1, 300)), min_size=1,
    max_size=25)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=shared_workloads, chunked=st.booleans(), whole=st.booleans(), swap=st.booleans(),
       block_size=st.sampled_from([1, 4, 16]), capacity=st.sampled_from([600, 1024, 4096]),
       budget=st.sampled_from([16, 64, 512]))
def test_fast_path_matches_step_by_step_with_prefix_caching(rows, chunked, whole, swap, block_size, capacity,
                                                            budget):
    # Requests share one of three prefixes (or none); small capacities force evictions and preemptions. With
    # chunked prefill and whole-sequence admission on, this is vLLM V1's scheduler (mixed steps keep their
    # decodes lazy); small budgets cut prompts into chunks.
    specs = [RequestSpec(i, a, p, o, ((pid, min(n, p + o)),) if pid >= 0 else ())
             for i, (a, p, o, pid, n) in enumerate(rows)]
    fast, slow, _ = both(specs, capacity_tokens=capacity, max_model_len=512, block_size=block_size,
                         max_num_batched_tokens=budget if chunked else 512, max_num_seqs=8, kv_bytes_per_token=1.0,
                         swap_space_bytes=300, chunked_prefill=chunked, admit_whole_sequence=whole,
                         preemption="swap" if swap else "recompute", prefix_caching=True)
    assert_identical(fast, slow)


def chunked_beside_decoders(num_decoders: int, monkeypatch):
    """vLLM V1 settings: `num_decoders` requests (10-token prompts sharing a prefix, 300 outputs) decode while a
    600-token prompt arriving at 0.2 s is cut into chunks of what the 100-token budget leaves. Returns the fast
    and step-by-step results, and how often the fast engine synced lazy decoders (one by one, and all at once)."""
    rows = [(0.0, 10, 300, 0, 8)] * num_decoders + [(0.2, 600, 5, 0, 8)]
    specs = [RequestSpec(i, a, p, o, ((pid, n),)) for i, (a, p, o, pid, n) in enumerate(rows)]
    calls = {"sync": 0, "sync_all": 0}
    sync, sync_all = LazyDecoders.sync, LazyDecoders.sync_all

    def counted_sync(self, req, **kwargs):
        calls["sync"] += req.lazy_id >= 0
        return sync(self, req, **kwargs)

    def counted_sync_all(self, running):
        calls["sync_all"] += 1
        return sync_all(self, running)

    monkeypatch.setattr(LazyDecoders, "sync", counted_sync)
    monkeypatch.setattr(LazyDecoders, "sync_all", counted_sync_all)
    params = dict(capacity_tokens=100_000, max_model_len=1024, block_size=16, max_num_batched_tokens=100,
                  max_num_seqs=64, chunked_prefill=True, admit_whole_sequence=True, prefix_caching=True,
                  watermark=0.0)
    fast = engine(specs, True, **params).run()
    lazy_calls = dict(calls)
    return fast, engine(specs, False, **params).run(), lazy_calls


@pytest.mark.parametrize("num_decoders", [10, 50])
def test_mixed_steps_keep_decoders_lazy(num_decoders, monkeypatch):
    fast, slow, calls = chunked_beside_decoders(num_decoders, monkeypatch)
    assert_identical(fast, slow)
    steps = fast.steps
    chunked = steps[(steps.num_prefill_tokens > 0) & (steps.start_s >= 0.2)]
    # the long prompt took chunks of 100 - num_decoders tokens (its last chunk less) beside every decoder
    assert len(chunked) == -(-600 // (100 - num_decoders))
    assert (chunked.num_decode_tokens == num_decoders).all()
    assert (chunked.num_prefill_tokens.iloc[:-1] == 100 - num_decoders).all()
    assert fast.requests.set_index("request_id").loc[num_decoders, "first_token_s"] > chunked.start_s.max()
    # each request was synced once, when it finished: the chunked steps never synced the decoders
    assert calls == {"sync": num_decoders + 1, "sync_all": 0}


# ---------------------------------------------------------------- the real cost model, ShareGPT lengths
SCENARIOS = {
    "continuous-paged": {},
    "vllm-v0": {"engine": "vllm-v0"},
    "continuous-contiguous": {"kv": "contiguous"},
    "static-contiguous": {"batching": "static", "kv": "contiguous", "batch_size": 16},
    "dynamic-paged": {"batching": "dynamic", "max_batch_size": 16, "max_wait_s": 0.05},
    "eager-steps": {"cuda_graphs": False},
    # memory pressure: a small KV cache and a rate above capacity, so requests are preempted
    "recompute-pressure": {"kv_capacity_tokens": 60_000, "rate": 30.0},
    "chunked-swap-pressure": {"chunked_prefill": True, "preemption": "swap", "kv_capacity_tokens": 60_000,
                              "rate": 30.0, "swap_space_gb": 0.5},
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_real_scenarios_match_step_by_step(name):
    knobs = dict(SCENARIOS[name])
    cfg = SimConfig(num_requests=250, rate=knobs.pop("rate", 8.0), seed=3, **knobs)
    fast, slow = both_real(cfg)
    assert_identical(fast, slow)
    assert fast.summary() == slow.summary()
    # the fast path really ran: most steps went in runs (a test that cannot fail otherwise)
    assert fast.meta["run_steps"] > 0.5 * fast.meta["engine_steps"]
    assert slow.meta["run_steps"] == 0
    if "pressure" in name:
        assert fast.summary()["preemptions"] > 0


def test_run_batches_and_compaction_do_not_change_results(monkeypatch):
    # Runs are expanded into rows in batches and equal gaps merged in bulk; tiny thresholds exercise both.
    import simulator.metrics as metrics
    cfg = SimConfig(num_requests=120, rate=8.0, seed=4)
    specs = workload(cfg)
    reference = Engine(build_parts(cfg), specs).run()
    monkeypatch.setattr(metrics, "RUN_BATCH", 3)
    monkeypatch.setattr(metrics, "ITL_COMPACT", 7)
    assert_identical(Engine(build_parts(cfg), specs).run(), reference)


def test_summary_only_matches_the_full_summary(monkeypatch):
    # Summary-only folds rows into sums each time RUN_BATCH steps or runs are queued (7 here, to fold many
    # times): sums in another order, so equal to rounding; ITL percentiles come from 0.1%-wide bins; everything
    # else is identical.
    import simulator.metrics as metrics
    monkeypatch.setattr(metrics, "RUN_BATCH", 7)
    cfg = SimConfig(num_requests=200, rate=8.0, seed=5, kv_capacity_tokens=80_000)
    full = Engine(build_parts(cfg), workload(cfg)).run()
    brief = Engine(build_parts(cfg.replace(summary_only=True)), workload(cfg)).run()
    assert len(brief.steps) == 0 and len(brief.kv) == 0
    pd.testing.assert_frame_equal(brief.requests, full.requests, check_exact=True)
    a, b = full.summary(), brief.summary()
    for key, value in a.items():
        if key.startswith("itl_p"):
            assert b[key] == pytest.approx(value, rel=1.5e-3), key
        elif isinstance(value, float):
            assert b[key] == pytest.approx(value, rel=1e-9, abs=1e-15), key
        else:
            assert b[key] == value, key


# ---------------------------------------------------------------- decode runs priced at once
COST_MODELS = {
    "llama-h100": ("llama-3.1-8b", "h100-sxm", {}),
    "llama-eager-unfused": ("llama-3.1-8b", "h100-sxm", {"cuda_graphs": False, "elementwise": "unfused"}),
    "llama-tp2-fp8kv": ("llama-3.1-8b", "a100-80gb", {"tp": 2, "kv_dtype": "fp8"}),
    "llama-pp2-slow-memory": ("llama-3.1-8b", "h100-sxm", {"pp": 2, "bandwidth_scale": 0.5}),
    "mla-tp8": ("deepseek-v3", "h200", {"tp": 8}),
    "moe-naive-small-graphs": ("mixtral-8x7b", "h100-sxm", {"attention": "naive", "cuda_graph_max_batch": 64}),
    # vLLM V1's recipe: varlen attention, padded graph sizes (above 512 sequences: eager), sampler
    "vllm-v1-4090": ("llama-3.1-8b", "rtx-4090", {**cost_model_options(get_engine("vllm-v1"))}),
    "vllm-v1-eager-tp2": ("qwen3-32b", "rtx-pro-6000", {**cost_model_options(get_engine("vllm-v1")), "tp": 2,
                                                         "cuda_graphs": False}),
}


@pytest.mark.parametrize("name", sorted(COST_MODELS))
@settings(max_examples=40, deadline=None)
@given(num_seqs=st.integers(1, 700), context_per_seq=st.integers(1, 9000), step=st.integers(1, 700),
       num_steps=st.integers(1, 6), start=st.floats(0, 1e5, allow_nan=False))
def test_decode_run_costs_equal_step_cost_bit_for_bit(name, num_seqs, context_per_seq, step, num_steps, start):
    from hardware.gpus import get_gpu
    from simulator.cost import FAMILIES, CostModel, StepShape
    from simulator.models import get_model
    model, gpu, options = COST_MODELS[name]
    cm = CostModel(get_model(model), get_gpu(gpu), **options)
    context = num_seqs * context_per_seq
    run, t = cm.decode_run_costs(num_seqs, context, step, num_steps, start), start
    assert len(run.seconds) == num_steps
    for j in range(num_steps):
        cost = cm.step_cost(StepShape((), num_seqs, context + j * step, num_seqs))
        t = t + cost.seconds
        column = lambda f: getattr(run, f"{f}_s")
        family = lambda f: column(f)[j] if isinstance(column(f), list) else column(f)
        assert (run.seconds[j], run.ends[j], run.flops[j], run.bytes[j], run.bound[j]) == \
            (cost.seconds, t, cost.flops, cost.bytes, cost.bound)
        assert tuple((f, family(f)) for f in FAMILIES) == cost.breakdown


def test_decode_run_costs_stop_at_the_first_step_ending_at_or_after_stop():
    from hardware.gpus import get_gpu
    from simulator.cost import CostModel
    from simulator.models import get_model
    cm = CostModel(get_model("llama-3.1-8b"), get_gpu("h100-sxm"))
    full = cm.decode_run_costs(32, 32_000, 32, 10, 1.0)
    cut = cm.decode_run_costs(32, 32_000, 32, 10, 1.0, stop_s=full.ends[3])      # exactly the 4th end
    assert cut.ends == full.ends[:4] and cut.seconds == full.seconds[:4]
    assert cm.decode_run_costs(32, 32_000, 32, 10, 1.0, stop_s=full.ends[3] - 1e-12).ends == full.ends[:4]


def test_hold_splits_when_one_sum_would_round_differently():
    # 0.0049... + (0.0994... - 0.0049...) is not 0.0994... in floats: the clock must then take the steps one by one.
    now, delays = 0.004954350870919409, [0.02247455323943691, 0.03257964863613815, 0.03943616755677566]
    end = now
    for d in delays:
        end = end + d
    assert now + (end - now) != end
    eng = engine(specs_from([(0.0, 10, 2)]), True)
    eng.env.run(until=now)
    eng.env.process(eng._hold(now, end, [delays[:2], delays[2:]]))
    eng.env.run()
    assert eng.env.now == end


# ---------------------------------------------------------------- per-request rows past max_request_rows
def test_request_rows_stream_to_parquet_past_the_limit(tmp_path, monkeypatch):
    pytest.importorskip("pyarrow")
    import simulator.request_log as request_log
    monkeypatch.setattr(request_log, "ROW_GROUP", 16)           # several row groups
    cfg = SimConfig(num_requests=150, rate=8.0, seed=6, slo_ttft_s=0.3,
                    prompt_len="uniform:100:9000", output_len="sharegpt")   # some rejected (longer than 8192)
    full = Engine(build_parts(cfg), workload(cfg)).run()
    path = tmp_path / "rows.parquet"
    streamed = Engine(build_parts(cfg.replace(max_request_rows=40, request_rows_path=str(path))), workload(cfg)).run()
    assert len(streamed.requests) == 0 and streamed.meta["request_rows_path"] == str(path)
    rows = pd.read_parquet(path).sort_values("request_id", ignore_index=True)
    pd.testing.assert_frame_equal(rows, full.requests, check_exact=True, check_dtype=False)
    a, b = full.summary(), streamed.summary()
    assert a["rejected"] > 0 and b["rejected_reasons"] == a["rejected_reasons"]
    for key, value in a.items():
        if key.endswith(("_p50_s", "_p90_s", "_p99_s")) and not key.startswith("itl"):
            assert b[key] == pytest.approx(value, rel=1.5e-3), key       # from 0.1%-wide bins
        elif isinstance(value, float):
            assert b[key] == pytest.approx(value, rel=1e-12, nan_ok=True), key
        else:
            assert b[key] == value, key


def test_streaming_without_pyarrow_is_a_one_line_error(monkeypatch):
    import simulator.request_log as request_log

    def missing():
        raise ModuleNotFoundError("No module named 'pyarrow'")
    monkeypatch.setattr(request_log, "_pyarrow", missing)
    cfg = SimConfig(num_requests=30, rate=8.0, max_request_rows=10)
    with pytest.raises(request_log.RowLimitError, match="more than 10 request rows stream to Parquet, which needs "
                                                        "pyarrow"):
        Engine(build_parts(cfg), workload(cfg)).run()


def test_decode_run_costs_without_detail_keep_times_and_totals():
    from hardware.gpus import get_gpu
    from simulator.cost import CostModel
    from simulator.models import get_model
    cm = CostModel(get_model("llama-3.1-8b"), get_gpu("h100-sxm"), cuda_graphs=False)
    full = cm.decode_run_costs(48, 48_000, 48, 7, 2.0)
    lean = cm.decode_run_costs(48, 48_000, 48, 7, 2.0, detail=False)
    assert (lean.seconds, lean.ends, lean.overhead_s) == (full.seconds, full.ends, full.overhead_s)
    assert lean.flops == [] and lean.flops_total == pytest.approx(sum(full.flops), rel=1e-12)
    assert lean.bytes_total == pytest.approx(sum(full.bytes), rel=1e-12)


def test_streamed_rows_are_saved_and_loaded_with_the_results(tmp_path):
    pytest.importorskip("pyarrow")
    from simulator.metrics import SimResult
    cfg = SimConfig(num_requests=60, rate=8.0, seed=7, max_request_rows=25)
    res = Engine(build_parts(cfg), workload(cfg)).run()
    out = res.save(tmp_path / "r")
    assert len(pd.read_parquet(out / "requests.parquet")) == 60
    before, after = res.summary(), SimResult.load(out).summary()
    assert after.pop("rejected_reasons") == before.pop("rejected_reasons")
    assert after == pytest.approx(before, nan_ok=True)
