"""GPU specifications: datasheet numbers (dense, no sparsity) plus achievable-rate calibration.

Units are SI: bytes, bytes/s, FLOP/s, seconds. Every entry cites its datasheet.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass
from pathlib import Path


from hardware.links import Link, get_link


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
    sm_clock_hz: float = 0.0          # boost clock of the SMs (0: derived from vector_flops_per_s, see sm_clock)
    vendor: str = "nvidia"
    source: str = ""                  # datasheet the numbers come from
    link: str = ""                    # GPU-to-GPU interconnect, a name in hardware/links.py ("" = link_* fields)
    calibrated_from: str = ""         # kernel profiles the calibration fields were fitted to ("" = defaults)
    # An input, not a fact: an on-demand rental price that dates quickly (see GPU_PRICES); 0 = unknown.
    usd_per_gpu_hour: float = 0.0
    price_source: str = ""            # where and when that price was listed
    # --- achievable-rate calibration: fractions of the datasheet peaks and fixed times, the same for every GPU
    # unless an entry overrides them. Fitted by benchmarks/calibrate.py on real H100 SXM step times (the shared
    # Llama-3-8B reference, benchmarks/data/README.md) and meant to transfer; see simulator/cost/model.py. ---
    gemm_efficiency: float = 0.81     # sustained fraction of the dense matrix peak of big GEMMs inside a step
    attention_efficiency: float = 0.44  # sustained fraction of the 16-bit matrix peak of fused causal attention
    hbm_efficiency: float = 0.94      # fraction of peak bandwidth streaming kernels reach (KV reads, elementwise)
    gemm_hbm_efficiency: float = 0.86  # fraction of peak bandwidth weight-streaming (small-M) GEMMs reach
    roofline_overlap: float = 6.0     # p of the blend (compute^p + memory^p)^(1/p) near the ridge; inf = max()
    kernel_floor_s: float = 2.2e-6    # fixed time of a small (elementwise) kernel inside a CUDA graph
    gemm_floor_s: float = 4.4e-6      # fixed time of a GEMM or attention kernel (prologue, tail, split-K reduce)
    launch_overhead_s: float = 12e-6  # CPU time to issue one kernel from eager PyTorch (no CUDA graph)
    step_overhead_s: float = 1.5e-3   # fixed per-step scheduling / sampling / input-prep overhead (not fitted)
    # Collectives: fitted to bare NCCL all-reduces of 8 KiB to 64 MiB on 2 and 4 NVLink-connected H200s
    # (benchmarks/data/h200_tp*_allreduce.csv; the TP step times there were not fitted), time =
    # collective_latency_s + 2 (tp - 1) collective_step_latency_s + 2 (tp - 1) / tp x bytes / (link x efficiency).
    link_efficiency: float = 0.60     # fraction of link_bytes_per_s a ring all-reduce reaches (bus bandwidth)
    collective_latency_s: float = 10e-6  # fixed latency of one all-reduce or pipeline send
    collective_step_latency_s: float = 0.7e-6  # added per ring step (an all-reduce over tp GPUs takes 2 (tp - 1))
    # --- vLLM V1's varlen attention kernel and sampler (simulator/cost/varlen.py). Defaults: the rounded mean of
    # the fits to vLLM 0.19's kernel profiles of an RTX 4090 and an RTX PRO 6000 (casys-kaist/LLMServingSim,
    # MIT; `servesim calibrate`); on other GPUs they are a transfer, not a measurement. ---
    attention_floor_s: float = 10.8e-6  # fixed time of one varlen attention launch
    varlen_query_tile: float = 64     # query rows per CTA (FlashAttention-2's 64-row tiles on sm80/sm89)
    attention_ctas_per_sm: float = 0.76  # attention CTAs an SM runs at once (fills the GPU)
    mixed_reread: float = 0.28        # share of a mixed step's grouped-head KV re-reads reaching memory at low load
    mixed_window: float = 5.8         # CTAs per SM resident together: the window inside which re-reads hit L2
    mixed_sharpness: float = 4.3      # how sharply re-reads go to memory past that window
    mixed_cta_s: float = 3.6e-6       # SM time of one decode CTA in a mixed step beyond its arithmetic and bytes
    sampler_floor_s: float = 15e-6    # vLLM's GPU sampler for one sequence (several small kernels)
    sampler_passes: float = 1.16      # fp32 passes over each sampled sequence's logits (softmax, top-k/top-p)
    # elements per SM per clock of PyTorch's non-vectorized elementwise kernels (strided or broadcast operands):
    # bound by per-element index arithmetic, not by bandwidth (measured in-step on an H100, at the clocks a
    # power-limited prefill sustains: benchmarks/data/h100_profile_kernels.csv)
    unvectorized_elements_per_clock: float = 1.2

    def interconnect(self, override: str | None = None) -> Link:
        """The GPU-to-GPU link: `override` or the entry's named link (hardware/links.py), else one built from the
        entry's link_bytes_per_s x link_efficiency and collective latencies (GPU files without a `link`)."""
        name = override or self.link
        if name:
            return get_link(name)
        return Link("custom", self.link_bytes_per_s * self.link_efficiency, self.collective_latency_s,
                    self.collective_step_latency_s, "from the GPU entry's link fields", self.source)

    def sm_clock(self) -> float:
        """SM clock in Hz: the entry's, else the FP32 vector rate over 128 lanes x 2 FLOPs (an FMA) per SM."""
        if self.sm_clock_hz:
            return self.sm_clock_hz
        return self.vector_flops_per_s / (256 * self.num_sms) if self.num_sms else 0.0

    def matrix_flops_per_s(self, dtype: str) -> float:
        """Dense matrix rate for a compute dtype; falls back to bf16 where the chip lacks the rate."""
        rate = {"bf16": self.bf16_flops_per_s, "fp16": self.bf16_flops_per_s,
                "fp8": self.fp8_flops_per_s, "int8": self.int8_ops_per_s}.get(dtype, 0.0)
        return rate or self.bf16_flops_per_s


