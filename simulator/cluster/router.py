"""Routers: which replica gets each request, from what a real router can see.

A router sees, per replica, only what a front-end router of a serving fleet sees: its own count of requests sent
and not yet answered (`outstanding`), and the load each replica last reported (running and waiting requests, KV
tokens in use over capacity; the cluster applies the reporting delay). Ties go to the lowest replica index, so
every choice is reproducible by hand.

Registered routers (one line each in ROUTERS):
  round-robin        request i goes to replica i mod N
  random             a seeded uniform draw per request
  least-outstanding  fewest outstanding requests
  least-kv           smallest reported KV use (used / capacity); ties: fewer outstanding, then lowest index
  prefix-affinity    requests that share their first prompt block go to the same replica: the block's prefix-
                     caching hash (kv_cache/prefix.py, from the request's content pieces), mixed, modulo N; a request
                     whose prompt has no full block of known content goes to the least-outstanding replica
"""
from __future__ import annotations

import hashlib
from typing import NamedTuple, Sequence

import numpy as np

from simulator.kv_cache.prefix import content_block_hashes
from workloads.spec import RequestSpec


class ReplicaView(NamedTuple):
    """One replica as the router sees it when a request arrives."""

    index: int
    outstanding: int           # sent by the router, not yet finished or rejected (the router's own count)
    num_running: int           # as last reported by the replica
    num_waiting: int
    kv_used_tokens: int
    kv_capacity_tokens: int

    @property
    def kv_use(self) -> float:
        return self.kv_used_tokens / self.kv_capacity_tokens if self.kv_capacity_tokens else 0.0


class Router:
    """Base class: `route()` picks a replica index. `needs_load` says whether it reads replica state at all (a
    router that does not can be applied to the whole workload up front, and the replicas run one by one)."""

    needs_load = True

    def __init__(self, num_replicas: int, seed: int = 0, block_size: int = 16) -> None:
        self.num_replicas = num_replicas

    def route(self, spec: RequestSpec, views: Sequence[ReplicaView] | None) -> int:
        raise NotImplementedError


class RoundRobin(Router):
    needs_load = False

    def __init__(self, num_replicas: int, seed: int = 0, block_size: int = 16) -> None:
        super().__init__(num_replicas)
        self._next = 0

    def route(self, spec, views) -> int:
        index = self._next
        self._next = (index + 1) % self.num_replicas
        return index


class RandomRouter(Router):
    needs_load = False

    def __init__(self, num_replicas: int, seed: int = 0, block_size: int = 16) -> None:
        super().__init__(num_replicas)
        # a stream of its own, so routing draws never shift the workload's (which uses `seed` directly)
        self._rng = np.random.default_rng([seed, 0x5EED])
        self._draws: list[int] = []

    def route(self, spec, views) -> int:
        if not self._draws:
            self._draws = self._rng.integers(0, self.num_replicas, size=4096).tolist()[::-1]
        return self._draws.pop()


class LeastOutstanding(Router):
    def route(self, spec, views) -> int:
        return min(views, key=lambda v: (v.outstanding, v.index)).index


class LeastKV(Router):
    def route(self, spec, views) -> int:
        return min(views, key=lambda v: (v.kv_use, v.outstanding, v.index)).index


class PrefixAffinity(Router):
    def __init__(self, num_replicas: int, seed: int = 0, block_size: int = 16) -> None:
        super().__init__(num_replicas)
        self.block_size = block_size

    def route(self, spec, views) -> int:
        first = first_block_hash(spec, self.block_size)
        if first is not None:
            return block_hash(first) % self.num_replicas
        return min(views, key=lambda v: (v.outstanding, v.index)).index


def first_block_hash(spec: RequestSpec, block_size: int) -> int | None:
    """The prefix-caching hash of the prompt's first full block, or None if its content is unknown."""
    hashes = content_block_hashes(spec.content, block_size, min(spec.prompt_tokens, block_size))
    return hashes[0] if hashes else None


def block_hash(block_id: int) -> int:
    """A block hash mixed into a stable 64-bit number (Python's hash of small ints is the int itself, which
    would send consecutive ids to consecutive replicas)."""
    digest = hashlib.blake2b(int(block_id).to_bytes(16, "little", signed=True), digest_size=8).digest()
    return int.from_bytes(digest, "little")


ROUTERS: dict[str, type[Router]] = {
    "round-robin": RoundRobin,
    "random": RandomRouter,
    "least-outstanding": LeastOutstanding,
    "least-kv": LeastKV,
    "prefix-affinity": PrefixAffinity,
}


def make_router(name: str, num_replicas: int, seed: int = 0, block_size: int = 16) -> Router:
    if name not in ROUTERS:
        raise ValueError(f"unknown router '{name}'; choose one of {', '.join(ROUTERS)}")
    return ROUTERS[name](num_replicas, seed, block_size)
