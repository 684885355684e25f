"""Replicas behind a router, in one simulation.

Every replica is a full engine (its own batching policy, KV manager and cost model). A router that reads no
replica state (round-robin, random) is applied to the whole workload up front and the replicas then run one
after another: their results are exactly those of interleaving them, at the cost of one replica each.

A router that reads load runs the replicas side by side: for each arrival, in arrival order, every replica is
advanced to the arrival time (events at that very time wait, as a plain run lets a request arriving at the end
of a step join the next one), the router is shown what it may see, and the request is fed to the chosen
replica. Each replica's fast path commits ahead of the clock no further than the next arrival not yet routed.

What the router sees is what a replica has reported: the load at the start of its latest step (or when it
went idle) that started before now minus the reporting delay. Reports are kept as records taken when a step
starts, so the fast path, which commits steps ahead of the clock, shows the router exactly what the
step-by-step path shows (a run of decode steps is one record; its steps' loads follow from it). The router's
own count of outstanding requests needs no report: a request stops being outstanding when its response (or
rejection) has come back, strictly before now.
"""
from __future__ import annotations

import heapq
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass, field, replace
from typing import NamedTuple


from simulator.batching.lazy import DecodeRun
from simulator.cluster.disagg import (HeldUntilSent, InstanceShape, Transfer, TransferLink, decode_parts,
                                      decode_specs, get_kv_link)
from simulator.cluster.pools import ReplicaGroup
from simulator.cluster.parallel import run_all, worker_count
from simulator.cluster.result import merge_disaggregated
from simulator.cluster.router import ReplicaView, Router, make_router
from simulator.config import ConfigError, SimConfig
from simulator.engine import Engine, EngineParts, ProgressFn, paused_gc
from simulator.metrics import SimResult
from simulator.request import Request
from workloads.spec import RequestSpec


class LoadReport(NamedTuple):
    """A replica's load from `start_s` on: a step's (or an idle spell's), or a run's when `ends_s` is set (step j
    of the run then starts at ends_s[j-1] and stores `used_tokens + (j + 1) * live` tokens)."""

    start_s: float
    num_running: int
    num_waiting: int
    used_tokens: int
    ends_s: list[float] | None = None
    live: int = 0


class LoadBoard:
    """Watches one replica (an EngineObserver): its load reports, and when each request was answered."""

    def __init__(self) -> None:
        self.reports: deque[LoadReport] = deque()
        self.answers: list[float] = []       # heap of answer times not yet counted
        self.sent = 0
        self.answered = 0

    # ---- EngineObserver ----
    def step(self, start_s: float, num_running: int, num_waiting: int, used_tokens: int) -> None:
        self.reports.append(LoadReport(start_s, num_running, num_waiting, used_tokens))

    def run(self, start_s: float, ends_s: list[float], run: DecodeRun) -> None:
        self.reports.append(LoadReport(start_s, run.num_running, run.num_waiting, run.used_tokens, ends_s, run.live))

    def idle(self, now_s: float, num_running: int, num_waiting: int, used_tokens: int) -> None:
        self.reports.append(LoadReport(now_s, num_running, num_waiting, used_tokens))

    def done(self, req: Request, time_s: float) -> None:
        heapq.heappush(self.answers, time_s)

    # ---- what the router reads ----
    def outstanding(self, now_s: float) -> int:
        """Requests sent here and not answered before `now_s`."""
        answers = self.answers
        while answers and answers[0] < now_s:
            heapq.heappop(answers)
            self.answered += 1
        return self.sent - self.answered

    def reported(self, at_s: float) -> tuple[int, int, int]:
        """(running, waiting, used KV tokens) of the latest report from before `at_s` (all zero before the first);
        `at_s` never decreases from call to call, so older reports are dropped."""
        reports = self.reports
        while len(reports) > 1 and reports[1].start_s < at_s:
            reports.popleft()
        if not reports or reports[0].start_s >= at_s:
            return 0, 0, 0
        r = reports[0]
        if r.ends_s is None:
            return r.num_running, r.num_waiting, r.used_tokens
        j = min(bisect_left(r.ends_s, at_s), len(r.ends_s) - 1)
        return r.num_running, r.num_waiting, r.used_tokens + (j + 1) * r.live