# Units. Capacity convention: a datasheet's "80 GB" of HBM/GDDR is read as 80 GiB (memory parts come in
# power-of-two densities: H100's five 16 GiB stacks hold 85.9e9 bytes). The driver keeps a little for itself
# (nvidia-smi shows 81559 MiB on an H100 SXM, 0.4% less), which gpu_memory_utilization covers. Rates and
# bandwidths are decimal (1 TB/s = 1e12 bytes/s), as datasheets print them. L2 sizes are binary (50 MB = 50 MiB).
MiB = 1024**2
GiB = 1024**3
GB = 1e9
TB = 1e12
TFLOPS = 1e12
PCIE4_X16 = 32 * GB   # PCIe Gen4 x16: datasheets print 64 GB/s, both directions together
PCIE5_X16 = 64 * GB   # PCIe Gen5 x16: datasheets print 128 GB/s, both directions together

# Every entry: dense (no 2:4 sparsity) tensor rates; datasheets print sparse figures with an asterisk, twice
# the dense ones. Link and host-link bandwidths are per direction (datasheets print both directions summed).
GPUS: dict[str, GPUSpec] = {
    # NVIDIA A100 Tensor Core GPU datasheet (SXM4 40GB): 40 GB HBM2, 1,555 GB/s; BF16 312 TFLOPS (624*),
    # INT8 624 TOPS (1,248*), no FP8; FP32 19.5 TFLOPS; NVLink 600 GB/s; PCIe Gen4 64 GB/s; 108 SMs, 40 MB L2;
    # boost clock 1410 MHz (NVIDIA A100 Tensor Core GPU architecture whitepaper: 64 FP32 lanes per SM, so the
    # 128-lane derivation in GPUSpec.sm_clock would halve it).
    "a100-40gb": GPUSpec(
        name="a100-40gb", hbm_bytes=40 * GiB, hbm_bytes_per_s=1555 * GB, bf16_flops_per_s=312 * TFLOPS,
        fp8_flops_per_s=0.0, int8_ops_per_s=624 * TFLOPS, vector_flops_per_s=19.5 * TFLOPS, l2_bytes=40 * MiB,
        num_sms=108, link_bytes_per_s=300 * GB, host_link_bytes_per_s=PCIE4_X16,
        sm_clock_hz=1410e6,
        link="nvlink3", source="NVIDIA A100 Tensor Core GPU datasheet (SXM4 40GB)"),
    # NVIDIA A100 Tensor Core GPU datasheet (SXM4 80GB): 80 GB HBM2e, 2,039 GB/s; otherwise as the 40GB card.
    "a100-80gb": GPUSpec(
        name="a100-80gb", hbm_bytes=80 * GiB, hbm_bytes_per_s=2039 * GB, bf16_flops_per_s=312 * TFLOPS,
        fp8_flops_per_s=0.0, int8_ops_per_s=624 * TFLOPS, vector_flops_per_s=19.5 * TFLOPS, l2_bytes=40 * MiB,
        num_sms=108, link_bytes_per_s=300 * GB, host_link_bytes_per_s=PCIE4_X16,
        sm_clock_hz=1410e6,
        link="nvlink3", source="NVIDIA A100 Tensor Core GPU datasheet (SXM4 80GB)"),
    # NVIDIA H100 Tensor Core GPU datasheet (SXM5 80GB): 80 GB HBM3, 3.35 TB/s; BF16 989 TFLOPS (1,979*),
    # FP8 1,979 TFLOPS (3,958*), INT8 1,979 TOPS (3,958*); FP32 67 TFLOPS; NVLink 900 GB/s; PCIe Gen5
    # 128 GB/s; 132 SMs, 50 MB L2 (Hopper architecture whitepaper); max SM clock 1980 MHz (nvidia-smi on an
    # H100 80GB HBM3, matching 67 TFLOPS = 132 SMs x 128 lanes x 2 x 1.98 GHz).
    "h100-sxm": GPUSpec(
        name="h100-sxm", hbm_bytes=80 * GiB, hbm_bytes_per_s=3.35 * TB, bf16_flops_per_s=989 * TFLOPS,
        fp8_flops_per_s=1979 * TFLOPS, int8_ops_per_s=1979 * TFLOPS, vector_flops_per_s=67 * TFLOPS,
        l2_bytes=50 * MiB, num_sms=132, link_bytes_per_s=450 * GB, host_link_bytes_per_s=PCIE5_X16,
        sm_clock_hz=1980e6, link="nvlink4", source="NVIDIA H100 Tensor Core GPU datasheet (SXM5 80GB)"),
    # NVIDIA H100 Tensor Core GPU datasheet (PCIe 80GB): 80 GB HBM2e, 2.0 TB/s; BF16 756 TFLOPS (1,513*),
    # FP8 1,513 TFLOPS (3,026*), INT8 1,513 TOPS (3,026*); FP32 51 TFLOPS; PCIe Gen5 128 GB/s; NVLink
    # 600 GB/s only through a 2-GPU bridge, so GPU-to-GPU here is PCIe; 114 SMs, 50 MB L2.
    "h100-pcie": GPUSpec(
        name="h100-pcie", hbm_bytes=80 * GiB, hbm_bytes_per_s=2.0 * TB, bf16_flops_per_s=756 * TFLOPS,
        fp8_flops_per_s=1513 * TFLOPS, int8_ops_per_s=1513 * TFLOPS, vector_flops_per_s=51 * TFLOPS,
        l2_bytes=50 * MiB, num_sms=114, link_bytes_per_s=PCIE5_X16, host_link_bytes_per_s=PCIE5_X16,
        link="pcie5-p2p", source="NVIDIA H100 Tensor Core GPU datasheet (PCIe 80GB)"),
    # NVIDIA H200 Tensor Core GPU datasheet (SXM): 141 GB HBM3e, 4.8 TB/s; BF16 989 TFLOPS (1,979*),
    # FP8 1,979 TFLOPS (3,958*), INT8 1,979 TOPS (3,958*); FP32 67 TFLOPS; NVLink 900 GB/s; PCIe Gen5
    # 128 GB/s; same GH100 die as H100 SXM (132 SMs, 50 MB L2, max SM clock 1980 MHz as nvidia-smi reads it).
    "h200": GPUSpec(
        name="h200", hbm_bytes=141 * GiB, hbm_bytes_per_s=4.8 * TB, bf16_flops_per_s=989 * TFLOPS,
        fp8_flops_per_s=1979 * TFLOPS, int8_ops_per_s=1979 * TFLOPS, vector_flops_per_s=67 * TFLOPS,
        l2_bytes=50 * MiB, num_sms=132, link_bytes_per_s=450 * GB, host_link_bytes_per_s=PCIE5_X16,
        sm_clock_hz=1980e6, link="nvlink4", source="NVIDIA H200 Tensor Core GPU datasheet (SXM)"),
    # NVIDIA HGX B200 datasheet, per GPU: 180 GB HBM3e, 7.7 TB/s (first printed as 8 TB/s); FP16/BF16
    # 4.5 PFLOPS*, FP8 9 PFLOPS*, INT8 9 POPS* (all with sparsity: dense is half); FP32 75 TFLOPS;
    # NVLink 5 1.8 TB/s; PCIe Gen5 128 GB/s. 148 SMs and 126 MB L2 as measured by Chips and Cheese ("Nvidia's
    # B200: Keeping the CUDA Juggernaut Rolling").
    "b200": GPUSpec(
        name="b200", hbm_bytes=180 * GiB, hbm_bytes_per_s=7.7 * TB, bf16_flops_per_s=2250 * TFLOPS,
        fp8_flops_per_s=4500 * TFLOPS, int8_ops_per_s=4500 * TFLOPS, vector_flops_per_s=75 * TFLOPS,
        l2_bytes=126 * MiB, num_sms=148, link_bytes_per_s=900 * GB, host_link_bytes_per_s=PCIE5_X16,
        link="nvlink5", source="NVIDIA HGX B200 datasheet (per-GPU figures)"),
    # NVIDIA L40S datasheet: 48 GB GDDR6, 864 GB/s; BF16 362.05 TFLOPS (733*), FP8 733 TFLOPS (1,466*),
    # INT8 733 TOPS (1,466*); FP32 91.6 TFLOPS; PCIe Gen4 x16 64 GB/s; no NVLink; 142 SMs (18,176 CUDA
    # cores), 96 MB L2 (Ada Lovelace architecture whitepaper, AD102).
    "l40s": GPUSpec(
        name="l40s", hbm_bytes=48 * GiB, hbm_bytes_per_s=864 * GB, bf16_flops_per_s=362.05 * TFLOPS,
        fp8_flops_per_s=733 * TFLOPS, int8_ops_per_s=733 * TFLOPS, vector_flops_per_s=91.6 * TFLOPS,
        l2_bytes=96 * MiB, num_sms=142, link_bytes_per_s=PCIE4_X16, host_link_bytes_per_s=PCIE4_X16,
        link="pcie4-p2p", source="NVIDIA L40S datasheet"),
    # NVIDIA L4 Tensor Core GPU datasheet: 24 GB GDDR6, 300 GB/s; BF16 242 TFLOPS*, FP8 485 TFLOPS*,
    # INT8 485 TOPS* (sparse; dense is half); FP32 30.3 TFLOPS; PCIe Gen4 x16 64 GB/s; 58 SMs (7,424 CUDA
    # cores), 48 MB L2 (AD104).
    "l4": GPUSpec(
        name="l4", hbm_bytes=24 * GiB, hbm_bytes_per_s=300 * GB, bf16_flops_per_s=121 * TFLOPS,
        fp8_flops_per_s=242.5 * TFLOPS, int8_ops_per_s=242.5 * TFLOPS, vector_flops_per_s=30.3 * TFLOPS,
        l2_bytes=48 * MiB, num_sms=58, link_bytes_per_s=PCIE4_X16, host_link_bytes_per_s=PCIE4_X16,
        link="pcie4-p2p", source="NVIDIA L4 Tensor Core GPU datasheet"),
    # NVIDIA A10G (AWS EC2 G5 only; NVIDIA publishes no datasheet): 24 GB GDDR6, 600 GB/s; 80 SMs; BF16
    # 70 TFLOPS dense (fp32 accumulate at half the fp16-accumulate rate, as on GA102 GeForce parts), INT8
    # 140 TOPS dense, FP32 35 TFLOPS, no FP8, as tabulated in Baseten's "NVIDIA A10 vs A10G for ML model
    # inference"; PCIe Gen4 x16; 6 MB L2 (GA102).
    "a10g": GPUSpec(
        name="a10g", hbm_bytes=24 * GiB, hbm_bytes_per_s=600 * GB, bf16_flops_per_s=70 * TFLOPS,
        fp8_flops_per_s=0.0, int8_ops_per_s=140 * TFLOPS, vector_flops_per_s=35 * TFLOPS, l2_bytes=6 * MiB,
        num_sms=80, link_bytes_per_s=PCIE4_X16, host_link_bytes_per_s=PCIE4_X16,
        link="pcie4-p2p", source="AWS EC2 G5 (NVIDIA A10G); rates as tabulated by Baseten, 'NVIDIA A10 vs A10G'"),
    # NVIDIA Ada Lovelace architecture whitepaper, GeForce RTX 4090: 24 GB GDDR6X, 1,008 GB/s; FP16/BF16
    # tensor with FP32 accumulate 165.2 TFLOPS (330.4*) [330.3 with FP16 accumulate]; FP8 with FP32
    # accumulate 330.3 TFLOPS (660.6*); INT8 660.6 TOPS (1,321.2*); FP32 82.6 TFLOPS; 128 SMs, 72 MB L2;
    # PCIe Gen4 x16, no NVLink.
    "rtx-4090": GPUSpec(
        name="rtx-4090", hbm_bytes=24 * GiB, hbm_bytes_per_s=1008 * GB, bf16_flops_per_s=165.2 * TFLOPS,
        fp8_flops_per_s=330.3 * TFLOPS, int8_ops_per_s=660.6 * TFLOPS, vector_flops_per_s=82.6 * TFLOPS,
        l2_bytes=72 * MiB, num_sms=128, link_bytes_per_s=PCIE4_X16, host_link_bytes_per_s=PCIE4_X16,
        link="pcie4-host",
        # Calibrated: `servesim calibrate` fitted to vLLM 0.19's own kernel times of Llama-3.1-8B on an RTX 4090
        # (casys-kaist/LLMServingSim, MIT: profiles/RTX4090/meta-llama/Llama-3.1-8B/bf16/tp1). Its tensor cores
        # reach ~94% of the dense fp16 rate in big GEMMs; weight streaming ~93% of the datasheet bandwidth.
        calibrated_from=("vLLM 0.19 kernel profiles of Llama-3.1-8B tp1 on an RTX 4090 "
                         "(casys-kaist/LLMServingSim, MIT)"),
        hbm_efficiency=0.8073, attention_floor_s=1.131e-05, attention_efficiency=0.7091,
        attention_ctas_per_sm=0.7879, mixed_reread=0.3381, mixed_window=4.439, mixed_sharpness=6.053,
        mixed_cta_s=4.264e-06, gemm_efficiency=0.9441, gemm_hbm_efficiency=0.9265, gemm_floor_s=8.011e-06,
        kernel_floor_s=2.025e-06, sampler_floor_s=2.126e-05, sampler_passes=1.103,
        source="NVIDIA Ada Lovelace GPU architecture whitepaper (GeForce RTX 4090)"),
    # NVIDIA RTX PRO 6000 Blackwell (Workstation / Server Edition): 96 GB GDDR7 ECC, 1,792 GB/s; 188 SMs,
    # 128 MB L2; FP32 125 TFLOPS; "4,000 AI TOPS" = FP4 with sparsity. Dense rates derived from it: FP4 2,000,
    # FP8 1,000, BF16 500 TFLOPS (professional cards run fp32 accumulate at full rate); INT8 as FP8.
    # PCIe Gen5 x16 128 GB/s; no NVLink.
    "rtx-pro-6000": GPUSpec(
        name="rtx-pro-6000", hbm_bytes=96 * GiB, hbm_bytes_per_s=1792 * GB, bf16_flops_per_s=500 * TFLOPS,
        fp8_flops_per_s=1000 * TFLOPS, int8_ops_per_s=1000 * TFLOPS, vector_flops_per_s=125 * TFLOPS,
        l2_bytes=128 * MiB, num_sms=188, link_bytes_per_s=PCIE5_X16, host_link_bytes_per_s=PCIE5_X16,
        link="pcie5-host",
        # Calibrated: `servesim calibrate` fitted to vLLM 0.19's kernel times of Qwen3-32B (tp1 and tp2) on an RTX
        # PRO 6000 Blackwell Server Edition (casys-kaist/LLMServingSim, MIT: profiles/RTXPRO6000/Qwen/Qwen3-32B).
        # GDDR7 streams at ~73-81% of the datasheet bandwidth; big GEMMs reach ~72% of the derived bf16 rate.
        calibrated_from=("vLLM 0.19 kernel profiles of Qwen3-32B tp1 and tp2 on an RTX PRO 6000 "
                         "(casys-kaist/LLMServingSim, MIT)"),
        hbm_efficiency=0.7327, attention_floor_s=1.033e-05, attention_efficiency=0.4597,
        attention_ctas_per_sm=0.7266, mixed_reread=0.2156, mixed_window=7.217, mixed_sharpness=2.609,
        mixed_cta_s=3.026e-06, gemm_efficiency=0.7208, gemm_hbm_efficiency=0.8096, gemm_floor_s=8.788e-06,
        kernel_floor_s=2.589e-06, sampler_floor_s=9.424e-06, sampler_passes=1.215,
        source="NVIDIA RTX PRO 6000 Blackwell datasheet (dense rates derived from 4,000 FP4 sparse TOPS)"),
    # AMD Instinct MI300X datasheet: 192 GB HBM3, 5.3 TB/s; BF16/FP16 1,307.4 TFLOPS (2,614.9*), FP8
    # 2,614.9 TFLOPS (5,229.8*), INT8 2,614.9 TOPS (5,229.8*); FP32 vector 163.4 TFLOPS; 304 CUs; 256 MB
    # Infinity Cache (the last-level cache; L2 proper is 4 MB per XCD); Infinity Fabric 896 GB/s aggregate
    # over 7 links (448 GB/s per direction); PCIe Gen5 x16 128 GB/s.
    "mi300x": GPUSpec(
        name="mi300x", hbm_bytes=192 * GiB, hbm_bytes_per_s=5.3 * TB, bf16_flops_per_s=1307.4 * TFLOPS,
        fp8_flops_per_s=2614.9 * TFLOPS, int8_ops_per_s=2614.9 * TFLOPS, vector_flops_per_s=163.4 * TFLOPS,
        l2_bytes=256 * MiB, num_sms=304, link_bytes_per_s=448 * GB, host_link_bytes_per_s=PCIE5_X16,
        vendor="amd", link="infinity-fabric", source="AMD Instinct MI300X accelerator datasheet"),
}

