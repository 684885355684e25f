"""Speed benchmark: how fast servesim simulates, and how its cost grows with the number of requests.

Scenarios (Llama-3.1-8B bf16 on one H100-SXM, ShareGPT lengths, Poisson arrivals at about 80% of the
configuration's capacity; continuous batching and paged KV unless named):
  S1   10,000 requests
  S2   100,000 requests
  S3   1,000,000 requests (summary-only results: histograms instead of per-step and per-token rows)
  S4a  S1 with static batching and contiguous KV
  S4b  S1 with dynamic batching
  S5   S1 with chunked prefill and swap preemption under memory pressure: the middle fifth of the requests
       arrives at 1.5x capacity
  S6   1,000,000 requests over 64 replicas behind a round-robin router, summary-only (80% of 64 replicas'
       capacity): a cluster should cost what one replica costs per request (compare S3); its replicas run in
       worker processes on every core (`--workers auto`), so on 2 cores it should take about half S3's wall time
  S7   10,000 requests of multi-turn sessions (6 turns, 5 s think time), whose prompts share prefixes
Prefix caching follows the engine preset (on for vllm-v1) unless --prefix-caching says on or off; `both` runs
each scenario with it off and on, side by side, and prints the on/off wall ratios.
Capacity is measured first, for each configuration: the completion rate of 2,000 requests that all arrive
within two seconds (a saturated server), times the number of replicas.

Each scenario runs in a fresh interpreter, so its peak RSS is its own. Reported: wall seconds of the simulation
(workload generation + engine + result frames + summary; interpreter start and imports reported apart), CPU
seconds (its worker processes' included), peak RSS (of the largest process: the interpreter or one worker), simulated requests / output tokens / engine steps per wall second, the S2/S1 wall ratio (10 = linear) and
the S6/S3 wall and CPU ratios (CPU 1 = a 64-replica cluster costs what one replica costs per request; wall about
1 / cores, as S6's replicas run on every core).

Usage:
    python benchmarks/speed.py                       # all scenarios; prints a table, writes speed.csv
    python benchmarks/speed.py --only S1,S2,S3 --prefix-caching both   # the hashing's cost, side by side
    python benchmarks/speed.py --only S1,S2 --csv out.csv
    python benchmarks/speed.py --no-fast-path --only S1    # the step-by-step path, for comparison
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOAD = 0.8                          # arrival rate as a fraction of the configuration's capacity
SCENARIOS: dict[str, dict] = {
    "S1": {"num_requests": 10_000},
    "S2": {"num_requests": 100_000},
    "S3": {"num_requests": 1_000_000, "summary_only": True},
    "S4a": {"num_requests": 10_000, "batching": "static", "kv": "contiguous"},
    "S4b": {"num_requests": 10_000, "batching": "dynamic"},
    "S5": {"num_requests": 10_000, "chunked_prefill": True, "preemption": "swap", "surge": 1.5},
    "S6": {"num_requests": 1_000_000, "summary_only": True, "replicas": 64, "router": "round-robin"},
    "S7": {"num_requests": 10_000, "sessions": "multi-turn:turns=6,think=5", "prompt_len": "lognormal:mean=400,sigma=0.8",
           "turns": 6},
}
PER_RUN = ("surge", "num_requests", "summary_only", "replicas", "router", "turns")   # not part of a replica's capacity
COLUMNS = ("scenario", "requests", "rate_rps", "capacity_rps", "wall_s", "cpu_s", "import_s", "workload_s", "engine_s",
           "frames_s", "peak_rss_mb", "requests_per_s", "output_tokens_per_s", "steps_per_s", "engine_steps",
           "run_steps_pct", "simulated_s", "preemptions", "fast_path", "prefix_caching", "hit_rate")


def _config(name: str, rate: float, fast_path: bool, prefix_caching: bool | None = None):
    from simulator.config import SimConfig
    knobs = {k: v for k, v in SCENARIOS[name].items() if k not in ("surge", "turns")}
    rate = rate / SCENARIOS[name].get("turns", 1)          # sessions: --rate counts sessions per second
    return SimConfig(rate=rate, seed=0, fast_path=fast_path, prefix_caching=prefix_caching, **knobs)


def _surge(specs, rate: float, factor: float, seed: int = 0):
    """Redraw Poisson arrivals: the middle fifth of the requests at `factor` x `rate`, the rest at `rate`."""
    import numpy as np
    from workloads.spec import RequestSpec
    n = len(specs)
    rates = np.full(n, rate)
    rates[2 * n // 5: 3 * n // 5] = rate * factor
    arrivals = np.cumsum(np.random.default_rng(seed).exponential(1.0 / rates))
    return [RequestSpec(s.request_id, float(t), s.prompt_tokens, s.output_tokens) for s, t in zip(specs, arrivals)]


def child(name: str, rate: float, fast_path: bool, prefix_caching: bool | None = None) -> dict:
    """Run one scenario in this interpreter; return its measurements."""
    t0 = time.perf_counter()
    from simulator.api import build_parts, simulate, workload
    from simulator.engine import Engine
    t1, cpu1 = time.perf_counter(), time.process_time() + _children_cpu()
    cfg = _config(name, rate, fast_path, prefix_caching)
    specs = workload(cfg)
    if "surge" in SCENARIOS[name]:
        specs = _surge(specs, rate, SCENARIOS[name]["surge"])
    t2 = time.perf_counter()
    result = simulate(cfg, requests=specs) if cfg.is_cluster else Engine(build_parts(cfg), specs).run()
    summary = result.summary()
    t3, cpu3 = time.perf_counter(), time.process_time() + _children_cpu()
    engine_s = result.meta["wall_s"]
    wall = t3 - t1
    out_tokens = float(result.requests.output_tokens[result.requests.status == "finished"].sum())
    return {"scenario": name, "requests": len(specs), "rate_rps": rate, "wall_s": wall, "cpu_s": cpu3 - cpu1,
            "import_s": t1 - t0,
            "workload_s": t2 - t1, "engine_s": engine_s, "frames_s": wall - (t2 - t1) - engine_s,
            "peak_rss_mb": max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF,
                                                                               resource.RUSAGE_CHILDREN)) / 1024,
            "requests_per_s": len(specs) / wall, "output_tokens_per_s": out_tokens / wall,
            "steps_per_s": summary["num_steps"] / wall, "engine_steps": summary["num_steps"],
            "run_steps_pct": 100.0 * result.meta.get("run_steps", 0) / max(1, summary["num_steps"]),
            "simulated_s": summary["duration_s"], "preemptions": summary["preemptions"], "fast_path": fast_path,
            "prefix_caching": cfg.prefix_cache, "hit_rate": summary["prefix_cache_hit_rate"]}


def _children_cpu() -> float:
    """CPU seconds of the worker processes that ended (cluster replicas run in them)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def capacity(name: str) -> float:
    """Completion rate (req/s) of a saturated server in this scenario's configuration."""
    from simulator.api import simulate
    knobs = {k: v for k, v in SCENARIOS[name].items() if k not in PER_RUN}
    one = simulate(num_requests=2000, rate=1000.0, seed=1, **knobs).summary()["request_throughput"]
    return one * SCENARIOS[name].get("replicas", 1)


