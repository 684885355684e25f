"""Plan benchmark: how long `servesim plan` takes on a large search space, what its bounds save, and whether
the plan equals the exhaustive search's.

Space (issue #14's): 3 GPUs (H100-SXM, H200, A100-80GB) x TP 1/2/4/8 x 6 max-num-seqs (32..512) x 3 token
budgets (2048, 8192, 16384) x chunked prefill off/on = 432 configurations of Llama-3.1-70B (bf16) serving ShareGPT
lengths with Poisson arrivals, target 20 requests/s, SLOs TTFT <= 1 s and TPOT <= 50 ms for 90% of the requests.
Prices: the catalog's dated list prices (inputs).

Then a 40-configuration subset (H100-SXM and H200, TP 4 and 8, 5 max-num-seqs, chunked off/on, 8192 tokens) is
planned twice, with the bounds and with `exhaustive=True` (every configuration searched in full: no bounds, no
skipping, no early stops, no reuse), and the two plans (their top rows) are compared column by column.

Reported: wall seconds AND CPU seconds (this process and its workers): the machine may be shared, so wall time
alone says little; simulations run, stopped early and reused; configurations skipped or ruled out by bounds.

Usage:
    python benchmarks/plan_speed.py                     # both parts; prints tables, writes plan_speed.csv
    python benchmarks/plan_speed.py --requests 1000 --jobs 2
    python benchmarks/plan_speed.py --skip-full         # only the 40-configuration equality check
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simulator import SimConfig  # noqa: E402
from simulator.runs.plan import PlanSpec, run_plan  # noqa: E402

FULL_AXES = {"gpu": ("h100-sxm", "h200", "a100-80gb"), "tp": (1, 2, 4, 8),
             "max_num_seqs": (32, 64, 128, 256, 384, 512), "max_num_batched_tokens": (2048, 8192, 16384),
             "chunked_prefill": (False, True)}
SUBSET_AXES = {"gpu": ("h100-sxm", "h200"), "tp": (4, 8), "max_num_seqs": (32, 64, 128, 256, 512),
               "max_num_batched_tokens": (8192,), "chunked_prefill": (False, True)}
COMPARED = ["config", "status", "replicas", "gpus", "cost_per_hour", "cost_per_million_output_tokens",
            "ttft_p99_s", "tpot_p99_s", "e2e_p99_s", "slo_attainment"]
SHOWN = ["rank", "config", "replicas", "gpus", "cost_per_hour", "cost_per_million_output_tokens", "ttft_p99_s",
         "tpot_p99_s", "e2e_p99_s", "simulations"]


def cpu_seconds() -> float:
    """User + system CPU of this process and its finished children (the worker pool)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed_plan(base: SimConfig, axes: dict, spec: PlanSpec, jobs: int) -> tuple:
    wall, cpu = time.perf_counter(), cpu_seconds()
    outcome = run_plan(base, axes, spec, jobs=jobs)
    return outcome, time.perf_counter() - wall, cpu_seconds() - cpu


def describe(name: str, outcome, wall: float, cpu: float) -> dict:
    c = outcome.counts
    print(f"\n== {name}: {c['configurations']} configurations, wall {wall:.1f} s, CPU {cpu:.1f} s")
    print(f"   ok {c['ok']}, skipped by the cost bound {c['skipped']}, cannot meet the SLOs {c['cannot meet SLO']} "
          f"({c['ruled_out_by_bounds']} by bounds, not simulated), do not fit {c['does not fit']}, "
          f"invalid {c['invalid']}")
    print(f"   simulations {c['simulations']} (stopped early {c['stopped_early']}), reused {c['reused']}")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(outcome.best()[SHOWN].to_string(index=False))
    return {"run": name, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), **c}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests per simulation")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument("--target-rate", type=float, default=20.0)
    parser.add_argument("--skip-full", action="store_true", help="only the 40-configuration equality check")
    parser.add_argument("--csv", default="plan_speed.csv")
    args = parser.parse_args()
    base = SimConfig(model="llama-3.1-70b", num_requests=args.requests, slo_ttft_s=1.0, slo_tpot_s=0.05)
    spec = PlanSpec(target_rate=args.target_rate, top=10)
    rows = []
    if not args.skip_full:
        rows.append(describe("full space, bounded", *timed_plan(base, FULL_AXES, spec, args.jobs)))
    bounded = timed_plan(base, SUBSET_AXES, spec, args.jobs)
    rows.append(describe("40-configuration subset, bounded", *bounded))
    exhaustive = timed_plan(base, SUBSET_AXES, PlanSpec(target_rate=args.target_rate, top=10, exhaustive=True),
                            args.jobs)
    rows.append(describe("40-configuration subset, exhaustive", *exhaustive))
    same = bounded[0].best()[COMPARED].reset_index(drop=True).equals(
        exhaustive[0].best()[COMPARED].reset_index(drop=True))
    print(f"\nplan of the bounded search == plan of the exhaustive search on the subset: {same}")
    print(f"simulations: {rows[-2]['simulations']} bounded vs {rows[-1]['simulations']} exhaustive")
    pd.DataFrame(rows).assign(plans_equal=same).to_csv(args.csv, index=False)
    print(f"wrote {args.csv}")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
