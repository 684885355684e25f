"""Prefill/decode disaggregation: a prefill pool, KV transfers over a named link, a decode pool.

As vLLM serves it with a KV connector (its disaggregated-prefill proxy sends a request to a prefill instance with
max_tokens=1, then to a decode instance that loads the prompt's KV instead of computing it):
1. A router spreads requests over the prefill replicas, which run each prompt and sample one token (dropped).
2. The prompt's KV then moves to a decode replica over the link: each GPU of the prefill instance sends its
   shard to its peer at the link's rate, so a transfer takes latency + prompt tokens x KV bytes per token per
   GPU / link bytes per second. A prefill replica's link carries one transfer at a time (first come, first
   served); with layer-wise transfer a prompt's layers are sent as the prefill computes them, so the transfer
   ends one layer's worth after the prefill (or when the link has sent it all, if it is the slower).
3. The request arrives at a decode replica (chosen by the same router over the decode pool) when its KV has
   arrived; the replica admits it when its own KV memory fits the whole prompt (queueing there is real), with
   the prompt's KV as if cached (vLLM recomputes the last prompt token to sample the first output token), and
   decodes every output token.
TTFT is the decode replica's first token: queue (prefill) + prefill + transfer + decode queue + first step.
The prefill replica keeps a prompt's KV blocks until its transfer has ended (HeldUntilSent), so a slow or busy
link fills the prefill pool's memory. Simplification: KV that has arrived and waits for a busy decode replica
holds no memory of either pool (vLLM's decode instance allocates before it pulls).
"""
from __future__ import annotations

import functools
import heapq
import math
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import pandas as pd

from hardware.links import LINKS
from simulator.batching import make_policy
from simulator.batching.continuous import ContinuousBatching
from simulator.config import ConfigError
from simulator.kv_cache.paged import PagedKVCache
from simulator.request import Request, RequestStatus
from workloads.spec import RequestSpec

GB = 1e9


class KVLink(NamedTuple):
    """A link KV caches cross between a prefill and a decode instance, per GPU."""

    name: str
    bytes_per_s: float
    latency_s: float
    source: str


# Network links (per GPU: a GPU server has one NIC per GPU, e.g. 8x ConnectX-7 in an HGX H100 system). Rates are
# the line rates (NVIDIA ConnectX-7: 400 Gb/s NDR InfiniBand or 400GbE; ConnectX-6: 200 Gb/s HDR); 20 us is an
# estimate of one RDMA transfer's setup and flight (not measured here).
NETWORK_LINKS = {
    "ib-ndr": KVLink("ib-ndr", 400e9 / 8, 20e-6, "InfiniBand NDR 400 Gb/s per GPU (ConnectX-7 line rate)"),
    "ib-hdr": KVLink("ib-hdr", 200e9 / 8, 20e-6, "InfiniBand HDR 200 Gb/s per GPU (ConnectX-6 line rate)"),
    "roce-400g": KVLink("roce-400g", 400e9 / 8, 20e-6, "RoCE 400GbE per GPU (line rate)"),
    "roce-200g": KVLink("roce-200g", 200e9 / 8, 20e-6, "RoCE 200GbE per GPU (line rate)"),
    "roce-100g": KVLink("roce-100g", 100e9 / 8, 20e-6, "RoCE 100GbE per GPU (line rate)"),
}


def kv_links() -> dict[str, KVLink]:
    """Every named KV link: the GPU-to-GPU links of hardware/links.py (NVLink, PCIe; their measured bus
    bandwidth and latency) and the network links above."""
    local = {name: KVLink(name, link.bus_bytes_per_s, link.latency_s, link.source) for name, link in LINKS.items()}
    return {**local, **NETWORK_LINKS}


def get_kv_link(name: str) -> KVLink:
    """A named link, or 'rdma:GBITS' (a network link at GBITS Gb/s per GPU)."""
    if name.startswith("rdma:"):
        try:
            gbits = float(name[5:])
        except ValueError:
            gbits = -1.0
        if not gbits > 0:
            raise ConfigError(f"kv-link {name}: expected rdma:<Gb/s per GPU>, e.g. rdma:400")
        return KVLink(name, gbits * 1e9 / 8, 20e-6, f"RDMA at {gbits:g} Gb/s per GPU")
    links = kv_links()
    if name not in links:
        raise ConfigError(f"unknown kv-link '{name}'; choose one of {', '.join(links)}, or rdma:<Gb/s>")
    return links[name]


class ArrivingKV(PagedKVCache):
    """A decode replica's paged KV: every request arrives with its prompt's KV, admitted as a prefix hit nobody
    else shares (the blocks are its own, and take memory); after a recompute preemption it is gone and the
    prompt is computed again."""

    prefix_caching = True

    def prefix_hit(self, req: Request) -> int:
        # vLLM's limit for any cache hit: the last prompt token is computed, so that a token can be sampled
        return 0 if req.num_preemptions else min(req.prompt_tokens, req.num_tokens - 1)

    def can_allocate(self, req: Request, num_tokens: int, *, admission: bool = False, cached_tokens: int = 0) -> bool:
        return super().can_allocate(req, num_tokens, admission=admission)

    def allocate(self, req: Request, num_tokens: int, *, cached_tokens: int = 0) -> None:
        super().allocate(req, num_tokens)


