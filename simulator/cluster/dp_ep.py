"""Data-parallel attention with expert parallelism for MoE models (`--dp N --expert-parallel on`), as vLLM runs
it (docs: "Data Parallel Deployment" and "Expert Parallel Deployment"; vllm/v1/engine/core_client.py).

N ranks, each a full engine (its own batching policy, requests and KV cache), step in lockstep: the MoE layers
exchange tokens between all ranks every step, so a step takes the slowest rank's time, and a rank with nothing
to do still runs a dummy forward pass (one token) while any rank has work. Each rank's MoE layers hold
num_experts / N of the experts (each still split over the rank's tp GPUs): expert weights per GPU shrink by N,
so the KV cache grows. Per MoE layer, tokens go to their experts' ranks and come back (dispatch and combine
all-to-alls), priced on the GPU's link (hardware/links.py) for the busiest rank's tokens.

Requests are spread as vLLM's DP load balancer does (DPLBAsyncMPClient.get_core_engine_for_request): the rank
with the lowest 4 x waiting + running, ties to the lowest rank. vLLM sees counts the coordinator publishes
every 100 ms plus its own sends; here the counts are exact.

Approximations: routing is assumed balanced over experts, so a rank's expert work is its own tokens x top-k
over its local experts (the rank model below: num_experts / N experts, the same top-k); the step is
step-by-step (no fast path).
"""
from __future__ import annotations

import dataclasses
import time

from simulator.arrivals import ArrivalQueue
from simulator.config import ConfigError, SimConfig
from simulator.engine import Engine, paused_gc
from simulator.models import ModelSpec
from simulator.step import StepShape
from workloads.spec import RequestSpec

DISPATCH_BYTES = 2          # bf16 activations cross the link (dispatch and combine)
WAITING_WEIGHT = 4          # vLLM's DP balancer: score = 4 x waiting + running


def check_dp_ep(model: ModelSpec, dp: int) -> None:
    """One-line errors for combinations DP+EP cannot run."""
    if not model.is_moe:
        raise ConfigError(f"expert-parallel needs an MoE model; {model.name} is dense "
                          "(use --dp N without --expert-parallel for N independent replicas)")
    if model.num_experts % dp:
        raise ConfigError(f"dp {dp} must divide {model.name}'s {model.num_experts} experts per MoE layer")
    if model.num_experts // dp < model.num_experts_per_tok:
        raise ConfigError(f"dp {dp} leaves {model.num_experts // dp} experts per rank, fewer than the "
                          f"{model.num_experts_per_tok} each token picks (not modelled)")