@dataclass
class Replica:
    """One replica of the cluster: its group, engine parts and (while running) its engine and load board."""

    index: int
    group: str
    parts: EngineParts | None
    config: SimConfig | None = None
    board: LoadBoard = field(default_factory=LoadBoard)
    engine: Engine | None = None
    held: HeldUntilSent | None = None       # a prefill replica: its prompts' KV transfers, holding their blocks

    @property
    def capacity_tokens(self) -> int:
        return int(self.parts.meta["kv_capacity_tokens"])

    def make_engine(self, specs: list[RequestSpec], observer: LoadBoard | None = None) -> Engine:
        engine = Engine(self.parts, specs, observer=observer)
        engine.releases = self.held
        return engine

    def finished(self, result: SimResult) -> ReplicaRun:
        """This replica's ReplicaRun, from its engine's result."""
        return ReplicaRun(self.index, self.group, self.config, result,
                          transfers=None if self.held is None else self.held.transfers)


@dataclass
class ReplicaRun:
    """A finished replica: where it sat and what it produced (`summary`: its row of replicas.csv, when already
    taken)."""

    index: int
    group: str
    config: SimConfig | None
    result: SimResult
    summary: dict | None = None
    transfers: list[Transfer] | None = None      # a prefill replica's KV transfers, in the order they were sent


def replica_config(cfg: SimConfig) -> SimConfig:
    """A replica's own config: one replica, every request row kept in memory (the cluster merges them)."""
    return cfg.replace(replicas=1, pools=None, max_request_rows=None, request_rows_path=None)


def build_replicas(groups: list[ReplicaGroup], first_index: int = 0) -> list[Replica]:
    from simulator.assembly import build_parts
    replicas = []
    for group in groups:
        config = replica_config(group.config)
        for _ in range(group.count):     # build_parts shares one cost model among a group's replicas
            replicas.append(Replica(first_index + len(replicas), group.name, build_parts(config), config))
    return replicas


def run_replicas(cfg: SimConfig, specs: list[RequestSpec], groups: list[ReplicaGroup],
                 progress: ProgressFn | None = None) -> list[ReplicaRun]:
    """Simulate replicas of `groups` behind `cfg`'s router on `specs`; one ReplicaRun per replica, in index
    order."""
    replicas = build_replicas(groups)
    router = make_router(cfg.router, len(replicas), cfg.seed, cfg.block_size)
    check_sessions(cfg, router, specs)
    workers = worker_count(cfg.workers, len(replicas), len(specs))
    return run_cluster(replicas, router, specs, cfg.router_delay_s, workers, progress)


def check_open_loop(cfg: SimConfig, specs: list[RequestSpec]) -> None:
    if cfg.max_concurrency is not None or any(s.after >= 0 for s in specs):
        raise ConfigError("prefill/decode disaggregation and DP+EP serve open-loop arrivals only: max-concurrency "
                          "and follow-up turns (conversations) are not supported with them yet")


def check_sessions(cfg: SimConfig, router: Router, specs: list[RequestSpec]) -> None:
    """Replicas serve follow-up turns (conversations, agents' calls) behind a router that reads no load: each
    stays on the replica of its conversation's first turn. A client-side concurrency limit spans the whole
    cluster and is not modelled."""
    if cfg.max_concurrency is not None:
        raise ConfigError("max-concurrency (a client limit over the whole cluster) is not supported with replicas "
                          "yet")
    if router.needs_load and any(s.after >= 0 for s in specs):
        raise ConfigError(f"follow-up turns (conversations) on replicas need a router that reads no load "
                          f"(round-robin or random: a conversation stays on its first turn's replica); router "
                          f"{cfg.router} is not supported with them yet")


def run_cluster(replicas: list[Replica], router: Router, specs: list[RequestSpec], delay_s: float = 0.0,
                workers: int = 1, progress: ProgressFn | None = None) -> list[ReplicaRun]:
    """Route `specs` over `replicas` and simulate them; one ReplicaRun per replica, in index order. Replicas of
    a router that reads no replica state run in `workers` processes (parallel.py)."""
    ordered = sorted(specs, key=lambda s: (s.arrival_s, s.request_id))
    if router.needs_load:
        return _side_by_side(replicas, router, ordered, delay_s)
    with paused_gc():   # once for all replicas (and their forked workers): no collection rescans the workload
        return _one_by_one(replicas, router, ordered, workers, progress)


def _one_by_one(replicas: list[Replica], router: Router, specs: list[RequestSpec], workers: int,
                progress: ProgressFn | None) -> list[ReplicaRun]:
    """Route everything up front, then run each replica alone (and drop its engine before the next), in
    `workers` processes at once."""
    shares = route_sessions(router, len(replicas), specs)
    answered = [0, 0.0]                                      # requests done, latest simulated time

    def run_one(i: int) -> ReplicaRun:
        replica = replicas[i]
        run = replica.finished(replica.make_engine(shares[i]).run())
        replica.parts = None
        run.summary = run.result.summary()                   # in the worker: the parent only merges
        return run

    def done(i: int, run: ReplicaRun) -> None:
        answered[0] += len(shares[i])
        answered[1] = max(answered[1], run.summary["duration_s"])
        if progress is not None:
            progress(answered[1], answered[0], len(specs))
    return run_all(run_one, [len(share) for share in shares], workers, done)


