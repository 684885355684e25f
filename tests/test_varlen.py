"""vLLM V1's kernel recipe: varlen attention (mixed steps), CUDA graph modes and padding, the sampler."""
from __future__ import annotations

import numpy as np
import pytest

from hardware.gpus import get_gpu
from simulator.cost import CostModel, StepShape
from simulator.cost.varlen import (VarlenParams, chunk_tiles, decode_seconds, mixed_decode_seconds, prefill_seconds,
                                   reread_share, step_seconds)
from simulator.engines import cost_model_options, get_engine
from simulator.models import get_model

# Round numbers: 32 query heads over 8 KV heads of 128, 4096 KV bytes a token, 100 TFLOP/s, 1 TB/s, 100 SMs.
P = VarlenParams(q_heads=32, kv_heads=8, qk_dim=128, v_dim=128, kv_bytes_per_token=4096, attn_flops_per_s=100e12,
                 bytes_per_s=1e12, num_sms=100, floor_s=10e-6, tile=64, ctas_per_sm=1.0, mixed_reread=0.25,
                 mixed_window=4.0, mixed_sharpness=2.0, mixed_cta_s=4e-6)


def test_prefill_chunk_by_hand():
    # 100 tokens after 1000 cached: 2 tiles of 64 rows, each over the 1000 cached keys, plus the causal part:
    # 2 x 64 x 1000 + 100 x (100 + 64) / 2 = 136,200 pairs x 2 x 32 heads x 256 = 2.2315 GFLOP on 64 of 100 CTA
    # slots -> 34.87 us; bytes 1100 x 4096 + 100 x 32 x 256 x 2 = 6.1 MB -> 6.1 us; + 10 us floor.
    tiles, padded = chunk_tiles(P, 100, 1000)
    assert (tiles, padded) == (2, 136_200)
    assert prefill_seconds(P, tiles, padded, 1100, 100) == pytest.approx(10e-6 + 2.2315e9 / (100e12 * 0.64))


def test_decodes_alone_are_one_read_of_their_kv():
    # 10 decodes attending 10,000 tokens: 40.96 MB of KV + 10 x 32 x 256 x 2 query/output bytes, at 1 TB/s.
    assert decode_seconds(P, 10, 10_000) == pytest.approx(10e-6 + (40.96e6 + 163_840) / 1e12)


def test_mixed_decode_rows_by_hand():
    # With a 2-tile chunk, 10 decode rows: CTAs of a KV group are (2 + 10) x 4 = 48 apart, inside the 400-CTA
    # window, so a share 0.25 + 0.75 / (1 + (400 / 48)^2) = 0.2606 of the 3 re-reads reach memory:
    # 40.96 MB x 1.782 = 73 us; their padded tiles: 2 x 32 x 256 x 64 x 10,000 = 10.5 GFLOP = 104.9 us (the
    # longer); 320 CTAs x 4 us over 100 SMs = 12.8 us.
    share = reread_share(P, 2, 10)
    assert share == pytest.approx(0.25 + 0.75 / (1 + (400 / 48) ** 2))
    assert mixed_decode_seconds(P, 2, 10, 10_000) == pytest.approx(1.048576e10 / 100e12 + 12.8e-6)
    # far past the window every re-read reaches memory; right at it, half way
    assert reread_share(P, 1e6, 1e6) == pytest.approx(1.0, abs=1e-6)
    assert reread_share(P, 0, 100) == pytest.approx(0.25 + 0.75 / 2)


def test_one_launch_prices_pure_and_mixed_steps():
    tiles, padded = chunk_tiles(P, 100, 1000)
    alone = step_seconds(P, 0, 0, 0, 0, 10, 10_000)
    chunk = step_seconds(P, tiles, padded, 1100, 100, 0, 0)
    mixed = step_seconds(P, tiles, padded, 1100, 100, 10, 10_000)
    assert alone == decode_seconds(P, 10, 10_000) and chunk == prefill_seconds(P, tiles, padded, 1100, 100)
    assert mixed == pytest.approx(chunk + mixed_decode_seconds(P, tiles, 10, 10_000))
    assert mixed > chunk + alone                       # the decode rows cost more with a chunk than alone


