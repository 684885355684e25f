"""Measure real step latencies of a Llama-style decoder on a CUDA GPU (PyTorch), in the reference CSV schema.

What one step is (the same recipe as the shared H100 reference measurements):
  per layer: RMSNorm; one fused QKV GEMM; RoPE on Q and K; K/V written into a contiguous per-sequence cache;
  attention through PyTorch SDPA (FlashAttention kernels, grouped-query attention native); output GEMM and
  residual add; RMSNorm; one fused gate+up GEMM; SiLU x up; down GEMM and residual add;
  then a final RMSNorm and the LM-head GEMM on the last position of each sequence only.
GEMMs go through cuBLAS (F.linear), bf16, random weights (timings do not depend on values), no quantization, no
tensor parallelism, every sequence of a batch the same length. `graph_ms_*` replay the whole step captured in
one CUDA graph (20 replays for decode, 10 for prefill); `eager_ms_median` launches it op by op from Python.

The real layer count is always used, so each row is a real step time; only the grid is reduced.

Usage (on a machine with a GPU):
    python benchmarks/measure_steps.py --gpu h200 --shape llama-3-8b --grid full --out steps.csv \
        --micro-out micro.csv
    python benchmarks/measure_steps.py --gpu h100-sxm --shape custom --hidden-size 2048 --num-layers 16 ...
This module imports torch only inside its functions, so it can be imported (and its grids tested) without torch.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import statistics
import sys
from dataclasses import asdict, dataclass

COLUMNS = ["gpu", "model", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
           "intermediate_size", "vocab_size", "dtype", "phase", "batch", "tokens_per_seq", "context",
           "graph_ms_median", "graph_ms_min", "graph_ms_max", "eager_ms_median"]


@dataclass(frozen=True)
class Arch:
    """The architecture columns of the CSV schema."""

    model: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int


# Shapes from each model's Hugging Face config.json (Qwen2.5's QKV bias is left out: the schema has no bias column).
SHAPES: dict[str, Arch] = {
    "llama-3-8b": Arch("llama-3-8b", 4096, 32, 32, 8, 128, 14336, 128256),          # meta-llama/Meta-Llama-3-8B
    "llama-3.2-1b": Arch("llama-3.2-1b", 2048, 16, 32, 8, 64, 8192, 128256),        # meta-llama/Llama-3.2-1B
    "llama-2-7b": Arch("llama-2-7b", 4096, 32, 32, 32, 128, 11008, 32000),          # meta-llama/Llama-2-7b-hf (MHA)
    "qwen2.5-7b": Arch("qwen2.5-7b", 3584, 28, 28, 4, 128, 18944, 152064),          # Qwen/Qwen2.5-7B
    "tiny": Arch("tiny", 256, 2, 4, 2, 64, 512, 1000),                              # smoke test only
}

# (phase, batch, tokens_per_seq, context): a reduced version of the reference grid.
GRIDS: dict[str, list[tuple[str, int, int, int]]] = {
    "smoke": [("decode", 2, 1, 64), ("prefill", 2, 32, 0)],
    "full": [("decode", b, 1, c) for b, c in [
        (1, 128), (1, 2048), (1, 8192), (4, 1024), (8, 128), (8, 4096), (16, 2048), (32, 128), (32, 1024),
        (32, 8192), (64, 512), (64, 4096), (128, 128), (128, 2048), (256, 512), (256, 1024), (512, 128),
        (512, 512)]] + [("prefill", b, t, 0) for b, t in [
            (1, 32), (1, 128), (1, 512), (1, 1024), (1, 2048), (1, 4096), (1, 8192), (4, 512), (16, 512),
            (4, 2048)]],
    # The whole grid of the shared H100 reference (Llama-3-8B), for a like-for-like comparison on another GPU.
    "reference": [("decode", b, 1, c) for b in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
                  for c in (128, 512, 1024, 2048, 4096, 8192) if b * c <= 262144] + [
        ("prefill", b, t, 0) for b, t in [
            (1, 32), (1, 128), (1, 256), (1, 512), (1, 1024), (1, 2048), (1, 4096), (1, 8192), (2, 512), (4, 512),
            (8, 512), (16, 512), (4, 1024), (8, 1024), (2, 4096), (4, 2048)]],
    # Prompt chunks after a cached prefix (chunked prefill / prefix caching): (batch, chunk, cached tokens).
    "chunked": [("prefill", b, t, c) for b, t, c in [
        (1, 512, 512), (1, 512, 2048), (1, 512, 7680), (1, 2048, 2048), (1, 2048, 6144), (4, 256, 1024),
        (8, 128, 4096), (2, 1024, 3072)]],
    # A few points of the shared H100 reference grid, to check that this script reproduces those timings.
    "check": [("decode", 1, 1, 128), ("decode", 8, 1, 4096), ("decode", 32, 1, 1024), ("decode", 128, 1, 2048),
              ("decode", 512, 1, 128), ("prefill", 1, 128, 0), ("prefill", 1, 2048, 0), ("prefill", 4, 512, 0)],
}


def kv_cache_bytes(arch: Arch, batch: int, length: int) -> int:
    """K and V of every layer for `batch` sequences of `length` tokens at 2 bytes an element."""
    return 2 * arch.num_layers * batch * arch.num_kv_heads * length * arch.head_dim * 2


def build_weights(arch: Arch, device: str, dtype, tp: int = 1) -> dict:
    """Random weights, one tensor per GEMM per layer (as a serving engine lays them out: [out, in]).

    With tp > 1, one GPU's Megatron-style shard: the QKV and gate/up GEMMs split by columns (heads and MLP
    width / tp), the output and down GEMMs by rows, the LM head over the vocabulary; the embedding replicated.
    """
    import torch
    q, kv = arch.num_heads * arch.head_dim // tp, arch.num_kv_heads * arch.head_dim // tp
    inter = arch.intermediate_size // tp

    def rand(*shape):
        return torch.randn(*shape, device=device, dtype=dtype) * 0.02

    layers = [dict(ln1=torch.ones(arch.hidden_size, device=device, dtype=dtype),
                   qkv=rand(q + 2 * kv, arch.hidden_size), o=rand(arch.hidden_size, q),
                   ln2=torch.ones(arch.hidden_size, device=device, dtype=dtype),
                   gate_up=rand(2 * inter, arch.hidden_size),
                   down=rand(arch.hidden_size, inter)) for _ in range(arch.num_layers)]
    return dict(layers=layers, norm=torch.ones(arch.hidden_size, device=device, dtype=dtype),
                embed=rand(arch.vocab_size, arch.hidden_size), lm_head=rand(arch.vocab_size // tp, arch.hidden_size))


def rope_tables(arch: Arch, positions, device: str, dtype):
    """cos/sin of rotary embeddings for the given positions, shaped [tokens, 1, head_dim]."""
    import torch
    half = arch.head_dim // 2
    inv_freq = 1.0 / (500000.0 ** (torch.arange(half, device=device, dtype=torch.float32) / half))
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    emb = torch.cat([angles, angles], dim=-1)
    return emb.cos().to(dtype)[:, None, :], emb.sin().to(dtype)[:, None, :]


def rms_norm(x, weight, eps: float, kind: str):
    """RMSNorm: 'fused' is PyTorch's one-kernel F.rms_norm; 'manual' is the textbook expression in the model's
    dtype, x * rsqrt(mean(x^2) + eps) * w, which runs as six small kernels (pow, mean, add, rsqrt, mul, mul)."""
    import torch
    if kind == "fused":
        return torch.nn.functional.rms_norm(x, (x.shape[-1],), weight, eps)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def apply_rope(x, cos, sin):
    """x: [tokens, heads, head_dim]; the rotate-half form used by Llama."""
    import torch
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def make_step(arch: Arch, weights: dict, batch: int, seq: int, context: int, device: str, dtype,
              norm: str = "manual", tp: int = 1, reduce=None):
    """Build the inputs of one step and return a zero-argument function that runs it (static buffers).

    With tp > 1, `weights` are one GPU's shard (build_weights) and `reduce` sums a [tokens, hidden] tensor over
    the GPUs (an all-reduce); the logits stay split over the vocabulary.
    """
    import torch
    import torch.nn.functional as F
    h, d, nq, nkv = arch.hidden_size, arch.head_dim, arch.num_heads // tp, arch.num_kv_heads // tp
    total = context + seq
    caches = [(torch.zeros(batch, nkv, total, d, device=device, dtype=dtype),
               torch.zeros(batch, nkv, total, d, device=device, dtype=dtype)) for _ in range(arch.num_layers)]
    ids = torch.randint(0, arch.vocab_size, (batch * seq,), device=device)
    positions = torch.arange(context, total, device=device).repeat(batch)
    cos, sin = rope_tables(arch, positions, device, dtype)
    causal = seq > 1
    mask = None
    if causal and context:
        # A prompt chunk after a cached prefix: query i sees the prefix and chunk tokens <= i (bottom-right
        # aligned causal mask; SDPA's is_causal would align it top-left).
        from torch.nn.attention.bias import causal_lower_right
        mask = causal_lower_right(seq, total)

    shape = LayerShape(batch, seq, context, nq, nkv, d, cos, sin, mask, causal and not context, norm)

    def step():
        x = F.embedding(ids, weights["embed"])                     # [tokens, hidden]
        for layer, cache in zip(weights["layers"], caches):
            x = decoder_layer(x, layer, cache, shape, reduce)
        last = x.view(batch, seq, h)[:, -1]
        return F.linear(rms_norm(last, weights["norm"], 1e-5, norm), weights["lm_head"])

    return step, caches


@dataclass(frozen=True)
class LayerShape:
    """What one decoder layer of a step needs besides its weights and cache (heads are this GPU's)."""

    batch: int
    seq: int
    context: int
    nq: int
    nkv: int
    head_dim: int
    cos: object
    sin: object
    mask: object
    is_causal: bool
    norm: str


def decoder_layer(x, layer: dict, cache: tuple, s: LayerShape, reduce=None):
    """One layer on x [tokens, hidden]; `reduce` (tensor parallelism) sums the output and down GEMMs' partial
    results over the GPUs before each residual add."""
    import torch.nn.functional as F
    reduce = reduce or (lambda t: t)
    d, (k_cache, v_cache) = s.head_dim, cache
    y = rms_norm(x, layer["ln1"], 1e-5, s.norm)
    q, k, v = F.linear(y, layer["qkv"]).split([s.nq * d, s.nkv * d, s.nkv * d], dim=-1)
    q = apply_rope(q.view(-1, s.nq, d), s.cos, s.sin)
    k = apply_rope(k.view(-1, s.nkv, d), s.cos, s.sin)
    k_cache[:, :, s.context:] = k.view(s.batch, s.seq, s.nkv, d).transpose(1, 2)
    v_cache[:, :, s.context:] = v.view(s.batch, s.seq, s.nkv, d).transpose(1, 2)
    qh = q.view(s.batch, s.seq, s.nq, d).transpose(1, 2)
    attn = F.scaled_dot_product_attention(qh, k_cache, v_cache, attn_mask=s.mask, is_causal=s.is_causal,
                                          enable_gqa=s.nq != s.nkv)
    x = x + reduce(F.linear(attn.transpose(1, 2).reshape(s.batch * s.seq, s.nq * d), layer["o"]))
    y = rms_norm(x, layer["ln2"], 1e-5, s.norm)
    gate, up = F.linear(y, layer["gate_up"]).chunk(2, dim=-1)
    return x + reduce(F.linear(F.silu(gate) * up, layer["down"]))


def time_events(fn, reps: int) -> list[float]:
    """Milliseconds of each of `reps` calls of fn, timed with CUDA events."""
    import torch
    out = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end))
    return out


