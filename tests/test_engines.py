"""Engine presets: vLLM V1's scheduler rules against V0's, traced by hand on the round-number cost model."""
from __future__ import annotations

import pytest

from conftest import make_engine, specs_from
from simulator.config import ConfigError, SimConfig
from simulator.engines import ENGINES, V1_CUDA_GRAPH_SIZES, get_engine


def _admission_run(whole: bool):
    # KV: 4 blocks of 16 tokens, no watermark; chunked prefill, 48 tokens a step. A (40 prompt, 2 out) and
    # B (30 prompt, 2 out) arrive at 0. Step 1 gives A its 40 tokens (3 blocks) and leaves 8 tokens of budget
    # and 1 free block: B's first chunk of 8 tokens fits that block, its whole prompt (2 blocks) does not.
    return make_engine(specs_from([(0.0, 40, 2), (0.0, 30, 2)]), capacity_tokens=64, max_model_len=64,
                       watermark=0.0, chunked_prefill=True, max_num_batched_tokens=48,
                       admit_whole_sequence=whole).run()


def test_v1_admits_only_when_the_whole_prompt_fits():
    # A: 40 tokens -> 0.010 + 0.004 = 0.014 (first token); A decodes -> 0.024, finishes, frees 3 blocks.
    # B waits (2 blocks needed, 1 free) until then: 30 tokens -> 0.024 + 0.013 = 0.037; decode -> 0.047.
    df = _admission_run(whole=True).requests.set_index("request_id")
    assert [round(x, 6) for x in df.first_token_s] == [0.014, 0.037]
    assert [round(x, 6) for x in df.finish_s] == [0.024, 0.047]
    assert list(df.num_preemptions) == [0, 0]


def test_chunk_only_admission_takes_the_chunk_and_then_preempts():
    # Without the rule B is admitted at once with an 8-token chunk (the last free block); at step 2 A's
    # decode fits its 3 blocks but B's next chunk does not, so B (the newest) is preempted and recomputed.
    res = _admission_run(whole=False)
    df = res.requests.set_index("request_id")
    assert df.loc[1, "scheduled_s"] == 0.0
    assert df.loc[1, "num_preemptions"] == 1
    assert res.summary()["preemptions_recompute"] == 1


def test_presets_bundle_the_engines_rules():
    v1, v0 = get_engine("vllm-v1"), get_engine("vllm-v0")
    assert (v1.chunked_prefill, v1.watermark, v1.admit_whole_sequence, v1.prefix_caching) == (True, 0.0, True, True)
    assert (v0.chunked_prefill, v0.watermark, v0.admit_whole_sequence) == (False, 0.01, False)
    assert v1.attention_kernel == "varlen" and v0.attention_kernel == "flash"
    assert v1.step_overhead_s < 1e-3 and v0.step_overhead_s is None       # V0: the GPU entry's 1.5 ms
    # vLLM's default capture sizes: 1, 2, 4, every 8 to 256, every 16 to 512 (51 sizes)
    assert V1_CUDA_GRAPH_SIZES[:5] == (1, 2, 4, 8, 16) and V1_CUDA_GRAPH_SIZES[-2:] == (496, 512)
    assert len(V1_CUDA_GRAPH_SIZES) == 51 and 264 not in V1_CUDA_GRAPH_SIZES and 272 in V1_CUDA_GRAPH_SIZES


def test_chunked_prefill_defaults_to_the_engines():
    assert SimConfig().engine == "vllm-v1" and SimConfig().chunked
    assert not SimConfig(engine="vllm-v0").chunked
    assert not SimConfig(chunked_prefill=False).chunked
    assert SimConfig(engine="vllm-v0", chunked_prefill=True).token_budget == 8192


def test_unknown_engine_and_link_are_one_line_errors():
    with pytest.raises(ConfigError, match="engine must be one of vllm-v1, vllm-v0, got 'tgi'"):
        SimConfig(engine="tgi")
    with pytest.raises(ConfigError, match="link must be one of nvlink3, .*, got 'nvlink9'"):
        SimConfig(link="nvlink9")
    assert set(ENGINES) == {"vllm-v1", "vllm-v0"}