# On-demand rental prices, USD per GPU-hour: inputs to `servesim plan`, not facts. They differ by provider,
# region and month, so they live apart from the datasheet numbers above; `--price gpu=USD` or
# `usd_per_gpu_hour` in a GPU file override them. One provider's list (RunPod, as tabulated on one date) for
# the GPUs it rents, so that ratios between GPUs are consistent; other providers for the rest.
_RUNPOD = "RunPod on-demand list, as tabulated by deploybase.ai 'RunPod GPU Pricing: 2026' (2026-03-10)"
GPU_PRICES: dict[str, tuple[float, str]] = {
    "a100-40gb": (1.48, "Lambda 1x A100 40GB on-demand, as listed by techbytes.app (verified 2026-05-07)"),
    "a100-80gb": (2.45, _RUNPOD + ", A100 SXM 80GB"),
    "h100-sxm": (4.76, _RUNPOD + ", H100 SXM 80GB"),
    "h100-pcie": (3.51, _RUNPOD + ", H100 PCIe 80GB"),
    "h200": (6.35, _RUNPOD + ", H200 141GB"),
    "b200": (10.57, _RUNPOD + ", B200"),
    "l40s": (1.40, _RUNPOD + ", L40S"),
    "l4": (0.78, _RUNPOD + ", L4"),
    "a10g": (1.006, "AWS EC2 g5.xlarge (1x A10G) on-demand, us-east-1, as quoted by factualminds.com (2026-06-17)"),
    "rtx-4090": (0.60, _RUNPOD + ", RTX 4090"),
    "rtx-pro-6000": (1.57, _RUNPOD + ", RTX PRO 6000"),
    "mi300x": (1.99, "median MI300X on-demand across clouds, cliffcenter.com research note (2026-05-18)"),
}
GPUS = {name: dataclasses.replace(gpu, usd_per_gpu_hour=GPU_PRICES[name][0], price_source=GPU_PRICES[name][1])
        if name in GPU_PRICES else gpu for name, gpu in GPUS.items()}

