"""Two checkouts side by side: benchmarks/speed.py's scenarios run by an older tree and by this one, interleaved.

Timing on a shared machine drifts, so a before/after figure is only worth quoting when both trees run in one
session: each scenario runs in a fresh interpreter whose PYTHONPATH is the tree under test, the trees alternate
(base first on even repetitions, this tree first on odd ones), and the minimum wall time over the repetitions is
kept, with the minimum CPU (process) time, which other work on a loaded machine disturbs less. Both trees
simulate the same requests at the same rate (80% of the saturated completion rate that the base tree measures),
so their step counts and simulated durations should agree; the table says when they do not.

Options set with --set are passed to a tree's SimConfig only where it has that field, so a newer tree can be told
to run as an older one did, e.g. `--set engine=vllm-v0 --set prefix_caching=false` (the default engine became
vLLM V1 with prefix caching after the engine presets were added).

Usage:
    git worktree add ../base <commit>
    python benchmarks/speed_ab.py --base ../base --only S1,S4a,S4b,S5 --reps 3 \
        --set engine=vllm-v0 --set prefix_caching=false
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import speed                    # benchmarks/speed.py beside this script: its scenarios

HERE = Path(__file__).resolve().parents[1]
LOAD = speed.LOAD
SCENARIOS: dict[str, dict] = {name: knobs for name, knobs in speed.SCENARIOS.items()   # one replica each
                              if name in ("S1", "S2", "S3", "S4a", "S4b", "S5")}


def _config(name: str, rate: float, extra: dict, capacity: bool = False):
    from simulator.config import SimConfig
    known = {f.name for f in fields(SimConfig)}
    knobs = {k: v for k, v in SCENARIOS[name].items() if k != "surge"}
    knobs.update({k: v for k, v in extra.items() if k in known})          # --set wins over the scenario's knobs
    if capacity:
        knobs.update(num_requests=2000, summary_only=False)
    return SimConfig(rate=rate, seed=1 if capacity else 0, **knobs)


def child(name: str, rate: float, extra: dict) -> dict:
    """One scenario in this interpreter (the tree on PYTHONPATH): wall and CPU time of workload + engine + summary."""
    import numpy as np
    from simulator.api import build_parts, simulate, workload
    from simulator.engine import Engine
    from workloads.spec import RequestSpec
    if rate <= 0:                                    # capacity: a saturated server's completion rate
        return {"capacity": simulate(_config(name, 1000.0, extra, capacity=True)).summary()["request_throughput"]}
    t1, c1 = time.perf_counter(), time.process_time()
    cfg = _config(name, rate, extra)
    specs = workload(cfg)
    if "surge" in SCENARIOS[name]:                   # the middle fifth at surge x rate, as speed.py
        rates = np.full(len(specs), rate)
        rates[2 * len(specs) // 5: 3 * len(specs) // 5] *= SCENARIOS[name]["surge"]
        arrivals = np.cumsum(np.random.default_rng(0).exponential(1.0 / rates))
        specs = [RequestSpec(s.request_id, float(t), s.prompt_tokens, s.output_tokens) for s, t in zip(specs, arrivals)]
    summary = Engine(build_parts(cfg), specs).run().summary()
    return {"wall_s": time.perf_counter() - t1, "cpu_s": time.process_time() - c1, "steps": int(summary["num_steps"]),
            "simulated_s": float(summary["duration_s"]), "preemptions": int(summary["preemptions"])}


def run_child(tree: Path, name: str, rate: float, extra: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", name, "--rate", repr(rate), "--extra", json.dumps(extra)]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tree, env=env)
    if proc.returncode:
        raise SystemExit(f"{name} in {tree} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def parse_set(items: list[str]) -> dict:
    extra = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        try:
            extra[key] = json.loads(value)
        except json.JSONDecodeError:
            extra[key] = value
    return extra


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", help="the older checkout (a folder holding simulator/)")
    ap.add_argument("--only", default="S1,S2,S4a,S4b,S5", help="comma list of scenarios")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of each scenario in each tree (min kept)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a SimConfig field for every tree that has it (JSON value, else a string)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--extra", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.rate, json.loads(args.extra))))
        return
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown or not args.base or not (Path(args.base) / "simulator").is_dir():
        raise SystemExit(f"need --base, a checkout with simulator/, and scenarios from {', '.join(SCENARIOS)}")
    trees = {"base": Path(args.base).resolve(), "this": HERE}
    extra = parse_set(args.set)
    print(f"base {trees['base']}, this {trees['this']}, options {extra}", file=sys.stderr)
    walls: dict[tuple[str, str], list[float]] = {}
    cpus: dict[tuple[str, str], list[float]] = {}
    facts: dict[tuple[str, str], dict] = {}
    for name in names:
        rate = round(LOAD * run_child(trees["base"], name, 0.0, extra)["capacity"], 3)
        for rep in range(args.reps):
            for label in (("base", "this") if rep % 2 == 0 else ("this", "base")):
                row = run_child(trees[label], name, rate, extra)
                walls.setdefault((name, label), []).append(row["wall_s"])
                cpus.setdefault((name, label), []).append(row["cpu_s"])
                facts[(name, label)] = row
                print(f"{name} {label} rep {rep}: {row['wall_s']:.2f} s ({row['cpu_s']:.2f} s CPU)", file=sys.stderr,
                      flush=True)
    print("scenario  base_min_s  this_min_s  this/base  base_cpu_s  this_cpu_s  cpu this/base  base_steps  this_steps"
          "  same_steps_and_duration")
    for name in names:
        b, t = min(walls[(name, "base")]), min(walls[(name, "this")])
        bc, tc = min(cpus[(name, "base")]), min(cpus[(name, "this")])
        fb, ft = facts[(name, "base")], facts[(name, "this")]
        same = fb["steps"] == ft["steps"] and fb["simulated_s"] == ft["simulated_s"]
        print(f"{name:8}  {b:10.2f}  {t:10.2f}  {t / b:9.3f}  {bc:10.2f}  {tc:10.2f}  {tc / bc:13.3f}"
              f"  {fb['steps']:10,}  {ft['steps']:10,}  {same}")


if __name__ == "__main__":
    main()
