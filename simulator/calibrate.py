"""`servesim calibrate`: fit a GPU entry's efficiency parameters to vLLM kernel profiles.

A profile folder has the layout of vLLM kernel profiles published with casys-kaist/LLMServingSim (MIT):
`<model>/bf16/meta.yaml` and one `tp<N>/` folder per tensor-parallel degree holding `dense.csv` (layer, tokens,
time_us), `per_sequence.csv` (lm_head and sampler by sequences) and `attention.csv` (prefill chunk x cached
tokens x decodes x decode context). Every time is one kernel of one decoder layer, measured inside vLLM.

Each parameter group is fitted to the kernels it prices, by least squares on log times (scipy), through the
same functions the cost model prices steps with (CostModel.operators for GEMMs and elementwise kernels,
simulator/cost/varlen.py for attention and the sampler), in this order:
  decode and prefill attention   hbm_efficiency, attention_floor_s, attention_efficiency, attention_ctas_per_sm
  mixed-step attention    mixed_reread, mixed_window, mixed_sharpness, mixed_cta_s
  GEMMs (+ LM head)       gemm_efficiency, gemm_hbm_efficiency, gemm_floor_s
  elementwise kernels     kernel_floor_s (on those of up to 16 tokens: the rest stream partly from L2)
  sampler                 sampler_floor_s, sampler_passes
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from hardware.gpus import GPUSpec
from simulator.cost.model import CostModel, StepShape
from simulator.cost.varlen import chunk_tiles, sampler_seconds, step_seconds, varlen_params
from simulator.models import ModelSpec, get_model

PROFILE_FILES = ("dense.csv", "per_sequence.csv", "attention.csv")
# profile layer name -> the cost model's operator name
DENSE_OPERATORS = {"qkv_proj": "qkv_proj", "o_proj": "o_proj", "gate_up_proj": "gate_up_proj",
                   "down_proj": "down_proj", "layernorm": "input_norm", "act_fn": "silu_mul", "rotary_emb": "rope",
                   "qk_norm": "qk_norm"}
GEMMS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj", "lm_head")
ELEMENTWISE = ("layernorm", "act_fn", "rotary_emb", "qk_norm")


class CalibrationError(ValueError):
    """A profile folder that cannot be read or fitted; the message is one line naming the path."""


class Profile(NamedTuple):
    """One tensor-parallel degree of one model's kernel profile."""

    path: Path
    model: ModelSpec
    tp: int
    dense: pd.DataFrame
    per_sequence: pd.DataFrame
    attention: pd.DataFrame
    source: str                  # 'GPU model tpN', as the profile's meta.yaml names them


class Group(NamedTuple):
    """A parameter group: GPUSpec fields with (low, high) bounds, fitted to the kernel families named."""

    families: tuple[str, ...]
    bounds: dict[str, tuple[float, float]]


GROUPS = (
    Group(("decode attention", "prefill attention"),
          {"hbm_efficiency": (0.2, 1.3), "attention_floor_s": (0.0, 60e-6), "attention_efficiency": (0.05, 1.3),
           "attention_ctas_per_sm": (0.1, 8.0)}),
    Group(("mixed attention",), {"mixed_reread": (0.0, 1.0), "mixed_window": (0.1, 30.0),
                                 "mixed_sharpness": (0.5, 30.0), "mixed_cta_s": (0.0, 1e-4)}),
    Group(("gemm",), {"gemm_efficiency": (0.2, 1.2), "gemm_hbm_efficiency": (0.2, 1.3),
                      "gemm_floor_s": (0.0, 60e-6)}),
    Group(("elementwise <= 16 tokens",), {"kernel_floor_s": (0.0, 30e-6)}),
    Group(("sampler",), {"sampler_floor_s": (0.0, 500e-6), "sampler_passes": (0.0, 50.0)}),
)
FITTED_FIELDS = tuple(name for group in GROUPS for name in group.bounds)


# ---------------------------------------------------------------------- reading
def find_profiles(path: str | Path, model: str | None = None) -> list[Profile]:
    """Every tp<N>/ folder under `path` (a model's bf16/ folder, or one tp<N>/ folder), read."""
    path = Path(path)
    if not path.is_dir():
        raise CalibrationError(f"{path}: profile folder not found")
    folders = [path] if (path / "attention.csv").exists() else sorted(p for p in path.glob("tp*") if p.is_dir())
    if not folders:
        raise CalibrationError(f"{path}: no tp<N>/ folder with {', '.join(PROFILE_FILES)} (the layout of vLLM "
                               "kernel profiles: <model>/bf16/meta.yaml and tp1/, tp2/, ...)")
    return [read_profile(folder, model) for folder in folders]


