"""vLLM-compatible outputs and inputs: vllm_result.json (keys, units, definitions of `vllm bench serve
--save-result`), --format vllm, --metric-percentiles, --goodput, SLO units, ShareGPT datasets, bench results as
workloads, --rate inf and --burstiness."""
from __future__ import annotations

import json
import math
import random
from unittest.mock import patch

import numpy as np
import pytest
from typer.testing import CliRunner

import cli
from simulator.config import ConfigError, SimConfig
from simulator.metrics import meets_slo
from simulator.runs.options import parse_goodput, parse_seconds
from simulator.vllm_result import vllm_result
from tests.conftest import make_engine
from workloads import make_requests
from workloads.spec import RequestSpec
from workloads.vllm import estimate_tokens, read_sharegpt, vllm_arrival_times

runner = CliRunner()
TINY = ["--num-requests", "20", "--rate", "5", "--prompt-len", "64", "--output-len", "8"]
# The keys a real `vllm bench serve --save-result` file has (vLLM 0.18 era), in its order, without --metadata;
# the metric keys follow.
VLLM_KEYS = ["date", "endpoint_type", "backend", "label", "model_id", "tokenizer_id", "num_prompts", "request_rate",
             "burstiness", "max_concurrency", "duration", "completed", "failed", "total_input_tokens",
             "total_output_tokens", "request_throughput", "request_goodput", "output_throughput",
             "total_token_throughput", "max_output_tokens_per_s", "max_concurrent_requests", "rtfx"]


def invoke(*args):
    return runner.invoke(cli.app, [str(a) for a in args])


def one_line(result) -> str:
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def tiny_run():
    """RoundCostModel (10 ms a step + 0.1 ms a prefill token): request 0 (100 prompt, 3 output tokens) arrives
    at 0, prefills in 20 ms and decodes two 10 ms steps; request 1 (50, 2) arrives at 1 s, prefills in 15 ms and
    decodes one step. TTFT 20 / 15 ms, TPOT 10 / 10 ms, E2E 40 / 25 ms, three 10 ms gaps; duration 1.025 s."""
    return make_engine([RequestSpec(0, 0.0, 100, 3), RequestSpec(1, 1.0, 50, 2)]).run()


def test_vllm_result_of_a_hand_computed_run():
    r = tiny_run()
    res = vllm_result({"metric_percentiles": "50,99"}, {}, r.requests, r.steps, r.itl)
    assert list(res)[:len(VLLM_KEYS)] == VLLM_KEYS
    assert (res["completed"], res["failed"], res["total_input_tokens"], res["total_output_tokens"]) == (2, 0, 150, 5)
    assert res["duration"] == pytest.approx(1.025)
    assert res["request_throughput"] == pytest.approx(2 / 1.025)
    assert res["output_throughput"] == pytest.approx(5 / 1.025)
    assert res["total_token_throughput"] == pytest.approx(155 / 1.025)
    assert res["request_goodput"] is None                       # no SLO given
    assert res["max_output_tokens_per_s"] == 3.0                # 3 tokens in second 0, 2 in second 1
    assert res["max_concurrent_requests"] == 1 and res["rtfx"] == 0.0
    expected = {"mean_ttft_ms": 17.5, "median_ttft_ms": 17.5, "std_ttft_ms": 2.5, "p50_ttft_ms": 17.5,
                "p99_ttft_ms": 15 + 0.99 * 5, "mean_tpot_ms": 10.0, "median_tpot_ms": 10.0, "std_tpot_ms": 0.0,
                "p99_tpot_ms": 10.0, "mean_itl_ms": 10.0, "median_itl_ms": 10.0, "std_itl_ms": 0.0,
                "p99_itl_ms": 10.0, "mean_e2el_ms": 32.5, "median_e2el_ms": 32.5, "std_e2el_ms": 7.5,
                "p50_e2el_ms": 32.5, "p99_e2el_ms": 25 + 0.99 * 15}
    for key, value in expected.items():
        assert res[key] == pytest.approx(value, abs=1e-9), key
    assert [k for k in res if k.endswith("_ms")][:5] == ["mean_ttft_ms", "median_ttft_ms", "std_ttft_ms",
                                                          "p50_ttft_ms", "p99_ttft_ms"]


