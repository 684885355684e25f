"""Replicas behind a router: hand-checked routing traces, equivalences with plain runs, per-replica invariants."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_parts, specs_from
from simulator.api import simulate
from simulator.cluster import simulate_cluster
from simulator.cluster.pools import parse_groups
from simulator.cluster.result import merge_runs
from simulator.cluster.router import ROUTERS, block_hash, make_router
from simulator.cluster.sim import Replica, run_cluster
from simulator.config import ConfigError, SimConfig
from simulator.kv_cache.prefix import content_block_hashes
from workloads.spec import RequestSpec


def route(specs, router, capacities=(100_000, 100_000), delay_s=0.0, fast_path=True, **params):
    """Run a hand-sized cluster (RoundCostModel replicas); return (replica of each request id, runs)."""
    replicas = [Replica(i, "g", make_parts(capacity_tokens=c, fast_path=fast_path, **params))
                for i, c in enumerate(capacities)]
    runs = run_cluster(replicas, make_router(router, len(replicas)), specs, delay_s)
    where = {int(rid): run.index for run in runs for rid in run.result.requests.request_id}
    return [where[s.request_id] for s in specs], runs


@pytest.mark.parametrize("fast_path", [True, False])
def test_least_outstanding_trace(fast_path):
    # Round cost model: 10 ms a step + 0.1 ms per prefill token; waiting prompts go first (prefill-only steps).
    # r0: A prefill 0-20 ms, C prefill 20-40 (C done at 40), F prefill 40-60, A decodes 60-80 (done at 80).
    # r1: B prefill 5-25, B decode 25-35 (done at 35); D prefill 35-55, E prefill 55-75.
    # A: tie 0/0 -> r0. B: 1/0 -> r1. C: 1/1 tie -> r0. D (30 ms): 2/1 -> r1. E (36 ms): B answered at 35,
    # so 2/1 -> r1. F (40 ms): C finishes at exactly 40 ms, not before: 2/2 tie -> r0.
    specs = specs_from([(0.0, 100, 3), (0.005, 100, 2), (0.010, 100, 1), (0.030, 100, 1), (0.036, 100, 1),
                        (0.040, 100, 1)])
    where, runs = route(specs, "least-outstanding", fast_path=fast_path)
    assert where == [0, 1, 0, 1, 1, 0]
    r0 = runs[0].result.requests.set_index("request_id")
    assert r0.finish_s.loc[[0, 2, 5]].tolist() == pytest.approx([0.080, 0.040, 0.060])


@pytest.mark.parametrize("fast_path", [True, False])
def test_least_kv_trace(fast_path):
    # Capacities 1600 and 3200 tokens; a report is the KV stored once the step that started last is done.
    # A: nothing reported, tie -> r0 (r0 reports 100 at 0 ms). B (5 ms): 100/1600 vs 0 -> r1 (r1 reports 300).
    # C (25 ms): r0's decode step from 20 ms stores 101 -> 0.063 vs 300/3200 = 0.094 -> r0.
    # D (46 ms): r0's step from 30 ms (A decode + C prefill) stores 202 -> 0.126; r1's decode from 45 ms stores
    # 301 -> 0.094 -> r1.
    specs = specs_from([(0.0, 100, 4), (0.005, 300, 2), (0.025, 100, 1), (0.046, 50, 1)])
    where, _ = route(specs, "least-kv", capacities=(1600, 3200), fast_path=fast_path)
    assert where == [0, 1, 0, 1]


def test_least_kv_ties_go_to_fewer_outstanding_then_lowest_index():
    # All arrive at once: nothing is reported yet, so KV use ties at 0; outstanding spreads them.
    specs = specs_from([(0.0, 100, 2)] * 5)
    where, _ = route(specs, "least-kv", capacities=(1000, 1000, 1000))
    assert where == [0, 1, 2, 0, 1]


def test_reporting_delay_hides_recent_load():
    # Same as the least-kv trace, but reports take 30 ms: at C (25 ms) the router has seen nothing yet from
    # either replica; both have one outstanding request, so the tie goes to r0; at D (46 ms) it sees r0's report
    # from 0 ms (100/1600) and r1's from 5 ms (300/3200 = 0.094 > 0.0625) -> r0.
    specs = specs_from([(0.0, 100, 4), (0.005, 300, 2), (0.025, 100, 1), (0.046, 50, 1)])
    where, _ = route(specs, "least-kv", capacities=(1600, 3200), delay_s=0.030)
    assert where == [0, 1, 0, 0]


def test_round_robin_trace():
    specs = specs_from([(0.001 * i, 50, 2) for i in range(7)])
    where, _ = route(specs, "round-robin", capacities=(10_000,) * 3)
    assert where == [0, 1, 2, 0, 1, 2, 0]


def test_random_router_is_seeded_and_uniform_draws():
    specs = specs_from([(0.001 * i, 50, 2) for i in range(20)])
    where, _ = route(specs, "random", capacities=(10_000,) * 3)
    expected = np.random.default_rng([0, 0x5EED]).integers(0, 3, size=4096)[:20].tolist()
    assert where == expected


def test_prefix_affinity_trace():
    # Requests sharing their first 16-token block land together (its prefix-caching hash, mixed, mod N); a
    # request whose content covers no full block goes to the least-outstanding replica.
    ids = [7, 7, 1234, 7, 1234]
    specs = [RequestSpec(i, 0.001 * i, 64, 2, ((b, 20), (100 + i, 44))) for i, b in enumerate(ids)]
    specs.append(RequestSpec(5, 0.0055, 64, 2, ((7, 8),)))
    where, _ = route(specs, "prefix-affinity", capacities=(10_000,) * 4)
    assert where[:5] == [block_hash(content_block_hashes(((b, 16),), 16, 16)[0]) % 4 for b in ids]
    assert where[0] == where[1] == where[3] and where[2] == where[4]
    counts = [where[:5].count(r) for r in range(4)]
    assert where[5] == min(range(4), key=lambda r: (counts[r], r))


# ---- equivalences ----
SMALL = SimConfig(num_requests=150, rate=12.0, seed=3, prompt_len="uniform:16:1024", output_len="uniform:1:96")


@pytest.mark.parametrize("router", ["round-robin", "least-outstanding", "least-kv"])
@pytest.mark.parametrize("batching", ["continuous", "static", "dynamic"])
@pytest.mark.parametrize("fast_path", [True, False])
def test_one_replica_cluster_equals_plain_run(router, batching, fast_path):
    cfg = SMALL.replace(batching=batching, fast_path=fast_path)
    plain = simulate(cfg)
    cluster = simulate_cluster(cfg.replace(router=router), _specs(cfg))
    pd.testing.assert_frame_equal(cluster.requests.drop(columns="replica"), plain.requests, check_exact=True)
    pd.testing.assert_frame_equal(cluster.steps.drop(columns="replica"), plain.steps, check_exact=True)
    pd.testing.assert_frame_equal(cluster.kv.drop(columns="replica"), plain.kv, check_exact=True)
    a, b = cluster.summary(), plain.summary()
    same = lambda x, y: x == y or (x != x and y != y)      # noqa: E731  (NaN equals NaN here)
    assert set(b) <= set(a) and all(same(a[k], b[k]) for k in b), [k for k in b if not same(a[k], b[k])]
    assert a["outstanding_jain_index"] == 1.0


def _specs(cfg):
    from simulator.api import workload
    return workload(cfg)


def test_round_robin_at_n_times_the_rate_gives_each_replica_the_1x_stream():
    base = SimConfig(num_requests=200, rate=4.0, arrival="constant", prompt_len="512", output_len="64")
    one = simulate(base)
    n = 4
    cluster = simulate(base.replace(num_requests=200 * n, rate=4.0 * n, replicas=n))
    for r in range(n):
        mine = cluster.requests[cluster.requests.replica == r].sort_values("arrival_s")
        assert len(mine) == 200
        gaps = np.diff(mine.arrival_s.to_numpy())
        np.testing.assert_allclose(gaps, 0.25, rtol=1e-9)
        # the same stream, shifted by r/(n x rate): the same latencies
        np.testing.assert_allclose(mine.ttft_s.to_numpy(), one.requests.ttft_s.to_numpy(), rtol=1e-9)
        np.testing.assert_allclose(mine.e2e_s.to_numpy(), one.requests.e2e_s.to_numpy(), rtol=1e-9)


@pytest.mark.parametrize("router", ["least-kv", "least-outstanding", "random"])
def test_fast_path_on_and_off_give_identical_replicas(router):
    cfg = SimConfig(num_requests=400, rate=30.0, replicas=3, router=router, router_delay_s=0.01, seed=1)
    on, off = simulate(cfg), simulate(cfg.replace(fast_path=False))
    for name in ("requests", "steps", "kv"):
        pd.testing.assert_frame_equal(getattr(on, name), getattr(off, name), check_exact=True)
    pd.testing.assert_frame_equal(on.replicas, off.replicas, check_exact=True)


def test_side_by_side_equals_one_by_one_for_round_robin():
    # Round-robin reads no load, so replicas run one by one; driving them side by side must not change a bit.
    specs = specs_from([(0.004 * i, 40 + 13 * (i % 7), 1 + i % 9) for i in range(60)])

    class LoadedRoundRobin(type(make_router("round-robin", 3))):
        needs_load = True

    parts = [Replica(i, "g", make_parts(capacity_tokens=600)) for i in range(3)]
    alone = run_cluster(parts, make_router("round-robin", 3), specs)
    parts = [Replica(i, "g", make_parts(capacity_tokens=600)) for i in range(3)]
    together = run_cluster(parts, LoadedRoundRobin(3), specs)
    for a, b in zip(alone, together):
        for name in ("requests", "steps", "kv"):
            pd.testing.assert_frame_equal(getattr(a.result, name), getattr(b.result, name), check_exact=True)


# ---- replicas in worker processes ----
def _same_results(a, b):
    for name in ("requests", "steps", "kv", "itl", "replicas"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), check_exact=True)
    x, y = a.summary(), b.summary()
    same = lambda u, v: u == v or (u != u and v != v)      # noqa: E731  (NaN equals NaN here)
    assert x.keys() == y.keys() and all(same(x[k], y[k]) for k in x), [k for k in x if not same(x[k], y[k])]


@pytest.mark.parametrize("router", ["round-robin", "random"])
@pytest.mark.parametrize("summary_only", [False, True])
def test_workers_give_the_results_of_one_process(router, summary_only):
    cfg = SimConfig(num_requests=300, rate=40.0, replicas=5, router=router, summary_only=summary_only, seed=2,
                    prompt_len="uniform:16:2048", output_len="uniform:1:200")
    one = simulate(cfg.replace(workers=1))
    two = simulate(cfg.replace(workers=2))
    _same_results(one, two)
    assert one.replicas.num_requests.tolist() == two.replicas.num_requests.tolist() and one.replicas.num_requests.min() > 0


def test_workers_give_the_results_of_one_process_with_prefill_decode_pools():
    cfg = SimConfig(num_requests=120, rate=20.0, prefill_replicas=3, decode_replicas=2, seed=4)
    _same_results(simulate(cfg.replace(workers=1)), simulate(cfg.replace(workers=3)))


def test_worker_count_rules(monkeypatch):
    from simulator.cluster import parallel
    monkeypatch.setattr(parallel, "usable_cores", lambda: 8)
    monkeypatch.setattr(parallel, "can_fork", lambda: True)
    assert parallel.worker_count(None, 64, parallel.AUTO_MIN_REQUESTS) == 8       # auto: every core...
    assert parallel.worker_count(None, 3, 10**6) == 3                              # ...at most one per replica
    assert parallel.worker_count(None, 64, parallel.AUTO_MIN_REQUESTS - 1) == 1   # a small run stays here
    assert parallel.worker_count(4, 64, 10) == 4 and parallel.worker_count(1, 64, 10**6) == 1
    import threading
    release = threading.Event()
    other = threading.Thread(target=release.wait)
    other.start()
    try:                                   # another thread might hold a lock at the fork: auto stays here
        assert parallel.worker_count(None, 64, 10**6) == 1 and parallel.worker_count(4, 64, 10**6) == 4
    finally:
        release.set()
        other.join()
    monkeypatch.setattr(parallel, "can_fork", lambda: False)
    assert parallel.worker_count(4, 64, 10**6) == 1


def test_run_all_returns_in_task_order_and_reports_each_task():
    from simulator.cluster.parallel import run_all
    seen = []
    out = run_all(lambda i: i * i, [1, 5, 2, 9], 2, lambda i, r: seen.append((i, r)))
    assert out == [0, 1, 4, 9] and sorted(seen) == [(0, 0), (1, 1), (2, 4), (3, 9)]


def test_cluster_progress_counts_every_request():
    calls = []
    cfg = SimConfig(num_requests=200, rate=30.0, replicas=4, seed=1, workers=2)
    simulate(cfg, progress=lambda now, done, total: calls.append((done, total)))
    assert len(calls) == 4 and [t for _, t in calls] == [200] * 4
    assert [d for d, _ in calls] == sorted(d for d, _ in calls) and calls[-1][0] == 200


# ---- conversations: a follow-up turn stays on its first turn's replica ----
SESSIONS = SimConfig(num_requests=120, rate=3.0, sessions="multi-turn:turns=4,think=2", seed=5,
                     prompt_len="lognormal:mean=300,sigma=0.6", output_len="uniform:4:64")


def test_round_robin_places_conversations_and_their_turns_stay():
    # Hand-sized: conversations A (turns 0, 2) and B (turns 1, 3, 4); round-robin places the first turns only:
    # A -> replica 0, B -> replica 1, and every later turn follows its conversation.
    specs = [RequestSpec(0, 0.0, 50, 3), RequestSpec(1, 0.001, 50, 3), RequestSpec(2, 0.0, 60, 2, after=0, think_s=0.5),
             RequestSpec(3, 0.0, 60, 2, after=1, think_s=0.5), RequestSpec(4, 0.0, 70, 2, after=3, think_s=0.1)]
    where, runs = route(specs, "round-robin")
    assert where == [0, 1, 0, 1, 1]
    r1 = runs[1].result.requests.set_index("request_id")
    assert r1.arrival_s.loc[3] == pytest.approx(r1.finish_s.loc[1] + 0.5)      # the think time after turn 1
    assert r1.arrival_s.loc[4] == pytest.approx(r1.finish_s.loc[3] + 0.1)


@pytest.mark.parametrize("router", ["round-robin", "random"])
def test_conversations_on_replicas(router):
    specs = _specs(SESSIONS)
    res = simulate(SESSIONS.replace(replicas=3, router=router), requests=specs)
    req = res.requests.set_index("request_id")
    assert len(req) == len(specs) and (req.status == "finished").all()
    for s in specs:
        if s.after >= 0:                       # the same replica as the turn it follows, after it finished
            assert req.replica.loc[s.request_id] == req.replica.loc[s.after]
            assert req.arrival_s.loc[s.request_id] >= req.finish_s.loc[s.after] + s.think_s - 1e-12
    _same_results(res, simulate(SESSIONS.replace(replicas=3, router=router, workers=2), requests=specs))


def test_one_replica_cluster_with_conversations_equals_plain_run():
    plain = simulate(SESSIONS)
    cluster = simulate_cluster(SESSIONS, _specs(SESSIONS))
    pd.testing.assert_frame_equal(cluster.requests.drop(columns="replica"), plain.requests, check_exact=True)
    pd.testing.assert_frame_equal(cluster.steps.drop(columns="replica"), plain.steps, check_exact=True)


@pytest.mark.parametrize("changes, message", [
    ({"router": "least-outstanding"}, "follow-up turns (conversations) on replicas need a router that reads no load "
                                      "(round-robin or random: a conversation stays on its first turn's replica); "
                                      "router least-outstanding is not supported with them yet"),
    ({"sessions": None, "max_concurrency": 4}, "max-concurrency (a client limit over the whole cluster) is not "
                                               "supported with replicas yet"),
])
def test_cluster_session_errors(changes, message):
    with pytest.raises(ConfigError) as err:
        simulate(SESSIONS.replace(replicas=2, **changes))
    assert str(err.value) == message


# ---- invariants per replica ----
workloads = st.lists(st.tuples(st.floats(0, 0.3, allow_nan=False), st.integers(1, 400), st.integers(1, 40)),
                     min_size=1, max_size=30)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=workloads, router=st.sampled_from(sorted(ROUTERS)), n=st.integers(1, 4),
       delay=st.sampled_from([0.0, 0.02]), batching=st.sampled_from(["continuous", "static"]))
def test_invariants_per_replica(rows, router, n, delay, batching):
    specs = specs_from(rows)
    replicas = [Replica(i, "g", make_parts(batching=batching, capacity_tokens=512, max_model_len=480,
                                           max_num_batched_tokens=512, max_num_seqs=6, batch_size=3))
                for i in range(n)]
    policies = [r.parts.policy for r in replicas]
    runs = run_cluster(replicas, make_router(router, n), specs, delay)
    merged = merge_runs({}, runs)
    req = merged.requests
    assert len(req) == len(specs) and req.request_id.is_unique        # every request lands on one replica
    assert set(req.status) <= {"finished", "rejected"}
    for policy, run in zip(policies, runs):
        assert policy.kv_used_tokens == 0 and policy.kv.usage().allocated_tokens == 0
        kv = run.result.kv
        assert (kv.used_tokens <= kv.allocated_tokens).all() and (kv.allocated_tokens <= kv.capacity_tokens).all()
    assert merged.replicas.num_requests.sum() == len(specs)
    assert 1.0 / n - 1e-12 <= merged.summary()["outstanding_jain_index"] <= 1.0 + 1e-12


def test_an_idle_replica_waits_for_the_router_not_for_a_timer_at_its_horizon(monkeypatch):
    # Found by the test above: a replica with nothing to do until the next arrival (which the router has not
    # placed yet) slept until that time; advance() stops simpy there, but rounding can put simpy's stop one
    # float later, and the replica then woke at the arrival time over and over (a step counter stops it here;
    # it used to run until memory ran out). It must wait for the router instead, and every request finish.
    import simpy
    rows = [(0.17965840979728917, 341, 8), (0.01858062679217278, 13, 5), (0.08156122270602927, 155, 10),
            (0.2860386052743063, 215, 14), (0.11447572812339102, 113, 15)]
    replicas = [Replica(i, "g", make_parts(capacity_tokens=512, max_model_len=480, max_num_batched_tokens=512,
                                           max_num_seqs=6)) for i in range(3)]
    real_step, steps = simpy.Environment.step, []

    def counted(env):
        steps.append(1)
        if len(steps) > 100_000:
            raise RuntimeError("simpy steps without end")
        real_step(env)

    monkeypatch.setattr(simpy.Environment, "step", counted)
    merged = merge_runs({}, run_cluster(replicas, make_router("least-outstanding", 3), specs_from(rows), 0.02))
    assert (merged.requests.status == "finished").all() and len(merged.requests) == 5


# ---- pools and config ----
def test_pools_make_heterogeneous_replicas():
    groups = parse_groups({"groups": [{"name": "big", "count": 1, "gpu": "h100-sxm", "tp": 2},
                                      {"name": "small", "count": 2, "gpu": "a100-80gb"}]}, SMALL)
    assert [(g.name, g.count, g.config.gpu, g.config.tp) for g in groups] == [("big", 1, "h100-sxm", 2),
                                                                             ("small", 2, "a100-80gb", 1)]


@pytest.mark.parametrize("data, message", [
    ({"groups": [{"count": 2, "rate": 3}]}, "group 1: unknown key(s) rate; valid keys: name, count,"),
    ({"groups": [{"count": 0}]}, "group 1: count must be a positive integer, got 0"),
    ({"groups": []}, "expected a non-empty list 'groups' of replica groups"),
    ({"groups": [{"count": 1, "tp": 0}]}, "group 1 (group1): tp must be at least 1, got 0"),
])
def test_bad_pools_fail_with_one_line(data, message):
    with pytest.raises(ConfigError) as err:
        parse_groups(data, SMALL)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_cluster_config_errors():
    with pytest.raises(ConfigError, match="router must be one of round-robin, random, least-outstanding"):
        SimConfig(router="fastest")
    with pytest.raises(ConfigError, match="give replicas or pools, not both"):
        SimConfig(replicas=2, pools="pools.toml")
    with pytest.raises(ConfigError, match="replicas must be at least 1"):
        SimConfig(replicas=0)
    with pytest.raises(ConfigError, match="workers must be at least 1"):
        SimConfig(workers=0)


@pytest.mark.parametrize("value, expected", [("auto", None), ("3", 3), (" AUTO ", None)])
def test_workers_option_reads_a_number_or_auto(value, expected):
    from simulator.runs.options import OPTIONS_BY_FIELD
    assert OPTIONS_BY_FIELD["workers"].parse(value) == expected


def test_cli_bad_workers_is_one_line(tmp_path):
    from typer.testing import CliRunner
    import cli
    res = CliRunner().invoke(cli.app, ["run", "--replicas", "2", "--workers", "two", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and res.output.count("\n") == 1
    assert "expected a number of processes or auto, got 'two'" in res.output


# ---- command line ----
def test_cli_cluster_run_writes_replica_rows(tmp_path):
    from typer.testing import CliRunner
    import cli
    pools = tmp_path / "pools.toml"
    pools.write_text('[[groups]]\nname = "big"\ncount = 1\ntp = 2\n\n[[groups]]\nname = "small"\ncount = 2\n'
                     'max-num-seqs = 64\n')
    out = tmp_path / "out"
    res = CliRunner().invoke(cli.app, ["run", "--pools", str(pools), "--router", "least-outstanding",
                                       "--num-requests", "60", "--rate", "10", "--out", str(out), "--format", "json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["replicas"] == 3 and summary["completed"] == 60
    rows = pd.read_csv(out / "replicas.csv")
    assert rows.group.tolist() == ["big", "small", "small"] and rows.tp.tolist() == [2, 1, 1]
    assert rows.num_requests.sum() == 60
    assert set(pd.read_csv(out / "requests.csv").replica) == {0, 1, 2}


def test_cli_bad_pools_file_is_one_line(tmp_path):
    from typer.testing import CliRunner
    import cli
    pools = tmp_path / "pools.toml"
    pools.write_text('[[groups]]\ncount = 2\nrate = 5\n')
    out = tmp_path / "out"
    res = CliRunner().invoke(cli.app, ["run", "--pools", str(pools), "--num-requests", "10", "--out", str(out)])
    assert res.exit_code == 2 and not out.exists()
    assert res.output.startswith(f"error: {pools}: group 1: unknown key(s) rate; valid keys: name, count,")
    assert res.output.count("\n") == 1
