"""The roofline: a kernel takes as long as the slower of its arithmetic and its memory traffic."""
from __future__ import annotations


def arithmetic_intensity(flops: float, num_bytes: float) -> float:
    """FLOPs per byte moved; the ridge point of a GPU is peak FLOP/s over peak bytes/s."""
    return flops / num_bytes if num_bytes else float("inf")


def kernel_time(flops: float, num_bytes: float, flops_per_s: float, bytes_per_s: float, latency_s: float = 0.0,
                overlap: float = float("inf")) -> tuple[float, str]:
    """Seconds of one kernel: a fixed latency plus its FLOP time and byte time blended, and its bound.

    time = latency_s + (compute_s**p + memory_s**p) ** (1/p) with p = `overlap`. p = inf is the pure roofline
    max(); a finite p says that near the ridge point a kernel cannot hide all of its memory traffic behind its
    arithmetic (or the reverse), so it runs slower than either roof alone. The fixed latency (launch-to-first-
    instruction, ramp-up and tail of the last wave) makes small kernels fall short of both roofs: a kernel of
    B bytes reaches B / (B / bytes_per_s + latency_s), a saturating curve in its size.
    bound is 'compute' or 'memory' (the larger term), or 'latency' when latency_s exceeds both.

    simulator/cost/decode_run.py has a copy inlined in its per-step loop (decode attention): change both, or
    tests/test_cost_model.py's bit-for-bit comparison of the two fails.
    """
    compute_s = flops / flops_per_s if flops else 0.0
    memory_s = num_bytes / bytes_per_s if num_bytes else 0.0
    big = compute_s if compute_s >= memory_s else memory_s
    if big <= 0.0:
        return latency_s, "latency"
    if overlap == float("inf"):
        body = big
    else:
        small = (memory_s if compute_s >= memory_s else compute_s) / big
        body = big * (1.0 + small ** overlap) ** (1.0 / overlap)
    bound = "latency" if latency_s > big else ("compute" if compute_s >= memory_s else "memory")
    return latency_s + body, bound
