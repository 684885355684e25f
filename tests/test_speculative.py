"""Speculative decoding: the acceptance model, verify steps committed as vLLM V1 commits them, their pricing.

Engine traces use the conftest's round-number cost model (10 ms a step + 0.1 ms a prefill token; verify tokens
are not prefill tokens there), so every time below is worked out by hand in the comments.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_engine, specs_from
from simulator.api import build_parts, simulate, workload
from simulator.batch import Batch
from simulator.config import ConfigError, SimConfig
from simulator.cost import CostModel, StepShape
from simulator.cost.speculative import SpeculativeCostModel, eagle_head, make_drafter
from simulator.engine import Engine
from simulator.kv_cache import KV_CACHE_MANAGERS
from simulator.kv_cache.paged import PagedKVCache
from simulator.memory import plan_memory
from simulator.models import resolve_model
from simulator.request import Request
from simulator.speculative import Speculation, uniform
from workloads.spec import RequestSpec
from hardware.gpus import resolve_gpu

FRAMES = ("requests", "steps", "kv", "itl")


def assert_identical(a, b) -> None:
    for name in FRAMES:
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), check_exact=True, obj=name)


# ---------------------------------------------------------------- the acceptance model
def test_acceptance_rate_is_geometric_per_position():
    spec = Speculation.from_rate(3, 0.5)
    assert spec.position_rates == (0.5, 0.25, 0.125)
    assert spec.expected_accepted() == 0.875
    # E[X^2] = 1*0.5 + 3*0.25 + 5*0.125 = 1.875; Var = 1.875 - 0.875^2
    assert spec.variance_accepted() == pytest.approx(1.875 - 0.875 ** 2)


@pytest.mark.parametrize("rates", [(0.8, 0.6, 0.4), (0.9, 0.81, 0.729, 0.6561, 0.59049), (1.0, 0.0), (0.3,)])
def test_accepted_mean_converges_to_the_expectation(rates):
    # Law of large numbers: the mean of n independent draws lies within 5 standard errors of the expectation
    # (a false alarm once in ~1.7 million runs; the draws are a fixed hash, so the test is deterministic).
    spec, n = Speculation(rates, seed=7), 40_000
    draws = np.array([spec.accepted(r, s, len(rates)) for r in range(400) for s in range(n // 400)])
    tolerance = 5 * math.sqrt(spec.variance_accepted() / n) + 1e-12
    assert abs(draws.mean() - spec.expected_accepted()) <= tolerance
    for i, p in enumerate(rates, start=1):            # and each position's rate: P(accepted >= i) = p_i
        assert abs((draws >= i).mean() - p) <= 5 * math.sqrt(p * (1 - p) / n) + 1e-12


def test_draws_depend_only_on_seed_request_and_step():
    spec = Speculation((0.7, 0.5, 0.3), seed=3)
    assert spec.accepted(5, 9, 3) == spec.accepted(5, 9, 3)
    assert uniform(3, 5, 9) == uniform(3, 5, 9)
    assert len({uniform(3, r, s) for r in range(50) for s in range(50)}) == 2500
    assert uniform(3, 5, 9) != uniform(4, 5, 9)
    assert all(0.0 <= uniform(1, r, 0) < 1.0 for r in range(1000))
    assert spec.accepted(5, 9, 0) == 0                  # no drafts, none accepted


def test_drafts_never_pass_the_requests_end():
    spec = Speculation.from_rate(4, 0.5)
    assert [spec.num_drafts(r) for r in (1, 2, 3, 5, 100)] == [0, 1, 2, 4, 4]


# ---------------------------------------------------------------- config
@pytest.mark.parametrize("changes, message", [
    ({"speculative_tokens": 3}, "speculative decoding needs one drafter: --draft ngram|eagle or --draft-model NAME"),
    ({"speculative_tokens": 3, "draft": "ngram", "draft_model": "llama-3.2-1b", "acceptance_rate": 0.5},
     "speculative decoding needs one drafter"),
    ({"speculative_tokens": 3, "draft": "medusa", "acceptance_rate": 0.5},
     "draft must be one of ngram, eagle, got 'medusa'"),
    ({"speculative_tokens": 3, "draft": "eagle"}, "speculative decoding needs one acceptance model"),
    ({"speculative_tokens": 3, "draft": "eagle", "acceptance_rate": 1.5},
     "acceptance-rate must lie in [0, 1], got 1.5"),
    ({"speculative_tokens": 2, "draft": "eagle", "acceptance_profile": "0.8,0.6,0.4"},
     "acceptance-profile gives 3 rates for 2 speculative tokens"),
    ({"speculative_tokens": 2, "draft": "eagle", "acceptance_profile": "0.6,0.8"},
     "acceptance-profile must not increase with the position"),
    ({"speculative_tokens": 2, "draft": "eagle", "acceptance_profile": "0.6,x"},
     "acceptance-profile must be comma-separated numbers, got '0.6,x'"),
    ({"speculative_tokens": -1}, "speculative-tokens must be a non-negative integer, got -1"),
    ({"draft": "medusa"}, "draft must be one of ngram, eagle, got 'medusa'"),
    ({"speculative_tokens": 2, "draft": "ngram", "acceptance_rate": 0.5, "batching": "static"},
     "speculative decoding needs --batching continuous, got 'static'"),
])
def test_bad_speculation_options_are_one_line_errors(changes, message):
    with pytest.raises(ConfigError) as err:
        SimConfig(**changes)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_config_builds_the_acceptance_model():
    cfg = SimConfig(speculative_tokens=2, draft="ngram", acceptance_rate=0.5, seed=4)
    assert cfg.speculation == Speculation((0.5, 0.25), 4)
    cfg = SimConfig(speculative_tokens=3, draft="eagle", acceptance_profile="0.8,0.6,0.4")
    assert cfg.speculation == Speculation((0.8, 0.6, 0.4), 0)
    assert SimConfig().speculation is None
    # with K = 0 the drafter and acceptance options are ignored, so a comparison can sweep K
    assert SimConfig(speculative_tokens=0, draft="ngram", acceptance_rate=0.5).speculation is None


# ---------------------------------------------------------------- hand-checked traces
def spec_engine(specs, speculation, **params):
    return make_engine(specs, speculation=speculation, **params)


def test_acceptance_one_gives_k_plus_one_tokens_per_step():
    # One request, prompt 100, 10 outputs, K = 3, every draft accepted.
    # 0: prefill 100 -> 0.020 (token 1). 0.020: verify 1 + 3 drafts, all kept, + bonus -> 0.030 (tokens 2-5).
    # 0.030: verify 1 + 3 -> 0.040 (tokens 6-9). 0.040: one token left owed: no drafts, a plain decode -> 0.050.
    engine = spec_engine(specs_from([(0.0, 100, 10)]), Speculation.from_rate(3, 1.0))
    res = engine.run()
    row = res.requests.iloc[0]
    assert (round(row.first_token_s, 9), round(row.finish_s, 9)) == (0.02, 0.05)
    assert row.tpot_s == pytest.approx(0.030 / 9)              # vLLM's TPOT: (finish - first) / (outputs - 1)
    assert list(res.steps.num_decode_tokens) == [0, 4, 4, 1]   # verify steps compute K + 1 tokens
    assert np.allclose(res.itl.itl_s, 0.01) and res.itl["count"].sum() == 3   # one gap per step, not per token
    assert res.summary()["spec_verify_steps"] == 2
    assert res.summary()["spec_mean_accepted_tokens"] == 3.0 and res.summary()["spec_acceptance_rate"] == 1.0
    assert engine.policy.kv_used_tokens == 0 and engine.num_runs == 0


def test_acceptance_zero_keeps_the_plain_token_timeline():
    # Nothing accepted: every verify step emits one token (the target's correction), as a plain decode does. With
    # the round cost model (verify tokens are not prefill tokens) every timestamp equals the plain run's.
    rows = [(0.0, 100, 12), (0.005, 40, 30), (0.2, 300, 5)]
    plain = make_engine(specs_from(rows), chunked_prefill=True, max_num_batched_tokens=128).run()
    spec = spec_engine(specs_from(rows), Speculation((0.0, 0.0)), chunked_prefill=True,
                       max_num_batched_tokens=128).run()
    pd.testing.assert_frame_equal(plain.requests, spec.requests, check_exact=True)
    assert spec.summary()["spec_mean_accepted_tokens"] == 0.0
    assert (spec.steps.num_decode_tokens >= plain.steps.num_decode_tokens).all()


def test_kv_grows_by_accepted_tokens_plus_one():
    # After every step the request's KV holds its prompt and every output token but the last sampled one:
    # a verify step of d drafts computes d + 1 tokens and keeps accepted + 1 of them.
    spec = Speculation((0.9, 0.6, 0.3, 0.1), seed=11)
    seen = []

    def check(now_s, done, total):
        for req in engine.policy.running:
            assert engine.policy.kv_used_tokens == req.num_computed_tokens == req.num_tokens - 1
            seen.append((req.num_verify_steps, req.num_output_tokens))
    engine = spec_engine(specs_from([(0.0, 64, 200)]), spec)
    engine.progress = check
    engine.run()
    # each verify step's new tokens are the acceptance draw + 1 (drafts capped by what the request still owes)
    for (step0, out0), (step1, out1) in zip(seen, seen[1:]):
        drafts = spec.num_drafts(200 - out0)
        assert step1 == step0 + (drafts > 0)
        assert out1 - out0 == 1 + (spec.accepted(0, step0, drafts) if drafts else 0)
    assert len(seen) < 200 - 1                                   # fewer steps than tokens


def test_k_zero_reproduces_the_plain_run_bit_for_bit():
    # A speculation of zero tokens takes the speculative code path (no decode runs: step by step) and must
    # give exactly the plain run, which itself runs on the decode-run fast path.
    cfg = SimConfig(num_requests=150, rate=20.0, seed=2)
    plain_parts, spec_parts = build_parts(cfg), build_parts(cfg)
    spec_parts.policy.params = dataclasses.replace(spec_parts.policy.params, speculation=Speculation(()))
    specs = workload(cfg)
    plain, spec_engine_ = Engine(plain_parts, specs), Engine(spec_parts, specs)
    spec = spec_engine_.run()
    assert_identical(plain.run(), spec)
    assert plain.num_runs > 0 and spec_engine_.num_runs == 0
    assert SimConfig(speculative_tokens=0) == SimConfig()


# ---------------------------------------------------------------- invariants and the fast path
# (arrival, prompt, output, shared prefix id or -1, shared prefix tokens)
workloads = st.lists(st.tuples(st.floats(0, 0.3, allow_nan=False), st.integers(1, 300), st.integers(1, 60),
                               st.integers(-1, 2), st.integers(1, 300)), min_size=1, max_size=20)
profiles = st.lists(st.floats(0, 1), min_size=1, max_size=5).map(lambda r: tuple(sorted(r, reverse=True)))


def shared_specs(rows) -> list[RequestSpec]:
    return [RequestSpec(i, a, p, o, ((pid, min(n, p)),) if pid >= 0 else ()) for i, (a, p, o, pid, n) in
            enumerate(rows)]


@pytest.mark.parametrize("kv, prefix", [(kv, False) for kv in sorted(KV_CACHE_MANAGERS)] + [("paged", True)])
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=workloads, rates=profiles, chunked=st.booleans(), swap=st.booleans(), seed=st.integers(0, 9))
def test_invariants_with_speculation(kv, prefix, rows, rates, chunked, swap, seed):
    spec = Speculation(rates, seed)
    params = dict(kv=kv, capacity_tokens=1024, max_model_len=512, max_num_batched_tokens=512, max_num_seqs=8,
                  kv_bytes_per_token=1.0, swap_space_bytes=300, chunked_prefill=chunked,
                  preemption="swap" if swap else "recompute", prefix_caching=prefix)

    def check(now_s, done, total):
        policy = fast.policy
        usage = policy.kv.usage()
        stored = policy.kv_used_tokens - getattr(policy.kv, "shared_tokens", 0)
        assert 0 <= stored <= usage.allocated_tokens <= usage.capacity_tokens
        assert policy.kv_used_tokens == sum(r.num_computed_tokens for r in policy.running)
        assert all(r.num_uncomputed_tokens == 1 for r in policy.running if r.num_output_tokens
                   and r.num_computed_tokens)                  # rejected drafts' slots were given back
        if isinstance(policy.kv, PagedKVCache) and not prefix:     # with prefix caching blocks are shared
            owned = [b for table in policy.kv.block_tables.values() for b in table]
            assert len(owned) == len(set(owned))
    fast = spec_engine(shared_specs(rows), spec, **params)
    fast.progress = check
    res = fast.run()
    slow = make_engine(shared_specs(rows), speculation=spec, **params)
    slow.fast_path = False
    assert_identical(res, slow.run())                       # the engine's commit-ahead path changes nothing
    req = res.requests
    assert len(req) == len(rows) and set(req.status) <= {"finished", "rejected"}
    assert all(r.num_output_tokens == r.output_tokens for r in fast.requests if r.finish_s is not None)
    assert fast.policy.kv_used_tokens == 0 and fast.policy.kv.usage().allocated_tokens == 0
    assert fast.num_runs == 0
    stats = fast.policy.spec_stats
    assert 0 <= stats.accepted_tokens <= stats.draft_tokens <= len(rates) * stats.verify_steps
    if len(res.steps):
        assert (res.steps.num_prefill_tokens + res.steps.num_decode_tokens <= 512).all()
    # every token computed is a prompt or output token (not served from the cache), a recomputed one, or a
    # rejected draft
    done = req[req.status == "finished"]
    computed = res.steps.num_prefill_tokens.sum() + res.steps.num_decode_tokens.sum()
    assert computed == ((done.prompt_tokens + done.output_tokens - 1 - done.cached_tokens
                         + done.recomputed_tokens).sum() + stats.draft_tokens - stats.accepted_tokens)


# ---------------------------------------------------------------- pricing
def decode_request(prompt: int, outputs_done: int, total_outputs: int) -> Request:
    req = Request(RequestSpec(0, 0.0, prompt, total_outputs))
    req.num_output_tokens = outputs_done
    req.num_computed_tokens = prompt + outputs_done - 1
    return req


def test_verify_chunks_are_their_own_shape():
    req, plain = decode_request(100, 5, 50), decode_request(200, 3, 50)
    fields = Batch([req, plain], [4, 1]).shape_fields()
    assert fields == ((), 1, 203, 5, ((4, 104),))
    shape = StepShape(*fields)
    assert shape.num_tokens == 5 and shape.num_seqs == 2 and shape.num_sampling_seqs == 2


@pytest.mark.parametrize("attention", ["flash", "varlen"])
def test_verify_costs_more_than_a_decode_and_replays_a_graph(attention):
    cm = build_parts(SimConfig(attention=attention)).cost_model      # the default engine's kernels otherwise
    decode = cm.step_cost(StepShape((), 8, 8 * 1024, 8))
    verify = cm.step_cost(StepShape((), 0, 0, 8 * 4, ((4, 1023),) * 8))
    assert cm.graphed(StepShape((), 0, 0, 32, ((4, 1023),) * 8))
    # memory-bound: four tokens a sequence cost far less than four decode steps
    assert decode.seconds < verify.seconds < 1.5 * decode.seconds
    assert verify.flops > 3.5 * decode.flops
    # the verify chunks' attention reads the same KV as the decodes'
    assert verify.family_seconds("attention") > 0.9 * decode.family_seconds("attention") > 0


def test_drafters_add_their_passes():
    target = resolve_model("llama-3.1-8b", None)
    gpu = resolve_gpu("h100-sxm", None)
    cm = CostModel(target, gpu)
    head = CostModel(eagle_head(target), gpu, step_overhead_s=0.0)
    spec = SpeculativeCostModel(cm, head, 3)
    shape = StepShape((), 0, 0, 32, ((4, 1023),) * 8)
    passes = spec.draft_costs(shape)
    # the first pass over the step's 32 tokens (8 sampling), then 2 one-token decodes of 8 sequences
    assert len(passes) == 3
    assert passes[0] == head.step_cost(StepShape((), 0, 0, 8, ((4, 1023),) * 8))
    assert passes[1] == head.step_cost(StepShape((), 8, 8 * 1027 + 8, 8))
    assert spec.step_cost(shape).seconds == pytest.approx(cm.step_cost(shape).seconds
                                                          + sum(p.seconds for p in passes))
    assert eagle_head(target).num_layers == 1
    assert make_drafter("ngram", None, target).model is None
    assert make_drafter(None, "llama-3.2-1b", target).model.name == "llama-3.2-1b"


def test_a_draft_model_takes_memory_and_ngram_none():
    model, gpu = resolve_model("llama-3.1-8b", None), resolve_gpu("h100-sxm", None)
    cfg = SimConfig()
    base = plan_memory(cfg, model, gpu, 1e9)
    draft = make_drafter(None, "llama-3.2-1b", model)
    with_draft = plan_memory(cfg, model, gpu, 1e9, draft)
    assert with_draft.weight_bytes == base.weight_bytes + draft.model.weight_bytes("bf16")
    assert with_draft.kv_bytes_per_token == base.kv_bytes_per_token + draft.model.kv_bytes_per_token("bf16")
    assert with_draft.capacity_tokens < base.capacity_tokens
    assert plan_memory(cfg, model, gpu, 1e9, make_drafter("ngram", None, model)) == base
    eagle = make_drafter("eagle", None, model)                 # one layer, embedding and LM head shared
    assert eagle.weight_bytes("bf16") < 0.05 * model.weight_bytes("bf16")


def test_speculation_speeds_up_a_lone_request_and_slows_a_full_batch():
    # The roofline trade-off: at batch 1 a verify step of 5 tokens costs about a decode step and emits ~2.8; with
    # 256 sequences the verify GEMMs of 1280 tokens are compute-bound and the 1B draft model's 4 passes add up.
    def tpot(concurrency, k):
        extra = dict(speculative_tokens=k, draft_model="llama-3.2-1b", acceptance_rate=0.7) if k else {}
        cfg = SimConfig(num_requests=concurrency, rate=1e6, prompt_len="512", output_len="256",
                        max_num_seqs=256, **extra)
        return simulate(cfg).summary()["tpot_mean_s"]
    assert tpot(1, 0) / tpot(1, 4) > 1.3
    assert tpot(256, 0) / tpot(256, 4) < 1.0


def test_a_draft_that_does_not_split_runs_on_one_gpu():
    target = resolve_model("llama-3-70b", None)
    assert make_drafter(None, "qwen2.5-0.5b", target, tp=4).tp == 1       # 14 heads do not split four ways
    assert make_drafter(None, "llama-3.2-1b", target, tp=4).tp == 4
    assert make_drafter("eagle", None, target, tp=4).tp == 4


def test_bad_draft_models_are_one_line_errors(tmp_path):
    from typer.testing import CliRunner
    import cli
    base = ["run", "--num-requests", "5", "--speculative-tokens", "3", "--acceptance-rate", "0.5",
            "--out", str(tmp_path / "o")]
    cases = ((["--draft-model", "llama-9b"], "error: draft-model: unknown model 'llama-9b'"),
             (["--draft-model", "deepseek-v3"], "error: llama-3.1-8b (bf16) with its deepseek-v3 drafter needs"))
    for args, expected in cases:
        out = CliRunner().invoke(cli.app, base + args)
        lines = [line for line in out.output.splitlines() if line.strip()]
        assert out.exit_code != 0 and len(lines) == 1 and lines[0].startswith(expected), out.output
        assert not (tmp_path / "o").exists()