def measure_point(arch: Arch, weights: dict, phase: str, batch: int, seq: int, context: int, dtype,
                  norm: str = "manual") -> dict:
    """Graph-replay and eager timings of one grid point."""
    import torch
    step, caches = make_step(arch, weights, batch, seq, context, "cuda", dtype, norm)
    reps = 20 if phase == "decode" else 10
    warm_up(step, 3)
    eager = time_events(step, 5)
    graph = capture(step)
    times = time_events(graph.replay, reps)
    del graph, caches, step
    torch.cuda.empty_cache()
    return dict(graph_ms_median=round(statistics.median(times), 4), graph_ms_min=round(min(times), 4),
                graph_ms_max=round(max(times), 4), eager_ms_median=round(statistics.median(eager), 4))


def warm_up(fn, times: int = 1) -> None:
    """Run fn on a side stream (as CUDA graph capture wants: allocations and library handles made first)."""
    import torch
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(times):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()


def capture(fn):
    """fn captured in a CUDA graph (warm it up first), replayed once."""
    import torch
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize()
    return graph


def graph_kernel_ms(fns: list) -> float:
    """Milliseconds of one call, from a CUDA graph of the calls `fns` back to back (no launch gaps).

    Callers pass calls on distinct buffers adding up to well over the L2 cache, so no call finds its operands
    left in L2 by the previous one.
    """
    def run_all():
        for fn in fns:
            fn()

    warm_up(run_all)
    return statistics.median(time_events(capture(run_all).replay, 10)) / len(fns)


