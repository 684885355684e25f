"""Achievable rates: datasheet peak x what-if scale x calibration fraction (the fractions live in hardware/gpus.py)."""
from __future__ import annotations

from dataclasses import dataclass

from hardware.gpus import GPUSpec

INF = float("inf")


@dataclass(frozen=True, slots=True)
class Rates:
    """What the operator pricers divide by, per GPU (after the tensor-parallel split of the work, not of the rates).

    Peaks (`peak_*`) are the datasheet's times the what-if scales; the rest are achievable: peak x calibration.
    """

    peak_flops_per_s: float          # matrix FLOP/s at the weight dtype
    peak_attn_flops_per_s: float     # 16-bit FLOP/s (attention runs in 16-bit whatever the weights)
    peak_bytes_per_s: float          # HBM
    gemm: float                      # GEMM FLOP/s
    attention: float                 # attention FLOP/s
    bw: float                        # HBM bytes/s of streaming kernels
    gemm_bw: float                   # HBM bytes/s of small-M GEMMs streaming their weights
    vector: float                    # vector (non-tensor-core) FLOP/s
    unvec: float                     # elements/s of PyTorch's non-vectorized elementwise kernels (inf: unbounded)
    latency_s: float                 # fixed latency of a kernel
    gemm_latency_s: float            # fixed latency of a GEMM or attention kernel
    overlap: float                   # roofline blend exponent (inf: the pure max of the two roofs)
    num_sms: int
    link: float                      # GPU-to-GPU all-reduce bus bytes/s (NCCL busbw)
    collective_latency_s: float
    ring_latency_s: float            # per all-reduce: 2 (tp - 1) ring steps
    launch_s: float                  # CPU cost to launch one kernel (eager steps)


def rates(gpu: GPUSpec, dtype: str, tp: int = 1, flops_scale: float = 1.0, bandwidth_scale: float = 1.0,
          link: str | None = None) -> Rates:
    """The achievable rates of `gpu` running weights of `dtype` with `tp`-way tensor parallelism, its GPUs
    connected by `link` (a name in hardware/links.py; default: the entry's)."""
    interconnect = gpu.interconnect(link)        # NCCL bus bandwidth and latencies
    peak_flops = gpu.matrix_flops_per_s(dtype) * flops_scale
    peak_attn = gpu.bf16_flops_per_s * flops_scale
    peak_bytes = gpu.hbm_bytes_per_s * bandwidth_scale
    gemm = peak_flops * gpu.gemm_efficiency
    # PyTorch's non-vectorized elementwise kernels are bound by their per-element index arithmetic: a rate
    # per SM per clock, not a share of the memory bandwidth (inf where the entry gives no SMs or clock).
    unvec = gpu.num_sms * gpu.sm_clock() * gpu.unvectorized_elements_per_clock * flops_scale
    return Rates(peak_flops_per_s=peak_flops, peak_attn_flops_per_s=peak_attn, peak_bytes_per_s=peak_bytes,
                 gemm=gemm, attention=peak_attn * gpu.attention_efficiency, bw=peak_bytes * gpu.hbm_efficiency,
                 gemm_bw=peak_bytes * gpu.gemm_hbm_efficiency, vector=(gpu.vector_flops_per_s * flops_scale) or gemm,
                 unvec=unvec or INF, latency_s=gpu.kernel_floor_s, gemm_latency_s=gpu.gemm_floor_s,
                 overlap=gpu.roofline_overlap, num_sms=gpu.num_sms, link=interconnect.bus_bytes_per_s,
                 collective_latency_s=interconnect.latency_s,
                 ring_latency_s=2 * (tp - 1) * interconnect.step_latency_s, launch_s=gpu.launch_overhead_s)
