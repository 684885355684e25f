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

from measure_steps import (COLUMNS, SHAPES, Arch, LayerShape, decoder_layer, rms_norm, rope_tables,  # noqa: E402
                           time_events)

# (phase, batch, tokens_per_seq, context)
GRID = [("decode", b, 1, c) for b in (1, 8, 32, 128, 256) for c in (512, 2048)] + [
    ("prefill", 1, 128, 0), ("prefill", 1, 512, 0), ("prefill", 1, 2048, 0), ("prefill", 1, 8192, 0),
    ("prefill", 4, 1024, 0), ("prefill", 16, 512, 0)]
ALLREDUCE_TOKENS = (1, 8, 32, 128, 256, 1024, 4096, 8192)


def shard_weights(arch: Arch, tp: int, device: str, dtype) -> dict:
    """This rank's shard: [out, in] weights with out (column-parallel) or in (row-parallel) divided by tp."""
    import torch
    q, kv, inter = arch.num_heads * arch.head_dim // tp, arch.num_kv_heads * arch.head_dim // tp, \
        arch.intermediate_size // tp

    def rand(*shape):
        return torch.randn(*shape, device=device, dtype=dtype) * 0.02

    ones = lambda: torch.ones(arch.hidden_size, device=device, dtype=dtype)  # noqa: E731
    layers = [dict(ln1=ones(), qkv=rand(q + 2 * kv, arch.hidden_size), o=rand(arch.hidden_size, q), ln2=ones(),
                   gate_up=rand(2 * inter, arch.hidden_size), down=rand(arch.hidden_size, inter))
              for _ in range(arch.num_layers)]
    return dict(layers=layers, norm=ones(), embed=rand(arch.vocab_size, arch.hidden_size),
                lm_head=rand(arch.vocab_size // tp, arch.hidden_size))


def make_tp_step(arch: Arch, weights: dict, tp: int, batch: int, seq: int, context: int, dtype):
    """A zero-argument function running one step of this rank's shard (static buffers), and its caches."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    h, d = arch.hidden_size, arch.head_dim
    nq, nkv = arch.num_heads // tp, arch.num_kv_heads // tp
    total = context + seq
    caches = [(torch.zeros(batch, nkv, total, d, device="cuda", dtype=dtype),
               torch.zeros(batch, nkv, total, d, device="cuda", dtype=dtype)) for _ in range(arch.num_layers)]
    ids = torch.randint(0, arch.vocab_size, (batch * seq,), device="cuda")
    positions = torch.arange(context, total, device="cuda").repeat(batch)
    cos, sin = rope_tables(arch, positions, "cuda", dtype)
    causal = seq > 1

    shape = LayerShape(batch, seq, context, nq, nkv, d, cos, sin, None, causal, "manual")

    def reduce(x):
        dist.all_reduce(x)
        return x

    def step():
        x = F.embedding(ids, weights["embed"])
        for layer, cache in zip(weights["layers"], caches):
            x = decoder_layer(x, layer, cache, shape, reduce)
        last = x.view(batch, seq, h)[:, -1]
        return F.linear(rms_norm(last, weights["norm"], 1e-5, "manual"), weights["lm_head"])

    return step, caches


def graph_times(fn, reps: int, warmup: int = 3) -> list[float]:
    """Milliseconds of each replay of fn captured in one CUDA graph (NCCL calls included)."""
    import torch
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize()
    times = time_events(graph.replay, reps)
    del graph
    return times


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
    weights = shard_weights(arch, tp, "cuda", dtype)
    out = open(args.out, "w", newline="") if rank == 0 else None
    writer = csv.DictWriter(out, fieldnames=COLUMNS + ["tp"]) if out else None
    if writer:
        writer.writeheader()
    for phase, batch, seq, context in GRID:
        step, caches = make_tp_step(arch, weights, tp, batch, seq, context, dtype)
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