def test_goodput_counts_finished_requests_within_every_slo():
    r = tiny_run()
    requests = r.requests.assign(met_slo=meets_slo(r.requests, 0.018, None))       # only request 1 (15 ms)
    res = vllm_result({"slo_ttft_s": 0.018}, {}, requests, r.steps, r.itl)
    assert res["request_goodput"] == pytest.approx(1 / 1.025)
    requests = r.requests.assign(met_slo=meets_slo(r.requests, None, None, 0.030))  # E2E 40 ms misses
    assert vllm_result({"slo_e2e_s": 0.03}, {}, requests, r.steps, r.itl)["request_goodput"] == \
        pytest.approx(1 / 1.025)


def test_percentile_keys_follow_vllm_spelling():
    r = tiny_run()
    res = vllm_result({"metric_percentiles": "25,99.9", "percentile_metrics": "ttft,itl"}, {}, r.requests, r.steps,
                      r.itl)
    ms_keys = [k for k in res if k.endswith("_ms")]
    assert ms_keys == ["mean_ttft_ms", "median_ttft_ms", "std_ttft_ms", "p25_ttft_ms", "p99.9_ttft_ms",
                       "mean_itl_ms", "median_itl_ms", "std_itl_ms", "p25_itl_ms", "p99.9_itl_ms"]


def test_every_results_folder_has_vllm_result_json(tmp_path):
    result = invoke("run", *TINY, "--out", tmp_path / "r", "--quiet")
    assert result.exit_code == 0, result.output
    res = json.loads((tmp_path / "r" / "vllm_result.json").read_text())
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert list(res)[:len(VLLM_KEYS)] == VLLM_KEYS and res["completed"] == 20 and res["request_rate"] == 5.0
    assert res["mean_ttft_ms"] == pytest.approx(summary["ttft_mean_s"] * 1e3)
    assert res["p99_itl_ms"] == pytest.approx(summary["itl_p99_s"] * 1e3)
    assert res["duration"] == pytest.approx(summary["duration_s"])
    result = invoke("compare", *TINY, "--batching", "static,continuous", "--out", tmp_path / "c", "--quiet",
                    "--jobs", "1")
    assert result.exit_code == 0, result.output
    folders = [p for p in (tmp_path / "c").iterdir() if p.is_dir()]
    assert len(folders) == 2 and all((p / "vllm_result.json").is_file() for p in folders)


def test_format_vllm_prints_the_result(tmp_path):
    result = invoke("run", *TINY, "--out", tmp_path / "r", "--format", "vllm", "--metric-percentiles", "25,50,99")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed == json.loads((tmp_path / "r" / "vllm_result.json").read_text())
    assert "p25_tpot_ms" in printed and "p50_e2el_ms" in printed
    assert result.output.count("\n") == len(printed) + 2


def test_goodput_as_vllm_spells_it(tmp_path):
    argv = ["servesim", "run", *TINY, "--out", str(tmp_path / "r"), "--quiet", "--goodput", "ttft:500", "tpot:50"]
    with patch("sys.argv", argv):
        with pytest.raises(SystemExit) as done:
            cli.main()
    assert done.value.code in (0, None)
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert (config["slo_ttft_s"], config["slo_tpot_s"]) == (0.5, 0.05)
    assert json.loads((tmp_path / "r" / "vllm_result.json").read_text())["request_goodput"] is not None
    assert cli.join_goodput(["--goodput", "ttft:500", "e2el:9", "--rate", "2"]) == \
        ["--goodput", "ttft:500 e2el:9", "--rate", "2"]