def route_sessions(router: Router, num_replicas: int, specs: list[RequestSpec]) -> list[list[RequestSpec]]:
    """Each replica's share of `specs` (in arrival order) under a router that reads no load: the router places
    every first turn; a follow-up turn goes where the turn it follows went (session affinity)."""
    shares: list[list[RequestSpec]] = [[] for _ in range(num_replicas)]
    home: dict[int, int] = {}
    follow = any(spec.after >= 0 for spec in specs)
    for spec in specs:
        if spec.after < 0:
            i = router.route(spec, None)                       # the router's index: position in `replicas`
            shares[i].append(spec)
            if follow:
                home[spec.request_id] = i
    if follow:                                                 # a turn follows an earlier request id
        for spec in sorted((s for s in specs if s.after >= 0), key=lambda s: s.request_id):
            if spec.after not in home:
                raise ValueError(f"request {spec.request_id} follows request {spec.after}, which is not an "
                                 "earlier request of the workload")
            home[spec.request_id] = home[spec.after]
            shares[home[spec.after]].append(spec)
    return shares


def _side_by_side(replicas: list[Replica], router: Router, specs: list[RequestSpec],
                  delay_s: float) -> list[ReplicaRun]:
    """Advance all replicas arrival by arrival, routing each request on what the router can see then."""
    for replica in replicas:
        replica.engine = replica.make_engine([], observer=replica.board)
        replica.engine.open = True
        replica.engine.start()
    with paused_gc():
        for spec in specs:
            now = spec.arrival_s
            for replica in replicas:
                replica.engine.horizon_s = now
                replica.engine.advance(now)
            views = [view_of(replica, i, now, now - delay_s) for i, replica in enumerate(replicas)]
            chosen = replicas[router.route(spec, views)]
            chosen.board.sent += 1
            chosen.engine.feed(spec)
        results = [replica.engine.close() for replica in replicas]
    return [r.finished(result) for r, result in zip(replicas, results)]


def view_of(replica: Replica, position: int, now_s: float, report_s: float) -> ReplicaView:
    running, waiting, used = replica.board.reported(report_s)
    return ReplicaView(position, replica.board.outstanding(now_s), running, waiting, used, replica.capacity_tokens)


def simulate_disaggregated(cfg, specs: list[RequestSpec], prefill_groups, decode_groups):
    """Run the prefill pool, the transfers and the decode pool; return the merged ClusterResult."""
    prefill = build_replicas(prefill_groups)
    decode = build_replicas(decode_groups, first_index=len(prefill))
    for replica in decode:
        replica.parts = decode_parts(replica.parts)
    link = get_kv_link(cfg.kv_link)
    receivers = min(r.config.tp * r.config.pp for r in decode)
    for r in prefill:
        r.held = HeldUntilSent(TransferLink(r.index, link, instance_shape(r, receivers),
                                            cfg.kv_transfer == "layerwise"), r.parts.policy.kv)
    router = make_router(cfg.router, len(prefill), cfg.seed, cfg.block_size)
    first = [replace(s, output_tokens=1) for s in specs]
    prefill_runs = run_cluster(prefill, router, first, cfg.router_delay_s,
                               worker_count(cfg.workers, len(prefill), len(first)))
    transfers = sorted((t for r in prefill_runs for t in r.transfers), key=lambda t: (t.end_s, t.request_id))
    by_id = {s.request_id: s for s in specs}
    router = make_router(cfg.router, len(decode), cfg.seed + 1, cfg.block_size)
    moved = decode_specs(by_id, transfers)
    decode_runs = run_cluster(decode, router, moved, cfg.router_delay_s, worker_count(cfg.workers, len(decode),
                                                                                       len(moved)))
    return merge_disaggregated(cfg, prefill_runs, decode_runs, transfers, link)


def instance_shape(replica: Replica, receivers: int) -> InstanceShape:
    """How a prefill replica's prompts cross the link: each of its GPUs sends its KV shard over its own NIC, or,
    where the smallest decode instance has fewer GPUs (`receivers`), that many NICs receive it all."""
    meta = replica.parts.meta
    gpus = replica.config.tp * replica.config.pp
    lanes = min(gpus, receivers)
    per_gpu = float(meta["memory"]["kv_bytes_per_token"])
    return InstanceShape(per_gpu if lanes == gpus else per_gpu * gpus / lanes, lanes, int(meta["model"]["num_layers"]))
