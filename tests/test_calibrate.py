"""`servesim calibrate`: fitting a GPU to vLLM kernel profiles, the GPU file it writes, and bad input."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cli import app
from hardware.gpus import get_gpu, load_gpu_file
from simulator.calibrate import (CalibrationError, datasheet_only, error_table, find_profiles, fit_gpu,
                                 kernel_families)
from simulator.cost import CostModel, StepShape
from simulator.cost.varlen import chunk_tiles, sampler_seconds, step_seconds, varlen_params
from simulator.models import get_model

REAL_4090 = Path(__file__).resolve().parents[2] / "shared/reference/vllm/profiles/RTX4090/meta-llama/Llama-3.1-8B/bf16"
# A made-up card: the RTX 4090's datasheet with efficiencies no default has.
TRUTH = dataclasses.replace(
    get_gpu("rtx-4090"), calibrated_from="", gemm_efficiency=0.9, gemm_hbm_efficiency=0.9, gemm_floor_s=7e-6,
    hbm_efficiency=0.8, attention_floor_s=12e-6, attention_efficiency=0.65, attention_ctas_per_sm=0.8,
    mixed_reread=0.3, mixed_window=5.0, mixed_sharpness=4.0, mixed_cta_s=4e-6, kernel_floor_s=2e-6,
    sampler_floor_s=20e-6, sampler_passes=1.2)
LAYERS = {"qkv_proj": "qkv_proj", "o_proj": "o_proj", "gate_up_proj": "gate_up_proj", "down_proj": "down_proj",
          "layernorm": "input_norm", "act_fn": "silu_mul", "rotary_emb": "rope"}


def write_profile(root: Path, gpu) -> Path:
    """A profile folder in vLLM's layout whose times are `gpu` priced by the cost model's own formulas."""
    model = dataclasses.replace(get_model("llama-3.1-8b"), num_layers=1)
    folder = root / "meta-llama" / "Llama-3.1-8B" / "bf16"
    (folder / "tp1").mkdir(parents=True)
    (folder / "meta.yaml").write_text("model: meta-llama/Llama-3.1-8B\nhardware: TEST\n")
    cm = CostModel(model, gpu, cuda_graphs=False, step_overhead_s=0.0)
    dense, per_seq = [], []
    for t in (1, 4, 16, 64, 256, 1024, 2048):
        ops = {o.name: o.seconds for o in cm.operators(StepShape(prefill=((t, 0),), num_sampled=t))}
        dense += [(layer, t, ops[op] * 1e6) for layer, op in LAYERS.items()]
        per_seq += [("lm_head", t, ops["lm_head"] * 1e6),
                    ("sampler", t, sampler_seconds(gpu.sampler_floor_s, gpu.sampler_passes, 128256,
                                                   gpu.hbm_bytes_per_s * gpu.hbm_efficiency, t) * 1e6)]
    pd.DataFrame(dense, columns=["layer", "tokens", "time_us"]).to_csv(folder / "tp1" / "dense.csv", index=False)
    pd.DataFrame(per_seq, columns=["layer", "sequences", "time_us"]).to_csv(folder / "tp1" / "per_sequence.csv",
                                                                          index=False)
    grid = [(p, s, n, c) for p in (0, 16, 256, 2048) for s in (0, 1024, 8192) for n in (0, 1, 16, 128)
            for c in (16, 1024, 8192) if (p or n) and not (p == 0 and s) and not (n == 0 and c != 16)]
    p_, s_, n_, c_ = (np.array(x, dtype=float) for x in zip(*grid))
    vp = varlen_params(gpu, model)
    tiles, padded = chunk_tiles(vp, p_, s_)
    times = step_seconds(vp, tiles, padded, s_ + p_, p_, n_, n_ * (c_ + 1)) * 1e6
    pd.DataFrame({"prefill_chunk": p_, "kv_prefill": s_, "n_decode": n_, "kv_decode": c_, "time_us": times}).to_csv(
        folder / "tp1" / "attention.csv", index=False)
    return folder


def test_fit_recovers_the_parameters_that_made_the_profile(tmp_path):
    profiles = find_profiles(write_profile(tmp_path, TRUTH))
    fitted = fit_gpu(profiles, datasheet_only(TRUTH))
    for name in ("gemm_efficiency", "gemm_hbm_efficiency", "hbm_efficiency", "attention_efficiency",
                 "attention_floor_s", "kernel_floor_s", "sampler_floor_s", "sampler_passes"):
        assert getattr(fitted, name) == pytest.approx(getattr(TRUTH, name), rel=0.03), name
    errors = error_table(profiles, fitted).set_index("family")
    assert (errors["mape_pct"] < 1.0).all(), errors
    # the datasheet-only defaults are off on the same kernels
    assert error_table(profiles, datasheet_only(TRUTH)).set_index("family").loc["gemm", "mape_pct"] > 3


def test_families_split_the_attention_grid(tmp_path):
    families = {k.family: len(k.measured_s) for k in kernel_families(find_profiles(write_profile(tmp_path, TRUTH))[0])}
    assert families["decode attention"] == 9 and families["prefill attention"] == 9
    assert families["mixed attention"] == 3 * 3 * 3 * 3


def test_cli_writes_a_gpu_file_run_accepts(tmp_path):
    folder = write_profile(tmp_path, TRUTH)
    out = tmp_path / "card.toml"
    result = CliRunner().invoke(app, ["calibrate", str(folder), "--gpu", "rtx-4090", "--out", str(out),
                                      "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == ("role,profile,family,kernels,mape_pct,datasheet_mape_pct,sum_err_pct,"
                                             "datasheet_sum_err_pct")
    gpu = load_gpu_file(out)
    assert gpu.name == "card" and gpu.calibrated_from == "vLLM kernel profiles, TEST Llama-3.1-8B tp1"
    assert gpu.gemm_efficiency == pytest.approx(0.9, rel=0.03) and gpu.hbm_bytes_per_s == 1008e9
    run = CliRunner().invoke(app, ["run", "--gpu-file", str(out), "--num-requests", "20", "--quiet",
                                   "--out", str(tmp_path / "o")])
    assert run.exit_code == 0, run.output


@pytest.mark.parametrize("setup, message", [
    (lambda d: None, "profile folder not found"),
    (lambda d: d.mkdir(), "no tp<N>/ folder with dense.csv, per_sequence.csv, attention.csv"),
    (lambda d: ((d / "tp1").mkdir(parents=True), (d / "meta.yaml").write_text("model: llama-3.1-8b\n")),
     "tp1/dense.csv: file not found"),
    (lambda d: ((d / "tp1").mkdir(parents=True), (d / "meta.yaml").write_text("gpu: x\n"),
                (d / "tp1" / "attention.csv").write_text("a\n1\n")), "no 'model' key; name the model with --model"),
])
def test_bad_profile_folders_are_one_line_errors(tmp_path, setup, message):
    folder = tmp_path / "p"
    setup(folder)
    with pytest.raises(CalibrationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        find_profiles(folder)
    result = CliRunner().invoke(app, ["calibrate", str(folder), "--gpu", "rtx-4090", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(not REAL_4090.exists(), reason="the shared vLLM profiles are not beside this checkout")
def test_the_shipped_4090_entry_is_the_fit_to_its_profile():
    shipped = get_gpu("rtx-4090")
    assert "RTX 4090" in shipped.calibrated_from and "casys-kaist/LLMServingSim" in shipped.calibrated_from
    errors = error_table(find_profiles(REAL_4090), shipped).set_index("family")
    assert errors.loc["gemm", "mape_pct"] < 6 and errors.loc["mixed attention", "mape_pct"] < 20


STEPS = Path(__file__).resolve().parents[1] / "benchmarks" / "data"


def test_step_csvs_fit_the_harness_fields(tmp_path):
    # the H200 Llama-3-8B steps: the fit may only improve on the shipped (H100-fitted) defaults
    out = tmp_path / "h200-steps.toml"
    result = CliRunner().invoke(app, ["calibrate", str(STEPS / "h200_llama-3-8b_steps.csv"), "--gpu", "h200",
                                      "--out", str(out), "--format", "csv"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(pd.io.common.StringIO(result.stdout)).set_index("phase")
    assert (table["mape_pct"] <= table["defaults_mape_pct"] + 1e-9).all() and (table["mape_pct"] < 3).all()
    gpu = load_gpu_file(out)
    assert gpu.calibrated_from == "measured steps h200_llama-3-8b_steps.csv" and 0.5 < gpu.gemm_efficiency < 1


def test_step_csvs_of_another_gpu_are_refused(tmp_path):
    result = CliRunner().invoke(app, ["calibrate", str(STEPS / "h100_llama-3-8b_steps.csv"), "--gpu", "h200",
                                      "--out", str(tmp_path / "x.toml")])
    assert result.exit_code == 2
    assert result.output.strip().endswith("rows measured on h100-sxm, not on h200; calibrate one GPU at a time "
                                          "(--gpu names it)")
    assert not (tmp_path / "x.toml").exists()
