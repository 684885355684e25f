"""Built-in experiments: each reduced run asserts its qualitative claim; the helpers and the CLI command.

The quick runs are shared through a module-level cache, so each experiment runs once per session.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from typer.testing import CliRunner

from cli import app
from simulator.experiments import EXPERIMENTS, ExperimentError, get_experiment, run_experiment, write_outputs
from simulator.experiments.base import ExperimentResult, claim, within
from simulator.experiments.common import crossing_rate, sharegpt_vllm

_RESULTS: dict[str, ExperimentResult] = {}


def quick(name: str) -> ExperimentResult:
    if name not in _RESULTS:
        _RESULTS[name] = run_experiment(name, quick=True)
    return _RESULTS[name]


def rows(result: ExperimentResult, **match) -> pd.DataFrame:
    data = result.data
    for col, value in match.items():
        data = data[data[col] == value]
    return data


# ---------------------------------------------------------------- registry, helpers, outputs
def test_registry_names_the_experiments():
    assert list(EXPERIMENTS) == ["kv-waste", "paged-throughput", "continuous-vs-static", "chunked-prefill",
                                 "bound-by-phase", "bandwidth-what-if", "gqa-and-quantization", "cuda-graphs",
                                 "speculative-decoding", "prefix-caching", "pd-disaggregation"]
    for name, exp in EXPERIMENTS.items():
        assert exp.name == name and exp.source and exp.claim and exp.setup


@pytest.mark.parametrize("name", ["kv_waste", "nope", None, ""])
def test_unknown_experiment_is_one_line_listing_the_choices(name):
    with pytest.raises(ExperimentError) as err:
        get_experiment(name)
    message = str(err.value)
    assert "\n" not in message and "choose one of: kv-waste, paged-throughput" in message


def test_claim_checks_bounds_and_never_holds_for_nan():
    inside = claim("x", "20-38%", 0.276, "{:.1%}", lo=0.20, hi=0.38)
    assert inside.held and inside.measured_text == "27.6%" and inside.check == "20.0% <= servesim <= 38.0%"
    assert not claim("x", "p", 0.39, "{:.1%}", lo=0.20, hi=0.38).held
    assert claim("x", "p", 0.2, "{:.1%}", lo=0.20).held                 # bounds are inclusive
    nan = claim("x", "p", float("nan"), "{:.2f}x", lo=1.0)
    assert not nan.held and nan.measured_text == "n/a" and nan.to_dict()["servesim_value"] is None
    assert not within(float("inf"), lo=1.0)


def test_crossing_rate_interpolates_between_grid_points():
    rates = [1.0, 2.0, 3.0]
    assert crossing_rate(rates, [0.1, 0.2, 0.6], 0.4) == pytest.approx(2.5)
    assert crossing_rate(rates, [0.1, 0.2, 0.3], 0.4) == 3.0             # never crosses: the highest rate
    assert math.isnan(crossing_rate(rates, [0.5, 0.6, 0.7], 0.4))         # above the limit from the start
    assert crossing_rate(rates, [0.1, float("nan"), 0.7], 0.4) == 1.0     # NaN counts as above the limit


def test_sharegpt_workload_is_filtered_as_vllm_benchmark_and_seeded():
    specs = sharegpt_vllm(500, 2.0)
    prompts = np.array([s.prompt_tokens for s in specs])
    totals = prompts + np.array([s.output_tokens for s in specs])
    assert prompts.max() <= 1024 and totals.max() <= 2048
    arrivals = np.array([s.arrival_s for s in specs])
    assert np.all(np.diff(arrivals) >= 0) and 500 / arrivals[-1] == pytest.approx(2.0, rel=0.15)
    assert specs == sharegpt_vllm(500, 2.0)
    assert all(s.arrival_s == 0 for s in sharegpt_vllm(10, None))


def test_write_outputs_writes_three_files_and_nothing_on_failure(tmp_path):
    result = ExperimentResult(name="t", title="t", source="s", data=pd.DataFrame({"a": [1, 2]}),
                              figure=go.Figure(go.Scatter(x=[1], y=[2])),
                              claims=(claim("c", "1x", 1.0, "{:.1f}x", lo=0.5),))
    folder = write_outputs(result, tmp_path / "t")
    assert sorted(p.name for p in folder.iterdir()) == ["claims.json", "data.csv", "figure.html"]
    saved = json.loads((folder / "claims.json").read_text())
    assert saved["held"] is True and saved["claims"][0]["servesim"] == "1.0x"
    broken = ExperimentResult(name="b", title="b", source="s", data=pd.DataFrame(), figure=None, claims=())
    with pytest.raises(AttributeError):
        write_outputs(broken, tmp_path / "b")
    assert not (tmp_path / "b").exists() and [p.name for p in tmp_path.iterdir()] == ["t"]


# ---------------------------------------------------------------- one reduced run per experiment
def test_kv_waste_contiguous_wastes_most_paged_under_4_percent():
    result = quick("kv-waste")
    by_system = {label.split(":")[0]: row for label, row in zip(result.data.label, result.data.itertuples())}
    mx, paged = by_system["Orca (Max)"], by_system["vLLM"]
    assert mx.token_state < 0.40 and 1 - mx.token_state > 0.60
    assert paged.reserved_empty < 0.04 and 1 - paged.token_state < 0.04
    assert paged.max_concurrent_requests > mx.max_concurrent_requests
    assert all(abs(r.token_state + r.reserved_empty + r.free_while_waiting - 1) < 1e-9
               for r in result.data.itertuples())


def test_paged_throughput_vllm_knee_at_least_twice_orca_max():
    result = quick("paged-throughput")
    knee = result.data.groupby("label").knee_rate.first()
    assert knee["vLLM (paged, continuous)"] >= 2 * knee["Orca (Max)"]
    assert knee["vLLM (paged, continuous)"] > knee["Orca (Oracle)"] > knee["Orca (Max)"]
    assert knee["FasterTransformer (dynamic batching)"] < knee["Orca (Max)"]


def test_continuous_at_least_twice_static_and_lower_p50():
    result = quick("continuous-vs-static")
    offline = rows(result, phase="offline", max_output=1536).set_index("label").output_token_throughput
    assert offline["continuous (paged KV)"] >= 2 * offline["static"]
    online = rows(result, phase="online").pivot(index="rate", columns="label", values="e2e_p50_s")
    low = online.index.min()
    assert online.loc[low, "continuous (paged KV)"] < online.loc[low, "static"]
    assert result.claims[0].held and result.claims[3].held


def test_chunked_prefill_bounds_p99_tbt():
    result = quick("chunked-prefill")
    at = rows(result, rate=2.0).set_index("label").itl_p99_s
    assert at["chunked prefill, 512-token budget"] <= 0.1 < at["no chunking (vLLM v0)"]
    caps = result.data.groupby("label").capacity_strict.first()
    assert caps["chunked prefill, 512-token budget"] > caps["no chunking (vLLM v0)"]


def test_bound_by_phase_decode_memory_bound_prefill_compute_bound():
    result = quick("bound-by-phase")
    ops = rows(result, part="operator")
    gemms = ops[(ops.family == "gemm") & (ops.operator != "lm_head")]
    assert set(gemms[(gemms.phase == "decode") & (gemms.batch == 1)].bound) == {"memory"}
    assert set(gemms[(gemms.phase == "prefill") & (gemms.tokens == 4096)].bound) == {"compute"}
    thr = rows(result, part="throughput", tokens=1024, output_tokens=256).set_index("batch")
    assert 1 < thr.output_token_throughput[64] / thr.output_token_throughput[1] < 64
    ttft = rows(result, part="ttft")
    assert np.all(np.diff(ttft.seconds) > 0)
    assert rows(result, part="throughput", tokens=4096, batch=256).preemptions.iloc[0] > 0


def test_bandwidth_x2_decode_speedup_between_1_1_and_2_prefill_flat():
    result = quick("bandwidth-what-if")
    table = rows(result, part="what-if").set_index(["phase", "size"]).speedup
    assert 1.1 < table[("decode", 1)] < 2.0
    assert table[("prefill", 4096)] < 1.1
    gpus = rows(result, part="h100-vs-h200").set_index("label")
    assert gpus.output_token_throughput["h200"] > gpus.output_token_throughput["h100-sxm"]


def test_gqa_kv_bytes_hand_checked_and_concurrency_grows():
    result = quick("gqa-and-quantization")
    d = result.data.set_index("label")
    # KV bytes/token = 2 (K,V) x 32 layers x kv_heads x 128 head_dim x bytes per element
    assert d.kv_bytes_per_token["MHA (32 KV heads)"] == 2 * 32 * 32 * 128 * 2 == 524288
    assert d.kv_bytes_per_token["GQA-8 (Llama-3.1-8B)"] == 2 * 32 * 8 * 128 * 2
    assert d.kv_bytes_per_token["MQA (1 KV head)"] == 2 * 32 * 1 * 128 * 2
    assert d.kv_bytes_per_token["GQA-8, fp8 KV cache"] == 2 * 32 * 8 * 128 * 1
    conc = d.max_concurrent_requests
    assert conc["MHA (32 KV heads)"] < conc["GQA-8 (Llama-3.1-8B)"] < conc["MQA (1 KV head)"]
    assert d.output_token_throughput["GQA-8 (Llama-3.1-8B)"] > d.output_token_throughput["MHA (32 KV heads)"]
    assert d.kv_capacity_tokens["GQA-8, int4 weights"] > d.kv_capacity_tokens["GQA-8 (Llama-3.1-8B)"]


def test_cuda_graphs_never_slower_and_gain_shrinks_with_batch():
    result = quick("cuda-graphs")
    steps = rows(result, part="decode-step").set_index("batch")
    assert np.all(steps.graph_s <= steps.eager_s)
    assert steps.speedup[1] >= steps.speedup[256]
    assert steps.speedup[1] > 1.0                     # launches dominate a batch-1 eager step


def test_speculative_decoding_speedup_falls_with_batch_and_crosses_one():
    result = quick("speculative-decoding")
    assert result.held, [c for c in result.claims if not c.held]
    for series, rows_ in result.data.groupby("series"):
        speedup = rows_.set_index("batch").speedup
        assert speedup.iloc[0] > 1.3 and speedup.iloc[-1] < speedup.iloc[0], series
        assert (rows_.preemptions == 0).all()                  # every batch fits: the batch is what is measured
    draft = rows(result, series="draft model, Llama-3-70B, 4 x H100").set_index("batch").speedup
    assert draft.iloc[-1] < 1.0                               # the crossover: a slowdown at the largest batch


def test_pd_disaggregation_claims_hold():
    result = quick("pd-disaggregation")
    assert [c.held for c in result.claims] == [True, True, True]
    gain = result.claims[0].measured
    assert gain > 1.0                  # 2 prefill + 2 decode GPUs serve more within both SLOs than 4 colocated


def test_every_quick_result_is_complete():
    for name in EXPERIMENTS:
        result = quick(name)
        assert result.name == name and len(result.claims) >= 3 and len(result.data) > 0
        assert len(result.figure.data) > 0
        assert all(isinstance(c.held, bool) and c.published and c.check for c in result.claims)


# ---------------------------------------------------------------- the CLI command
def test_cli_list_names_every_experiment():
    out = CliRunner().invoke(app, ["experiment", "--list", "--json"])
    assert out.exit_code == 0
    assert [row["name"] for row in json.loads(out.stdout)] == list(EXPERIMENTS)


def test_cli_unknown_experiment_one_line_error(tmp_path):
    out = CliRunner().invoke(app, ["experiment", "kv-wast", "--out", str(tmp_path / "x")])
    assert out.exit_code == 2
    assert out.stderr.strip().count("\n") == 0 and "unknown experiment 'kv-wast'" in out.stderr
    assert "cuda-graphs" in out.stderr and not (tmp_path / "x").exists()


def test_cli_runs_an_experiment_prints_json_and_writes_files(tmp_path):
    out = CliRunner().invoke(app, ["experiment", "bandwidth-what-if", "--quick", "--json", "--out", str(tmp_path)])
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    assert report["experiment"] == "bandwidth-what-if" and len(report["claims"]) == 4
    assert set(report["claims"][0]) == {"claim", "published", "servesim", "servesim_value", "held", "check"}
    folder = tmp_path / "bandwidth-what-if"
    assert sorted(p.name for p in folder.iterdir()) == ["claims.json", "data.csv", "figure.html"]
    assert pd.read_csv(folder / "data.csv").shape[0] > 0


def test_prefix_caching_hits_multi_turn_history_and_cuts_ttft():
    result = quick("prefix-caching")
    chat = result.data[result.data.part == "multi-turn"]
    on, off = chat[chat.prefix_caching == True], chat[chat.prefix_caching == False]   # noqa: E712
    assert (off.hit_rate == 0).all() and (on.hit_rate > 0.5).all()
    assert (on.ttft_mean_s.to_numpy() < off.ttft_mean_s.to_numpy()).all()
    assert result.held, [c for c in result.claims if not c.held]