def test_goodput_and_slo_errors_are_one_line(tmp_path):
    out = tmp_path / "r"
    assert one_line(invoke("run", *TINY, "--out", out, "--goodput", "latency:5")) == (
        "error: --goodput: expected KEY:MILLISECONDS pairs with KEY one of ttft, tpot, e2el (e.g. ttft:500 "
        "tpot:50), got 'latency:5'")
    assert one_line(invoke("run", *TINY, "--out", out, "--goodput", "ttft:500", "--slo-ttft", "1")) == (
        "error: --goodput and --slo-ttft both set that SLO; give one")
    assert one_line(invoke("run", *TINY, "--out", out, "--slo-tpot", "fast")) == (
        "error: --slo-tpot: expected a time such as 500ms, 0.5s or 0.5 (seconds), got 'fast'")
    assert one_line(invoke("run", *TINY, "--out", out, "--metric-percentiles", "50,101")) == (
        "error: metric-percentiles: every percentile must be within 0..100, got '50,101'")
    assert one_line(invoke("run", *TINY, "--out", out, "--percentile-metrics", "ttft,e2e")) == (
        "error: percentile-metrics: unknown metric 'e2e'; choose from ttft, tpot, itl, e2el")
    assert not out.exists()


def test_slo_values_take_units(tmp_path):
    assert parse_seconds("500ms") == 0.5 and parse_seconds("0.5s") == 0.5 and parse_seconds("0.25") == 0.25
    assert parse_seconds("250 us") == pytest.approx(250e-6)
    assert parse_goodput("ttft:500 tpot:50") == {"slo_ttft_s": 0.5, "slo_tpot_s": 0.05}
    from simulator.runs.options import OPTIONS_BY_FIELD
    for field in ("slo_ttft_s", "slo_tpot_s", "slo_e2e_s"):
        assert "a bare number is seconds" in OPTIONS_BY_FIELD[field].help
    result = runner.invoke(cli.app, ["run", "--help"], env={"COLUMNS": "250"})
    assert "TTFT SLO for goodput: 500ms, 0.5s; a bare number is seconds." in result.output
    assert invoke("run", *TINY, "--slo-ttft", "300ms", "--out", tmp_path / "r", "--quiet").exit_code == 0
    assert json.loads((tmp_path / "r" / "config.json").read_text())["slo_ttft_s"] == 0.3


# ---- workloads in vLLM's forms ----
def test_rate_inf_sends_everything_at_time_zero():
    specs = make_requests(seed=0, rate=math.inf, num_requests=5, prompt_len="64", output_len="8")
    assert [s.arrival_s for s in specs] == [0.0] * 5
    with pytest.raises(ValueError, match="--rate inf and --burstiness need --num-requests"):
        make_requests(seed=0, rate=math.inf, duration_s=10.0)


def test_burstiness_is_vllms_gamma_rescaled_to_n_over_rate():
    rng = np.random.default_rng(1)
    times = vllm_arrival_times(4.0, 0.5, 1000, rng)
    assert times[-1] == pytest.approx(1000 / 4.0)                  # vLLM's normalization
    gaps = np.diff(times)
    assert gaps.std() / gaps.mean() == pytest.approx(1 / math.sqrt(0.5), rel=0.15)   # gamma shape 0.5: CV 1.41
    expect = np.cumsum(np.random.default_rng(1).gamma(0.5, 1 / (4.0 * 0.5), 1000))
    assert times == pytest.approx(expect * 250.0 / expect[-1])
    assert list(vllm_arrival_times(2.0, math.inf, 3, rng)) == [0.5, 1.0, 1.5]
    specs = make_requests(seed=0, rate=4.0, num_requests=50, burstiness=2.0, prompt_len="64", output_len="8")
    assert specs[-1].arrival_s == pytest.approx(12.5)
    with pytest.raises(ConfigError, match="give --arrival or --burstiness, not both"):
        SimConfig(burstiness=2.0, arrival="constant")


def sharegpt(tmp_path, entries) -> str:
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(entries))
    return str(path)


def conversation(i: int, prompt_chars: int, output_chars: int, **extra) -> dict:
    return {"id": str(i), "conversations": [{"from": "human", "value": "x" * prompt_chars},
                                            {"from": "gpt", "value": "y" * output_chars}], **extra}