def test_formulas_give_the_same_bits_on_numbers_as_on_arrays():
    # The cost model calls them with numbers (numpy skipped), the fitter with arrays: one formula, same values.
    rng = np.random.default_rng(0)
    new, cached = rng.integers(1, 5000, 400), rng.integers(0, 100_000, 400)
    num_decode, context = rng.integers(0, 300, 400), rng.integers(0, 2_000_000, 400)
    tiles, padded = chunk_tiles(P, new, cached)
    kv, q = cached + new, new
    arrays = [tiles, padded, prefill_seconds(P, tiles, padded, kv, q), reread_share(P, tiles, num_decode),
              mixed_decode_seconds(P, tiles, num_decode, context)]
    for i in range(400):
        t, pp = chunk_tiles(P, int(new[i]), int(cached[i]))
        numbers = [t, pp, prefill_seconds(P, t, pp, int(kv[i]), int(q[i])), reread_share(P, t, int(num_decode[i])),
                   mixed_decode_seconds(P, t, int(num_decode[i]), int(context[i]))]
        assert all(type(x) is float for x in numbers)
        assert numbers == [float(a[i]) for a in arrays]


V1 = cost_model_options(get_engine("vllm-v1"))


def v1_model(gpu: str = "rtx-4090", **options) -> CostModel:
    return CostModel(get_model("llama-3.1-8b"), get_gpu(gpu), **{**V1, **options})


def test_v1_graph_modes_and_padding():
    cm = v1_model()
    decode17 = StepShape((), 17, 17 * 500, 17)
    mixed = StepShape(((100, 0),), 4, 4 * 500, 4)
    big = StepShape(((600, 0),), 4, 4 * 500, 4)
    assert [cm.graph_mode(s) for s in (decode17, mixed, big)] == ["full", "piecewise", "eager"]
    assert [cm.padded_tokens(s) for s in (decode17, mixed, big)] == [24, 104, 604]
    # a 17-sequence decode step runs the 24-sequence graph: its GEMMs cost what 24 rows cost
    gemm = lambda n: cm.step_cost(StepShape((), n, n * 500, n)).family_seconds("gemm")  # noqa: E731
    assert gemm(17) == gemm(24) - (cm.catalogue.head(24)[1].seconds - cm.catalogue.head(17)[1].seconds)
    # piecewise: the CPU launches only the attention kernel (one a layer), which a tiny step waits for; a full
    # graph launches nothing
    tiny = StepShape(((16, 0),), 1, 17, 1)
    rows = {o.name: o for o in cm.operators(tiny)}
    assert rows["attention_prefill"].kernels == 32 and rows["attention_decode"].kernels == 0   # one launch
    assert rows["kernel_launch"].seconds == pytest.approx(32 * 12e-6 - rows["attention_prefill"].seconds)
    assert "kernel_launch" not in {o.name for o in cm.operators(decode17)}


def test_v1_mixed_step_shows_its_mixed_attention_term():
    cm = v1_model()
    mixed = StepShape(((512, 1024),), 32, 32 * 1025, 32)
    rows = {o.name: o for o in cm.operators(mixed)}
    assert rows["attention_mixed"].seconds > rows["attention_decode"].seconds > 0
    alone = {o.name: o for o in cm.operators(StepShape((), 32, 32 * 1025, 32))}
    # the decode row of a mixed step is what the decodes cost alone, less the launch floor the chunk's row holds
    assert rows["attention_decode"].seconds == pytest.approx(alone["attention_decode"].seconds
                                                            - 32 * cm.gpu.attention_floor_s)
    assert cm.step_cost(mixed).seconds == pytest.approx(sum(o.seconds for o in cm.operators(mixed)))


def test_sampler_and_step_overhead_belong_to_the_engine():
    v1, v0 = v1_model(), CostModel(get_model("llama-3.1-8b"), get_gpu("rtx-4090"),
                                   **cost_model_options(get_engine("vllm-v0")))
    shape = StepShape((), 64, 64 * 1000, 64)
    names = lambda cm: {o.name: o.seconds for o in cm.operators(shape)}  # noqa: E731
    assert names(v1)["sampler"] == pytest.approx(v1.gpu.sampler_floor_s + v1.gpu.sampler_passes * 64 * 128256 * 4
                                                 / (1008e9 * v1.gpu.hbm_efficiency))
    assert "sampler" not in names(v0)
    assert names(v1)["step_overhead"] == 0.2e-3 and names(v0)["step_overhead"] == 1.5e-3


def test_link_override_changes_the_allreduce():
    model, gpu = get_model("llama-3.1-8b"), get_gpu("rtx-4090")
    shape = StepShape((), 8, 8000, 8)
    host = CostModel(model, gpu, tp=2).step_cost(shape).family_seconds("communication")
    p2p = CostModel(model, gpu, tp=2, link="pcie4-p2p").step_cost(shape).family_seconds("communication")
    # 64 all-reduces of 8 x 4096 x 2 bytes: latency-bound, 12 + 2 x 3 us on the host path, 15 + 2 x 1.5 on P2P
    assert host == pytest.approx(64 * (18e-6 + 65536 / 10e9))
    assert p2p == pytest.approx(64 * (18e-6 + 65536 / 24e9))
