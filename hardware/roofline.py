"""The roofline: a kernel takes as long as the slower of its arithmetic and its memory traffic."""
from __future__ import annotations


def roofline_time(flops: float, num_bytes: float, flops_per_s: float, bytes_per_s: float) -> tuple[float, str]:
    """Return (seconds, bound) where bound is 'compute' or 'memory'.

    time = max(FLOPs / achievable FLOP/s, bytes / achievable bytes/s); the larger term names the bound.
    """
    compute_s = flops / flops_per_s if flops else 0.0
    memory_s = num_bytes / bytes_per_s if num_bytes else 0.0
    if compute_s >= memory_s:
        return compute_s, "compute"
    return memory_s, "memory"


def arithmetic_intensity(flops: float, num_bytes: float) -> float:
    """FLOPs per byte moved; the ridge point of a GPU is peak FLOP/s over peak bytes/s."""
    return flops / num_bytes if num_bytes else float("inf")