def read_profile(folder: Path, model: str | None = None) -> Profile:
    """One tp<N>/ folder; the model comes from `model` or the meta.yaml beside it (a Hugging Face id)."""
    meta = _read_meta(folder.parent / "meta.yaml")
    try:
        tp = int(folder.name.removeprefix("tp"))
    except ValueError:
        raise CalibrationError(f"{folder}: expected a folder named tp<N> (tensor-parallel degree)") from None
    name = model or meta.get("model")
    if not name:
        raise CalibrationError(f"{folder.parent / 'meta.yaml'}: no 'model' key; name the model with --model")
    try:
        spec = get_model(str(name))
    except ValueError as exc:
        raise CalibrationError(f"{folder}: {exc} (give --model)") from None
    frames = [_read_csv(folder / f) for f in PROFILE_FILES]
    source = f"{meta.get('hardware') or meta.get('gpu') or '?'} {str(name).rsplit('/', 1)[-1]} tp{tp}"
    return Profile(folder, spec, tp, *frames, source)


def _read_meta(path: Path) -> dict:
    if not path.exists():
        return {}
    from workloads.files import read_mapping
    return read_mapping(path, "profile meta file", error=CalibrationError)


def _read_csv(path: Path) -> pd.DataFrame:
    columns = {"dense.csv": ("layer", "tokens", "time_us"), "per_sequence.csv": ("layer", "sequences", "time_us"),
               "attention.csv": ("prefill_chunk", "kv_prefill", "n_decode", "kv_decode", "time_us")}[path.name]
    try:
        df = pd.read_csv(path)
    except FileNotFoundError:
        raise CalibrationError(f"{path}: file not found") from None
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise CalibrationError(f"{path}: cannot read CSV ({exc.__class__.__name__})") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise CalibrationError(f"{path}: missing column(s) {', '.join(missing)}")
    df = df[df["layer"] != "layer"] if "layer" in df.columns else df     # a repeated header line
    df = df.astype({c: float for c in columns if c != "layer"})
    if (df["time_us"] <= 0).any():
        raise CalibrationError(f"{path}: time_us must be positive")
    return df.reset_index(drop=True)


# ---------------------------------------------------------------------- prediction (the cost model's own formulas)
class Kernels(NamedTuple):
    """Measured kernels of one family and a predictor of their seconds for a trial GPU."""

    family: str
    measured_s: np.ndarray
    predict: Callable[[GPUSpec], np.ndarray]


def _one_layer(model: ModelSpec) -> ModelSpec:
    """The model with one decoder layer (as the profiles run it), MoE layers kept MoE."""
    return dataclasses.replace(model, num_layers=1, first_dense_layers=0)


def _dense_kernels(p: Profile, layers: tuple[str, ...], family: str, max_tokens: float = np.inf) -> Kernels | None:
    rows = p.dense[p.dense["layer"].isin(layers) & (p.dense["tokens"] <= max_tokens)]
    lm = p.per_sequence[p.per_sequence["layer"] == "lm_head"] if "lm_head" in layers else p.per_sequence.iloc[:0]
    if rows.empty and lm.empty:
        return None
    model = _one_layer(p.model)

    def predict(gpu: GPUSpec) -> np.ndarray:
        cm = CostModel(model, gpu, tp=p.tp, cuda_graphs=False, step_overhead_s=0.0)
        seconds = {}
        for tokens, group in rows.groupby("tokens", sort=False):
            ops = {o.name: o.seconds for o in cm.operators(StepShape(prefill=((int(tokens), 0),), num_sampled=0))}
            seconds.update((i, ops[DENSE_OPERATORS[name]]) for i, name in zip(group.index, group["layer"]))
        head = [{o.name: o.seconds for o in cm.operators(StepShape(prefill=((int(s), 0),), num_sampled=int(s)))}
                ["lm_head"] for s in lm["sequences"]]
        return np.array([seconds[i] for i in rows.index] + head)

    measured = np.concatenate([rows["time_us"].to_numpy(), lm["time_us"].to_numpy()]) * 1e-6
    return Kernels(family, measured, predict)


