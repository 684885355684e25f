"""Step cost model: roofline invariants on every catalog GPU, exact hand-checked pieces, options, errors, and
the calibration's fidelity on the real H100 reference steps."""
from __future__ import annotations

import csv
import math
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hardware.gpus import GPUS, get_gpu
from hardware.roofline import kernel_time
from simulator.cost import ELEMENTWISE, CostModel, CostModelError, StepShape
from simulator.models import ModelSpec, get_model

DATA = Path(__file__).resolve().parents[1] / "benchmarks" / "data"
LLAMA = get_model("llama-3.1-8b")
H100 = get_gpu("h100-sxm")


def decode(batch: int, context: int) -> StepShape:
    return StepShape(num_decode=batch, decode_context_tokens=batch * (context + 1), num_sampled=batch)


def prefill(batch: int, tokens: int, cached: int = 0) -> StepShape:
    return StepShape(prefill=((tokens, cached),) * batch, num_sampled=batch)


def op(cm: CostModel, shape: StepShape, name: str):
    return next(o for o in cm.operators(shape) if o.name == name)


# ---------------------------------------------------------------- roofline invariants on every GPU
@pytest.mark.parametrize("gpu", sorted(GPUS))
def test_decode_batch_one_is_memory_bound(gpu):
    cost = CostModel(LLAMA, GPUS[gpu]).step_cost(decode(1, 1024))
    assert cost.bound == "memory"
    assert cost.flops / cost.bytes < 2.0          # about 1 FLOP per weight byte at batch 1


@pytest.mark.parametrize("gpu", sorted(GPUS))
def test_prefill_of_4k_tokens_is_compute_bound(gpu):
    cost = CostModel(LLAMA, GPUS[gpu]).step_cost(prefill(1, 4096))
    assert cost.bound == "compute"


@pytest.mark.parametrize("gpu", sorted(GPUS))
def test_doubling_bandwidth_never_slows_and_decode_gains_less_than_2x(gpu):
    base, fast = CostModel(LLAMA, GPUS[gpu]), CostModel(LLAMA, GPUS[gpu], bandwidth_scale=2.0)
    for shape in (decode(1, 128), decode(64, 2048), prefill(1, 512), prefill(4, 2048)):
        assert fast.step_cost(shape).seconds <= base.step_cost(shape).seconds
    speedup = base.step_cost(decode(1, 1024)).seconds / fast.step_cost(decode(1, 1024)).seconds
    assert 1.0 < speedup < 2.0                    # latency floors and per-step overhead do not scale


@pytest.mark.parametrize("gpu", sorted(GPUS))
def test_step_time_is_monotonic_in_batch_and_context(gpu):
    cm = CostModel(LLAMA, GPUS[gpu])
    for context in (0, 512, 4096):
        times = [cm.step_cost(decode(b, context)).seconds for b in (1, 2, 8, 32, 128, 256, 512, 1024)]
        assert times == sorted(times)
    for batch in (1, 16, 256):
        times = [cm.step_cost(decode(batch, c)).seconds for c in (0, 100, 1000, 8000, 32000)]
        assert times == sorted(times)
    times = [cm.step_cost(prefill(1, n)).seconds for n in (1, 16, 128, 1024, 8192)]
    assert times == sorted(times)


@settings(max_examples=60, deadline=None)
@given(batch=st.integers(1, 600), context=st.integers(0, 30000), chunk=st.integers(0, 4096),
       cached=st.integers(0, 8000), bw=st.floats(1.0, 8.0), fs=st.floats(1.0, 8.0))