def decode_parts(parts):
    """A decode replica's EngineParts: the same policy settings over an ArrivingKV of the same size."""
    old = parts.policy.kv
    if type(old) is not PagedKVCache or not isinstance(parts.policy, ContinuousBatching):
        raise ConfigError("prefill/decode disaggregation needs continuous batching over a paged KV cache without "
                          "prefix caching on the decode replicas")
    kv = ArrivingKV(old.num_blocks * old.block_size, block_size=old.block_size, max_model_len=old.max_model_len,
                    reservation=old.reservation, watermark=old.watermark)
    return replace(parts, policy=make_policy("continuous", kv, parts.policy.params))


@dataclass(frozen=True)
class Transfer:
    """One prompt's KV on its way from a prefill replica to the decode pool."""

    request_id: int
    prefill_replica: int
    ready_s: float           # the prefill's end (its one token sampled)
    start_s: float
    end_s: float             # when the KV has arrived (the request then reaches the decode pool)
    bytes: float             # over all GPUs of the instance


class InstanceShape(NamedTuple):
    """What sizes a prefill replica's transfers: KV bytes per token sent over each of its lanes (a GPU's NIC),
    the lanes that send at once, and its layers."""

    bytes_per_token_lane: float
    lanes: int
    num_layers: int


class TransferLink:
    """One prefill replica's link: it carries one transfer at a time, in the order the prefills end (first come,
    first served)."""

    def __init__(self, replica: int, link: KVLink, shape: InstanceShape, layerwise: bool) -> None:
        self.replica, self.link, self.shape, self.layerwise = replica, link, shape, layerwise
        self.free_s = 0.0                   # when the link has sent everything queued so far

    def send(self, request_id: int, prompt_tokens: int, scheduled_s: float, ready_s: float) -> Transfer:
        """The transfer of a prompt whose prefill ran from `scheduled_s` to `ready_s`."""
        per_lane = prompt_tokens * self.shape.bytes_per_token_lane
        send_s = per_lane / self.link.bytes_per_s                    # every lane sends its share at once
        if self.layerwise:       # layer l is ready (l + 1) / L of the way through the prefill
            start = max(scheduled_s + (ready_s - scheduled_s) / self.shape.num_layers, self.free_s)
            sent = max(start + send_s, ready_s + send_s / self.shape.num_layers)
        else:
            start = max(ready_s, self.free_s)
            sent = start + send_s
        self.free_s = sent
        return Transfer(int(request_id), self.replica, float(ready_s), float(start), sent + self.link.latency_s,
                        float(per_lane * self.shape.lanes))


class HeldUntilSent:
    """A prefill replica's finished prompts (the engine's KVReleases): each prompt's KV is sent over the replica's
    link as its prefill ends, and its blocks stay allocated on the prefill replica until the transfer has ended
    (vLLM's NIXL connector frees them when the decode instance reports the read done), so prefill-pool memory
    pressure is real."""

    def __init__(self, link: TransferLink, kv) -> None:
        self.link, self.kv = link, hold_finished(kv)
        self.transfers: list[Transfer] = []
        self._due: list[tuple[float, int, Request]] = []      # heap of (transfer end, order, request)

    def finished(self, req: Request, time_s: float) -> None:
        if req.status != RequestStatus.FINISHED:
            return                                            # rejected: nothing computed, nothing to send
        transfer = self.link.send(req.request_id, req.prompt_tokens, req.scheduled_s, time_s)
        self.transfers.append(transfer)
        heapq.heappush(self._due, (transfer.end_s, len(self.transfers), req))

    def next_s(self) -> float:
        return self._due[0][0] if self._due else math.inf

    def release_until(self, time_s: float) -> None:
        due = self._due
        while due and due[0][0] <= time_s:
            self.kv.release(heapq.heappop(due)[2])


@functools.cache
def _holding(cls: type) -> type:
    """A subclass of the KV manager class `cls` whose finished requests' blocks stay allocated until
    `release(req)`; a preempted request's are freed at once, as usual."""

    class Holding(cls):
        def free(self, req: Request) -> None:
            if req.status != RequestStatus.FINISHED:
                super().free(req)

        def release(self, req: Request) -> None:
            super().free(req)

    Holding.__name__ = Holding.__qualname__ = f"Holding{cls.__name__}"
    return Holding


def hold_finished(kv):
    """`kv` (any KV manager), from now on holding finished requests' blocks until released (its class becomes a
    subclass that overrides free; its state is untouched)."""
    kv.__class__ = _holding(type(kv))
    return kv


def decode_specs(specs: dict[int, RequestSpec], transfers: list[Transfer]) -> list[RequestSpec]:
    """The decode pool's workload: each transferred request, arriving when its KV has."""
    return [RequestSpec(t.request_id, t.end_s, specs[t.request_id].prompt_tokens, specs[t.request_id].output_tokens)
            for t in transfers]


def ttft_split(requests: pd.DataFrame) -> dict[str, float]:
    """Mean seconds of each TTFT part over finished requests (they add up to the mean TTFT)."""
    done = requests[requests.status == "finished"]
    return {f"ttft_{p}_mean": float(done[p].mean()) if len(done) else float("nan") for p in PD_PARTS}


PD_PARTS = ("queue_s", "prefill_s", "transfer_s", "decode_queue_s", "first_step_s")


def transfer_stats(transfers: list[Transfer]) -> dict[str, float]:
    secs = np.array([t.end_s - t.ready_s for t in transfers]) if transfers else np.zeros(0)
    return {"kv_transfers": len(transfers), "kv_transfer_bytes": float(sum(t.bytes for t in transfers)),
            "kv_transfer_mean_s": float(secs.mean()) if len(secs) else float("nan"),
            "kv_transfer_p99_s": float(np.percentile(secs, 99)) if len(secs) else float("nan")}