def run_child(name: str, rate: float, fast_path: bool, prefix_caching: str | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", name, "--rate", repr(rate)] + ([] if fast_path else ["--no-fast-path"])
    cmd += ["--prefix-caching", prefix_caching] if prefix_caching else []
    start = time.perf_counter()
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))   # this checkout first
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": path})
    if proc.returncode:
        raise SystemExit(f"{name} failed:\n{proc.stderr}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["import_s"] += time.perf_counter() - start - row["import_s"] - row["wall_s"]   # + interpreter start
    return row


def print_table(rows: list[dict]) -> None:
    head = ("scenario", "requests", "rate_rps", "prefix_caching", "hit_rate", "wall_s", "cpu_s", "import_s",
            "peak_rss_mb", "requests_per_s", "output_tokens_per_s", "steps_per_s", "engine_steps", "run_steps_pct")
    fmt = lambda v: f"{v:,.2f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)
    cells = [head] + [tuple(fmt(r[h]) for h in head) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    for line in cells:
        print("  ".join(c.rjust(w) for c, w in zip(line, widths)))
    by = {(r["scenario"], r["prefix_caching"]): r for r in rows}
    for caching in (False, True):
        mode = f", prefix caching {'on' if caching else 'off'}"
        if ("S1", caching) in by and ("S2", caching) in by:
            ratio = by[("S2", caching)]["wall_s"] / by[("S1", caching)]["wall_s"]
            print(f"S2/S1 wall ratio{mode}: {ratio:.2f} (10 = linear in requests)")
        if ("S3", caching) in by and ("S6", caching) in by:
            s3, s6 = by[("S3", caching)], by[("S6", caching)]
            print(f"S6/S3 wall ratio{mode}: {s6['wall_s'] / s3['wall_s']:.2f}, CPU ratio {s6['cpu_s'] / s3['cpu_s']:.2f} "
                  f"(CPU 1 = 64 replicas cost what one does per request; wall: S6 runs on every core)")
    for name in dict.fromkeys(r["scenario"] for r in rows):
        if (name, False) in by and (name, True) in by:
            on, off = by[(name, True)], by[(name, False)]
            print(f"{name}: prefix caching on/off: wall {on['wall_s'] / off['wall_s']:.2f}, CPU "
                  f"{on['cpu_s'] / off['cpu_s']:.2f}; hit rate {on['hit_rate']:.1%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(SCENARIOS), help="comma list of scenarios")
    ap.add_argument("--csv", default="speed.csv", help="where to write the table")
    ap.add_argument("--no-fast-path", action="store_true", help="simulate step by step")
    ap.add_argument("--prefix-caching", choices=("on", "off", "both"),
                    help="prefix caching on, off, or both side by side (default: the engine preset's)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        caching = None if args.prefix_caching is None else args.prefix_caching == "on"
        print(json.dumps(child(args.child, args.rate, not args.no_fast_path, caching)))
        return
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    sys.path.insert(0, str(ROOT))
    rows, caps = [], {}
    for name in names:
        key = tuple(sorted((k, v) for k, v in SCENARIOS[name].items() if k not in PER_RUN[1:3]))
        if key not in caps:
            caps[key] = capacity(name)
        modes = ("off", "on") if args.prefix_caching == "both" else (args.prefix_caching,)
        for mode in modes:
            row = run_child(name, round(LOAD * caps[key], 3), not args.no_fast_path, mode)
            row["capacity_rps"] = caps[key]
            rows.append(row)
            print(f"{name} (prefix caching {'on' if row['prefix_caching'] else 'off'}): {row['wall_s']:.2f} s wall, "
                  f"{row['peak_rss_mb']:.0f} MB", file=sys.stderr, flush=True)
    print_table(rows)
    with open(args.csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({c: r.get(c) for c in COLUMNS} for r in rows)


if __name__ == "__main__":
    main()
