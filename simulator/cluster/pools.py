"""Replica pools: which replicas a cluster has, from `--replicas N` or a pools file of replica groups.

A pools file (TOML or YAML) lists groups; each names its replica count and any hardware, model or serving
settings that differ from the scenario's (the workload, metrics and routing stay the scenario's):

    [[groups]]
    name = "h100-tp2"
    count = 2
    gpu = "h100-sxm"
    tp = 2

    [[groups]]
    name = "a100"
    count = 4
    gpu = "a100-80gb"
    max_num_seqs = 128
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from simulator.config import ConfigError, SimConfig

# Settings a group may not change: they describe the workload, the metrics or the cluster as a whole.
SCENARIO_ONLY = ("rate", "arrival", "num_requests", "duration_s", "prompt_len", "output_len", "trace", "trace_format",
                 "rate_scale", "seed", "slo_ttft_s", "slo_tpot_s", "summary_only", "max_request_rows",
                 "request_rows_path", "max_concurrency", "fast_path", "replicas", "router", "router_delay_s", "pools",
                 "prefill_replicas", "decode_replicas", "kv_link", "kv_transfer", "workers")
GROUP_KEYS = ("name", "count")


@dataclass(frozen=True)
class ReplicaGroup:
    """`count` replicas built from `config` (the scenario with the group's settings applied)."""

    name: str
    count: int
    config: SimConfig


def group_settings() -> list[str]:
    return [f.name for f in fields(SimConfig) if f.name not in SCENARIO_ONLY]


def replica_groups(cfg: SimConfig) -> list[ReplicaGroup]:
    """The cluster's groups: the pools file's, or one group of `cfg.replicas` identical replicas."""
    if cfg.pools is None:
        return [ReplicaGroup("replica", cfg.replicas, cfg)]
    return parse_groups(read_table_file(Path(cfg.pools)), cfg, source=str(cfg.pools))


def parse_groups(data: dict, base: SimConfig, source: str = "pools") -> list[ReplicaGroup]:
    """Groups from a parsed pools file (see the module docstring); one-line errors name the bad entry."""
    entries = data.get("groups") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{source}: expected a non-empty list 'groups' of replica groups")
    allowed = set(group_settings())
    groups = []
    for i, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict):
            raise ConfigError(f"{source}: group {i} is not a table")
        clean = {str(k).replace("-", "_"): v for k, v in entry.items()}
        unknown = sorted(set(clean) - allowed - set(GROUP_KEYS))
        if unknown:
            raise ConfigError(f"{source}: group {i}: unknown key(s) {', '.join(unknown)}; valid keys: "
                              f"{', '.join(GROUP_KEYS + tuple(sorted(allowed)))}")
        count = clean.pop("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigError(f"{source}: group {i}: count must be a positive integer, got {count!r}")
        name = str(clean.pop("name", f"group{i}"))
        try:
            config = base.replace(**clean, pools=None, replicas=1)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: group {i} ({name}): {exc}") from None
        groups.append(ReplicaGroup(name, count, config))
    return groups


def read_table_file(path: Path) -> dict[str, Any]:
    """A TOML (.toml) or YAML file as a dict (workloads.files: a bounded regular file, safe loaders)."""
    from workloads.files import read_mapping
    return read_mapping(path, "pools file", error=ConfigError)