def test_faster_hardware_never_slows_a_mixed_step(batch, context, chunk, cached, bw, fs):
    shape = StepShape(prefill=((chunk, cached),) if chunk else (), num_decode=batch,
                      decode_context_tokens=batch * (context + 1), num_sampled=batch + bool(chunk))
    # Float rounding only: with a scale barely above 1 (or a term that no longer matters), the sum of the
    # per-operator soft maxima can round 1 ulp higher; 1e-12 relative is far below any physical effect.
    base = CostModel(LLAMA, H100).step_cost(shape).seconds * (1 + 1e-12)
    assert CostModel(LLAMA, H100, bandwidth_scale=bw).step_cost(shape).seconds <= base
    assert CostModel(LLAMA, H100, flops_scale=fs).step_cost(shape).seconds <= base


# ---------------------------------------------------------------- exact pieces
def test_kernel_time_is_latency_plus_blended_roofline():
    assert kernel_time(2e12, 1e9, 1e12, 1e12, 0.0, float("inf")) == (2.0, "compute")
    seconds, bound = kernel_time(3e12, 4e12, 1e12, 1e12, 1e-3, 2.0)     # (3^2 + 4^2)^(1/2) = 5
    assert seconds == pytest.approx(5.001) and bound == "memory"
    assert kernel_time(1.0, 1.0, 1e12, 1e12, 5e-6, 6.0)[1] == "latency"
    assert kernel_time(0.0, 0.0, 1e12, 1e12, 5e-6, 6.0) == (5e-6, "latency")


def test_the_decode_run_pricers_inlined_roofline_is_kernel_time_bit_for_bit():
    # simulator/cost/decode_run.py writes kernel_time out in its per-step loop: with nothing but the attention
    # operator (a zero base, one layer, a CUDA graph) each step's attention seconds and bound are kernel_time's.
    # 3,000 random runs of 8 steps; rates put the first step's compute time at 1/50..50 x its memory time, where
    # the blend matters to the last bit (a reordered blend differs from kernel_time in ~2% of such inputs).
    import random
    from simulator.cost.attention import DecodeWork
    from simulator.cost.decode_run import DecodeRun, price_decode_run
    from simulator.cost.operators import ZERO
    rng, base = random.Random(10), CostModel(LLAMA, H100).rates
    # ties first (compute = memory = latency = 1 s; then no work at all), then random runs
    cases = [(3.0, 2.0, 2.0, 8.0, 300, 0, 300 * 3.0, 300 * 2.0 * 2.0 + 8.0, 1.0, p) for p in (float("inf"), 4.0)]
    cases.append((0.0, 0.0, 2.0, 0.0, 300, 7, 1e15, 1e12, 1e-5, 4.0))
    for _ in range(3000):
        fpt = rng.choice([0.0, 10 ** rng.uniform(-3, 7)])
        kv_elems, kvb, query_bytes = 10 ** rng.uniform(0, 5), rng.choice([0.5, 1.0, 2.0]), rng.uniform(0, 1e9)
        ctx0, step, memory_s = rng.randint(1, 10**7), rng.randint(0, 1000), 10 ** rng.uniform(-8, -1)
        bw = (ctx0 * kv_elems * kvb + query_bytes) / memory_s
        rate = fpt * ctx0 / (memory_s * 10 ** rng.uniform(-1.7, 1.7)) if fpt else 1e15
        lat, p = rng.choice([0.0, 10 ** rng.uniform(-9, -3)]), rng.choice([float("inf"), rng.uniform(1.0, 16.0)])
        cases.append((fpt, kv_elems, kvb, query_bytes, ctx0, step, rate, bw, lat, p))
    for fpt, kv_elems, kvb, query_bytes, ctx0, step, rate, bw, lat, p in cases:
        r = replace(base, attention=rate, bw=bw, gemm_latency_s=lat, overlap=p)
        run = DecodeRun(ZERO, True, DecodeWork(fpt, kv_elems, kvb, query_bytes))
        costs = price_decode_run(run, r, 1.0, 0.0, ctx0, step, 8, 0.0, float("inf"), True)
        for j in range(8):
            ctx = ctx0 + j * step
            expected = kernel_time(fpt * ctx, ctx * kv_elems * kvb + query_bytes, rate, bw, lat, p)
            assert (costs.attention_s[j], costs.bound[j]) == expected


