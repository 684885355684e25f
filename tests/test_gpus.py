"""GPU catalog, lookup, and user GPU files (TOML / YAML)."""
from __future__ import annotations

import dataclasses

import pytest

from hardware.gpus import GPUS, GPUFileError, GPUSpec, get_gpu, load_gpu_file, resolve_gpu

REQUIRED_CATALOG = {"a100-40gb", "a100-80gb", "h100-sxm", "h100-pcie", "h200", "b200", "l40s", "l4", "a10g",
                    "rtx-4090", "rtx-pro-6000", "mi300x"}
NO_FP8 = {"a100-40gb", "a100-80gb", "a10g"}   # Ampere has no fp8 tensor cores
GiB = 2**30


def test_catalog_has_the_required_gpus():
    assert REQUIRED_CATALOG <= set(GPUS)


@pytest.mark.parametrize("name", sorted(GPUS))
def test_every_entry_is_complete_and_cited(name):
    gpu = GPUS[name]
    assert gpu.name == name
    for field in ("hbm_bytes", "hbm_bytes_per_s", "bf16_flops_per_s", "int8_ops_per_s", "vector_flops_per_s",
                  "l2_bytes", "link_bytes_per_s", "host_link_bytes_per_s"):
        assert getattr(gpu, field) > 0, field
    assert gpu.num_sms > 0 and isinstance(gpu.num_sms, int)
    assert gpu.vendor in ("nvidia", "amd") and len(gpu.source) > 10
    # Capacity convention: the datasheet's "N GB" read as N GiB.
    assert (gpu.hbm_bytes / GiB).is_integer()
    # Sanity of magnitudes: 16-200 GiB, 0.2-10 TB/s, 50 TFLOPS - 3 PFLOPS dense bf16.
    assert 16 * GiB <= gpu.hbm_bytes <= 200 * GiB
    assert 0.2e12 <= gpu.hbm_bytes_per_s <= 10e12
    assert 50e12 <= gpu.bf16_flops_per_s <= 3e15
    # Host links are PCIe Gen4 or Gen5 x16, per direction.
    assert gpu.host_link_bytes_per_s in (32e9, 64e9)


@pytest.mark.parametrize("name", sorted(GPUS))
def test_fp8_only_where_the_chip_has_it(name):
    gpu = GPUS[name]
    if name in NO_FP8:
        assert gpu.fp8_flops_per_s == 0
    else:
        # Dense fp8 is twice dense bf16 on every chip that has it (Hopper, Ada, Blackwell, CDNA3).
        assert gpu.fp8_flops_per_s / gpu.bf16_flops_per_s == pytest.approx(2.0, rel=0.025)


def test_dense_not_sparse_rates():
    # Datasheets print sparse rates with an asterisk; the catalog holds the dense half.
    assert GPUS["h100-sxm"].bf16_flops_per_s == 989e12          # 1,979* with sparsity
    assert GPUS["a100-80gb"].bf16_flops_per_s == 312e12         # 624* with sparsity
    assert GPUS["b200"].bf16_flops_per_s == 2.25e15             # HGX B200: 4.5 PFLOPS* per GPU
    assert GPUS["l4"].bf16_flops_per_s == 121e12                # 242* with sparsity
    assert GPUS["mi300x"].fp8_flops_per_s == 2614.9e12          # 5,229.8* with sparsity


def test_capacity_bandwidth_and_links_of_known_cards():
    h100, mi300x = GPUS["h100-sxm"], GPUS["mi300x"]
    assert h100.hbm_bytes == 80 * GiB == 85_899_345_920
    assert h100.hbm_bytes_per_s == 3.35e12
    assert h100.link_bytes_per_s == 450e9                       # NVLink 900 GB/s both directions
    assert GPUS["b200"].link_bytes_per_s == 2 * h100.link_bytes_per_s
    assert (mi300x.vendor, mi300x.hbm_bytes) == ("amd", 192 * GiB)
    # No NVLink: GPU-to-GPU traffic goes over PCIe.
    for name in ("l40s", "l4", "a10g", "rtx-4090", "rtx-pro-6000", "h100-pcie"):
        assert GPUS[name].link_bytes_per_s == GPUS[name].host_link_bytes_per_s


@pytest.mark.parametrize("query, name", [
    ("h100-sxm", "h100-sxm"), (" H100_SXM ", "h100-sxm"), ("H100", "h100-sxm"), ("a100", "a100-80gb"),
    ("RTX 4090", "rtx-4090"), ("4090", "rtx-4090"), ("MI300X", "mi300x"),
])
def test_get_gpu_normalizes_names(query, name):
    assert get_gpu(query) is GPUS[name]