def _attention_kernels(p: Profile, family: str) -> Kernels:
    a = p.attention
    pre, dec = a["prefill_chunk"].to_numpy(), a["n_decode"].to_numpy()
    mask = {"decode attention": (pre == 0) & (dec > 0), "prefill attention": (pre > 0) & (dec == 0),
            "mixed attention": (pre > 0) & (dec > 0)}[family]
    rows = a[mask]
    new, cached = rows["prefill_chunk"].to_numpy(), rows["kv_prefill"].to_numpy()
    n, ctx = rows["n_decode"].to_numpy(), rows["kv_decode"].to_numpy()

    def predict(gpu: GPUSpec) -> np.ndarray:
        vp = varlen_params(gpu, p.model, tp=p.tp)
        tiles, padded = chunk_tiles(vp, new, cached)
        # decode rows attend their context plus the new token; the profile's kv_decode counts the cached ones
        return step_seconds(vp, tiles, padded, cached + new, new, n, n * (ctx + 1))

    return Kernels(family, rows["time_us"].to_numpy() * 1e-6, predict)


def _sampler_kernels(p: Profile) -> Kernels | None:
    rows = p.per_sequence[p.per_sequence["layer"] == "sampler"]
    if rows.empty:
        return None
    seqs = rows["sequences"].to_numpy()

    def predict(gpu: GPUSpec) -> np.ndarray:
        return sampler_seconds(gpu.sampler_floor_s, gpu.sampler_passes, p.model.vocab_size,
                               gpu.hbm_bytes_per_s * gpu.hbm_efficiency, seqs)

    return Kernels("sampler", rows["time_us"].to_numpy() * 1e-6, predict)


def kernel_families(p: Profile) -> list[Kernels]:
    """The profile's kernels by parameter group (families absent from the profile are left out)."""
    out = [_attention_kernels(p, f) for f in ("decode attention", "prefill attention", "mixed attention")]
    # Small elementwise kernels are their fixed time (fitted); bigger ones show what the model leaves out: inside
    # a step they read activations the previous kernel just wrote, partly from L2 (reported, not fitted).
    out += [_dense_kernels(p, GEMMS, "gemm"), _dense_kernels(p, ELEMENTWISE, "elementwise <= 16 tokens", 16),
            _dense_kernels(p, ELEMENTWISE, "elementwise"), _sampler_kernels(p)]
    return [k for k in out if k is not None and len(k.measured_s)]


# ---------------------------------------------------------------------- fitting
def fit_gpu(profiles: list[Profile], base: GPUSpec) -> GPUSpec:
    """`base` with every parameter group fitted to the profiles' kernels, group after group."""
    gpu = base
    families = [k for p in profiles for k in kernel_families(p)]
    for group in GROUPS:
        kernels = [k for k in families if k.family in group.families]
        if kernels:
            gpu = _fit_group(gpu, group, kernels)
    return gpu


def _fit_group(gpu: GPUSpec, group: Group, kernels: list[Kernels]) -> GPUSpec:
    names = list(group.bounds)
    scale = np.array([max(abs(group.bounds[n][1]), 1e-12) for n in names])    # fit in O(1) units
    low = np.array([group.bounds[n][0] for n in names]) / scale
    high = np.array([group.bounds[n][1] for n in names]) / scale
    x0 = np.clip(np.array([getattr(gpu, n) for n in names]) / scale, low, high)
    measured = np.log(np.concatenate([k.measured_s for k in kernels]))

    def residuals(x: np.ndarray) -> np.ndarray:
        trial = dataclasses.replace(gpu, **dict(zip(names, (x * scale).tolist())))
        predicted = np.concatenate([k.predict(trial) for k in kernels])
        return np.log(np.maximum(predicted, 1e-12)) - measured

    result = least_squares(residuals, x0, bounds=(low, high), x_scale="jac", max_nfev=200)
    return dataclasses.replace(gpu, **{n: float(v) for n, v in zip(names, result.x * scale)})


def datasheet_only(gpu: GPUSpec) -> GPUSpec:
    """`gpu` with every fitted field back at its default: what servesim assumes without a calibration."""
    defaults = {f.name: f.default for f in dataclasses.fields(GPUSpec) if f.name in FITTED_FIELDS}
    return dataclasses.replace(gpu, calibrated_from="", **defaults)