@pytest.mark.parametrize("model, gpu, options", [("llama-3.1-8b", "h100-sxm", {}),
                                                  ("llama-3.1-8b", "a100-80gb", {"tp": 2, "pp": 2, "cuda_graphs": False}),
                                                  ("mixtral-8x7b", "h100-sxm", {"elementwise": "unfused"}),
                                                  ("deepseek-v3", "h200", {"tp": 8})])
def test_dense_totals_reduce_the_scaled_operators_bit_for_bit(model, gpu, options):
    # step_cost reduces a step's per-layer operators with the layer count folded into the reduction, without
    # building their scaled copies: it must give the totals of the scaled copies exactly.
    from simulator.cost.operators import totals
    cm = CostModel(get_model(model), get_gpu(gpu), **options)
    for t in (1, 7, 256, 513, 8192):
        assert cm._dense_totals(t) == totals(cm.catalogue.dense(t), cm.rates.launch_s)


def test_decode_attention_flops_and_bytes_by_hand():
    # 2 layers, 4 query heads of 8 over 2 KV heads: per context token per layer, QK^T and PV take
    # 2 * 4 heads * (8 + 8) = 128 FLOPs and the cache holds 2 (K, V) * 2 heads * 8 * 2 bytes = 64 bytes.
    tiny = ModelSpec(name="tiny", hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                     intermediate_size=64, vocab_size=100)
    cm = CostModel(tiny, H100)
    att = op(cm, decode(3, 99), "attention_decode")            # 3 sequences attending 100 tokens each
    assert att.flops == 2 * 128 * 300
    assert att.bytes == 2 * (64 * 300 + 3 * 4 * 16 * 2)         # KV reads + Q in and O out
    assert att.intensity == pytest.approx(att.flops / att.bytes)


def test_qkv_weights_bytes_by_hand():
    cm = CostModel(LLAMA, H100)
    qkv = op(cm, decode(1, 10), "qkv_proj")
    weights = 4096 * (4096 + 2 * 1024)                          # hidden x (q + k + v) of Llama-3-8B
    assert qkv.bytes == 32 * (weights * 2 + (4096 + 6144) * 2)   # 32 layers, bf16, activations in and out
    assert qkv.flops == 32 * 2 * weights


def test_step_cost_is_memoized():
    cm = CostModel(LLAMA, H100)
    assert cm.step_cost(decode(8, 100)) is cm.step_cost(decode(8, 100))


# ---------------------------------------------------------------- operators agree with step_cost
MODELS_FOR_SUM = ["llama-3.1-8b", "llama-2-7b", "mixtral-8x7b", "deepseek-v3", "qwen3-8b", "gemma-2-9b"]


@pytest.mark.parametrize("name", MODELS_FOR_SUM)
@pytest.mark.parametrize("options", [{}, {"tp": 2}, {"cuda_graphs": False}, {"attention": "naive"},
                                     {"elementwise": "unfused", "pp": 2}, {"dtype": "int4", "kv_dtype": "fp8"}])
def test_operators_add_up_to_the_step(name, options):
    cm = CostModel(get_model(name), H100, **options)
    for shape in (decode(1, 10), decode(300, 2000), prefill(2, 700, 300),
                  StepShape(prefill=((512, 0), (64, 4096)), num_decode=40, decode_context_tokens=40 * 900,
                            num_sampled=41)):
        cost, ops = cm.step_cost(shape), cm.operators(shape)
        assert sum(o.seconds for o in ops) == pytest.approx(cost.seconds, rel=1e-12)
        assert sum(o.flops for o in ops) == pytest.approx(cost.flops, rel=1e-12)
        assert sum(o.bytes for o in ops) == pytest.approx(cost.bytes, rel=1e-12)
        families = {f: sum(o.seconds for o in ops if o.family == f) for f in dict(cost.breakdown)}
        assert families == pytest.approx(dict(cost.breakdown), rel=1e-12)


