"""Batching policies, registered by name. Add one: a file here plus one line in BATCHING_POLICIES."""
from __future__ import annotations

from simulator.batching.base import BatchingPolicy, PolicyParams, StepOutcome
from simulator.batching.continuous import ContinuousBatching
from simulator.batching.dynamic import DynamicBatching
from simulator.batching.static import StaticBatching
from simulator.kv_cache.base import KVCacheManager

BATCHING_POLICIES: dict[str, type[BatchingPolicy]] = {
    "static": StaticBatching,
    "dynamic": DynamicBatching,
    "continuous": ContinuousBatching,
}


def make_policy(name: str, kv: KVCacheManager, params: PolicyParams) -> BatchingPolicy:
    """Build a registered batching policy; unknown names raise ValueError listing the choices."""
    if name not in BATCHING_POLICIES:
        raise ValueError(f"unknown batching policy '{name}'; choose one of: {', '.join(BATCHING_POLICIES)}")
    return BATCHING_POLICIES[name](kv, params)


__all__ = ["BATCHING_POLICIES", "BatchingPolicy", "PolicyParams", "StepOutcome", "make_policy"]
