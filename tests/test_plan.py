"""servesim plan: replica search, early stops, probe reuse, bounds, prices, the plan against the exhaustive
search, executors (Ray against local), and the CLI."""
from __future__ import annotations

from functools import partial

import pandas as pd
import pytest
from typer.testing import CliRunner

from cli import app
from simulator import SimConfig, simulate
from simulator.api import build_parts, workload
from simulator.runs.bounds import WorkloadStats, bound_config
from simulator.runs.early_stop import SloVerdict
from simulator.runs.executors import ExecutorError, make_executor
from simulator.runs.plan import (PlanSpec, ProbeCache, ReplicaSearch, parse_prices, probe, run_plan,
                                 with_default_axes, workload_stats)
from simulator.runs.sweep import AxisError

SMALL = SimConfig(model="llama-3.1-8b", num_requests=150, prompt_len="uniform:64:1024", output_len="uniform:16:256",
                  slo_ttft_s=0.3, slo_tpot_s=0.02)
AXES = {"gpu": ("a100-80gb", "h100-sxm", "l40s"), "tp": (1, 2), "max_num_seqs": (16, 64)}
PLAN_COLUMNS = ["config", "status", "replicas", "gpus", "cost_per_hour", "ttft_p99_s", "tpot_p99_s", "e2e_p99_s"]
runner = CliRunner()


# ---- the replica search --------------------------------------------------------------------------------------
def _search(start: int, answer: int, limit: int = 64) -> tuple[int | None, list[int]]:
    search, probed = ReplicaSearch(start, limit), []
    while (n := search.next_n()) is not None:
        probed.append(n)
        search.tested[n] = n >= answer
    return search.answer(), probed


def test_replica_search_doubles_then_bisects_to_the_fewest_replicas():
    assert _search(1, 1) == (1, [1])
    assert _search(1, 5) == (5, [1, 2, 4, 8, 6, 5])
    assert _search(3, 3) == (3, [3])                        # a tight bound: one probe
    assert _search(3, 4) == (4, [3, 4])
    for answer in range(1, 40):
        assert _search(1, answer)[0] == answer and _search(min(answer, 7), answer)[0] == answer


def test_replica_search_gives_up_at_the_limit():
    assert _search(1, 100, limit=16) == (None, [1, 2, 4, 8, 16])


# ---- early stops ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rate", [2.0, 8.0, 30.0, 120.0])
def test_an_early_stop_never_changes_the_verdict(rate):
    config = SMALL.replace(rate=rate)
    full = simulate(config).summary()["slo_attainment"]
    verdict = SloVerdict(config.slo_ttft_s, config.slo_tpot_s, 0.9, every=4)
    stopped = simulate(config, stop=verdict)
    if stopped.meta["stopped_early"]:
        assert full < 0.9                                   # a stop is a certain miss
        assert verdict.misses > 0.1 * 150
    else:
        assert stopped.summary()["slo_attainment"] == full
    if full >= 0.9:
        assert not stopped.meta["stopped_early"]


def test_a_saturated_run_stops_after_a_small_share_of_the_workload():
    config = SMALL.replace(rate=200.0, num_requests=1000)
    found = probe(config, attainment=0.9, early_stop=True)
    assert found.stopped_early and not found.meets and found.metrics == {}
    full = probe(config, attainment=0.9, early_stop=False)
    assert not full.meets and not full.stopped_early


# ---- reuse ---------------------------------------------------------------------------------------------------
def test_a_run_that_never_filled_max_num_seqs_is_reused_and_is_the_same_run():
    config = SMALL.replace(rate=2.0, max_num_seqs=256)
    first = probe(config, attainment=0.9, early_stop=True)
    assert first.max_running < 64
    cache = ProbeCache()
    cache.add(config, first)
    smaller = config.replace(max_num_seqs=first.max_running + 1)
    assert cache.find(smaller) is first
    assert probe(smaller, attainment=0.9, early_stop=True) == first          # really the same run
    assert cache.find(config.replace(max_num_seqs=first.max_running)) is None  # the cap could bind
    assert cache.find(config.replace(rate=2.5, max_num_seqs=200)) is None     # another rate