# ---------------------------------------------------------------- options
def test_tp_halves_weight_bytes_and_adds_communication():
    one, two = CostModel(LLAMA, H100), CostModel(LLAMA, H100, tp=2)
    shape = decode(1, 100)
    for name in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj", "lm_head"):
        assert op(two, shape, name).bytes == pytest.approx(op(one, shape, name).bytes / 2, rel=2e-3)
    assert one.step_cost(shape).family_seconds("communication") == 0.0
    assert two.step_cost(shape).family_seconds("communication") > 0.0
    assert op(two, shape, "allreduce").kernels == 2 * 32      # two all-reduces per layer


@pytest.mark.parametrize("tp,tokens", [(2, 1), (2, 8192), (4, 256), (8, 32)])
def test_allreduce_time_by_hand(tp, tokens):
    # Ring all-reduce of the [tokens, 4096] bf16 partial sums, twice a layer: each one takes
    # 10 us + 2 (tp - 1) x 0.7 us + (2 (tp - 1) / tp) x tokens x 4096 x 2 B / (450 GB/s x 0.6).
    cm = CostModel(LLAMA, H100, tp=tp)
    wire = 2 * (tp - 1) / tp * tokens * 4096 * 2
    one = (H100.collective_latency_s + 2 * (tp - 1) * H100.collective_step_latency_s
           + wire / (H100.link_bytes_per_s * H100.link_efficiency))
    assert (H100.collective_latency_s, H100.collective_step_latency_s) == (10e-6, 0.7e-6)
    assert (H100.link_bytes_per_s, H100.link_efficiency) == (450e9, 0.6)
    assert op(cm, decode(tokens, 10), "allreduce").seconds == pytest.approx(2 * 32 * one, rel=1e-12)


def test_cuda_graphs_off_is_slower_for_decode_and_limit_applies():
    on, off = CostModel(LLAMA, H100), CostModel(LLAMA, H100, cuda_graphs=False)
    assert off.step_cost(decode(8, 512)).seconds > on.step_cost(decode(8, 512)).seconds
    assert on.graphed(decode(512, 10)) and not on.graphed(decode(513, 10))
    assert not on.graphed(prefill(1, 10))                    # prefill steps run eagerly by default
    assert CostModel(LLAMA, H100, cuda_graph_prefill=True).graphed(prefill(1, 10))


def test_naive_attention_moves_more_bytes_than_flash_for_long_prefill():
    flash, naive = CostModel(LLAMA, H100), CostModel(LLAMA, H100, attention="naive")
    shape = prefill(1, 8192)
    f = op(flash, shape, "attention_prefill")
    n_bytes = sum(o.bytes for o in naive.operators(shape) if o.family == "attention")
    assert n_bytes > 10 * f.bytes                             # the 8192 x 8192 scores per head go through HBM
    assert naive.step_cost(shape).seconds > flash.step_cost(shape).seconds


def test_moe_decode_reads_only_the_experts_hit():
    mixtral = get_model("mixtral-8x7b")
    cm = CostModel(mixtral, H100)
    one = cm.step_cost(decode(1, 100))
    assert one.bytes < 0.5 * mixtral.weight_bytes("bf16")      # 2 of 8 experts per layer
    up = op(cm, decode(1, 100), "experts_gate_up")
    assert up.bytes == pytest.approx(32 * (2 * 2 * 14336 * 4096 * 2 + 2 * (4096 + 2 * 14336) * 2))
    big = op(cm, decode(64, 100), "experts_gate_up")          # 64 tokens hit all 8 experts almost surely
    expected_hit = 8 * (1 - (1 - 2 / 8) ** 64)
    assert big.bytes == pytest.approx(32 * (expected_hit * 2 * 14336 * 4096 * 2 + 128 * (4096 + 2 * 14336) * 2))


