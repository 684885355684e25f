"""GPU-to-GPU links: named interconnects with NCCL bus bandwidths, per GPU entry, file and override."""
from __future__ import annotations

import dataclasses

import pytest

from hardware.gpus import GPUS, GPUFileError, get_gpu, load_gpu_file
from hardware.links import LINKS, LinkError, allreduce_seconds, get_link


def test_ring_allreduce_time_by_hand():
    # 2 H200s on NVLink 4: 10 us + 2 ring steps x 0.7 us + (2 x 1 / 2) x 64 MB / 270 GB/s
    link = get_link("nvlink4")
    assert allreduce_seconds(link, 64e6, 2) == pytest.approx(10e-6 + 1.4e-6 + 64e6 / 270e9)
    # 4 RTX 4090s without P2P: 12 us + 6 x 3 us + 1.5 x 64 MB / 10 GB/s
    assert allreduce_seconds(get_link("pcie4-host"), 64e6, 4) == pytest.approx(12e-6 + 18e-6 + 1.5 * 64e6 / 10e9)
    assert allreduce_seconds(link, 64e6, 1) == 0.0


def test_every_link_is_cited_and_ordered_by_what_it_sustains():
    for link in LINKS.values():
        assert link.source and link.description and link.bus_bytes_per_s > 0
    bw = {name: link.bus_bytes_per_s for name, link in LINKS.items()}
    assert bw["nvlink5"] > bw["nvlink4"] > bw["nvlink3"] > bw["nvlink-bridge"] > bw["pcie5-p2p"] > bw["pcie4-p2p"]
    assert bw["pcie4-p2p"] > bw["pcie4-host"] and bw["pcie5-p2p"] > bw["pcie5-host"]


def test_catalog_entries_name_their_interconnect():
    assert all(gpu.link in LINKS for gpu in GPUS.values())
    assert get_gpu("h100-sxm").interconnect().name == "nvlink4"
    assert get_gpu("rtx-4090").interconnect().name == "pcie4-host"        # GeForce: no peer-to-peer
    assert get_gpu("h200").interconnect("pcie5-p2p").name == "pcie5-p2p"  # an override wins


def test_an_entry_without_a_link_name_uses_its_link_fields():
    gpu = dataclasses.replace(get_gpu("h100-sxm"), link="", link_bytes_per_s=100e9, link_efficiency=0.5)
    link = gpu.interconnect()
    assert link.bus_bytes_per_s == 50e9 and link.latency_s == gpu.collective_latency_s


def test_unknown_link_names_the_choices(tmp_path):
    with pytest.raises(LinkError, match=r"unknown link 'nvlink-4' \(did you mean 'nvlink4'\?\); choose one of: "):
        get_link("nvlink-4")
    path = tmp_path / "card.toml"
    path.write_text('base = "rtx-4090"\nlink = "pcie9"\n')
    with pytest.raises(GPUFileError, match="card.toml: link: unknown link 'pcie9'"):
        load_gpu_file(path)
    path.write_text('base = "rtx-4090"\nlink = "pcie4-p2p"\n')
    assert load_gpu_file(path).interconnect().name == "pcie4-p2p"
