"""GPU specifications: datasheet numbers (dense, no sparsity) plus achievable-rate calibration.

Units are SI: bytes, bytes/s, FLOP/s, seconds. Every entry cites its datasheet.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True)
class GPUSpec:
    """One accelerator. Matrix rates are dense (no 2:4 sparsity); 0 means the chip has no such rate."""

    name: str
    hbm_bytes: float                  # device memory capacity
    hbm_bytes_per_s: float            # peak memory bandwidth (datasheet)
    bf16_flops_per_s: float           # dense tensor-core bf16/fp16 with fp32 accumulate
    fp8_flops_per_s: float = 0.0      # dense fp8 tensor rate (Hopper, Ada, Blackwell, MI300)
    int8_ops_per_s: float = 0.0       # dense int8 tensor rate
    vector_flops_per_s: float = 0.0   # non-tensor fp32 rate (elementwise work)
    l2_bytes: float = 0.0
    num_sms: int = 0
    link_bytes_per_s: float = 0.0     # GPU-to-GPU, per direction (NVLink / Infinity Fabric / PCIe)
    host_link_bytes_per_s: float = 0.0  # GPU-to-host, per direction (PCIe)
    vendor: str = "nvidia"
    source: str = ""                  # datasheet the numbers come from
    # --- achievable-rate calibration (fractions of peak, seconds); see simulator/cost_model.py ---
    gemm_efficiency: float = 0.80     # best fraction of the matrix peak a large GEMM reaches
    hbm_efficiency: float = 0.85      # best fraction of peak bandwidth a streaming kernel reaches
    kernel_floor_s: float = 4e-6      # minimum time of any kernel (latency floor)
    launch_overhead_s: float = 5e-6   # per kernel launch when not captured in a CUDA graph
    step_overhead_s: float = 1.5e-3   # fixed per-step scheduling / sampling / input-prep overhead

    def matrix_flops_per_s(self, dtype: str) -> float:
        """Dense matrix rate for a compute dtype; falls back to bf16 where the chip lacks the rate."""
        rate = {"bf16": self.bf16_flops_per_s, "fp16": self.bf16_flops_per_s,
                "fp8": self.fp8_flops_per_s, "int8": self.int8_ops_per_s}.get(dtype, 0.0)
        return rate or self.bf16_flops_per_s


GiB = 1024**3
GB = 1e9
TB = 1e12

GPUS: dict[str, GPUSpec] = {
    # NVIDIA H100 Tensor Core GPU datasheet (SXM5 80GB): 3.35 TB/s HBM3, 989 TFLOPS bf16 dense (1979 with sparsity),
    # 1979 TFLOPS fp8 dense, 50 MB L2, 132 SMs, NVLink 900 GB/s total (450 GB/s per direction), PCIe Gen5 64 GB/s.
    "h100-sxm": GPUSpec(
        name="h100-sxm", hbm_bytes=80 * GiB, hbm_bytes_per_s=3.35 * TB, bf16_flops_per_s=989e12,
        fp8_flops_per_s=1979e12, int8_ops_per_s=1979e12, vector_flops_per_s=67e12, l2_bytes=50e6, num_sms=132,
        link_bytes_per_s=450 * GB, host_link_bytes_per_s=64 * GB,
        source="NVIDIA H100 Tensor Core GPU datasheet (SXM5)"),
}


def get_gpu(name: str) -> GPUSpec:
    """Look up a catalog GPU; unknown names raise ValueError listing the choices and the closest match."""
    key = name.strip().lower()
    if key in GPUS:
        return GPUS[key]
    close = difflib.get_close_matches(key, GPUS, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ValueError(f"unknown GPU '{name}'{hint}; choose one of: {', '.join(sorted(GPUS))}")
