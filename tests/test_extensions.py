"""The README's extension recipes, followed as written: a batching policy and a KV-cache manager, each one small
class plus one registry line, run through simulate() (and so through the engine's fast path as the defaults do)."""
from __future__ import annotations

import pytest

from simulator import SimConfig, simulate
from simulator.batch import Batch
from simulator.batching import BATCHING_POLICIES, BatchingPolicy
from simulator.kv_cache import KV_CACHE_MANAGERS, KVCacheManager, KVUsage
from simulator.request import RequestStatus


class OneAtATime(BatchingPolicy):
    """A tiny policy: serve one request at a time, FCFS, its whole prompt then its tokens one by one."""

    def schedule(self, now: float) -> Batch | None:
        if not self.running and self.waiting:
            req = self.waiting[0]
            if not self.kv.can_allocate(req, req.max_tokens, admission=True):
                return None
            self.waiting.popleft()
            self.kv.allocate(req, req.max_tokens)
            req.status = RequestStatus.RUNNING
            self._add_running(req)
        if not self.running:
            return None
        req = self.running[0]
        return Batch([req], [req.num_uncomputed_tokens])


class TokenPool(KVCacheManager):
    """A tiny KV manager: any free token slot serves any request (no blocks, no placement)."""

    def __init__(self, capacity_tokens: int, **kwargs) -> None:
        super().__init__(capacity_tokens, **kwargs)
        self.held: dict[int, int] = {}

    def _free_tokens(self) -> int:
        return self.capacity_tokens - sum(self.held.values())

    def can_allocate(self, req, num_tokens, *, admission=False, cached_tokens=0) -> bool:
        keep = int(self.watermark * self.capacity_tokens) if admission else 0
        return num_tokens - self.held.get(req.request_id, 0) <= self._free_tokens() - keep

    def allocate(self, req, num_tokens, *, cached_tokens=0) -> None:
        self.held[req.request_id] = max(num_tokens, self.held.get(req.request_id, 0))

    def free(self, req) -> None:
        self.held.pop(req.request_id, None)

    def allocated_tokens(self, req) -> int:
        return self.held.get(req.request_id, 0)

    def usage(self) -> KVUsage:
        free = self._free_tokens()
        return KVUsage(self.capacity_tokens - free, self.capacity_tokens, free, free)

    def max_request_tokens(self) -> int:
        return self.capacity_tokens

    def num_holders(self) -> int:
        return len(self.held)


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(BATCHING_POLICIES, "one-at-a-time", OneAtATime)      # the recipe's one registry line each
    monkeypatch.setitem(KV_CACHE_MANAGERS, "token-pool", TokenPool)


def test_a_new_policy_serves_requests_one_after_another(registered):
    res = simulate(SimConfig(num_requests=20, rate=50.0, seed=1, batching="one-at-a-time"))
    req = res.requests.sort_values("scheduled_s")
    assert (req["status"] == "finished").all()
    assert (req["scheduled_s"].to_numpy()[1:] >= req["finish_s"].to_numpy()[:-1]).all()   # never two at once
    assert res.steps["batch_size"].max() == 1


def test_a_new_kv_manager_gives_the_paged_results_at_block_size_one(registered):
    cfg = SimConfig(num_requests=200, rate=30.0, seed=2, kv_capacity_tokens=30_000, prefix_caching=False)
    pool, paged = simulate(cfg.replace(kv="token-pool")), simulate(cfg.replace(block_size=1))
    assert paged.summary()["preemptions"] > 0                 # memory pressure, so KV decisions matter
    for name in ("requests", "steps"):
        assert getattr(pool, name).equals(getattr(paged, name)), name
    assert pool.meta["run_steps"] == 0 < paged.meta["run_steps"]   # it does not implement the decode-run hooks