def test_sharegpt_is_sampled_as_vllm_samples_it(tmp_path):
    entries = [conversation(i, 40 * (i + 1), 20 * (i + 1)) for i in range(6)]
    entries += [{"id": "one turn", "conversations": [{"from": "human", "value": "hi"}]},
                conversation(90, 8, 8),                             # prompt 2 tokens: too short for vLLM
                conversation(91, 4000, 8),                          # prompt 1000, output 2: output too short
                conversation(92, 400, 40, prompt_tokens=30, output_tokens=7)]   # counts given
    path = sharegpt(tmp_path, entries)
    prompt, output = read_sharegpt(path, 7, seed=3)
    kept = [e for e in entries if len(e["conversations"]) >= 2]
    random.Random(3).shuffle(kept)
    lengths = [(e.get("prompt_tokens") or estimate_tokens(e["conversations"][0]["value"]),
                e.get("output_tokens") or estimate_tokens(e["conversations"][1]["value"])) for e in kept]
    valid = [(p, o) for p, o in lengths if 4 <= p <= 1024 and o >= 4 and p + o <= 2048]
    assert len(valid) == 7 and list(zip(prompt, output)) == valid
    assert estimate_tokens("x" * 41) == 11 and (30, 7) in valid
    prompt, output = read_sharegpt(path, 10, seed=3)                 # 3 more drawn among the 7 kept pairs
    assert len(prompt) == 10 and set(zip(prompt, output)) <= set(valid)


def test_dataset_option_runs_with_rate_arrivals(tmp_path):
    path = sharegpt(tmp_path, [conversation(i, 40 * (i + 1), 20 * (i + 1)) for i in range(6)])
    out = tmp_path / "r"
    result = invoke("run", "--dataset", path, "--num-requests", "6", "--rate", "2", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    requests = json.loads((out / "vllm_result.json").read_text())
    assert requests["total_input_tokens"] == sum(10 * (i + 1) for i in range(6))
    assert one_line(invoke("run", "--dataset", path, "--output-len", "8", "--out", out)) == (
        "error: --dataset gives the prompt and output lengths; drop --prompt-len / --output-len")
    bad = tmp_path / "bad.json"
    bad.write_text('{"conversations": []}')
    assert one_line(invoke("run", "--dataset", bad, "--num-requests", "3", "--out", out)) == (
        f"error: {bad}: a ShareGPT dataset is a JSON list of entries with 'conversations'")


def bench(tmp_path, with_start=True) -> str:
    data = {"input_lens": [100, 50, 80], "output_lens": [3, 2, 0], "ttfts": [0.2, 0.1, 0.0],
            "itls": [[0.02, 0.04], [0.03], []], "errors": ["", "", "timeout"]}
    if with_start:
        data["start_times"] = [1000.5, 1000.0, 1000.7]
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(data, indent=2))                    # pretty-printed: detected all the same
    return str(path)


def test_bench_result_as_trace_and_as_dataset(tmp_path):
    specs = make_requests(seed=0, rate=1.0, trace=bench(tmp_path))
    assert [(s.arrival_s, s.prompt_tokens, s.output_tokens) for s in specs] == [(0.0, 50, 2), (0.5, 100, 3)]
    path = bench(tmp_path, with_start=False)
    with pytest.raises(ValueError, match="'start_times' missing or not a list"):
        make_requests(seed=0, rate=1.0, trace=path)
    specs = make_requests(seed=0, rate=1.0, num_requests=2, dataset=path, prompt_len="sharegpt")
    assert [(s.prompt_tokens, s.output_tokens) for s in specs] == [(100, 3), (50, 2)]   # file order, failed out


def test_hostile_vllm_form_inputs_are_one_line(tmp_path):
    out = tmp_path / "r"
    assert one_line(invoke("run", *TINY, "--burstiness", "nan", "--out", out)) == \
        "error: --burstiness: must be a number, got nan"
    assert one_line(invoke("run", *TINY, "--goodput", "ttft:nan", "--out", out)) == \
        "error: --goodput: 'ttft:nan': an SLO is a non-negative number of milliseconds"
    summary = tmp_path / "summary_only.json"                       # saved without --save-detailed
    summary.write_text(json.dumps({"completed": 3, "request_throughput": 1.0}))
    for flag in ("--trace", "--dataset"):
        assert one_line(invoke("run", flag, summary, "--num-requests", "3", "--out", out)) == (
            f"error: {summary}: not a `vllm bench serve --save-result --save-detailed` result (no 'input_lens'; "
            "save it with --save-detailed)")
    assert one_line(invoke("run", "--dataset", "/dev/zero", "--out", out)) == \
        "error: dataset file '/dev/zero' is not a regular file"
    assert not out.exists()