def test_fp8_kv_halves_kv_bytes():
    bf, f8 = CostModel(LLAMA, H100), CostModel(LLAMA, H100, kv_dtype="fp8")
    shape = decode(16, 8000)
    q_o = 32 * 16 * 32 * 256 * 2                               # Q in and O out stay 16-bit
    assert op(f8, shape, "attention_decode").bytes - q_o == pytest.approx(
        (op(bf, shape, "attention_decode").bytes - q_o) / 2)
    assert f8.step_cost(shape).seconds < bf.step_cost(shape).seconds


def test_int4_weights_shrink_decode_time():
    bf, i4 = CostModel(LLAMA, H100), CostModel(LLAMA, H100, dtype="int4")
    assert i4.step_cost(decode(1, 512)).seconds < 0.7 * bf.step_cost(decode(1, 512)).seconds


def test_eager_step_pays_launch_overhead_when_cpu_bound():
    # With launches slower than any kernel, every operator takes its kernel count times the launch cost.
    gpu = replace(H100, launch_overhead_s=1e-2)
    cm = CostModel(LLAMA, gpu, cuda_graphs=False, step_overhead_s=0.0)
    ops = [o for o in cm.operators(decode(1, 10)) if o.family != "overhead"]
    kernels = 32 * 10 + 1 + 2                 # 10 per layer (fused ops), embedding, final norm + LM head
    assert sum(o.kernels for o in ops) == kernels
    assert cm.step_cost(decode(1, 10)).seconds == pytest.approx(kernels * 1e-2)


# ---------------------------------------------------------------- non-vectorized elementwise kernels (unfused)
LLAMA3 = get_model("llama-3-8b")             # the model of benchmarks/data/*_profile_*.csv
H200 = get_gpu("h200")
PREFILL_8K = StepShape(prefill=((8192, 0),), num_sampled=1)


def graphed_cm(gpu, elementwise: str, **kw) -> CostModel:
    return CostModel(LLAMA3, gpu, elementwise=elementwise, cuda_graphs=True, cuda_graph_prefill=True,
                     step_overhead_s=0.0, **kw)


def blend(a: float, b: float, p: float) -> float:
    """(a^p + b^p)^(1/p), written out (hardware.roofline.kernel_time's body without its latency)."""
    big, small = max(a, b), min(a, b)
    return big * (1 + (small / big) ** p) ** (1 / p)


def test_unfused_silu_mul_on_h100_by_hand():
    # Unfused SiLU(gate) * up over E = 8192 x 14336 = 117,440,512 elements a layer: 2 kernels, 5 passes of 2
    # bytes, all of them non-vectorized (2 elements of work each: the SiLU and the multiply).
    #   per-element work: 2E / (132 SMs x 1.98 GHz x 1.2) = 2E / 313.632e9 = 748.9 us
    #   bytes:           10E / (0.94 x 3.35e12 B/s)      = 10E / 3.149e12  = 372.9 us  (ratio 0.498)
    #   blend p = 6: 748.9 x (1 + 0.498^6)^(1/6) = 750.8 us
    # plus its 5 FLOPs an element at the FP32 vector rate (5E / 67e12 = 8.8 us; no vectorized bytes left) and
    # 2 kernel floors (4.4 us): 763.96 us a layer, x 32 layers = 24.447 ms.
    g = H100
    elems = 8192 * 14336
    unvec_rate = g.num_sms * g.sm_clock() * g.unvectorized_elements_per_clock
    bw = g.hbm_efficiency * g.hbm_bytes_per_s
    per_layer = (blend(2 * elems / unvec_rate, 5 * elems * 2 / bw, g.roofline_overlap)
                 + 5 * elems / g.vector_flops_per_s + 2 * g.kernel_floor_s)
    silu = op(graphed_cm(g, "unfused"), PREFILL_8K, "silu_mul")
    assert silu.seconds == pytest.approx(32 * per_layer, rel=1e-9)
    assert silu.seconds == pytest.approx(24.447e-3, rel=1e-4)
    assert (silu.kernels, silu.bytes, silu.bound) == (64, 32 * 5 * elems * 2, "compute")


