"""servesim explain: the per-operator table, the roofline chart and the command, with the textbook facts."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from hardware.gpus import get_gpu
from simulator.cost import CostModel
from simulator.present.explain import ExplainError, explain_step, format_explain_table, roofline_figure, step_shape
from simulator.models import get_model

H100 = get_gpu("h100-sxm")
runner = CliRunner()


def rows(df, name):
    return df[df["operator"] == name].iloc[0]


def test_rows_add_up_to_the_step_and_total_row():
    cm = CostModel(get_model("llama-3.1-8b"), H100)
    df = explain_step(cm, "decode", 8, 1024)
    body, total = df[df["operator"] != "total"], rows(df, "total")
    assert total["seconds"] == pytest.approx(cm.step_cost(step_shape("decode", 8, 1024)).seconds)
    assert body["seconds"].sum() == pytest.approx(total["seconds"])
    assert body["share"].sum() == pytest.approx(1.0)
    assert body["flops"].sum() == pytest.approx(total["flops"])


def test_decode_attention_is_about_one_flop_per_byte_and_memory_bound_for_mha():
    cm = CostModel(get_model("llama-2-7b"), H100)
    att = rows(explain_step(cm, "decode", 32, 2048), "attention_decode")
    assert att["intensity"] == pytest.approx(1.0, rel=0.01)
    assert att["bound"] == "memory"


def test_big_prefill_gemms_are_compute_bound():
    df = explain_step(CostModel(get_model("llama-3.1-8b"), H100), "prefill", 1, 4096)
    for name in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"):
        assert rows(df, name)["bound"] == "compute"
        assert rows(df, name)["intensity"] > 295        # right of the H100's ridge point


def test_doubling_bandwidth_speeds_decode_up_less_than_2x_and_the_table_shows_why():
    model = get_model("llama-3.1-8b")
    base = explain_step(CostModel(model, H100), "decode", 1, 1024)
    fast = explain_step(CostModel(model, H100, bandwidth_scale=2.0), "decode", 1, 1024)
    speedup = rows(base, "total")["seconds"] / rows(fast, "total")["seconds"]
    assert 1.2 < speedup < 2.0
    # memory-bound rows get faster; latency-bound rows barely move and the per-step overhead not at all
    assert rows(fast, "gate_up_proj")["seconds"] < 0.6 * rows(base, "gate_up_proj")["seconds"]
    for name in ("step_overhead", "input_norm", "rope"):
        assert rows(base, name)["bound"] == "latency"
        assert rows(fast, name)["seconds"] == pytest.approx(rows(base, name)["seconds"], rel=0.01)


def test_format_has_header_every_operator_and_total():
    cm = CostModel(get_model("llama-3.1-8b"), H100)
    df = explain_step(cm, "prefill", 2, 512)
    text = format_explain_table(df, cm)
    assert text.splitlines()[0].startswith("llama-3.1-8b on h100-sxm (tp=1")
    assert "ridge 295 FLOP/byte" in text
    for name in df["operator"]:
        assert name in text


def test_roofline_places_every_operator_under_the_roofs():
    cm = CostModel(get_model("llama-3.1-8b"), H100)
    ops = cm.operators(step_shape("decode", 16, 4096))
    fig = roofline_figure(cm, ops)
    names = [t.name for t in fig.data]
    assert names[:2] == ["peak roof", "achievable roof"] and "gemm" in names and "attention" in names
    for trace in fig.data[2:]:
        for x, y in zip(trace.x, trace.y):
            assert y <= min(cm.peak_flops_per_s, cm.peak_bytes_per_s * x) * (1 + 1e-9)
    assert "kv_cache_write" in fig.layout.title.text             # no FLOPs: listed, not placed
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"


@pytest.mark.parametrize("args, message", [
    (("decode", 0, 10), "batch must be at least 1, got 0"),
    (("prefil", 1, 10), "unknown phase 'prefil'; choose one of: prefill, decode"),
    (("prefill", 1, 0), "a prefill needs at least 1 prompt token, got 0"),
    (("decode", 1, -1), "context must be non-negative, got -1"),
    (("decode", 1, 10**7), "exceed llama-3.1-8b's context"),
])
def test_bad_arguments_are_one_line_errors(args, message):
    with pytest.raises(ExplainError) as err:
        explain_step(CostModel(get_model("llama-3.1-8b"), H100), *args)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_cli_prints_the_table_and_writes_the_chart(tmp_path):
    html = tmp_path / "roofline.html"
    result = runner.invoke(app, ["explain", "--gpu", "h100-sxm", "--model", "llama-2-7b", "--phase", "decode",
                                 "--batch", "32", "--context", "2048", "--html", str(html)])
    assert result.exit_code == 0, result.output
    assert "attention_decode" in result.stdout and "total" in result.stdout
    assert html.read_text().count("plotly") > 0


@pytest.mark.parametrize("args, message", [
    (["--phase", "prefil"], "error: unknown phase 'prefil'"),
    (["--gpu", "h900"], "error: unknown GPU 'h900'"),
    (["--tp", "3"], "error: tp=3 does not divide"),
    (["--attention", "paged"], "error: unknown attention 'paged'"),
    (["--elementwise", "bogus"], "error: unknown elementwise 'bogus'; choose one of: fused, vllm-v1, unfused"),
    (["--gpu", "h200", "--gpu-file", "x.toml"], "error: give a GPU name or a GPU file, not both"),
    (["--gpu-file", "missing.toml"], "error: missing.toml: GPU file not found"),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, args, message):
    html = tmp_path / "r.html"
    result = runner.invoke(app, ["explain", "--html", str(html), *args])
    assert result.exit_code == 2
    assert result.output.strip().startswith(message) and len(result.output.strip().splitlines()) == 1
    assert not html.exists()


def test_cli_reads_a_gpu_file_and_a_model_config(tmp_path):
    gpu = tmp_path / "half-h100.toml"
    gpu.write_text('base = "h100-sxm"\nhbm_bytes_per_s = "1.675 TB/s"\n')
    config = Path(__file__).parent / "data" / "hf_configs" / "llama-3.1-8b.json"
    result = runner.invoke(app, ["explain", "--gpu-file", str(gpu), "--model-config", str(config)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("llama-3.1-8b on half-h100 (tp=1") and "1.68 TB/s" in result.stdout.splitlines()[0]
    from simulator.engines import cost_model_options, get_engine     # explain prices as the default engine runs
    half = CostModel(get_model("llama-3.1-8b"), replace(H100, hbm_bytes_per_s=1.675e12),
                     **cost_model_options(get_engine("vllm-v1")))
    total = [line for line in result.stdout.splitlines() if line.startswith("total")][0]
    assert f"{half.step_cost(step_shape('decode', 1, 1024)).seconds * 1e3:.3f} ms" in total


def test_cli_unfused_elementwise_shows_pytorch_kernels_bound_on_the_sms():
    # Plain PyTorch's SiLU and multiply on strided halves: 2 x 8192 x 14336 elements a layer at
    # 132 SMs x 1.98 GHz x 1.2 an SM-clock take longer than their bytes at 94% of 3.35 TB/s.
    fused = runner.invoke(app, ["explain", "--phase", "prefill", "--prompt", "8192"])
    unfused = runner.invoke(app, ["explain", "--phase", "prefill", "--prompt", "8192", "--elementwise", "unfused"])
    assert fused.exit_code == unfused.exit_code == 0
    line = lambda out: [ln for ln in out.splitlines() if ln.startswith("silu_mul")][0].split()  # noqa: E731
    assert line(fused.stdout)[-4] == "memory" and line(unfused.stdout)[-4] == "compute"