def test_unknown_gpu_suggests_the_closest_name():
    with pytest.raises(ValueError) as info:
        get_gpu("h100sxm")
    message = str(info.value)
    assert message.startswith("unknown GPU 'h100sxm' (did you mean 'h100-sxm'?); choose one of: a100-40gb, ")
    assert "mi300x" in message and "\n" not in message
    with pytest.raises(ValueError, match="did you mean 'l40s'"):
        get_gpu("l40")


def test_sm_clock_explicit_or_derived_from_the_fp32_rate():
    a100, h100, l40s = GPUS["a100-80gb"], GPUS["h100-sxm"], GPUS["l40s"]
    assert a100.sm_clock() == 1410e6 and h100.sm_clock() == 1980e6          # entries that give it
    # L40S gives none: 91.6 TFLOPS FP32 / (128 lanes x 2 FLOPs x 142 SMs) = 91.6e12 / 36352 = 2.520 GHz.
    assert l40s.sm_clock_hz == 0 and l40s.sm_clock() == pytest.approx(2.5198e9, rel=1e-4)
    assert l40s.sm_clock() == 91.6e12 / (256 * 142)
    # The derivation agrees with the H100's clock (67e12 / (256 x 132) = 1.983 GHz) but would halve the
    # A100's (19.5e12 / (256 x 108) = 705 MHz: Ampere has 64 FP32 lanes an SM), hence its explicit entry.
    assert dataclasses.replace(h100, sm_clock_hz=0.0).sm_clock() == pytest.approx(1980e6, rel=2e-3)
    assert dataclasses.replace(a100, sm_clock_hz=0.0).sm_clock() == pytest.approx(1410e6 / 2, rel=1e-3)
    # No SMs and no clock: 0 (the cost model then prices no per-clock term), not a division by zero.
    assert dataclasses.replace(l40s, num_sms=0).sm_clock() == 0.0
    assert dataclasses.replace(l40s, num_sms=0, sm_clock_hz=2e9).sm_clock() == 2e9


# --- user GPU files ---
TOML = """\
name = "my-gpu"
hbm_bytes = 85899345920
hbm_bytes_per_s = "3.35 TB/s"
bf16_flops_per_s = "989 TFLOPS"
fp8_flops_per_s = 1.979e15
num_sms = 132
link_bytes_per_s = "450 GB/s"
source = "my lab's card"
"""

YAML = """\
hbm_bytes: 80 GiB
hbm_bytes_per_s: 2.0e12
bf16_flops_per_s: 756 TFLOPS
int8_ops_per_s: 1.513 POPS
step_overhead_s: 800 us
"""


def test_load_toml_with_units(tmp_path):
    path = tmp_path / "card.toml"
    path.write_text(TOML, encoding="utf-8")
    gpu = load_gpu_file(path)
    assert isinstance(gpu, GPUSpec)
    assert (gpu.name, gpu.hbm_bytes, gpu.hbm_bytes_per_s, gpu.bf16_flops_per_s) == ("my-gpu", 80 * GiB, 3.35e12,
                                                                                    989e12)
    assert (gpu.fp8_flops_per_s, gpu.num_sms, gpu.link_bytes_per_s, gpu.source) == (1.979e15, 132, 450e9,
                                                                                    "my lab's card")
    assert gpu.int8_ops_per_s == 0.0          # optional fields keep their defaults


def test_load_yaml_name_defaults_to_the_file_stem(tmp_path):
    path = tmp_path / "Lab-Card.yaml"
    path.write_text(YAML, encoding="utf-8")
    gpu = load_gpu_file(path)
    assert (gpu.name, gpu.hbm_bytes, gpu.bf16_flops_per_s) == ("lab-card", 80 * GiB, 756e12)
    assert gpu.int8_ops_per_s == pytest.approx(1.513e15)
    assert gpu.step_overhead_s == pytest.approx(800e-6)


def test_base_starts_from_a_catalog_entry(tmp_path):
    path = tmp_path / "h100-slow.yml"
    path.write_text("base: h100-sxm\nhbm_bytes_per_s: 3.0 TB/s\n", encoding="utf-8")
    gpu = load_gpu_file(path)
    assert gpu == dataclasses.replace(GPUS["h100-sxm"], name="h100-slow", hbm_bytes_per_s=3.0e12)