# ---- bounds --------------------------------------------------------------------------------------------------
def _bound(config):
    stats = WorkloadStats.of(workload(config))
    return bound_config(config, build_parts(config), stats, 0.9)


def test_a_tpot_slo_below_a_lone_decode_step_cannot_be_met_at_any_rate():
    bound = _bound(SMALL.replace(gpu="l40s", slo_tpot_s=0.005))
    assert bound.max_rate_per_s == 0 and bound.certain_miss_share > 0.9
    assert bound.infeasible_reason.startswith("100% of requests miss the TPOT SLO even alone")


def test_a_ttft_slo_below_the_prefill_of_long_prompts_cannot_be_met():
    bound = _bound(SMALL.replace(gpu="l4", prompt_len="4096", slo_ttft_s=0.2, slo_tpot_s=None))
    assert "miss the TTFT SLO even alone on an idle GPU (a 4096-token prompt takes" in bound.infeasible_reason
    assert _bound(SMALL.replace(gpu="h100-sxm")).infeasible_reason == ""


def test_the_plan_equals_the_exhaustive_search_and_its_bounds_hold():
    spec = PlanSpec(target_rate=12.0, top=4)
    fast = run_plan(SMALL, AXES, spec, jobs=1)
    slow = run_plan(SMALL, AXES, PlanSpec(target_rate=12.0, top=4, exhaustive=True), jobs=1)
    pd.testing.assert_frame_equal(fast.best()[PLAN_COLUMNS].reset_index(drop=True),
                                  slow.best()[PLAN_COLUMNS].reset_index(drop=True))
    assert fast.counts["simulations"] < slow.counts["simulations"]
    full = slow.frame().set_index("config")
    for cand in fast.candidates:                 # the capacity bound is above every capacity found
        if cand.bound and full.loc[cand.label, "status"] == "ok":
            assert full.loc[cand.label, "capacity_at_least"] <= cand.bound.max_rate_per_s
        if cand.status == "cannot meet SLO":     # ruled out by bounds: the exhaustive search agrees
            assert full.loc[cand.label, "status"] == "cannot meet SLO"


def test_plan_rows_add_up():
    outcome = run_plan(SMALL, {"gpu": ("h100-sxm", "a100-80gb")}, PlanSpec(target_rate=6.0), jobs=1)
    best = outcome.best().iloc[0]
    assert best["gpus"] == best["replicas"] * 1
    assert best["cost_per_hour"] == pytest.approx(best["gpus"] * best["usd_per_gpu_hour"])
    tokens_per_hour = 6.0 * outcome.stats.mean_output * 3600
    assert best["cost_per_million_output_tokens"] == pytest.approx(best["cost_per_hour"] / tokens_per_hour * 1e6)
    assert best["rate_per_replica"] == pytest.approx(6.0 / best["replicas"])
    assert best["slo_attainment"] >= 0.9


# ---- prices and the search space -----------------------------------------------------------------------------
def test_prices_parse_and_override_the_catalog():
    assert parse_prices(["h100=2.5,h200=3", "l40s=0.9"]) == {"h100-sxm": 2.5, "h200": 3.0, "l40s": 0.9}
    for bad in ("h100", "h100=", "h100=-1", "=2"):
        with pytest.raises(AxisError, match="^--price .*: expected GPU=USD_PER_GPU_HOUR"):
            parse_prices([bad])
    outcome = run_plan(SMALL, {"gpu": ("h100-sxm",)}, PlanSpec(target_rate=2.0, prices={"h100-sxm": 1.0}), jobs=1)
    assert outcome.best().iloc[0]["usd_per_gpu_hour"] == 1.0


