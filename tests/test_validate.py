"""servesim validate: reading real runs (a run folder, a vLLM bench result), the replay config, the real vs
simulated table, the files written, and one-line errors for missing or malformed files."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import cli
from simulator.validate import RunFileError, load_real_run, replay_config, validate
from simulator.validate.compare import gpu_for_device, run_metrics
from simulator.kv_cache.prefix import content_block_hashes
from workloads.traces import token_content
from workloads.errors import TraceError

RUN = Path(__file__).parent / "data" / "vllm_run_4090"
runner = CliRunner()


def invoke(*args):
    return runner.invoke(cli.app, [str(a) for a in args])


def one_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def copy_run(tmp_path) -> Path:
    folder = tmp_path / "run"
    shutil.copytree(RUN, folder)
    for f in folder.iterdir():
        f.chmod(0o644)
    return folder


def bench_result(tmp_path, **changes) -> Path:
    """A tiny `vllm bench serve --save-detailed` result: 3 requests, one failed."""
    data = {"model_id": "meta-llama/Llama-3.1-8B", "duration": 1.0, "completed": 2, "input_lens": [100, 50, 80],
            "output_lens": [3, 2, 0], "ttfts": [0.2, 0.1, 0.0], "itls": [[0.02, 0.04], [0.03], []],
            "latencies": [0.26, 0.13, 0.0], "start_times": [1000.5, 1000.0, 1000.7], "errors": ["", "", "timeout"]}
    data.update(changes)
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(data))
    return path


# ---- run folders ----
def test_run_folder_is_read_with_the_engine_clock_and_settings():
    run = load_real_run(RUN)
    assert run.kind == "run folder" and len(run.specs) == 40 and run.itl_s is None
    first = run.requests.iloc[0]
    # bench-0: queued 27536.660701067 (the earliest), first token 27537.350135653, last 27554.231018618
    assert first.arrival_s == 0.0
    assert first.ttft_s == pytest.approx(27537.350135653 - 27536.660701067, abs=1e-9)
    assert first.tpot_s == pytest.approx((27554.231018618 - 27537.350135653) / 530, abs=1e-12)
    assert run.specs[1].arrival_s == pytest.approx(27537.047603549 - 27536.660701067, abs=1e-9)
    assert (run.specs[0].prompt_tokens, run.specs[0].output_tokens) == (2358, 531)
    assert run.settings == {"batching": "continuous", "kv": "paged", "engine": "vllm-v1", "max_num_seqs": 256,
                            "max_num_batched_tokens": 2048, "max_model_len": 32768, "chunked_prefill": True, "tp": 1,
                            "pp": 1, "num_gpu_blocks": 2588, "block_size": 16, "gpu_memory_utilization": 0.9,
                            "prefix_caching": True, "dtype": "bf16", "kv_dtype": "bf16"}
    assert run.hints == {"model": "meta-llama/Llama-3.1-8B", "gpu": "NVIDIA GeForce RTX 4090"}
    assert run.notes == ()
    assert list(run.timeline.columns) == ["time_s", "num_running", "num_waiting"] and len(run.timeline) == 10


def test_token_ids_become_content_that_shares_whole_blocks(tmp_path):
    folder = copy_run(tmp_path)
    lines = (folder / "workload.jsonl").read_text().splitlines()[:2]
    shared = list(range(40))
    records = [json.loads(line) for line in lines]
    records[0].update(input_toks=40, input_tok_ids=shared)
    records[1].update(input_toks=35, input_tok_ids=shared[:32] + [7, 7, 7])
    (folder / "workload.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    engine = [json.loads(line) for line in (folder / "requests.jsonl").read_text().splitlines()[:2]]
    engine[0]["input_toks"], engine[1]["input_toks"] = 40, 35
    (folder / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in engine))
    a, b = load_real_run(folder).specs
    assert a.content == tuple((t, 1) for t in shared) and b.content_tokens == 35
    blocks_a, blocks_b = (content_block_hashes(s.content, 16, s.prompt_tokens) for s in (a, b))
    assert len(blocks_a) == 2 and len(blocks_b) == 2 and blocks_a == blocks_b   # full 16-token blocks only
    other = content_block_hashes(token_content(shared[:16] + [1] * 16), 16, 32)
    assert other[0] == blocks_a[0] and other[1] != blocks_a[1]


@pytest.mark.parametrize("device, gpu", [("NVIDIA GeForce RTX 4090", "rtx-4090"), ("NVIDIA H100 80GB HBM3", "h100-sxm"),
                                         ("NVIDIA H100 PCIe", "h100-pcie"), ("NVIDIA A100-SXM4-40GB", "a100-40gb"),
                                         ("NVIDIA RTX PRO 6000 Blackwell Workstation Edition", "rtx-pro-6000"),
                                         ("NVIDIA L40S", "l40s"), ("Tesla T4", None)])
def test_device_names_map_to_catalog_gpus(device, gpu):
    assert gpu_for_device(device) == gpu


def test_replay_config_takes_the_run_settings_and_lets_options_override():
    run = load_real_run(RUN)
    cfg = replay_config(run, {})
    assert (cfg.gpu, cfg.model, cfg.num_gpu_blocks, cfg.token_budget, cfg.chunked_prefill) == \
        ("rtx-4090", "llama-3.1-8b", 2588, 2048, True)
    cfg = replay_config(run, {"gpu": "h100-sxm", "max_num_seqs": 64})
    assert (cfg.gpu, cfg.max_num_seqs, cfg.num_gpu_blocks) == ("h100-sxm", 64, 2588)


def test_itl_mean_without_gaps_is_the_mean_of_all_gaps():
    frame = pd.DataFrame({"status": "finished", "arrival_s": [0.0, 1.0], "prompt_tokens": [10, 10],
                          "output_tokens": [3, 5], "first_token_s": [1.0, 2.0], "finish_s": [1.3, 3.0]})
    frame["ttft_s"], frame["e2e_s"] = frame.first_token_s - frame.arrival_s, frame.finish_s - frame.arrival_s
    frame["tpot_s"] = (frame.finish_s - frame.first_token_s) / (frame.output_tokens - 1)
    m = run_metrics(frame, None, None)
    assert m["itl_mean"] == pytest.approx(1.3 / 6)                  # gaps 0.15, 0.15 and 0.25 x 4
    assert m["tpot_mean"] == pytest.approx((0.15 + 0.25) / 2)
    assert m["duration"] == 3.0 and m["request_throughput"] == pytest.approx(2 / 3)
    assert m["total_token_throughput"] == pytest.approx(28 / 3) and np.isnan(m["itl_p99"])


def test_validate_compares_like_with_like():
    v = validate(load_real_run(RUN))
    table = v.table.set_index(["metric", "stat"])
    assert table.loc[("completed", ""), "real"] == 40 == table.loc[("completed", ""), "simulated"]
    real_ttft = v.run.requests.ttft_s.mean() * 1e3
    assert table.loc[("ttft", "mean"), "real"] == pytest.approx(real_ttft)
    sim = v.result.requests
    assert table.loc[("ttft", "mean"), "simulated"] == pytest.approx(sim.ttft_s.mean() * 1e3)
    err = table.loc[("e2e", "mean")]
    assert err.error_pct == pytest.approx(100 * (err.simulated - err.real) / err.real)
    assert list(v.result.requests.arrival_s) == pytest.approx(list(v.run.requests.arrival_s))


def test_cli_writes_the_three_files_and_the_simulated_run(tmp_path):
    out = tmp_path / "val"
    result = invoke("validate", RUN, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"validation.json", "validation.csv", "validation.html", "simulated"}
    record = json.loads((out / "validation.json").read_text())
    assert record["run"] == "vllm_run_4090" and record["simulated_completed"] == 40
    assert set(record["mean_error_pct"]) == {"ttft", "tpot", "itl", "e2e"}
    csv = pd.read_csv(out / "validation.csv")
    assert list(csv.columns) == ["metric", "stat", "unit", "real", "simulated", "error_pct"] and len(csv) == 21
    page = (out / "validation.html").read_text()
    assert "Latency CDFs, real vs simulated" in page and "Running and waiting requests over time" in page
    assert "simulated on rtx-4090 with llama-3.1-8b, engine vllm-v1, tp 1, prefix caching on, max_num_seqs 256, " \
           "max_num_batched_tokens 2048, chunked prefill on, KV blocks 2588" in page


def test_max_error_exits_non_zero_naming_the_means(tmp_path):
    result = invoke("validate", RUN, "--out", tmp_path / "v", "--quiet", "--max-error", "0.001")
    assert result.exit_code == 1
    line = one_line(result)
    assert line.startswith("error: off by more than --max-error 0.001%: ttft mean ")
    ok = invoke("validate", RUN, "--out", tmp_path / "v", "--quiet", "--max-error", "1000")
    assert ok.exit_code == 0, ok.output


def test_workload_options_do_not_apply_to_a_replay(tmp_path):
    result = invoke("validate", RUN, "--out", tmp_path / "v", "--rate", "5")
    assert one_line(result) == ("error: --rate: validate replays the run's own requests and arrivals; workload "
                                "options do not apply")


def test_options_override_the_run_settings(tmp_path):
    result = invoke("validate", RUN, "--out", tmp_path / "v", "--quiet", "--gpu", "h100-sxm")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "v" / "validation.json").read_text())["config"]["gpu"] == "h100-sxm"


# ---- vLLM bench results ----
def test_bench_result_replays_succeeded_requests_from_their_start_times(tmp_path):
    run = load_real_run(bench_result(tmp_path))
    assert run.kind == "vllm bench result" and run.failed == 1
    assert [s.arrival_s for s in run.specs] == [0.0, 0.5]          # sorted by start time, rebased
    assert [s.prompt_tokens for s in run.specs] == [50, 100]
    assert list(run.requests.ttft_s) == pytest.approx([0.1, 0.2])
    assert list(run.requests.e2e_s) == pytest.approx([0.13, 0.26])
    assert sorted(run.itl_s) == pytest.approx([0.02, 0.03, 0.04])
    m = run_metrics(run.requests, run.itl_s, None)
    assert m["itl_mean"] == pytest.approx(0.03) and m["itl_p50"] == pytest.approx(0.03)
    assert m["duration"] == pytest.approx(0.76)                     # last finish 0.5 + 0.26, first arrival 0


def test_bench_result_needs_a_gpu_and_takes_one_from_the_options(tmp_path):
    path = bench_result(tmp_path)
    result = invoke("validate", path, "--out", tmp_path / "v", "--quiet")
    assert one_line(result) == ("error: bench: the run does not name its GPU (see `servesim gpus`); give --gpu or "
                                "--gpu-file")
    result = invoke("validate", path, "--out", tmp_path / "v", "--quiet", "--gpu", "h100-sxm")
    assert result.exit_code == 0, result.output


# ---- hostile inputs: one line naming the file ----
def test_missing_run_file_is_named(tmp_path):
    folder = copy_run(tmp_path)
    (folder / "requests.jsonl").unlink()
    result = invoke("validate", folder, "--out", tmp_path / "v")
    assert one_line(result) == (f"error: {folder}/requests.jsonl: not found (a run folder needs meta.json, "
                                "workload.jsonl, requests.jsonl)")
    assert not (tmp_path / "v").exists()


def test_malformed_json_line_is_named(tmp_path):
    folder = copy_run(tmp_path)
    text = (folder / "workload.jsonl").read_text().splitlines()
    text[2] = text[2][:-5]
    (folder / "workload.jsonl").write_text("\n".join(text) + "\n")
    result = invoke("validate", folder, "--out", tmp_path / "v")
    assert one_line(result).startswith(f"error: {folder}/workload.jsonl line 3: not valid JSON (")


def test_wrong_schema_is_named(tmp_path):
    folder = copy_run(tmp_path)
    text = (folder / "requests.jsonl").read_text().replace('"first_token_ts"', '"first_ts"', 1)
    (folder / "requests.jsonl").write_text(text)
    result = invoke("validate", folder, "--out", tmp_path / "v")
    assert one_line(result) == f"error: {folder}/requests.jsonl line 1: missing field 'first_token_ts'"
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"completed": 3}))
    result = invoke("validate", path, "--out", tmp_path / "v")
    assert one_line(result) == (f"error: {path}: not a `vllm bench serve --save-result --save-detailed` result "
                                "(no 'input_lens'; save it with --save-detailed)")
    path = bench_result(tmp_path, start_times=None)
    result = invoke("validate", path, "--out", tmp_path / "v", "--gpu", "h100-sxm")
    assert one_line(result) == (f"error: {path}: 'start_times' missing or not a list (this vLLM version does not "
                                "save start times, so arrivals cannot be replayed; --dataset takes its lengths "
                                "with --rate arrivals)")


def test_mismatched_files_and_bad_values_are_named(tmp_path):
    folder = copy_run(tmp_path)
    lines = (folder / "requests.jsonl").read_text().splitlines()
    (folder / "requests.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(RunFileError, match=r"requests.jsonl: 39 requests, but workload.jsonl has 40$"):
        load_real_run(folder)
    path = bench_result(tmp_path, ttfts=[0.2, "x", 0.0])
    with pytest.raises(TraceError, match=r"bench.json request 2: 'ttfts' must be a non-negative number, got x$"):
        load_real_run(path)
    (folder / "meta.json").write_text("[1, 2]")
    with pytest.raises(RunFileError, match=r"meta.json: expected a JSON object, got list$"):
        load_real_run(folder)
