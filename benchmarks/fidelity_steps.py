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
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simulator.harness import (ARCH_COLUMNS, PHASES, REQUIRED, FidelityInputError,  # noqa: E402,F401
                               measured_cost_model, model_from_row, predict, read_inputs, shape_from_row, tp_of)

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
