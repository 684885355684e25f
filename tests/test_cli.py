"""The CLI: one-line errors with a non-zero exit for bad input, and a real run that writes every file."""
from __future__ import annotations

import json
from unittest.mock import patch

import pytest
from typer.testing import CliRunner

import cli
from simulator.config import SimConfig

runner = CliRunner()
TINY = ["--num-requests", "20", "--rate", "5", "--prompt-len", "64", "--output-len", "8"]


def invoke(*args):
    return runner.invoke(cli.app, list(args))


def one_line_error(result) -> str:
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    return lines[0]


def test_run_writes_every_file(tmp_path):
    out = tmp_path / "res"
    result = invoke("run", *TINY, "--out", str(out))
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} >= {"requests.csv", "steps.csv", "kv.csv", "summary.json", "config.json"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed"] == 20 and summary["rejected"] == 0
    config = json.loads((out / "config.json").read_text())
    assert config["num_requests"] == 20 and config["resolved"]["kv_capacity_tokens"] > 0
    assert "request throughput" in result.output


def test_options_reach_the_config(tmp_path):
    with patch("simulator.api.simulate") as sim:
        sim.side_effect = RuntimeError("stop")
        result = runner.invoke(cli.app, ["run", "--gpu", "a100-80gb", "--batching", "static", "--batch-size", "16",
                                         "--chunked-prefill", "--cuda-graphs", "off", "--slo-ttft", "0.5",
                                         "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and result.stderr.startswith("error: internal error (RuntimeError: stop)")
    cfg = sim.call_args.args[0]
    assert cfg == SimConfig(gpu="a100-80gb", batching="static", batch_size=16, chunked_prefill=True,
                            cuda_graphs=False, slo_ttft_s=0.5)
    assert not (tmp_path / "x").exists()                       # no partial output on failure


def test_config_file_and_override(tmp_path):
    toml = tmp_path / "s.toml"
    toml.write_text('rate = 3.0\nnum-requests = 10\nprompt_len = "32"\noutput_len = "4"\n')
    yaml = tmp_path / "s.yaml"
    yaml.write_text("rate: 3.0\nnum_requests: 10\nprompt_len: '32'\noutput_len: '4'\n")
    for path in (toml, yaml):
        result = invoke("run", "--config", str(path), "--rate", "2", "--out", str(tmp_path / path.stem), "--format",
                        "json")
        assert result.exit_code == 0, result.output
        config = json.loads((tmp_path / path.stem / "config.json").read_text())
        assert config["rate"] == 2.0 and config["num_requests"] == 10


@pytest.mark.parametrize("args, expected", [
    (["--gpu", "h100-sxn"], "unknown GPU 'h100-sxn' (did you mean 'h100-sxm'?)"),
    (["--model", "llama-3.1-8"], "unknown model 'llama-3.1-8'"),
    (["--rate", "-1"], "--rate: must be positive, got -1.0"),
    (["--rate", "0"], "--rate: must be positive, got 0.0"),
    (["--batching", "greedy"], "unknown batching policy 'greedy'; choose one of: static, dynamic, continuous"),
    (["--kv", "radix"], "unknown KV cache manager 'radix'; choose one of: contiguous, paged"),
    (["--cuda-graphs", "maybe"], "--cuda-graphs: expected on or off, got 'maybe'"),
    (["--model", "llama-3.1-8b", "--gpu-memory-utilization", "0.1"], "GB (8"),
    (["--gpu-memory-utilization", "1.5"], "--gpu-memory-utilization: must be at most 1, got 1.5"),
    (["--prompt-len", "uniform:9"], "uniform"),
])
def test_bad_input_is_one_line(tmp_path, args, expected):
    line = one_line_error(invoke("run", *TINY, *args, "--out", str(tmp_path / "o")))
    assert expected in line
    assert not (tmp_path / "o").exists()


def test_model_that_does_not_fit_says_how_many_bytes_are_missing(tmp_path):
    line = one_line_error(invoke("run", *TINY, "--gpu-memory-utilization", "0.1", "--out", str(tmp_path / "o")))
    assert "missing" in line and "bytes" in line and "llama-3.1-8b" in line


def test_malformed_trace_line_names_file_and_line(tmp_path):
    trace = tmp_path / "bad.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n0.0,10,5\n0.5,ten,5\n")
    line = one_line_error(invoke("run", "--trace", str(trace), "--out", str(tmp_path / "o")))
    assert "bad.csv" in line and "line 3" in line


def test_missing_files_are_one_line(tmp_path):
    assert "not found" in one_line_error(invoke("run", "--config", str(tmp_path / "nope.toml")))
    one_line_error(invoke("run", "--trace", str(tmp_path / "nope.csv")))


# 4096 tokens = 256 blocks of 16; vLLM V0 keeps a 1% admission watermark (2 blocks): 254 x 16 = 4064 tokens
@pytest.mark.parametrize("engine, capacity", [("vllm-v1", 4096), ("vllm-v0", 4064)])
def test_request_longer_than_kv_capacity_is_rejected_and_counted(tmp_path, engine, capacity):
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n0.0,100,10\n0.1,5000,10\n0.2,100,10\n")
    out = tmp_path / "o"
    result = invoke("run", "--trace", str(trace), "--kv-capacity-tokens", "4096", "--engine", engine,
                    "--out", str(out))
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed"] == 2 and summary["rejected"] == 1
    assert summary["rejected_reasons"] == {f"longer than KV capacity ({capacity} tokens)": 1}
    assert "rejected: longer than KV capacity" in result.output


def test_catalog_commands():
    gpus = invoke("gpus", "--format", "csv")
    assert gpus.exit_code == 0 and "h100-sxm" in gpus.output and "a100-80gb" in gpus.output
    models = invoke("models", "--format", "json")
    rows = json.loads(models.output)
    assert any(r["model"] == "llama-3.1-8b" and r["kv_kib_per_token_bf16"] == 128 for r in rows)


def test_gpu_file_and_model_config_override_the_defaults(tmp_path):
    gpu = tmp_path / "gpu.toml"
    gpu.write_text('name = "half-h100"\nbase = "h100-sxm"\nhbm_bytes_per_s = "1.675 TB/s"\n')
    model = tmp_path / "config.json"
    model.write_text(json.dumps({"hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32,
                                 "num_key_value_heads": 8, "intermediate_size": 8192, "vocab_size": 128256,
                                 "max_position_embeddings": 8192}))
    out = tmp_path / "o"
    result = invoke("run", *TINY, "--gpu-file", str(gpu), "--model-config", str(model), "--out", str(out))
    assert result.exit_code == 0, result.output
    resolved = json.loads((out / "config.json").read_text())["resolved"]
    assert resolved["gpu"]["name"] == "half-h100" and resolved["gpu"]["hbm_bytes_per_s"] == 1.675e12
    assert resolved["model"]["hidden_size"] == 2048 and resolved["model"]["num_layers"] == 16
