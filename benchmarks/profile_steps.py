"""Where a measured step's time goes on a real GPU: kernel time by family, and the clocks the card sustained.

For a few steps of `measure_steps.py` (same recipe, same shapes), this records
  * the summed kernel time of each family (gemm, attention, elementwise, copy), from the PyTorch profiler's
    CUDA trace of one eager run of the step (kernel durations only: launch gaps are not counted), and
  * the SM clock, memory clock and board power nvidia-smi reads while the step's CUDA graph is replayed back
    to back for about two seconds (the card as found: its clocks and power limit are never changed).

That is what the cost model's split needs checking against: which operators a GPU speeds up (an H200's extra
bandwidth helps only the bandwidth-bound kernels) and how far power-limited clocks hold compute-bound kernels
below the datasheet rate.

Usage (on a machine with a GPU):
    python benchmarks/profile_steps.py --gpu h200 --out kernels.csv --clocks-out clocks.csv --smi-out smi.txt
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure_steps import SHAPES, build_weights, capture, make_step, warm_up  # noqa: E402

# (shape, phase, batch, tokens_per_seq, context)
POINTS = [
    ("llama-3-8b", "prefill", 1, 512, 0), ("llama-3-8b", "prefill", 1, 1024, 0),
    ("llama-3-8b", "prefill", 1, 4096, 0), ("llama-3-8b", "prefill", 8, 1024, 0),
    ("llama-3-8b", "prefill", 16, 512, 0),
    ("llama-3-8b", "decode", 1, 1, 1024), ("llama-3-8b", "decode", 64, 1, 1024),
    ("llama-3-8b", "decode", 256, 1, 512),
    ("llama-3.2-1b", "prefill", 1, 1024, 0), ("llama-3.2-1b", "prefill", 8, 1024, 0),
]
FAMILIES = {"gemm": ("gemm", "nvjet", "xmma", "cutlass", "cublas", "splitk"),
            "attention": ("flash", "fmha", "attention", "attn")}
SMI_FIELDS = "clocks.sm,clocks.mem,power.draw,power.limit,temperature.gpu"


def family(kernel_name: str) -> str:
    name = kernel_name.lower()
    return next((fam for fam, keys in FAMILIES.items() if any(k in name for k in keys)), "elementwise")


def kernel_times(step, by_name: dict | None = None) -> dict[str, float]:
    """Milliseconds of kernel time per family in one eager run of `step` (summed kernel durations); `by_name`,
    if given, collects [calls, ms] per kernel name."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        events = json.load(open(path))["traceEvents"]
    out = {"gemm": 0.0, "attention": 0.0, "elementwise": 0.0, "copy": 0.0, "kernels": 0}
    for ev in events:
        cat = ev.get("cat", "")
        if cat == "kernel":
            out[family(ev["name"])] += ev["dur"] / 1e3
            out["kernels"] += 1
            if by_name is not None:
                entry = by_name.setdefault(ev["name"][:120], [0, 0.0])
                entry[0] += 1
                entry[1] += ev["dur"] / 1e3
        elif cat in ("gpu_memcpy", "gpu_memset"):
            out["copy"] += ev["dur"] / 1e3
    return out


def sustained_clocks(replay, seconds: float = 2.0) -> dict[str, float]:
    """Median nvidia-smi readings while `replay` runs back to back for about `seconds`."""
    import torch
    start = time.perf_counter()
    replay()
    torch.cuda.synchronize()
    one = max(time.perf_counter() - start, 1e-4)
    reps = max(3, int(seconds / one))
    smi = subprocess.Popen(["nvidia-smi", f"--query-gpu={SMI_FIELDS}", "--format=csv,noheader,nounits",
                            "-lms", "50"], stdout=subprocess.PIPE, text=True)
    time.sleep(0.2)
    t0 = time.perf_counter()
    for _ in range(reps):
        replay()
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    smi.terminate()
    lines = [ln.split(",") for ln in smi.communicate()[0].splitlines() if ln.count(",") == 4]
    samples = [[float(v) for v in ln] for ln in lines[4:-1]] or [[float(v) for v in ln] for ln in lines]
    cols = list(zip(*samples)) if samples else [[float("nan")]] * 5
    names = ["sm_mhz", "mem_mhz", "power_w", "power_limit_w", "temp_c"]
    out = {n: statistics.median(c) for n, c in zip(names, cols)}
    out.update(replay_ms=wall / reps * 1e3, samples=len(samples))
    return out


def profile_point(weights, arch, phase, batch, seq, context, by_name: dict | None = None) -> dict:
    import torch
    step, caches = make_step(arch, weights, batch, seq, context, "cuda", torch.bfloat16)
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    row = kernel_times(step, by_name)
    warm_up(step)
    graph = capture(step)
    row.update(sustained_clocks(graph.replay))
    del graph, caches, step
    torch.cuda.empty_cache()
    return row


def main(argv=None) -> int:
    import torch
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpu", required=True, help="catalog GPU id written in the gpu column")
    p.add_argument("--out", required=True, help="CSV of kernel time per family and sustained clocks per step")
    p.add_argument("--smi-out", default="", help="also save nvidia-smi -q (clocks, power, performance)")
    p.add_argument("--kernels-out", default="", help="also write calls and milliseconds per kernel name per step")
    args = p.parse_args(argv)
    if args.smi_out:
        with open(args.smi_out, "w") as f:
            f.write(subprocess.run(["nvidia-smi", "-q", "-d", "CLOCK,POWER,PERFORMANCE,TEMPERATURE"],
                                   capture_output=True, text=True).stdout)
    torch.manual_seed(0)
    rows, kernel_rows, weights, loaded = [], [], None, None
    for shape, phase, batch, seq, context in POINTS:
        arch = SHAPES[shape]
        if loaded != shape:
            weights = None
            torch.cuda.empty_cache()
            weights, loaded = build_weights(arch, "cuda", torch.bfloat16), shape
        row = dict(gpu=args.gpu, model=shape, phase=phase, batch=batch, tokens_per_seq=seq, context=context)
        by_name: dict = {}
        row.update(profile_point(weights, arch, phase, batch, seq, context, by_name))
        rows.append(row)
        kernel_rows += [dict(row_id=len(rows) - 1, kernel=name, family=family(name), calls=calls, ms=ms)
                        for name, (calls, ms) in sorted(by_name.items(), key=lambda kv: -kv[1][1])]
        print(", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    if args.kernels_out:
        with open(args.kernels_out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["row_id", "kernel", "family", "calls", "ms"])
            w.writeheader()
            w.writerows(kernel_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
