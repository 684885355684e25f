"""KV-cache managers, registered by name. Add one: a file here plus one line in KV_CACHE_MANAGERS."""
from __future__ import annotations

from simulator.kv_cache.base import KVCacheManager, KVUsage
from simulator.kv_cache.contiguous import ContiguousKVCache
from simulator.kv_cache.paged import PagedKVCache

KV_CACHE_MANAGERS: dict[str, type[KVCacheManager]] = {
    "contiguous": ContiguousKVCache,
    "paged": PagedKVCache,
}


def make_kv_cache(name: str, capacity_tokens: int, **kwargs) -> KVCacheManager:
    """Build a registered KV manager; unknown names raise ValueError listing the choices."""
    if name not in KV_CACHE_MANAGERS:
        raise ValueError(f"unknown KV cache manager '{name}'; choose one of: {', '.join(KV_CACHE_MANAGERS)}")
    return KV_CACHE_MANAGERS[name](capacity_tokens, **kwargs)


__all__ = ["KV_CACHE_MANAGERS", "KVCacheManager", "KVUsage", "make_kv_cache"]
