"""Data-parallel attention + expert parallelism (simulator/cluster/dp_ep.py): lockstep ranks, vLLM's spreading
rule, sharded experts, all-to-all pricing, invariants, and the one-line errors."""
from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator.api import simulate
from simulator.assembly import build_parts
from simulator.cluster.dp_ep import Lockstep, all_to_all_seconds
from simulator.config import ConfigError, SimConfig
from simulator.step import StepShape
from workloads.spec import RequestSpec

MOE = dict(model="qwen3-30b-a3b", gpu="h200")


def spec(i, arrival, prompt, output):
    return RequestSpec(request_id=i, arrival_s=arrival, prompt_tokens=prompt, output_tokens=output)


def test_first_step_takes_the_slowest_rank_plus_the_all_to_all():
    """Two requests at t=0: the first goes to rank 0 (all scores 0, lowest rank), which then scores 4 (one
    waiting), so the second goes to rank 1. Step 1 = the slower prefill + dispatch/combine of the longer one."""
    lockstep = Lockstep(SimConfig(**MOE, dp=2, expert_parallel=True))
    results = lockstep.run([spec(0, 0.0, 900, 3), spec(1, 0.0, 100, 3)])
    cost = lockstep.engines[0].parts.cost_model
    slow = cost.step_cost(StepShape(((900, 0),), 0, 0, 1, ())).seconds
    expected = slow + all_to_all_seconds(lockstep.link, lockstep.model, 900, 2)
    steps = [r.steps for r in results]
    assert len(steps[0]) == len(steps[1]) == 3
    assert steps[0].duration_s.iloc[0] == pytest.approx(expected, rel=1e-12)
    assert steps[1].duration_s.iloc[0] == pytest.approx(expected, rel=1e-12)
    assert all_to_all_seconds(lockstep.link, lockstep.model, 900, 2) > 0
    assert lockstep.dummy_steps == [0, 0]


def test_experts_are_sharded_so_kv_capacity_grows():
    one = build_parts(SimConfig(**MOE))
    lockstep = Lockstep(SimConfig(**MOE, dp=4, expert_parallel=True))
    rank = lockstep.engines[0].parts
    assert rank.meta["model"]["num_experts"] == 128 // 4
    assert rank.meta["memory"]["weight_bytes"] < one.meta["memory"]["weight_bytes"]
    assert rank.meta["kv_capacity_tokens"] > one.meta["kv_capacity_tokens"]


def test_idle_rank_runs_dummy_steps_in_lockstep():
    """One request: rank 1 has nothing, yet runs every step with rank 0 (a dummy)."""
    lockstep = Lockstep(SimConfig(**MOE, dp=2, expert_parallel=True))
    lockstep.run([spec(0, 0.0, 50, 5)])
    assert lockstep.dummy_steps == [0, 5]
    assert len(lockstep.step_starts) == 5


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.floats(0, 0.5), st.integers(1, 3000), st.integers(1, 40)), min_size=1, max_size=25),
       st.sampled_from([2, 4]))
def test_lockstep_and_per_rank_invariants(reqs, dp):
    lockstep = Lockstep(SimConfig(**MOE, dp=dp, expert_parallel=True, max_num_batched_tokens=2048))
    specs = [spec(i, a, p, o) for i, (a, p, o) in enumerate(reqs)]
    results = lockstep.run(specs)
    starts = lockstep.step_starts
    for rank, (engine, result) in enumerate(zip(lockstep.engines, results)):
        real = result.steps.start_s.tolist()
        assert set(real) <= set(starts)                    # a rank's steps start only at lockstep starts
        assert len(real) + lockstep.dummy_steps[rank] == len(starts)
        assert engine.policy.kv_used_tokens == 0 and not engine.policy.has_work()
    ids = pd.concat([r.requests for r in results]).request_id
    assert sorted(ids) == list(range(len(specs)))          # every request on one rank, once
    statuses = pd.concat([r.requests for r in results]).status
    assert set(statuses) <= {"finished", "rejected"}
    # all ranks share every step: a step's end is the next step's start or later, identical for every rank
    ends = {}
    for result in results:
        for s, d in zip(result.steps.start_s, result.steps.duration_s):
            assert ends.setdefault(s, s + d) == s + d


def test_one_rank_equals_the_plain_run():
    cfg = SimConfig(**MOE, num_requests=60, rate=8.0, fast_path=False)
    plain = simulate(cfg)
    lockstep = Lockstep(cfg)
    from simulator.assembly import workload
    (rank,) = lockstep.run(workload(cfg))
    cols = ["request_id", "status", "first_token_s", "finish_s", "ttft_s", "tpot_s"]
    pd.testing.assert_frame_equal(rank.requests[cols].sort_values("request_id").reset_index(drop=True),
                                  plain.requests[cols].sort_values("request_id").reset_index(drop=True))
    pd.testing.assert_frame_equal(rank.steps[["start_s", "duration_s"]], plain.steps[["start_s", "duration_s"]])


def test_dp_without_ep_is_independent_replicas():
    dense = dict(num_requests=40, rate=10.0)
    dp = simulate(SimConfig(**dense, dp=2))
    replicas = simulate(SimConfig(**dense, replicas=2))
    pd.testing.assert_frame_equal(dp.requests, replicas.requests)


@pytest.mark.parametrize("kwargs, message", [
    (dict(model="llama-3.1-8b", dp=2, expert_parallel=True),
     "expert-parallel needs an MoE model; llama-3.1-8b is dense (use --dp N without --expert-parallel for N "
     "independent replicas)"),
    (dict(**MOE, dp=3, expert_parallel=True), "dp 3 must divide qwen3-30b-a3b's 128 experts per MoE layer"),
    (dict(model="mixtral-8x7b", gpu="h200", dp=8, expert_parallel=True),
     "dp 8 leaves 1 experts per rank, fewer than the 2 each token picks (not modelled)"),
])
def test_bad_combinations_are_one_line_errors(kwargs, message):
    with pytest.raises(ConfigError) as err:
        simulate(SimConfig(num_requests=2, **kwargs))
    assert str(err.value) == message


def test_config_errors():
    with pytest.raises(ConfigError, match="give --dp 2 or more"):
        SimConfig(**MOE, expert_parallel=True)
    with pytest.raises(ConfigError, match="not several"):
        SimConfig(**MOE, dp=2, replicas=2)