# Other spellings people type for catalog GPUs.
GPU_ALIASES: dict[str, str] = {
    "a100": "a100-80gb", "a100-sxm": "a100-80gb", "h100": "h100-sxm", "h200-sxm": "h200", "b200-sxm": "b200",
    "4090": "rtx-4090", "rtx4090": "rtx-4090", "rtx-pro6000": "rtx-pro-6000", "mi300": "mi300x",
}


def get_gpu(name: str) -> GPUSpec:
    """Look up a catalog GPU; unknown names raise ValueError listing the choices and the closest match."""
    key = name.strip().lower().replace("_", "-").replace(" ", "-")
    key = GPU_ALIASES.get(key, key)
    if key in GPUS:
        return GPUS[key]
    close = difflib.get_close_matches(key, list(GPUS) + list(GPU_ALIASES), n=1)
    hint = f" (did you mean '{GPU_ALIASES.get(close[0], close[0])}'?)" if close else ""
    raise ValueError(f"unknown GPU '{name}'{hint}; choose one of: {', '.join(sorted(GPUS))}")


class GPUFileError(ValueError):
    """A user GPU file that cannot be read, parsed or validated; the message is one line naming the file."""


# Unit suffixes accepted in string values ("80 GiB", "3.35 TB/s", "989 TFLOPS", "5 us"), by the kind of
# field they fit. The kind comes from the field name's ending.
_UNITS: dict[str, dict[str, float]] = {
    "bytes": {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30,
              "TiB": 2**40},
    "bytes_per_s": {"B/s": 1, "KB/s": 1e3, "MB/s": 1e6, "GB/s": 1e9, "TB/s": 1e12},
    "flops_per_s": {"FLOPS": 1, "GFLOPS": 1e9, "TFLOPS": 1e12, "PFLOPS": 1e15},
    "ops_per_s": {"OPS": 1, "GOPS": 1e9, "TOPS": 1e12, "POPS": 1e15},
    "s": {"s": 1, "ms": 1e-3, "us": 1e-6, "ns": 1e-9},
    "hz": {"Hz": 1, "kHz": 1e3, "MHz": 1e6, "GHz": 1e9},
}