def test_default_space_holds_only_gpus_that_fit_the_model():
    base = SimConfig(model="llama-3.1-70b")
    axes = with_default_axes(base, {}, given=set())
    assert axes["tp"] == (1, 2, 4, 8) and axes["chunked_prefill"] == (False, True)
    assert "l4" in axes["gpu"]                                  # 8 x 24 GB hold 141 GB of weights
    two = with_default_axes(base, {"tp": (1, 2)}, given={"tp"})["gpu"]   # 70.5 GB per GPU
    assert "h100-sxm" in two and "mi300x" in two and "l40s" not in two and "l4" not in two
    assert with_default_axes(base, {"tp": (4,)}, given={"tp", "gpu"}) == {"tp": (4,), "max_num_seqs": (64, 256),
                                                                          "chunked_prefill": (False, True)}


def test_a_trace_workload_is_refused_with_the_reason():
    with pytest.raises(AxisError, match="^plan needs a synthetic workload"):
        workload_stats(SMALL.replace(trace="tests/data/workloads_plain.csv"))


# ---- executors -----------------------------------------------------------------------------------------------
def test_executor_errors_are_one_line():
    with pytest.raises(ExecutorError, match="^unknown executor 'dask'; choose one of: local, ray$"):
        make_executor("dask")
    with pytest.raises(ExecutorError, match="^--address is for --executor ray"):
        make_executor("local", address="127.0.0.1:6379")


def test_ray_missing_or_unreachable_is_one_line(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ModuleNotFoundError("No module named 'ray'")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ExecutorError, match=r"^--executor ray needs Ray, which is not installed: "
                                            r"pip install 'servesim\[ray\]'$"):
        make_executor("ray").__enter__()
    monkeypatch.undo()
    pytest.importorskip("ray")
    with pytest.raises(ExecutorError, match="^cannot reach the Ray cluster at 127.0.0.1:9: "):
        make_executor("ray", address="127.0.0.1:9").__enter__()
    with pytest.raises(ExecutorError, match="^--address 'nowhere': expected HOST:PORT"):
        make_executor("ray", address="nowhere").__enter__()


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def test_ray_executor_gives_the_local_plan(local_ray):
    axes = {"gpu": ("a100-80gb", "h100-sxm"), "max_num_seqs": (16, 64)}
    spec = PlanSpec(target_rate=8.0, top=3)
    local = run_plan(SMALL, axes, spec, jobs=1)
    on_ray = run_plan(SMALL, axes, spec, executor="ray")
    pd.testing.assert_frame_equal(local.frame(), on_ray.frame())
    assert on_ray.counts == local.counts


def test_ray_executor_runs_plain_simulations_identically(local_ray):
    configs = [SMALL.replace(rate=r) for r in (2.0, 6.0)]
    with make_executor("ray") as ray_runner, make_executor("local", jobs=1) as local_runner:
        remote = ray_runner.run(["a", "b"], configs)
        here = local_runner.run(["a", "b"], configs)
    for r, h in zip(remote, here):
        pd.testing.assert_frame_equal(r.requests, h.requests)
    task = partial(probe, attainment=0.9, early_stop=True)
    with make_executor("ray") as ray_runner:
        assert ray_runner.run(["a", "b"], configs, task=task) == [probe(c, attainment=0.9, early_stop=True)
                                                                  for c in configs]


# ---- the CLI -------------------------------------------------------------------------------------------------
FLAGS = ["--model", "llama-3.1-8b", "--num-requests", "150", "--prompt-len", "uniform:64:1024",
         "--output-len", "uniform:16:256", "--slo-ttft", "0.3", "--slo-tpot", "0.02"]


def test_cli_plan_prints_the_best_rows_and_writes_csv_and_html(tmp_path):
    out = tmp_path / "p"
    result = runner.invoke(app, ["plan", *FLAGS, "--gpu", "h100-sxm,l40s", "--tp", "1,2", "--max-num-seqs", "64",
                                 "--chunked-prefill", "off", "--target-rate", "10", "--top", "2", "--out", str(out),
                                 "--jobs", "1", "--price", "l40s=0.5"])
    assert result.exit_code == 0, result.output
    assert "servesim plan: the 2 cheapest configurations for 10 req/s" in result.output
    assert "prices are inputs, not facts: " in result.output and "l40s $0.5/GPU-h (--price)" in result.output
    frame = pd.read_csv(out / "plan.csv")
    assert list(frame["config"].iloc[:1]) and set(frame["status"]) <= {"ok", "skipped", "cannot meet SLO",
                                                                       "does not fit", "invalid"}
    assert frame["rank"].iloc[0] == 1 and frame["cost_per_hour"].iloc[0] == frame["cost_per_hour"].min()
    page = (out / "plan.html").read_text()
    assert "Pareto frontier" in page and "Capacity per GPU by configuration" in page


