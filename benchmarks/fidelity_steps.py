"""Step-time fidelity: predict measured step latencies with the cost model and report the error.

    python benchmarks/fidelity_steps.py benchmarks/data/h100_llama-3-8b_steps.csv [more.csv ...] [--out FILE]

Each input CSV has the schema of the measured reference (gpu id, model architecture columns, dtype, phase,
batch, tokens_per_seq, context, graph_ms_median, ...). Every row is predicted from its architecture columns
(not from a preset name) on the catalog GPU its `gpu` column names, the way it was measured: the whole step
replayed from one CUDA graph, no scheduler overhead (a forward pass only). Prints the mean and max absolute
percentage error per (gpu, model, phase) and overall; --out writes every input column plus predicted_ms.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hardware.gpus import get_gpu  # noqa: E402
from simulator.cost import CostModel, StepShape  # noqa: E402
from simulator.models import ModelSpec  # noqa: E402

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


def error_table(df: pd.DataFrame, measured: str = "graph_ms_median") -> pd.DataFrame:
    """Mean and max absolute percentage error per (gpu, model, phase), then overall."""
    ape = (df["predicted_ms"] - df[measured]).abs() / df[measured] * 100
    signed = (df["predicted_ms"] - df[measured]) / df[measured] * 100
    work = df.assign(ape=ape, signed=signed)
    if "tp" in work.columns:               # tensor-parallel rows are reported apart: "llama-3-8b tp2"
        tp = work["tp"].fillna(1).astype(int)
        work["model"] = work["model"].where(tp == 1, work["model"] + " tp" + tp.astype(str))
    table = work.groupby(["gpu", "model", "phase"], sort=False).agg(
        rows=("ape", "size"), mape_pct=("ape", "mean"), max_ape_pct=("ape", "max"), bias_pct=("signed", "mean"))
    overall = pd.DataFrame({"rows": [len(work)], "mape_pct": [ape.mean()], "max_ape_pct": [ape.max()],
                            "bias_pct": [signed.mean()]},
                           index=pd.MultiIndex.from_tuples([("all", "all", "all")], names=table.index.names))
    return pd.concat([table, overall]).round(2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Predict measured step times and report the error.")
    parser.add_argument("csv", nargs="+", help="measured step CSV(s) in the reference schema")
    parser.add_argument("--out", help="write every input column plus predicted_ms here")
    parser.add_argument("--eager", action="store_true",
                        help="predict eager_ms_median (no CUDA graph: per-kernel launch cost) instead")
    args = parser.parse_args(argv)
    measured = "eager_ms_median" if args.eager else "graph_ms_median"
    try:
        df = read_inputs(args.csv, measured)
        df["predicted_ms"] = predict(df, eager=args.eager).round(4)
    except ValueError as exc:          # FidelityInputError, unknown GPU id, invalid architecture
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(error_table(df, measured).to_string())
    if args.out:
        df.to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