def test_unfused_silu_mul_does_not_speed_up_with_h200_bandwidth_but_fused_does():
    # Same die (132 SMs, 1.98 GHz, 67 TFLOPS FP32): the unfused kernels' per-element term is the same on both
    # cards. They are not bit-equal because the p = 6 blend still adds a little of the byte term, which the
    # H200 shrinks: the non-vectorized part is 748.9 x 1.00253 = 750.8 us (H100, bytes/work 0.498) vs
    # 748.9 x 1.00029 = 749.1 us (H200, 0.348) a layer, so the whole operator is 0.22% faster on the H200.
    assert (H100.num_sms, H100.sm_clock(), H100.vector_flops_per_s) == (H200.num_sms, H200.sm_clock(),
                                                                       H200.vector_flops_per_s)
    unfused = [op(graphed_cm(g, "unfused"), PREFILL_8K, "silu_mul").seconds for g in (H100, H200)]
    assert 1.0 < unfused[0] / unfused[1] < 1.003
    assert unfused[0] / unfused[1] == pytest.approx(763.96 / 762.29, rel=1e-4)
    # With a pure roofline (max instead of the blend) the byte term drops out: identical to the last bit.
    pure = [op(graphed_cm(replace(g, roofline_overlap=math.inf), "unfused"), PREFILL_8K, "silu_mul").seconds
            for g in (H100, H200)]
    assert pure[0] == pure[1]
    # Fused silu_and_mul: 3 vectorized passes, bandwidth-bound (6E bytes / (0.94 x BW): 223.8 us on the H100,
    # 156.2 us on the H200) plus one 2.2 us floor a layer, so the ratio, (223.8 + 2.2) / (156.2 + 2.2) =
    # 1.4268, sits 0.4% under the bandwidth ratio 4.8 / 3.35 = 1.4328.
    fused = [op(graphed_cm(g, "fused"), PREFILL_8K, "silu_mul").seconds for g in (H100, H200)]
    elems = 8192 * 14336

    def by_hand(g):
        return blend(6 * elems / (g.hbm_efficiency * g.hbm_bytes_per_s), 5 * elems / g.vector_flops_per_s,
                     g.roofline_overlap) + g.kernel_floor_s
    assert fused[0] / fused[1] == pytest.approx(by_hand(H100) / by_hand(H200), rel=1e-9)
    assert fused[0] / fused[1] == pytest.approx(H200.hbm_bytes_per_s / H100.hbm_bytes_per_s, rel=0.02)
    assert fused[0] / fused[1] == pytest.approx(1.4268, rel=1e-4)


def test_unfused_prefill_launches_the_profiled_kernel_count():
    # Per layer: input RMSNorm 6 (pow, mean, add, rsqrt, 2 broadcast muls), QKV 1, RoPE 10, 2 cache copies,
    # attention 1, o_proj 1, 2 residual adds, post-attention RMSNorm 6, gate_up 1, SiLU + mul 2, down 1 = 33.
    # Outside the layers: embedding gather 1, final RMSNorm 6, LM head 1 (untied) = 8. 33 x 32 + 8 = 1064.
    ops = [o for o in graphed_cm(H100, "unfused").operators(PREFILL_8K) if o.family != "overhead"]
    per_op = {o.name: o.kernels for o in ops}
    assert per_op == {"embedding": 1, "input_norm": 32 * 6, "qkv_proj": 32, "rope": 32 * 10,
                      "kv_cache_write": 32 * 2, "attention_prefill": 32, "o_proj": 32, "residual_add": 32 * 2,
                      "post_attn_norm": 32 * 6, "gate_up_proj": 32, "silu_mul": 32 * 2, "down_proj": 32,
                      "final_norm": 6, "lm_head": 1}
    assert sum(o.kernels for o in ops) == 33 * 32 + 8 == 1064
    # ... which is what the PyTorch profiler counted in every measured Llama-3-8B prefill step.
    for name in ("h100_profile_families.csv", "h200_profile_families.csv"):
        with open(DATA / name, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["model"] == "llama-3-8b" and r["phase"] == "prefill"]
        assert len(rows) == 5 and {int(r["kernels"]) for r in rows} == {1064}, name