MICRO_GEMMS = [(8192, 8192, 8192), (4096, 14336, 4096), (1, 14336, 4096), (64, 14336, 4096), (256, 14336, 4096),
               (1024, 14336, 4096), (2048, 6144, 4096), (1, 4096, 4096), (1, 28672, 4096), (1, 128256, 4096),
               (16, 4096, 4096), (512, 4096, 4096), (1, 2048, 2048), (1, 8192, 2048), (8192, 4096, 4096)]


def measure_micro(dtype) -> list[dict]:
    """Copy bandwidth (bytes read + written) and bf16 GEMM rates (M x N x K), as in the shared h100_micro.csv."""
    import torch
    import torch.nn.functional as F
    rows = []
    n = 1 << 30                                                    # 1 Gi elements of bf16: 2 GiB each way
    src, dst = torch.zeros(n, device="cuda", dtype=dtype), torch.empty(n, device="cuda", dtype=dtype)
    # An elementwise kernel, not copy_: a captured copy_ becomes a DMA memcpy node (copy engines, not SMs).
    ms = graph_kernel_ms([lambda: torch.mul(src, 1, out=dst)] * 5)
    rows.append(dict(metric="hbm_copy_rw", value=2 * n * 2 / (ms * 1e-3) / 1e12, note="TB/s (read+write)"))
    src = dst = None
    for m, nn, k in MICRO_GEMMS:
        copies = max(1, min(8, -(-512 * 2**20 // (2 * nn * k))))  # >= 512 MiB of weights per graph
        ws = [torch.randn(nn, k, device="cuda", dtype=dtype) for _ in range(copies)]
        x = torch.randn(m, k, device="cuda", dtype=dtype)
        calls = [(lambda w=w: F.linear(x, w)) for w in ws] * max(1, 8 // copies)
        ms = graph_kernel_ms(calls)
        tflops = 2 * m * nn * k / (ms * 1e-3) / 1e12
        tbps = 2 * (m * k + nn * k + m * nn) / (ms * 1e-3) / 1e12
        rows.append(dict(metric=f"gemm_{m}x{nn}x{k}", value=tflops,
                         note=f"TFLOP/s; {tbps:.3f} TB/s; {ms * 1e3:.1f} us"))
        ws = x = None                                              # free before the next shape
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpu", required=True, help="catalog GPU id written in the gpu column (h100-sxm, h200, ...)")
    p.add_argument("--shape", default="custom", choices=sorted(SHAPES) + ["custom"])
    for name in ("hidden-size", "num-layers", "num-heads", "num-kv-heads", "head-dim", "intermediate-size",
                 "vocab-size"):
        p.add_argument(f"--{name}", type=int, default=0)
    p.add_argument("--model", default="", help="model column for --shape custom")
    p.add_argument("--grid", default="full", choices=sorted(GRIDS))
    p.add_argument("--max-kv-gib", type=float, default=40.0, help="skip points whose KV cache exceeds this")
    p.add_argument("--norm", default="manual", choices=["manual", "fused"],
                   help="RMSNorm as six small kernels (manual, default) or PyTorch's fused kernel")
    p.add_argument("--out", default="", help="steps CSV to write (rows are appended as they are measured)")
    p.add_argument("--micro-out", default="", help="also measure copy bandwidth and GEMM rates into this CSV")
    p.add_argument("--meta-out", default="", help="JSON with device name, torch version and date")
    return p.parse_args(argv)


def arch_from_args(args: argparse.Namespace) -> Arch:
    if args.shape != "custom":
        return SHAPES[args.shape]
    fields = dict(hidden_size=args.hidden_size, num_layers=args.num_layers, num_heads=args.num_heads,
                  num_kv_heads=args.num_kv_heads, head_dim=args.head_dim,
                  intermediate_size=args.intermediate_size, vocab_size=args.vocab_size)
    missing = [k for k, v in fields.items() if v <= 0]
    if missing or not args.model:
        raise SystemExit(f"--shape custom needs --model and positive {', '.join(missing) or 'sizes'}")
    return Arch(args.model, **fields)


def write_meta(path: str, args: argparse.Namespace, arch: Arch) -> None:
    import torch
    props = torch.cuda.get_device_properties(0)
    meta = dict(device=torch.cuda.get_device_name(0), sms=props.multi_processor_count,
                memory_bytes=props.total_memory, torch=torch.__version__, cuda=torch.version.cuda,
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                gpu_id=args.gpu, grid=args.grid, norm=args.norm, arch=asdict(arch))
    with open(path, "w") as f:
        json.dump(meta, f, indent=1)


def main(argv=None) -> int:
    import torch
    args = parse_args(argv)
    arch = arch_from_args(args)
    dtype = torch.bfloat16
    torch.manual_seed(0)
    if args.meta_out:
        write_meta(args.meta_out, args, arch)
    if args.micro_out:
        rows = measure_micro(dtype)
        with open(args.micro_out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["metric", "value", "note"])
            w.writeheader()
            w.writerows(rows)
        for r in rows:
            print(f"{r['metric']:>24} {r['value']:9.3f} {r['note']}", flush=True)
    weights = build_weights(arch, "cuda", dtype)
    out = open(args.out, "w", newline="") if args.out else None
    writer = csv.DictWriter(out or sys.stdout, fieldnames=COLUMNS)
    writer.writeheader()
    for phase, batch, seq, context in GRIDS[args.grid]:
        if kv_cache_bytes(arch, batch, context + seq) > args.max_kv_gib * 2**30:
            print(f"skip {phase} b={batch} s={seq} c={context}: KV cache over {args.max_kv_gib} GiB", flush=True)
            continue
        row = dict(gpu=args.gpu, **asdict(arch), dtype="bf16", phase=phase, batch=batch, tokens_per_seq=seq,
                   context=context)
        row.update(measure_point(arch, weights, phase, batch, seq, context, dtype, args.norm))
        writer.writerow(row)
        if out:
            out.flush()
            print(",".join(str(row[c]) for c in COLUMNS), flush=True)
    if out:
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
