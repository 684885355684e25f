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

A group's `role` is `both` (the default: replicas that serve whole requests behind the router), or `prefill` or
`decode`: a pools file of prefill and decode groups is a prefill/decode disaggregated deployment (disagg.py), e.g.
prefill on H100s and decode on A100s. Roles do not mix with `both`, and every group of such a file serves the
same model with the same KV precision (its KV cache moves from one to the other).
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
GROUP_KEYS = ("name", "count", "role")
ROLES = ("both", "prefill", "decode")
SAME_MODEL = ("model", "model_config", "kv_dtype")     # what prefill and decode groups must share


@dataclass(frozen=True)
class ReplicaGroup:
    """`count` replicas built from `config` (the scenario with the group's settings applied); `role`: both
    (whole requests), prefill or decode (a disaggregated deployment)."""

    name: str
    count: int
    config: SimConfig
    role: str = "both"


def split_roles(groups: list[ReplicaGroup], source: str = "pools") -> tuple[list, list] | None:
    """(prefill groups, decode groups) of a disaggregated deployment, or None when every group serves whole
    requests; a one-line ConfigError for a mix that is neither."""
    roles = {g.role for g in groups}
    if roles == {"both"}:
        return None
    if "both" in roles:
        raise ConfigError(f"{source}: groups with role both cannot join prefill/decode groups (a replica that "
                          "serves whole requests inside a disaggregated deployment is not modelled)")
    if roles != {"prefill", "decode"}:
        missing = ({"prefill", "decode"} - roles).pop()
        raise ConfigError(f"{source}: a disaggregated deployment needs prefill and decode groups; no group has "
                          f"role {missing}")
    first = groups[0]
    for g in groups[1:]:
        for key in SAME_MODEL:
            if getattr(g.config, key) != getattr(first.config, key):
                raise ConfigError(f"{source}: group {g.name} sets {key} {getattr(g.config, key)!r} but group "
                                  f"{first.name} {getattr(first.config, key)!r}: prefill and decode groups serve "
                                  "the same model with the same KV precision (the KV cache moves between them)")
    return [g for g in groups if g.role == "prefill"], [g for g in groups if g.role == "decode"]


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
        role = clean.pop("role", "both")
        if role not in ROLES:
            raise ConfigError(f"{source}: group {i} ({name}): role must be one of {', '.join(ROLES)}, got {role!r}")
        try:
            config = base.replace(**clean, pools=None, replicas=1)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: group {i} ({name}): {exc}") from None
        groups.append(ReplicaGroup(name, count, config, role))
    return groups


def read_table_file(path: Path) -> dict[str, Any]:
    """A TOML (.toml) or YAML file as a dict (workloads.files: a bounded regular file, safe loaders)."""
    from workloads.files import read_mapping
    return read_mapping(path, "pools file", error=ConfigError)