def error_table(profiles: list[Profile], gpu: GPUSpec) -> pd.DataFrame:
    """Per profile and kernel family: kernels, mean absolute percentage error, and the error of the summed
    time (what a step of such kernels would be off by)."""
    rows = []
    for p in profiles:
        for k in kernel_families(p):
            pred = k.predict(gpu)
            ape = np.abs(pred / k.measured_s - 1.0) * 100
            rows.append({"profile": p.source, "family": k.family, "kernels": len(pred), "mape_pct": ape.mean(),
                         "summed_error_pct": (pred.sum() / k.measured_s.sum() - 1.0) * 100})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------- output
def gpu_file_text(gpu: GPUSpec, base_name: str, source: str) -> str:
    """A GPU file (TOML, for --gpu-file): the catalog entry as base plus the fitted fields."""
    lines = [f"# Fitted by `servesim calibrate` to vLLM kernel profiles: {source}", f'base = "{base_name}"',
             f'calibrated_from = "{source}"']
    lines += [f"{name} = {getattr(gpu, name):.6g}" for name in FITTED_FIELDS]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- the project's own measured steps
# The harness recipe's fractions and fixed times (as benchmarks/calibrate.py fits them on the H100 set), within
# physical bounds; the blend exponent, launch cost and non-vectorized rate stay as the GPU entry has them.
STEP_BOUNDS: dict[str, tuple[float, float]] = {
    "gemm_efficiency": (0.3, 1.1), "attention_efficiency": (0.1, 1.1), "hbm_efficiency": (0.3, 1.1),
    "gemm_hbm_efficiency": (0.3, 1.1), "kernel_floor_s": (0.0, 10e-6), "gemm_floor_s": (0.0, 20e-6)}


def read_steps(paths: list[str | Path], gpu: GPUSpec) -> pd.DataFrame:
    """Measured step CSVs (benchmarks/measure_steps.py) of `gpu`: every row must name it in its `gpu` column."""
    from simulator.harness import read_inputs
    df = read_inputs([str(p) for p in paths])
    other = sorted(set(df["gpu"].astype(str)) - {gpu.name})
    if other:
        raise CalibrationError(f"{paths[0]}: rows measured on {', '.join(other)}, not on {gpu.name}; calibrate one "
                               "GPU at a time (--gpu names it)")
    return df


def _step_calibration(gpu: GPUSpec) -> dict[str, float]:
    return {name: getattr(gpu, name) for name in STEP_BOUNDS}


def fit_steps(df: pd.DataFrame, base: GPUSpec) -> GPUSpec:
    """`base` with the harness recipe's fields fitted (least squares on log step times) to measured steps."""
    from simulator.harness import predict
    names = list(STEP_BOUNDS)
    scale = np.array([STEP_BOUNDS[n][1] for n in names])
    low, high = (np.array([STEP_BOUNDS[n][i] for n in names]) / scale for i in (0, 1))
    measured = np.log(df["graph_ms_median"].to_numpy())

    def residuals(x: np.ndarray) -> np.ndarray:
        values = dict(zip(names, (x * scale).tolist()))
        return np.log(predict(df, calibration=values).to_numpy()) - measured

    x0 = np.clip(np.array([getattr(base, n) for n in names]) / scale, low, high)
    result = least_squares(residuals, x0, bounds=(low, high), x_scale="jac", max_nfev=100)
    return dataclasses.replace(base, **{n: float(v) for n, v in zip(names, result.x * scale)})


def step_error_table(df: pd.DataFrame, gpu: GPUSpec) -> pd.DataFrame:
    """Per model and phase: steps, MAPE and mean signed error of the step times with `gpu`'s harness fields."""
    from simulator.harness import predict
    pred = predict(df, calibration=_step_calibration(gpu)).to_numpy()
    err = (pred / df["graph_ms_median"].to_numpy() - 1.0) * 100
    work = df.assign(ape=np.abs(err), signed=err)
    out = work.groupby(["model", "phase"], sort=False).agg(steps=("ape", "size"), mape_pct=("ape", "mean"),
                                                          bias_pct=("signed", "mean")).reset_index()
    return out


def step_file_text(gpu: GPUSpec, base_name: str, source: str) -> str:
    """A GPU file of the harness fields fitted to measured steps."""
    lines = [f"# Fitted by `servesim calibrate` to measured steps: {source}", f'base = "{base_name}"',
             f'calibrated_from = "{source}"']
    lines += [f"{name} = {getattr(gpu, name):.6g}" for name in STEP_BOUNDS]
    return "\n".join(lines) + "\n"
