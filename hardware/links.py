"""GPU-to-GPU links: what an all-reduce between tensor-parallel GPUs sustains over each kind of interconnect.

An all-reduce of B bytes over n GPUs with NCCL's ring takes

    latency_s + 2 (n - 1) step_latency_s + 2 (n - 1) / n x B / bus_bytes_per_s

where bus_bytes_per_s is NCCL's "bus bandwidth" (busbw in nccl-tests' all_reduce_perf: algbw x 2 (n - 1) / n),
the per-GPU rate the wire sustains once protocol overhead is paid. Bus bandwidths come from public
all_reduce_perf results at large messages (cited per entry), or from this project's own measurement.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

GB = 1e9


@dataclass(frozen=True)
class Link:
    """One interconnect between the GPUs of a tensor-parallel group."""

    name: str
    bus_bytes_per_s: float      # NCCL all-reduce bus bandwidth at large messages, per GPU
    latency_s: float            # fixed time of one all-reduce (launch, handshake) at tiny sizes
    step_latency_s: float       # added per ring step (an all-reduce over n GPUs takes 2 (n - 1))
    description: str
    source: str


LINKS: dict[str, Link] = {
    # NVLink 3 (A100 SXM4, 300 GB/s a direction): nccl-tests all_reduce_perf on 8 A100-SXM4-80GB reaches a
    # busbw of ~200-210 GB/s (NVIDIA/nccl-tests issues #149 and #178).
    "nvlink3": Link("nvlink3", 205 * GB, 10e-6, 0.7e-6, "NVLink 3 through NVSwitch (A100 SXM)",
                    "nccl-tests all_reduce_perf, 8x A100-SXM4: busbw ~200-210 GB/s (NVIDIA/nccl-tests #149, #178)"),
    # NVLink 4 (H100 / H200 SXM, 450 GB/s a direction): this project's bare NCCL all-reduces of 8 KiB-64 MiB on
    # 2 and 4 H200s fit 10 us + 0.7 us per ring step + bytes at 270 GB/s bus bandwidth
    # (benchmarks/data/h200_tp*_allreduce.csv). NCCL's maintainers quote ~370 GB/s for the ring on 8 GPUs
    # (NVIDIA/nccl-tests #212); 2-4 GPUs use fewer channels.
    "nvlink4": Link("nvlink4", 270 * GB, 10e-6, 0.7e-6, "NVLink 4 through NVSwitch (H100 / H200 SXM)",
                    "own: bare NCCL all-reduces on 2 and 4 H200s (benchmarks/data/h200_tp*_allreduce.csv)"),
    # NVLink 5 (B200, 900 GB/s a direction): no public 2-8 GPU ring figure found; the NVLink 4 fraction of the
    # line rate (270 / 450 = 0.6) applied to NVLink 5's line rate.
    "nvlink5": Link("nvlink5", 540 * GB, 10e-6, 0.7e-6, "NVLink 5 through NVSwitch (B200)",
                    "derived: NVLink 4's measured 0.6 of line rate x 900 GB/s (not measured)"),
    # NVLink bridge between two PCIe cards (H100 PCIe): 116 GB/s busbw on 2 GPUs at 1-4 GiB
    # (NVIDIA/nccl #1161).
    "nvlink-bridge": Link("nvlink-bridge", 116 * GB, 10e-6, 0.7e-6, "NVLink bridge between two PCIe cards",
                          "nccl-tests all_reduce_perf, 2x H100 PCIe with bridge: busbw 116 GB/s (NVIDIA/nccl #1161)"),
    # PCIe with peer-to-peer: GPUs write into each other's memory across the PCIe switch or root complex.
    # 24.7 GB/s busbw on RTX 4090s (PCIe 4.0 x16, 32 GB/s a direction) with P2P enabled
    # (tinygrad/open-gpu-kernel-modules #17): ~0.75 of the line rate; PCIe 5.0 takes the same fraction.
    "pcie4-p2p": Link("pcie4-p2p", 24 * GB, 15e-6, 1.5e-6, "PCIe 4.0 x16 with peer-to-peer",
                      "nccl-tests all_reduce_perf, RTX 4090s with P2P: busbw 24.7 GB/s "
                      "(tinygrad/open-gpu-kernel-modules #17)"),
    "pcie5-p2p": Link("pcie5-p2p", 48 * GB, 15e-6, 1.5e-6, "PCIe 5.0 x16 with peer-to-peer",
                      "derived: the PCIe 4.0 P2P fraction (0.75) x 64 GB/s (not measured)"),
    # PCIe without peer-to-peer (GeForce and many workstation cards): NCCL stages every chunk through pinned
    # host memory (its SHM transport), a copy out and a copy in per hop, at a fraction of the PCIe rate.
    # 8x L20 over SHM average a busbw of 6.1 GB/s over 8 B-512 MiB, small sizes included (NVIDIA/nccl #1817);
    # 2x RTX 4090 without P2P take ~12 us for a tiny collective (tinygrad/open-gpu-kernel-modules #17). The
    # large-message plateau taken here, 10 GB/s on PCIe 4.0, is an estimate from those, not a fit.
    "pcie4-host": Link("pcie4-host", 10 * GB, 12e-6, 3e-6, "PCIe 4.0 without P2P: staged through host memory",
                       "estimate from nccl-tests without P2P: 8x L20 over SHM average busbw 6.1 GB/s "
                       "(NVIDIA/nccl #1817); ~12 us tiny collectives on 2x RTX 4090 (tinygrad #17)"),
    "pcie5-host": Link("pcie5-host", 20 * GB, 12e-6, 3e-6, "PCIe 5.0 without P2P: staged through host memory",
                       "derived: the PCIe 4.0 host-staged estimate x 2 (the PCIe 5.0 line rate; not measured)"),
    # AMD Infinity Fabric (MI300X, 448 GB/s a direction over 7 links): the NVLink 4 fraction of line rate.
    "infinity-fabric": Link("infinity-fabric", 270 * GB, 10e-6, 0.7e-6, "AMD Infinity Fabric (MI300X)",
                            "derived: NVLink 4's measured 0.6 of line rate x 448 GB/s (not measured)"),
}


class LinkError(ValueError):
    """An unknown link name; the message is one line listing the choices."""


def get_link(name: str) -> Link:
    """Look up a link by name; unknown names raise LinkError listing the choices and the closest match."""
    key = str(name).strip().lower()
    if key in LINKS:
        return LINKS[key]
    close = difflib.get_close_matches(key, list(LINKS), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise LinkError(f"unknown link '{name}'{hint}; choose one of: {', '.join(LINKS)}")


def allreduce_seconds(link: Link, num_bytes: float, num_gpus: int) -> float:
    """One ring all-reduce of `num_bytes` over `num_gpus` GPUs on `link` (0 for one GPU)."""
    if num_gpus <= 1:
        return 0.0
    steps = 2 * (num_gpus - 1)
    return link.latency_s + steps * link.step_latency_s + steps / num_gpus * num_bytes / link.bus_bytes_per_s