def _field_kind(field_name: str) -> str | None:
    for kind in ("bytes_per_s", "flops_per_s", "ops_per_s", "bytes", "s", "hz"):
        if field_name.endswith("_" + kind):
            return kind
    return None


def _quantity(field_name: str, value: object, where: str) -> float:
    """A number, or a string 'NUMBER UNIT' whose unit fits the field (bytes, bytes/s, FLOP/s, seconds)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise GPUFileError(f"{where}: '{field_name}' must be a number, got {value!r}")
    if not isinstance(value, str):
        return float(value)
    units = _UNITS.get(_field_kind(field_name) or "", {})
    factors = {unit.upper(): factor for unit, factor in units.items()}   # units are case-insensitive
    match = re.fullmatch(r"\s*([-+0-9.eE]+)\s*([A-Za-z/]*)\s*", value)
    try:
        factor = factors[match.group(2).upper()] if match.group(2) else 1.0
        return float(match.group(1)) * factor
    except (AttributeError, KeyError, ValueError):
        choices = ", ".join(units) if units else "none (give a plain number)"
        raise GPUFileError(f"{where}: '{field_name}' = {value!r} is not a number with a unit; "
                           f"units for this key: {choices}") from None


def _read_mapping(path: Path) -> dict:
    """Parse a TOML or YAML file (by extension) into a dict; errors name the file."""
    from workloads.files import read_mapping
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml"):
        raise GPUFileError(f"{path}: unsupported GPU file type '{suffix}'; use .toml, .yaml or .yml")
    return read_mapping(path, "GPU file", error=GPUFileError)


def _check_value(field: dataclasses.Field, value: object, where: str) -> object:
    """Coerce one file value to its GPUSpec field type; numbers must be positive (zero allowed where optional)."""
    if field.type in ("str", str):
        if not isinstance(value, str):
            raise GPUFileError(f"{where}: '{field.name}' must be a string, got {value!r}")
        return value
    number = _quantity(field.name, value, where)
    required = field.default is dataclasses.MISSING
    if not math.isfinite(number) or number < 0 or (required and number == 0):
        rule = "positive" if required else "zero or positive"
        raise GPUFileError(f"{where}: '{field.name}' must be {rule}, got {value!r}")
    if number != 0 or required or field.default != 0:       # 0 means "none" only where it is the default
        low, high = physical_range(field.name)
        if not low <= number <= high:
            raise GPUFileError(f"{where}: '{field.name}' = {value!r} is outside the range a GPU can have, "
                               f"[{low:g}, {high:g}]{_unit_note(field.name)}")
    if field.type in ("int", int):
        if number != int(number):
            raise GPUFileError(f"{where}: '{field.name}' must be a whole number, got {value!r}")
        return int(number)
    return number


# What a GPU's numbers may be, by the unit of the field (SI), wide enough for any chip past or planned, narrow
# enough that every step time stays finite and positive (no 1e-300 B/s, no 1e30 bytes of memory).
_RANGE_BY_KIND = {"bytes": (1e6, 1e15), "bytes_per_s": (1e6, 1e16), "flops_per_s": (1e9, 1e19),
                  "ops_per_s": (1e9, 1e19), "s": (0.0, 1.0), "hz": (1e6, 1e11)}
_RANGE_BY_NAME = {"num_sms": (1, 10_000), "roofline_overlap": (1.0, 1e3), "varlen_query_tile": (1, 4096),
                  "usd_per_gpu_hour": (0.0, 1e4)}
_FRACTION = (1e-3, 1.0)          # *_efficiency and shares: a fraction of a peak


def physical_range(field_name: str) -> tuple[float, float]:
    """The (low, high) a GPUSpec number may take (zero stays allowed for optional fields: 'no such rate')."""
    if field_name in _RANGE_BY_NAME:
        return _RANGE_BY_NAME[field_name]
    if field_name.endswith("_efficiency") or field_name == "mixed_reread":
        return _FRACTION
    kind = _field_kind(field_name)
    return _RANGE_BY_KIND[kind] if kind else (1e-6, 1e6)


def _unit_note(field_name: str) -> str:
    kind = _field_kind(field_name)
    return f" ({kind.replace('_per_', '/')})" if kind else ""


def load_gpu_file(path: str | Path) -> GPUSpec:
    """Read a user GPU from TOML or YAML: keys are GPUSpec field names, SI units.

    Numbers may be plain (3.35e12) or strings with a unit that fits the key ("3.35 TB/s", "80 GiB",
    "989 TFLOPS", "4 us"). An optional `base = "<catalog gpu>"` starts from that entry, so a file may set
    only the fields it changes. `name` defaults to the file's stem. Errors raise GPUFileError, one line.
    """
    path = Path(path)
    data = _read_mapping(path)
    fields = {f.name: f for f in dataclasses.fields(GPUSpec)}
    unknown = sorted(set(data) - set(fields) - {"base"})
    if unknown:
        raise GPUFileError(f"{path}: unknown key '{unknown[0]}'; valid keys: base, {', '.join(fields)}")
    values: dict[str, object] = {}
    if "base" in data:
        try:
            values = dataclasses.asdict(get_gpu(str(data.pop("base"))))
        except ValueError as exc:
            raise GPUFileError(f"{path}: base: {exc}") from None
    values["name"] = path.stem.lower()
    values.update({key: _check_value(fields[key], value, str(path)) for key, value in data.items()})
    if values.get("link"):
        try:
            get_link(str(values["link"]))
        except ValueError as exc:
            raise GPUFileError(f"{path}: link: {exc}") from None
    missing = [name for name, f in fields.items() if f.default is dataclasses.MISSING and name not in values]
    if missing:
        raise GPUFileError(f"{path}: missing required key '{missing[0]}' (required: "
                           f"{', '.join(n for n, f in fields.items() if f.default is dataclasses.MISSING)})")
    try:
        return GPUSpec(**values)
    except (TypeError, ValueError) as exc:
        raise GPUFileError(f"{path}: {exc}") from None


def resolve_gpu(name: str | None, gpu_file: str | Path | None) -> GPUSpec:
    """The GPU a run uses: a catalog name or a user GPU file (exactly one of the two)."""
    if name and gpu_file:
        raise ValueError(f"give a GPU name or a GPU file, not both (got '{name}' and '{gpu_file}')")
    if gpu_file:
        return load_gpu_file(gpu_file)
    if name:
        return get_gpu(name)
    raise ValueError(f"no GPU given: name a catalog GPU (one of: {', '.join(sorted(GPUS))}) or give a GPU file")