def test_fused_elementwise_has_no_non_vectorized_work():
    # What makes fused steps independent of the per-clock rate (next test).
    for ew in vars(ELEMENTWISE["fused"]).values():
        assert ew.unvec == 0 and ew.unvec_passes == 0


MONOTONE_SHAPES = [decode(1, 128), decode(64, 2048), decode(600, 1000), prefill(1, 8192), prefill(4, 2048, 512),
                   StepShape(prefill=((512, 0), (64, 4096)), num_decode=40, decode_context_tokens=40 * 900,
                             num_sampled=41)]


def faster_unvec(gpu):
    return replace(gpu, unvectorized_elements_per_clock=2 * gpu.unvectorized_elements_per_clock)


@pytest.mark.parametrize("gpu", sorted(GPUS))
def test_faster_unvectorized_kernels_speed_unfused_steps_only(gpu):
    base, fast = GPUS[gpu], faster_unvec(GPUS[gpu])
    assert op(graphed_cm(fast, "unfused"), PREFILL_8K, "silu_mul").seconds < \
        op(graphed_cm(base, "unfused"), PREFILL_8K, "silu_mul").seconds
    assert graphed_cm(fast, "unfused").step_cost(PREFILL_8K).seconds < \
        graphed_cm(base, "unfused").step_cost(PREFILL_8K).seconds
    for graphs in (True, False):
        unfused = [CostModel(LLAMA3, g, elementwise="unfused", cuda_graphs=graphs) for g in (base, fast)]
        fused = [CostModel(LLAMA3, g, elementwise="fused", cuda_graphs=graphs) for g in (base, fast)]
        for shape in MONOTONE_SHAPES:
            # Eager steps: an operator that gets faster while its launches still bound it moves seconds from
            # the GPU sum into the launch excess, which may round 1 ulp higher (1e-12 relative allows it).
            slack = 1.0 if graphs else 1 + 1e-12
            assert unfused[1].step_cost(shape).seconds <= unfused[0].step_cost(shape).seconds * slack
            assert fused[1].step_cost(shape) == fused[0].step_cost(shape)            # bit for bit
            assert fused[1].operators(shape) == fused[0].operators(shape)


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(0, 600), context=st.integers(0, 30000), chunk=st.integers(0, 8192),
       cached=st.integers(0, 8000))
def test_faster_unvectorized_kernels_never_slow_a_graphed_unfused_step(batch, context, chunk, cached):
    shape = StepShape(prefill=((chunk, cached),) if chunk else (), num_decode=batch,
                      decode_context_tokens=batch * (context + 1), num_sampled=batch + bool(chunk))
    base, fast = graphed_cm(H100, "unfused"), graphed_cm(faster_unvec(H100), "unfused")
    assert fast.step_cost(shape).seconds <= base.step_cost(shape).seconds


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs, message", [
    ({"dtype": "fp4"}, "unknown weight dtype 'fp4'; choose one of: bf16"),
    ({"kv_dtype": "int4"}, "unknown KV cache dtype 'int4'; choose one of"),
    ({"attention": "paged"}, "unknown attention 'paged'; choose one of: flash, naive"),
    ({"elementwise": "xla"}, "unknown elementwise 'xla'; choose one of: fused, vllm-v1, unfused"),
    ({"tp": 3}, "tp=3 does not divide llama-3.1-8b's 32 attention heads"),
    ({"tp": 0}, "tp must be a positive integer, got 0"),
    ({"bandwidth_scale": 0.0}, "bandwidth_scale must be positive, got 0.0"),
])
def test_bad_inputs_give_one_line_errors(kwargs, message):
    with pytest.raises(CostModelError) as err:
        CostModel(LLAMA, H100, **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, ValueError)


