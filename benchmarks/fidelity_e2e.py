"""End-to-end fidelity: replay real vLLM serving runs with `servesim validate` and print one table.

Each RUN is a run folder (meta.json, workload.jsonl, requests.jsonl, as in the served runs published with
casys-kaist/LLMServingSim, MIT license) or a `vllm bench serve --save-result --save-detailed` JSON. Every run is
simulated with the engine settings its metadata records (options after `--` override them for every run, e.g.
`-- --gpu-file my-4090.toml`), and the table gives, per run and metric, the real and simulated mean and p99 and
their signed errors ((simulated - real) / real).

    python benchmarks/fidelity_e2e.py ../shared/reference/vllm/runs/rtx4090_llama-3.1-8b --out fidelity_e2e.csv
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from simulator.validate import load_real_run, validate  # noqa: E402

METRICS = ("ttft", "tpot", "itl", "e2e")


def fidelity_rows(run_path: Path, overrides: dict) -> list[dict]:
    """One row per latency metric (mean and p99, real / simulated / error) plus one for request throughput."""
    v = validate(load_real_run(run_path), overrides)
    table = v.table.set_index(["metric", "stat"])
    rows = []
    for name in METRICS:
        row = {"run": v.run.name, "metric": f"{name} (ms)"}
        for stat in ("mean", "p99"):
            real, sim, err = table.loc[(name, stat), ["real", "simulated", "error_pct"]]
            row.update({f"real_{stat}": real, f"sim_{stat}": sim, f"err_{stat}_pct": err})
        rows.append(row)
    real, sim, err = table.loc[("request_throughput", ""), ["real", "simulated", "error_pct"]]
    rows.append({"run": v.run.name, "metric": "throughput (req/s)", "real_mean": real, "sim_mean": sim,
                 "err_mean_pct": err})
    return rows


def parse_overrides(args: list[str]) -> dict:
    """`--gpu h100-sxm --max-num-seqs 64` -> SimConfig fields, parsed as the CLI parses them."""
    from simulator.runs.options import SCENARIO_OPTIONS
    by_flag = {o.flag: o for o in SCENARIO_OPTIONS}
    if len(args) % 2:
        raise SystemExit(f"error: overrides come in pairs (--option value), got {' '.join(args)}")
    out = {}
    for flag, value in zip(args[::2], args[1::2]):
        if flag not in by_flag:
            raise SystemExit(f"error: unknown option {flag}")
        out[by_flag[flag].field] = by_flag[flag].parse(value)
    return out


def format_table(frame: pd.DataFrame) -> str:
    def num(x: float) -> str:
        return "" if pd.isna(x) else f"{x:,.1f}" if abs(x) >= 100 else f"{x:.3g}"

    def pct(x: float) -> str:
        return "" if pd.isna(x) else f"{x:+.1f}%"
    header = f"{'run':<24} {'metric':<19} {'real mean':>11} {'sim mean':>11} {'error':>7} " \
             f"{'real p99':>11} {'sim p99':>11} {'error':>7}"
    lines = [header, "-" * len(header)]
    for r in frame.itertuples():
        lines.append(f"{r.run:<24} {r.metric:<19} {num(r.real_mean):>11} {num(r.sim_mean):>11} "
                     f"{pct(r.err_mean_pct):>7} {num(r.real_p99):>11} {num(r.sim_p99):>11} {pct(r.err_p99_pct):>7}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description="Replay real serving runs and report simulated vs real.")
    parser.add_argument("runs", nargs="+", type=Path, help="run folders or vLLM bench result JSON files")
    parser.add_argument("--out", type=Path, help="write the table as CSV here")
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(extra)
        rows = [row for run in args.runs for row in fidelity_rows(run, overrides)]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    frame = pd.DataFrame(rows, columns=["run", "metric", "real_mean", "sim_mean", "err_mean_pct", "real_p99",
                                        "sim_p99", "err_p99_pct"])
    print(format_table(frame))
    if args.out:
        frame.to_csv(args.out, index=False)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