def test_cli_plan_names_configurations_that_cannot_work_and_why(tmp_path):
    result = runner.invoke(app, ["plan", "--model", "llama-3.1-70b", "--gpu", "l4,h200", "--tp", "1,2",
                                 "--max-num-seqs", "64", "--chunked-prefill", "off", "--num-requests", "100",
                                 "--slo-ttft", "2", "--target-rate", "1", "--out", str(tmp_path / "p"), "--jobs", "1"])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(tmp_path / "p" / "plan.csv").set_index("config")
    assert frame.loc["l4 / tp=1", "status"] == "does not fit"
    assert "needs 141.1 GB of weights" in frame.loc["l4 / tp=1", "reason"]
    assert "does not fit (3): " in " ".join(result.output.split())


@pytest.mark.parametrize("args, message", [
    (["--target-rate", "5"], "error: plan needs an SLO: give --slo-ttft and/or --slo-tpot (seconds)"),
    (["--target-rate", "5", "--slo-ttft", "1", "--gpu", "h1000"], "error: --gpu h1000: unknown GPU 'h1000'"),
    (["--target-rate", "5", "--slo-ttft", "1", "--price", "h100=cheap"], "error: --price h100=cheap: expected"),
    (["--target-rate", "0", "--slo-ttft", "1"], "error: --target-rate must be positive, got 0.0"),
    (["--target-rate", "5", "--slo-ttft", "1", "--executor", "spark"], "error: unknown executor 'spark'"),
])
def test_cli_plan_bad_input_is_one_line_and_writes_nothing(tmp_path, args, message):
    result = runner.invoke(app, ["plan", "--num-requests", "20", *args, "--out", str(tmp_path / "p")])
    assert result.exit_code == 2
    assert result.output.startswith(message) and result.output.count("\n") == 1
    assert not (tmp_path / "p").exists()


def test_sweep_and_compare_take_an_executor(tmp_path):
    result = runner.invoke(app, ["compare", "--num-requests", "20", "--rate", "1,2", "--executor", "local",
                                 "--jobs", "1", "--out", str(tmp_path / "c"), "--quiet"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["sweep", "--num-requests", "20", "--rate", "1,2", "--slo-ttft", "1",
                                 "--executor", "nope", "--out", str(tmp_path / "s")])
    assert result.exit_code == 2 and result.output.startswith("error: unknown executor 'nope'")


def test_cluster_check_simulates_the_top_deployments_whole():
    spec = PlanSpec(target_rate=12.0, top=1, cluster_router="round-robin")
    outcome = run_plan(SMALL, {"gpu": ("h100-sxm", "l40s")}, spec, jobs=1)
    best = outcome.best().iloc[0]
    cand = next(c for c in outcome.candidates if c.label == best["config"])
    whole = simulate(cand.config.replace(replicas=cand.replicas, router="round-robin", rate=12.0,
                                         num_requests=150 * cand.replicas)).summary()
    assert best["cluster_slo_attainment"] == whole["slo_attainment"]
    assert best["cluster_meets_slo"] == (whole["slo_attainment"] >= 0.9)
    assert outcome.counts["cluster_simulations"] == 1
    assert outcome.frame()["cluster_meets_slo"].notna().sum() == 1      # only the top row is checked
    with pytest.raises(AxisError, match="^--cluster-check: unknown router 'nearest'; choose one of: "):
        PlanSpec(target_rate=1.0, cluster_router="nearest")
    with pytest.raises(AxisError, match="^plan chooses the replica count itself"):
        run_plan(SMALL.replace(replicas=2), {}, PlanSpec(target_rate=1.0), jobs=1)