def rank_model(model: ModelSpec, dp: int) -> ModelSpec:
    """What one rank holds: attention and dense layers whole, num_experts / dp experts per MoE layer."""
    return dataclasses.replace(model, num_experts=model.num_experts // dp)


def all_to_all_seconds(link, model: ModelSpec, tokens: int, dp: int) -> float:
    """Dispatch and combine of one step over all MoE layers: each rank sends (dp - 1) / dp of its tokens'
    top-k activations to other ranks, twice per layer; the busiest rank (`tokens`) sets the time."""
    if dp <= 1:
        return 0.0
    sent = tokens * model.num_experts_per_tok * model.hidden_size * DISPATCH_BYTES * (dp - 1) / dp
    one = link.latency_s + (dp - 1) * link.step_latency_s + sent / link.bus_bytes_per_s
    return 2 * model.num_moe_layers * one


class Lockstep:
    """The N rank engines of one DP+EP deployment, driven step by step together."""

    def __init__(self, cfg: SimConfig) -> None:
        from simulator.assembly import build_parts, resolve_hardware
        model, gpu = resolve_hardware(cfg)
        check_dp_ep(model, cfg.dp)
        self.model, self.dp = model, cfg.dp
        self.link = gpu.interconnect(cfg.link)
        self.config = cfg.replace(dp=1, expert_parallel=False, max_request_rows=None, request_rows_path=None)
        local = rank_model(model, cfg.dp)
        self.engines = [Engine(build_parts(self.config, model=local), [], fast_path=False) for _ in range(cfg.dp)]
        for engine in self.engines:
            engine._wall = time.perf_counter()
            engine.arrivals = ArrivalQueue([], None)
            engine.open = True
        self.dummy_s = self.engines[0].parts.cost_model.step_cost(StepShape((), 1, 1, 1, ())).seconds
        self.step_starts: list[float] = []      # every lockstep step's start (all ranks start it together)
        self.dummy_steps = [0] * cfg.dp          # steps each rank ran with nothing to do

    def route(self, spec: RequestSpec, now: float) -> int:
        """vLLM's rule: the rank with the lowest 4 x waiting + running (ties: the lowest rank)."""
        scores = [WAITING_WEIGHT * e.policy.num_waiting + len(e.policy.running) for e in self.engines]
        rank = scores.index(min(scores))
        engine = self.engines[rank]
        engine.feed(spec)
        engine._admit_arrivals(now)
        return rank

    def run(self, specs: list[RequestSpec]) -> list:
        specs = sorted(specs, key=lambda s: (s.arrival_s, s.request_id))
        t, i = 0.0, 0
        with paused_gc():
            while True:
                while i < len(specs) and specs[i].arrival_s <= t:
                    self.route(specs[i], t)
                    i += 1
                if i == len(specs):
                    for engine in self.engines:
                        engine.open = False
                for engine in self.engines:
                    engine._admit_arrivals(t)
                batches = [e.policy.schedule(t) for e in self.engines]
                if any(b is not None for b in batches):
                    t = self._step(batches, t)
                    continue
                if i == len(specs) and not any(e.policy.has_work() for e in self.engines):
                    break
                t = self._wake(t, specs[i].arrival_s if i < len(specs) else float("inf"))
        return [engine.finish() for engine in self.engines]

    def _step(self, batches: list, t: float) -> float:
        """One lockstep step from `t`: every rank runs its batch (or a dummy one); all end with the slowest."""
        recs = [None if b is None else e._price(b, t) for e, b in zip(self.engines, batches)]
        tokens = max(b.num_batched_tokens if b is not None else 1 for b in batches)
        compute = max(self.dummy_s if r is None else r.seconds for r in recs)
        end = t + compute + all_to_all_seconds(self.link, self.model, tokens, self.dp)
        self.step_starts.append(t)
        for engine, batch, rec in zip(self.engines, batches, recs):
            if batch is not None:
                engine._commit(batch, rec._replace(seconds=end - t), t, end)
        for rank, batch in enumerate(batches):
            self.dummy_steps[rank] += batch is None
        return end

    def _wake(self, t: float, next_arrival_s: float) -> float:
        """All ranks idle: sleep until the next arrival or a policy's deadline."""
        deadlines = [d for d in (e.policy.next_deadline(t) for e in self.engines) if d is not None]
        wake = min([next_arrival_s, *deadlines])
        if wake == float("inf"):
            raise RuntimeError(f"DP ranks stalled at t={t:.6f}s with work left")
        return max(t, wake)


def simulate_dp_ep(cfg: SimConfig, specs: list[RequestSpec]):
    """Simulate a DP+EP deployment; a ClusterResult with one replica row per rank."""
    from simulator.cluster.result import merge_runs
    from simulator.cluster.sim import ReplicaRun, check_open_loop
    check_open_loop(cfg, specs)
    lockstep = Lockstep(cfg)
    results = lockstep.run(specs)
    result = merge_runs(cfg.to_dict(), [ReplicaRun(i, "dp-rank", lockstep.config, r) for i, r in enumerate(results)])
    result.meta["dp_ep"] = {"dp": cfg.dp, "lockstep_steps": len(lockstep.step_starts),
                            "dummy_steps": lockstep.dummy_steps, "experts_per_rank": lockstep.engines[0].parts.meta[
                                "model"]["num_experts"], "link": lockstep.link.name}
    return result
