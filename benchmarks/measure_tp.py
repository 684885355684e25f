"""Measure tensor-parallel step latencies (and bare all-reduces) on several GPUs of one host, PyTorch + NCCL.

One process per GPU (torchrun). Each rank holds a Megatron-style shard of a Llama-style decoder: the QKV and
gate/up GEMMs split by columns (heads and MLP width / tp), the output and down GEMMs by rows, each followed by
an all-reduce of the [tokens, hidden] partial sums (two a layer), and the LM head split over the vocabulary
(logits stay sharded: no gather). Everything else follows benchmarks/measure_steps.py (same RMSNorm, RoPE,
contiguous KV cache, SDPA, random bf16 weights, real layer count); the embedding is replicated. A step is
captured in one CUDA graph with its NCCL calls and replayed; rank 0 writes the rows (the schema of
measure_steps.py plus a `tp` column), and the all-reduce times alone into --allreduce-out.

    torchrun --nproc_per_node 2 benchmarks/measure_tp.py --gpu h200 --shape llama-3-8b --out tp2.csv \
        --allreduce-out tp2_allreduce.csv
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure_steps import (COLUMNS, SHAPES, Arch, build_weights, capture, make_step, time_events,  # noqa: E402
                           warm_up)

# (phase, batch, tokens_per_seq, context)
GRID = [("decode", b, 1, c) for b in (1, 8, 32, 128, 256) for c in (512, 2048)] + [
    ("prefill", 1, 128, 0), ("prefill", 1, 512, 0), ("prefill", 1, 2048, 0), ("prefill", 1, 8192, 0),
    ("prefill", 4, 1024, 0), ("prefill", 16, 512, 0)]
ALLREDUCE_TOKENS = (1, 8, 32, 128, 256, 1024, 4096, 8192)


def graph_times(fn, reps: int, warmup: int = 3) -> list[float]:
    """Milliseconds of each replay of fn captured in one CUDA graph (NCCL calls included)."""
    warm_up(fn, warmup)
    return time_events(capture(fn).replay, reps)


def allreduce_rows(arch: Arch, tp: int, dtype) -> list[dict]:
    """One all-reduce of [tokens, hidden] 16-bit partial sums, 20 back to back in a graph, per token count."""
    import torch
    import torch.distributed as dist
    rows = []
    for t in ALLREDUCE_TOKENS:
        x = torch.randn(t, arch.hidden_size, device="cuda", dtype=dtype)
        times = graph_times(lambda: [dist.all_reduce(x) for _ in range(20)], 10)
        us = statistics.median(times) / 20 * 1e3
        nbytes = t * arch.hidden_size * 2
        rows.append(dict(tp=tp, tokens=t, bytes=nbytes, us=round(us, 3),
                         bus_gb_s=round(2 * (tp - 1) / tp * nbytes / (us * 1e-6) / 1e9, 2)))
    return rows


def main(argv=None) -> int:
    import torch
    import torch.distributed as dist
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpu", required=True, help="catalog GPU id written in the gpu column")
    p.add_argument("--shape", default="llama-3-8b", choices=sorted(SHAPES))
    p.add_argument("--out", required=True, help="steps CSV (rank 0 writes it)")
    p.add_argument("--allreduce-out", default="", help="also time bare all-reduces into this CSV")
    args = p.parse_args(argv)
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    rank, tp = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl", device_id=torch.device("cuda", int(os.environ["LOCAL_RANK"])))
    arch, dtype = SHAPES[args.shape], torch.bfloat16
    torch.manual_seed(rank)
    if args.allreduce_out:
        rows = allreduce_rows(arch, tp, dtype)
        if rank == 0:
            with open(args.allreduce_out, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)
    weights = build_weights(arch, "cuda", dtype, tp)

    def reduce(x):
        dist.all_reduce(x)
        return x

    out = open(args.out, "w", newline="") if rank == 0 else None
    writer = csv.DictWriter(out, fieldnames=COLUMNS + ["tp"]) if out else None
    if writer:
        writer.writeheader()
    for phase, batch, seq, context in GRID:
        step, caches = make_step(arch, weights, batch, seq, context, "cuda", dtype, tp=tp, reduce=reduce)
        times = graph_times(step, 20 if phase == "decode" else 10)
        del step, caches
        torch.cuda.empty_cache()
        if writer:
            row = dict(gpu=args.gpu, **asdict(arch), dtype="bf16", phase=phase, batch=batch, tokens_per_seq=seq,
                       context=context, graph_ms_median=round(statistics.median(times), 4),
                       graph_ms_min=round(min(times), 4), graph_ms_max=round(max(times), 4), eager_ms_median="",
                       tp=tp)
            writer.writerow(row)
            out.flush()
            print(",".join(str(row[c]) for c in COLUMNS + ["tp"]), flush=True)
    if out:
        out.close()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