def test_tp_must_split_or_replicate_kv_heads_evenly():
    phi = get_model("phi-3-medium")                        # 40 query heads, 10 KV heads
    assert (phi.num_heads, phi.num_kv_heads) == (40, 10)
    CostModel(phi, H100, tp=2)                             # 5 KV heads a GPU
    with pytest.raises(CostModelError, match=r"^tp=4 and phi-3-medium's 10 KV heads: one must divide the other$"):
        CostModel(phi, H100, tp=4)
    CostModel(get_model("llama-3.1-8b"), H100, tp=8)       # 8 KV heads: one a GPU
    CostModel(get_model("qwen2.5-7b"), H100, tp=4)         # 4 KV heads: one a GPU (28 query heads / 4 = 7)


def test_tp_without_a_link_is_an_error():
    with pytest.raises(CostModelError, match="needs a GPU-to-GPU link"):
        CostModel(LLAMA, replace(H100, link="", link_bytes_per_s=0.0), tp=2)


# ---------------------------------------------------------------- fidelity on the real H100 reference
def test_h100_reference_mape_within_5_percent():
    from benchmarks.fidelity_steps import predict, read_inputs
    df = read_inputs([str(DATA / "h100_llama-3-8b_steps.csv")])
    ape = ((predict(df) - df["graph_ms_median"]).abs() / df["graph_ms_median"] * 100)
    for phase in ("decode", "prefill"):
        assert ape[df["phase"] == phase].mean() <= 5.0
    assert math.isfinite(ape.max()) and ape.max() < 10.0


def test_published_fastertransformer_gpt13b_a100_within_15_percent():
    from benchmarks.fidelity_published import predictions
    for phase, (predicted, measured) in predictions().items():
        assert abs(predicted / measured - 1) <= 0.15, phase


def test_fidelity_reads_the_tp_column_and_reports_tp_rows_apart():
    from benchmarks.fidelity_steps import error_table, model_from_row, predict, read_inputs
    df = read_inputs([str(DATA / "h200_tp2_llama-3-8b_steps.csv"), str(DATA / "h200_tp1_llama-3-8b_steps.csv")])
    assert set(df["tp"]) == {1, 2}
    df["predicted_ms"] = predict(df)
    first = df.iloc[0]                                   # tp=2, decode, batch 1, context 512
    shape = StepShape(num_decode=1, decode_context_tokens=513, num_sampled=1)
    expected = CostModel(model_from_row(first), H200, tp=2, cuda_graph_prefill=True, cuda_graph_max_batch=1 << 30,
                         elementwise="unfused", step_overhead_s=0.0).step_cost(shape).seconds * 1e3
    assert (first["tp"], first["phase"], first["batch"], first["context"]) == (2, "decode", 1, 512)
    assert first["predicted_ms"] == pytest.approx(expected, rel=1e-12)
    models = set(error_table(df).index.get_level_values("model"))
    assert models == {"llama-3-8b", "llama-3-8b tp2", "all"}


def test_calibration_defaults_are_the_fit_on_the_h100_reference():
    # benchmarks/calibrate.py refits the fractions and floors on the calibration set alone; the shipped
    # defaults must be (a rounding of) that fit, so a change to the cost model that moves the optimum fails here
    # until the defaults are refit.
    from benchmarks.calibrate import CALIBRATION_SET, PARAMETERS, fit, phase_errors
    from benchmarks.fidelity_steps import read_inputs
    df = read_inputs(CALIBRATION_SET)
    fitted = fit(df, rounds=3)
    defaults = {name: getattr(H100, name) for name in PARAMETERS}
    assert fitted == pytest.approx(defaults, rel=0.02)
    errors = phase_errors(df, defaults)
    assert errors["decode"] < 1.5 and errors["prefill"] < 2.5     # measured: 0.97% and 2.15%
