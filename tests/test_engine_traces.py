"""Exact, hand-checked traces: three requests, 10 ms per step + 0.1 ms per prefill token (conftest).

Each expected time is worked out step by step in the comments.
"""
from __future__ import annotations

import pytest

from conftest import make_engine


def times(result):
    df = result.requests.set_index("request_id")
    return [(round(df.first_token_s[i], 6), round(df.finish_s[i], 6)) for i in range(3)]


def test_continuous_prefill_first(three_requests):
    # 0: A prefills 100 tokens -> 0.020 (A token 1). B and C arrived meanwhile.
    # 0.020: B+C prefill 300 tokens -> 0.060 (B1, C1); A waits: prefills go first without chunking.
    # 0.060: decode A,B,C -> 0.070 (A2, B2 = B done, C2). 0.070: A,C -> 0.080 (A3 done, C3). 0.080: C -> 0.090.
    res = make_engine(three_requests, batching="continuous").run()
    assert times(res) == [(0.02, 0.08), (0.06, 0.07), (0.06, 0.09)]


def test_continuous_chunked_prefill(three_requests):
    # budget 150. 0: A 100 -> 0.020 (A1).
    # 0.020: A decode 1, B chunk 149 -> 0.0249 -> 0.0449 (A2).
    # 0.0449: A decode 1, B last 51, C chunk 150-1-51 = 98 -> 0.0249 -> 0.0698 (A3 done, B1).
    # 0.0698: B decode, C last 2 -> 0.0102 -> 0.0800 (B2 done, C1). Then C decodes: 0.090, 0.100, 0.110.
    res = make_engine(three_requests, batching="continuous", chunked_prefill=True, max_num_batched_tokens=150).run()
    assert times(res) == [(0.02, 0.0698), (0.0698, 0.08), (0.08, 0.11)]
    steps = res.steps
    assert list(steps.num_prefill_tokens[:4]) == [100, 149, 149, 2]
    assert list(steps.num_decode_tokens[:4]) == [0, 1, 1, 1]


def test_static_waits_for_full_batch_and_pads(three_requests):
    # batch_size 2: at 0.005 A,B wait -> prefill 300 -> 0.045 (A1, B1); decode -> 0.055 (A2, B2 = B done);
    # B stays as padding: decode -> 0.065 (A3 done). C (arrived 0.015) is alone, but the workload has ended:
    # prefill 100 -> 0.085 (C1); decodes 0.095, 0.105, 0.115.
    res = make_engine(three_requests, batching="static", batch_size=2).run()
    assert times(res) == [(0.045, 0.065), (0.045, 0.055), (0.085, 0.115)]
    assert list(res.steps.batch_size[:3]) == [2, 2, 2]        # B is still computed as padding in step 3


def test_dynamic_closes_on_timeout(three_requests):
    # max_batch_size 4, max_wait 10 ms: A waits from 0, so the batch closes at 0.010 with A,B:
    # prefill 300 -> 0.050 (A1, B1); 0.060 (A2, B2 done); 0.070 (A3 done).
    # C has waited since 0.015 > 10 ms: closes at once: prefill -> 0.090 (C1); 0.100, 0.110, 0.120.
    res = make_engine(three_requests, batching="dynamic", max_batch_size=4, max_wait_s=0.010).run()
    assert times(res) == [(0.05, 0.07), (0.05, 0.06), (0.09, 0.12)]


def test_dynamic_closes_on_size(three_requests):
    # max_batch_size 2: closes at 0.005 when B arrives -> same as static for A and B; C waits its 10 ms
    # window (until 0.025) but the batch is busy until 0.065, then C runs alone: 0.085, ..., 0.115.
    res = make_engine(three_requests, batching="dynamic", max_batch_size=2, max_wait_s=0.010).run()
    assert times(res) == [(0.045, 0.065), (0.045, 0.055), (0.085, 0.115)]


def test_metrics_from_trace(three_requests):
    res = make_engine(three_requests, batching="continuous").run()
    df = res.requests.set_index("request_id")
    assert df.ttft_s[1] == pytest.approx(0.06 - 0.005)
    assert df.tpot_s[0] == pytest.approx((0.08 - 0.02) / 2)      # (finish - first token) / (3 - 1)
    assert df.queueing_s[2] == pytest.approx(0.02 - 0.015)
    s = res.summary()
    assert s["duration_s"] == pytest.approx(0.09)
    assert s["request_throughput"] == pytest.approx(3 / 0.09)
    assert s["output_token_throughput"] == pytest.approx(9 / 0.09)
    # ITL gaps: A 0.060->0.070->0.080 wait: A tokens at 0.02, 0.07, 0.08 -> gaps 0.05, 0.01; B: 0.01; C: 0.01 x3
    assert sorted(res.itl.itl_s.repeat(res.itl["count"]).round(6)) == [0.01] * 5 + [0.05]


def test_recompute_preemption_trace():
    # KV holds 2 blocks of 16 tokens, no watermark. A (16 prompt, 10 out) and B (12 prompt, 10 out) arrive at 0.
    # 0: prefill A,B (28 tokens, one block each) -> 0.0128 (A1, B1).
    # 0.0128: A's 17th KV token needs a 2nd block: B, the newest, is preempted (recompute) and waits.
    #   A decodes alone: A2 at 0.0228 ... A10 at 0.0128 + 9 x 0.010 = 0.1028 (done, frees both blocks).
    # 0.1028: B recomputes 12 prompt + 1 sampled = 13 tokens -> 0.0113 -> 0.1141 (B2); B3..B10 -> 0.1941.
    from conftest import specs_from
    res = make_engine(specs_from([(0.0, 16, 10), (0.0, 12, 10)]), capacity_tokens=32, max_model_len=32,
                      watermark=0.0).run()
    df = res.requests.set_index("request_id")
    assert [round(x, 6) for x in df.first_token_s] == [0.0128, 0.0128]
    assert [round(x, 6) for x in df.finish_s] == [0.1028, 0.1941]
    assert list(df.num_preemptions) == [0, 1]
    assert list(df.recomputed_tokens) == [0, 12]
    assert res.summary()["preemptions_recompute"] == 1
    assert round(res.itl.itl_s.max(), 6) == 0.1013          # B's stall: token 1 at 0.0128, token 2 at 0.1141


def test_swap_preemption_trace():
    # Same as above with swap: B's 12 KV tokens (1 byte each here) go to host at 0.0128 and come back when A
    # finishes; the swap-out and the swap-in steps are each charged 12 bytes / 1e9 B/s = 12 ns.
    from conftest import specs_from
    res = make_engine(specs_from([(0.0, 16, 10), (0.0, 12, 10)]), capacity_tokens=32, max_model_len=32,
                      watermark=0.0, preemption="swap", kv_bytes_per_token=1.0).run()
    df = res.requests.set_index("request_id")
    assert list(df.recomputed_tokens) == [0, 0]
    assert list(df.swapped_bytes) == [0.0, 24.0]                    # 12 bytes out + 12 bytes back in
    # A10 at 0.1028 + 12 ns; swap-in + decode B2 (0.010); then B3..B10: 8 more decode steps.
    assert df.finish_s[0] == pytest.approx(0.1028 + 12e-9, abs=1e-12)
    assert df.finish_s[1] == pytest.approx(0.1028 + 24e-9 + 0.010 * 9, abs=1e-12)
    assert res.summary()["preemptions_swap"] == 1
