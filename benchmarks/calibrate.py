"""Fit the cost model's calibration defaults (hardware/gpus.py) to measured step times.

    python benchmarks/calibrate.py [CSV ...] [--out FILE]

With no CSV it fits on the calibration set only: the shared H100 Llama-3-8B reference steps
(benchmarks/data/h100_llama-3-8b_steps.csv). Held-out sets (other shapes, the H200) must not be passed here:
they judge the fit. The fit minimizes the mean of the decode and the prefill mean absolute percentage error
by coordinate descent over the fractions and fixed times below, within physical bounds, starting from the
current defaults; it is deterministic. Prints the fitted values next to the defaults and the error per
phase; --out writes them as CSV. Fixed, not fitted: the blend exponent, the eager launch cost, the per-step
overhead (outside a forward pass) and the non-vectorized elementwise rate (set from the in-step kernel
profile, benchmarks/data/h100_profile_kernels.csv).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fidelity_steps import PHASES, predict, read_inputs  # noqa: E402
from hardware.gpus import GPUSpec  # noqa: E402

CALIBRATION_SET = [str(Path(__file__).resolve().parent / "data" / "h100_llama-3-8b_steps.csv")]
# name: (low, high); fixed times in seconds
PARAMETERS: dict[str, tuple[float, float]] = {
    "gemm_efficiency": (0.5, 0.95),
    "attention_efficiency": (0.3, 0.8),
    "hbm_efficiency": (0.7, 1.0),
    "gemm_hbm_efficiency": (0.7, 1.0),
    "kernel_floor_s": (0.5e-6, 6e-6),
    "gemm_floor_s": (1e-6, 10e-6),
}


def default_values() -> dict[str, float]:
    """The shipped defaults of the fitted GPUSpec fields."""
    return {f.name: f.default for f in dataclasses.fields(GPUSpec) if f.name in PARAMETERS}


def phase_errors(df: pd.DataFrame, values: dict[str, float]) -> dict[str, float]:
    """Mean absolute percentage error per phase with the calibration fields set to `values`."""
    ape = (predict(df, calibration=values) / df["graph_ms_median"] - 1.0).abs() * 100
    return {phase: float(ape[df["phase"] == phase].mean()) for phase in PHASES if (df["phase"] == phase).any()}


def objective(df: pd.DataFrame, values: dict[str, float]) -> float:
    errors = phase_errors(df, values)
    return sum(errors.values()) / len(errors)


def fit(df: pd.DataFrame, rounds: int = 6) -> dict[str, float]:
    """Coordinate descent: try each parameter up and down by a relative step, keep improvements, halve the step."""
    values = default_values()
    best = objective(df, values)
    step = 0.08
    for _ in range(rounds):
        improved = True
        while improved:
            improved = False
            for name, (low, high) in PARAMETERS.items():
                for sign in (1, -1):
                    trial = dict(values, **{name: min(high, max(low, values[name] * (1 + sign * step)))})
                    score = objective(df, trial)
                    if score < best - 1e-9:
                        values, best, improved = trial, score, True
        step /= 2
    return values


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("csv", nargs="*", default=CALIBRATION_SET, help="measured step CSVs to fit on")
    p.add_argument("--out", default="", help="CSV of the fitted values")
    args = p.parse_args(argv)
    df = read_inputs(args.csv)
    before = default_values()
    values = fit(df)
    table = pd.DataFrame({"default": before, "fitted": values})
    print(table.to_string(float_format=lambda v: f"{v:.4g}"))
    for label, vals in (("default", before), ("fitted", values)):
        errs = phase_errors(df, vals)
        print(f"{label:>8} MAPE: " + ", ".join(f"{k} {v:.2f}%" for k, v in errs.items()))
    if args.out:
        table.to_csv(args.out, index_label="parameter")
    return 0


if __name__ == "__main__":
    sys.exit(main())