def _error(tmp_path, text: str, name: str = "bad.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(GPUFileError) as info:
        load_gpu_file(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message
    return message


def test_unknown_key_lists_valid_keys(tmp_path):
    message = _error(tmp_path, TOML + "hbm_gb = 80\n")
    assert "unknown key 'hbm_gb'; valid keys: base, name, hbm_bytes, hbm_bytes_per_s, bf16_flops_per_s" \
        in message


def test_missing_required_key(tmp_path):
    message = _error(tmp_path, 'hbm_bytes = "80 GiB"\nbf16_flops_per_s = 1e14\n')
    assert "missing required key 'hbm_bytes_per_s'" in message


@pytest.mark.parametrize("line, fragment", [
    ("hbm_bytes_per_s = 0", "'hbm_bytes_per_s' must be positive, got 0"),
    ("hbm_bytes_per_s = -3e12", "'hbm_bytes_per_s' must be positive, got -3000000000000.0"),
    ("hbm_bytes_per_s = \"3.35 TFLOPS\"", "not a number with a unit; units for this key: B/s, KB/s, MB/s, GB/s"),
    ("hbm_bytes_per_s = true", "'hbm_bytes_per_s' must be a number, got True"),
    ("fp8_flops_per_s = -1", "'fp8_flops_per_s' must be zero or positive, got -1"),
    ("num_sms = 13.5", "'num_sms' must be a whole number, got 13.5"),
    ("source = 3", "'source' must be a string, got 3"),
    ("sm_clock_hz = \"1.5 GB\"", "'sm_clock_hz' = '1.5 GB' is not a number with a unit; units for this key: Hz, kHz, "
                                "MHz, GHz"),
])
def test_bad_values(tmp_path, line, fragment):
    body = "\n".join(l for l in TOML.splitlines() if not l.startswith(line.split(" ")[0] + " "))
    assert fragment in _error(tmp_path, body + "\n" + line + "\n")


@pytest.mark.parametrize("name, text", [
    ("clock.toml", TOML + 'sm_clock_hz = "1.5 GHz"\nunvectorized_elements_per_clock = 2.5\n'),
    ("clock.yaml", YAML + "sm_clock_hz: 1500 MHz\nunvectorized_elements_per_clock: 2.5\n"),
    ("clock.yml", "base: h100-sxm\nsm_clock_hz: 1.5 ghz\nunvectorized_elements_per_clock: 2.5\n"),
])
def test_clock_keys_take_frequency_units(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    gpu = load_gpu_file(path)
    assert (gpu.sm_clock_hz, gpu.sm_clock(), gpu.unvectorized_elements_per_clock) == (1.5e9, 1.5e9, 2.5)


def test_clock_key_with_a_byte_unit_names_the_frequency_units(tmp_path):
    for name, line in (("bad.toml", 'sm_clock_hz = "1.5 GB"'), ("bad.yaml", "sm_clock_hz: 1.5 GB")):
        message = _error(tmp_path, (TOML if name.endswith(".toml") else YAML) + line + "\n", name)
        assert message.endswith("'sm_clock_hz' = '1.5 GB' is not a number with a unit; "
                                "units for this key: Hz, kHz, MHz, GHz")


def test_unreadable_files(tmp_path):
    with pytest.raises(GPUFileError, match="missing.toml: GPU file not found"):
        load_gpu_file(tmp_path / "missing.toml")
    assert "cannot parse TOML: " in _error(tmp_path, "hbm_bytes = = 3\n")
    assert "cannot parse YAML: " in _error(tmp_path, "hbm_bytes: [1, 2\n", "bad.yaml")
    assert "expected a table of keys (key = value), got list" in _error(tmp_path, "- 1\n- 2\n", "list.yaml")
    assert "unsupported GPU file type '.json'; use .toml, .yaml or .yml" in _error(tmp_path, "{}", "card.json")
    assert "base: unknown GPU 'h1000'" in _error(tmp_path, 'base = "h1000"\n')


def test_resolve_gpu(tmp_path):
    assert resolve_gpu("l4", None) is GPUS["l4"]
    path = tmp_path / "card.toml"
    path.write_text(TOML, encoding="utf-8")
    assert resolve_gpu(None, path).name == "my-gpu"
    with pytest.raises(ValueError, match="not both"):
        resolve_gpu("l4", path)
    with pytest.raises(ValueError, match=r"no GPU given: name a catalog GPU \(one of: a100-40gb, "):
        resolve_gpu(None, None)
