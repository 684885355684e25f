"""Measured step sets of the project's own PyTorch harness (benchmarks/measure_steps.py, measure_tp.py): reading
them and pricing each row the way it was measured. Used by benchmarks/fidelity_steps.py (the step-fidelity
benchmark), benchmarks/calibrate.py and `servesim calibrate FILE.csv`.

A step CSV has the schema of the measured reference (gpu id, model architecture columns, dtype, phase, batch,
tokens_per_seq, context, graph_ms_median, ...). Every row is predicted from its architecture columns (not from a
preset name) on the catalog GPU its `gpu` column names: the whole step replayed from one CUDA graph, no
scheduler overhead (a forward pass only), the small operators as plain PyTorch ops (the 'unfused' recipe).
"""
from __future__ import annotations

import dataclasses

import pandas as pd

from hardware.gpus import get_gpu
from simulator.cost import CostModel, StepShape
from simulator.models import ModelSpec

ARCH_COLUMNS = ["hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "intermediate_size",
                "vocab_size"]
REQUIRED = ["gpu", "model", *ARCH_COLUMNS, "dtype", "phase", "batch", "tokens_per_seq", "context"]
PHASES = ("decode", "prefill")


class FidelityInputError(ValueError):
    """A CSV that cannot be predicted; the message is one line naming the file and the problem."""


def model_from_row(row) -> ModelSpec:
    """A ModelSpec from the architecture columns (untied LM head, as the measured steps run it)."""
    return ModelSpec(name=str(row["model"]), **{c: int(row[c]) for c in ARCH_COLUMNS})


def shape_from_row(row) -> StepShape:
    """decode: `batch` sequences each computing 1 token over `context` cached ones (attending context + 1);
    prefill: `batch` sequences of `tokens_per_seq` new tokens over `context` cached ones, all sampled."""
    b, n, c = int(row["batch"]), int(row["tokens_per_seq"]), int(row["context"])
    if row["phase"] == "decode":
        return StepShape(num_decode=b, decode_context_tokens=b * (c + 1), num_sampled=b)
    return StepShape(prefill=((n, c),) * b, num_sampled=b)


def measured_cost_model(row, eager: bool = False, calibration: dict | None = None, **options) -> CostModel:
    """The cost model of how the reference was measured: every step one CUDA graph (or, `eager`, launched op
    by op from Python), no per-step overhead, the small operators as plain PyTorch ops (unfused).
    `calibration` replaces GPUSpec calibration fields of the row's catalog GPU (calibrate.py tries values so)."""
    gpu = dataclasses.replace(get_gpu(str(row["gpu"])), **(calibration or {}))
    return CostModel(model_from_row(row), gpu, dtype=str(row["dtype"]), tp=tp_of(row),
                     cuda_graphs=not eager, cuda_graph_prefill=True, cuda_graph_max_batch=1 << 30,
                     elementwise="unfused", step_overhead_s=0.0, **options)


def tp_of(row) -> int:
    """The row's tensor-parallel degree: its optional `tp` column (measure_tp.py writes it), else 1."""
    value = row.get("tp", 1)
    return 1 if pd.isna(value) else int(value)


def predict(df: pd.DataFrame, eager: bool = False, calibration: dict | None = None, **options) -> pd.Series:
    """predicted_ms for every row (cost models are shared by rows of the same gpu/architecture/dtype/tp)."""
    cache: dict[tuple, CostModel] = {}
    out = []
    for _, row in df.iterrows():
        key = (row["gpu"], row["dtype"], tp_of(row), *(row[c] for c in ARCH_COLUMNS))
        if key not in cache:
            cache[key] = measured_cost_model(row, eager, calibration, **options)
        out.append(cache[key].step_cost(shape_from_row(row)).seconds * 1e3)
    return pd.Series(out, index=df.index, name="predicted_ms")


def read_inputs(paths: list[str], measured: str = "graph_ms_median") -> pd.DataFrame:
    """Concatenate the CSVs, checking the columns and values the prediction needs."""
    frames = []
    for path in paths:
        try:
            df = pd.read_csv(path)
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise FidelityInputError(f"{path}: cannot read CSV ({exc.__class__.__name__})") from None
        missing = [c for c in REQUIRED + [measured] if c not in df.columns]
        if missing:
            raise FidelityInputError(f"{path}: missing column(s) {', '.join(missing)}")
        bad = sorted(set(df["phase"]) - set(PHASES))
        if bad:
            raise FidelityInputError(f"{path}: unknown phase(s) {', '.join(map(str, bad))}; choose: decode, prefill")
        frames.append(df)
    return pd.concat(frames, ignore_index=True)
