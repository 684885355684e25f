"""KV-cache managers, registered by name. Add one: a file here plus one line in KV_CACHE_MANAGERS."""
from __future__ import annotations

from simulator.kv_cache.base import KVCacheManager, KVUsage
from simulator.kv_cache.contiguous import ContiguousKVCache
from simulator.kv_cache.paged import PagedKVCache
from simulator.kv_cache.prefix import PrefixCachingPagedKV

KV_CACHE_MANAGERS: dict[str, type[KVCacheManager]] = {
    "contiguous": ContiguousKVCache,
    "paged": PagedKVCache,
}
# Managers that can share prefix blocks between requests (--prefix-caching on): name -> the caching variant.
PREFIX_CACHING_MANAGERS: dict[str, type[KVCacheManager]] = {"paged": PrefixCachingPagedKV}


def make_kv_cache(name: str, capacity_tokens: int, *, prefix_caching: bool = False, **kwargs) -> KVCacheManager:
    """Build a registered KV manager; unknown names raise ValueError listing the choices."""
    if name not in KV_CACHE_MANAGERS:
        raise ValueError(f"unknown KV cache manager '{name}'; choose one of: {', '.join(KV_CACHE_MANAGERS)}")
    if prefix_caching:
        if name not in PREFIX_CACHING_MANAGERS:
            raise ValueError(prefix_caching_error(name))
        return PREFIX_CACHING_MANAGERS[name](capacity_tokens, **kwargs)
    return KV_CACHE_MANAGERS[name](capacity_tokens, **kwargs)


def prefix_caching_error(name: str) -> str:
    """The one-line refusal of prefix caching on a manager that cannot share blocks."""
    return (f"the {name} KV cache does not share prefixes (each request holds private memory); prefix caching "
            f"needs --kv {' or '.join(PREFIX_CACHING_MANAGERS)}, or use --prefix-caching off")


__all__ = ["KV_CACHE_MANAGERS", "PREFIX_CACHING_MANAGERS", "KVCacheManager", "KVUsage", "make_kv_cache",
           "prefix_caching_error"]
