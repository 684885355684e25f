"""The SimPy simulation of one model replica (the only module that imports simpy).

Scenario: one serve process. Before each step it hands the policy the requests that have arrived by now (the
workload is a sorted list, so arrivals need no events of their own); an idle server sleeps until the next
arrival or the policy's next deadline. The serve loop asks the batching policy for a batch, prices it with
the cost model, holds the GPU for that long, then commits the step and records it.

Arrivals come from an ArrivalQueue (simulator/arrivals.py): at their times, or after the request they follow
finishes (conversation turns), within --max-concurrency.

Fast path: arrivals are the only outside events, so between two arrivals the serve loop commits steps ahead of
the clock and then holds the GPU once, until the end of the step during which the next request arrives. And
when the policy can plan a run of identical decode steps (no request finishes before the run's last step, no
block is missing, no arrival lands before its last step starts), the run is priced and committed at once,
its requests advanced lazily; a step that also computes prompt chunks (chunked prefill) keeps those decoders lazy
too. Step end times are the same running float sums as step by step, so every
timestamp is identical to the last bit (tests compare both paths). The fast path's contract, between the engine,
the policy, the KV manager and the cost model, is in simulator/batching/lazy.py.
"""
from __future__ import annotations

import contextlib
import gc
import time
from dataclasses import dataclass
from functools import partial
from itertools import chain
from typing import Callable, Iterable, Protocol

import simpy

from simulator.arrivals import ArrivalQueue
from simulator.batching import BatchingPolicy
from simulator.batching.lazy import DecodeRun
from simulator.cost import CostModel
from simulator.metrics import Recorder, SimResult, StepRecord, new_step_record
from simulator.request import Request, RequestStatus
from simulator.request_log import RequestLog
from simulator.step import RunCosts, StepShape
from workloads.spec import RequestSpec

ProgressFn = Callable[[float, int, int], None]   # (simulated seconds, requests done, requests total)
# Asked between steps with the engine and the simulated time: True ends the run there (meta["stopped_early"]),
# e.g. once the SLO verdict is certain (simulator/runs/early_stop.py). The partial result is not a full run.
StopFn = Callable[["Engine", float], bool]
INF = float("inf")


def step_by_step_costs(cost_model, num_seqs: int, context_tokens: int, context_step: int, max_steps: int,
                       start_s: float = 0.0, stop_s: float = INF, detail: bool = True) -> RunCosts:
    """CostModel.decode_run_costs for cost models without one: one step_cost() per step (always in detail)."""
    costs, t = RunCosts.empty(), start_s
    for j in range(max_steps):
        cost = cost_model.step_cost(StepShape((), num_seqs, context_tokens + j * context_step, num_seqs))
        t = t + cost.seconds
        costs.append(cost, t)
        if t >= stop_s:
            break
    return costs


@contextlib.contextmanager
def paused_gc():
    """The loop creates no reference cycles worth collecting, while the cyclic collector would rescan every live
    request again and again (a third of the run time at 10^5 requests): pause it for a run."""
    collecting = gc.isenabled()
    gc.disable()
    gc.freeze()          # what is alive already (the workload) is old: the collection at the end skips it
    try:
        yield
    finally:
        gc.freeze()      # and what the run left alive is old too: no young collection rescans it as gc resumes
        gc.unfreeze()
        if collecting:
            gc.enable()


@dataclass(frozen=True)
class EngineOptions:
    """How the engine runs and what it keeps (SimConfig's fields of the same names; these defaults keep every row
    and admit every arrival as it comes)."""

    fast_path: bool = True                  # advance runs of identical decode steps at once (identical results)
    summary_only: bool = False              # histograms and running sums instead of per-step and per-token rows
    max_request_rows: int | None = None     # per-request rows kept in memory (None: all); more stream to Parquet
    request_rows_path: str | None = None    # where they stream
    max_concurrency: int | None = None      # requests in the server at most; later arrivals queue outside


@dataclass
class EngineParts:
    """Everything the engine drives, built by simulator.api from a SimConfig."""

    policy: BatchingPolicy
    cost_model: CostModel
    max_model_len: int
    config: dict                            # the resolved configuration, stored with the results (not read here)
    meta: dict
    options: EngineOptions = EngineOptions()
    slo: tuple[float | None, ...] = (None, None, None)     # TTFT, TPOT and E2E SLOs, seconds


class EngineObserver(Protocol):
    """What a cluster watches of a replica: the load it reports at each step's start (a run reports once, with
    its step ends), when it goes idle, and every request it is done with (finished or rejected)."""

    def step(self, start_s: float, num_running: int, num_waiting: int, used_tokens: int) -> None: ...

    def run(self, start_s: float, ends_s: list[float], run: DecodeRun) -> None: ...

    def idle(self, now_s: float, num_running: int, num_waiting: int, used_tokens: int) -> None: ...

    def done(self, req: Request, time_s: float) -> None: ...


class KVReleases(Protocol):
    """Finished requests whose KV blocks a replica keeps until a later time (a prefill instance's, until their
    transfer to a decode instance has ended): told of every finish, it names the next release, which the engine
    treats as it treats an arrival (it may let a waiting request in), and frees the blocks due by a time."""

    def finished(self, req: Request, time_s: float) -> None: ...

    def next_s(self) -> float: ...

    def release_until(self, time_s: float) -> None: ...


class Engine:
    """Drives one replica. `fast_path` (default: the config's `fast_path`, else on) enables decode runs.

    A cluster drives replicas differently: `start()`, then `feed()` each request a router sends here (in arrival
    order) while `open`, `advance(t)` every replica to the next arrival, and `close()`; `horizon_s` (the next
    arrival the router has not placed yet) bounds how far the fast path commits ahead.
    """

    def __init__(self, parts: EngineParts, specs: Iterable[RequestSpec], progress: ProgressFn | None = None,
                 *, fast_path: bool | None = None, stop: StopFn | None = None,
                 observer: EngineObserver | None = None) -> None:
        self.parts = parts
        self.stop = stop
        self.stopped_early = False
        self.policy = parts.policy
        self.specs = list(specs)
        self.progress = progress
        self.env = simpy.Environment()
        options = parts.options
        self.recorder = Recorder(summary_only=options.summary_only)
        self.log = RequestLog(options.max_request_rows, options.request_rows_path, parts.slo)
        self.requests: list[Request] = []        # every request, unless summary-only or rows may stream
        self._keep_requests = not self.recorder.summary_only and (self.log.max_rows is None
                                                                   or len(self.specs) <= self.log.max_rows)
        self.num_done = 0
        # prompt + output tokens a request may have at most (max_request_tokens: what the KV could ever hold)
        self._fits = min(parts.max_model_len, self.policy.kv.max_request_tokens() + 1)
        self.fast_path = options.fast_path if fast_path is None else fast_path
        self._next_arrival_s = INF              # the earliest arrival not yet handed to the policy
        self._quiet_until = -INF                 # before this, _admit_arrivals has nothing to do (see there)
        self.observer = observer
        self.releases: KVReleases | None = None  # set by a cluster whose replicas hold finished requests' KV
        self.open = False                        # a router may still feed requests
        self.horizon_s = INF                     # while open: no unfed request arrives before this
        self._router_call = None                 # while open and idle until the horizon: what the router triggers
        self.num_steps = 0                       # engine steps simulated, and how many of them ran in runs
        self.num_run_steps = 0
        self.num_runs = 0
        if self.fast_path:
            self.policy.enable_fast_path()
        cost_model = parts.cost_model
        self._decode_costs = getattr(cost_model, "decode_run_costs", None) or partial(step_by_step_costs, cost_model)
        self._step_costs: dict[tuple, object] = {}   # StepShape fields -> StepCost
        # summary-only runs need no per-step breakdown of run steps, only their times and FLOP/byte totals
        self._detail = not self.recorder.summary_only       # (step_by_step_costs always gives the detail)

    def run(self) -> SimResult:
        self.start()
        with paused_gc():
            self.env.run(until=self._server)
        return self.finish()

    def start(self) -> None:
        self._wall = time.perf_counter()
        self.arrivals = ArrivalQueue(self.specs, self.parts.options.max_concurrency)
        self._next_arrival_s, self._quiet_until = self._next_s(), -INF
        self._server = self.env.process(self._serve())

    def feed(self, spec: RequestSpec) -> None:
        """A request routed here while open (no earlier than any fed before it)."""
        self.specs.append(spec)
        self.arrivals.add(spec)
        self._next_arrival_s, self._quiet_until = self._next_s(), -INF
        self._answer_router()

    def advance(self, until_s: float) -> None:
        """Simulate every event before `until_s` (events at `until_s` itself wait: a request arriving then is
        fed first, as a plain run sees an arrival at the very end of a step)."""
        self._answer_router()
        if self.env.peek() < until_s:
            self.env.run(until=until_s)

    def close(self) -> SimResult:
        """No more requests: run to the end and return the results."""
        self.open, self.horizon_s, self._quiet_until = False, INF, -INF
        self._answer_router()
        if self._server.is_alive:
            self.env.run(until=self._server)
        return self.finish()

    def finish(self) -> SimResult:
        if self.releases is not None:
            self.releases.release_until(INF)      # nothing runs any more: every held block goes back
        requests = self.log.frame()
        meta = {**self.parts.meta, "preemptions_recompute": self.policy.num_preemptions["recompute"],
                "preemptions_swap": self.policy.num_preemptions["swap"], "engine_steps": self.num_steps,
                "run_steps": self.num_run_steps, "runs": self.num_runs, "stopped_early": self.stopped_early,
                "prefix_cache_evictions": self.policy.kv.num_evictions}
        if self.policy.params.speculation is not None:
            meta["speculative"] = self.policy.spec_stats.as_dict()
        if self.log.sums is not None:
            meta.update(request_rows_path=self.log.path, request_sums=self.log.sums.as_dict())
        result = self.recorder.result(self.parts.config, meta, requests)
        result.meta["wall_s"] = time.perf_counter() - self._wall
        return result

    def _admit_arrivals(self, until_s: float) -> None:
        """Hand the policy every request that has arrived by `until_s` (an arrival at the very end of a step is
        seen by the next schedule), or reject it with a reason.

        Before `_quiet_until` the call would change nothing, and returns at once: it is the next arrival where
        only arrivals move it (no router feeding requests, no held KV to release, and no finish that brings an
        arrival forward), else -INF."""
        if until_s < self._quiet_until:
            return
        policy = self.policy
        if self.releases is not None:
            self.releases.release_until(until_s)
        fits = self._fits
        for spec, arrival_s in self.arrivals.pop_until(until_s):
            req = Request(spec)
            req.arrival_s = arrival_s
            if self._keep_requests:
                self.requests.append(req)
            reason = "" if req.prompt_tokens + req.output_tokens <= fits else self._reject_reason(req)
            if reason:
                req.status, req.reject_reason = RequestStatus.REJECTED, reason
                self._done(req, arrival_s)
            else:
                policy.add_request(req)
        self._next_arrival_s = self._next_s()
        policy.workload_ended = self.arrivals.ended and not self.open
        quiet = self.releases is None and not self.open and not self.arrivals.follows_finishes
        self._quiet_until = self._next_arrival_s if quiet else -INF

    def _next_s(self) -> float:
        """The next arrival, if no request finishes first; while a router may feed more, no later than the
        earliest arrival it has not placed yet; and no later than the next release of held KV."""
        next_s = min(self.arrivals.next_s(), self.horizon_s)
        return next_s if self.releases is None else min(next_s, self.releases.next_s())

    def _done(self, req: Request, time_s: float) -> None:
        """`req` finished or was rejected at `time_s`: keep its row, release the requests that follow it."""
        self.log.add(req)
        self.num_done += 1
        arrivals = self.arrivals                                     # the next arrival may come sooner
        moved = arrivals.follows_finishes and arrivals.finished(req.request_id, time_s)
        if self.releases is not None:
            self.releases.finished(req, time_s)                     # and a release of its held KV
            moved = True
        if moved:
            self._next_arrival_s = self._next_s()
        if self.observer is not None:
            self.observer.done(req, time_s)

    def _reject_reason(self, req: Request) -> str:
        if req.prompt_tokens + req.output_tokens > self.parts.max_model_len:
            return f"longer than max_model_len ({self.parts.max_model_len} tokens)"
        if req.max_tokens > self.policy.kv.max_request_tokens():
            return f"longer than KV capacity ({self.policy.kv.max_request_tokens()} tokens)"
        return ""

    def _serve(self):
        env, policy = self.env, self.policy
        while True:
            self._admit_arrivals(env.now)
            if self.stop is not None and self.stop(self, env.now):
                self.stopped_early = True
                return
            if self.fast_path:
                end, delays = self._advance(env.now)
                if delays:
                    yield from self._hold(env.now, end, delays)
                    continue
            else:
                batch = policy.schedule(env.now)
                if batch is not None:
                    start, rec = env.now, self._price(batch, env.now)
                    yield env.timeout(rec.seconds)
                    self._commit(batch, rec, start, env.now)
                    continue
            if policy.workload_ended and not policy.has_work():
                return
            yield from self._idle()

    # ---- the fast path: commit steps ahead of the clock, then hold the GPU once ----
    def _advance(self, now: float) -> tuple[float, list]:
        """Commit steps from `now` on, as the step-by-step path would take them, until one ends at or after the
        next arrival (which may change the next batch) or nothing can run. Nothing else happens in the
        simulation meanwhile: arrivals are the only outside events. Returns the end time and every step's
        duration, a sequence per run or step (empty if nothing could run)."""
        policy, delays, t = self.policy, [], now
        runs = policy.fast_path                     # off where the policy declined decode runs (speculation)
        while t < self._next_arrival_s:             # a finish may bring the next arrival forward
            run = policy.plan_run(t) if runs else None
            if run is not None:
                t = self._run(run, t, delays)
                continue
            batch = policy.schedule(t)
            if batch is None:
                break
            rec = self._price(batch, t)
            end = t + rec.seconds
            self._commit(batch, rec, t, end)
            delays.append((rec.seconds,))
            t = end
        return t, delays

    def _hold(self, now: float, end: float, delays: list):
        """Advance the clock to `end` with one timeout, or one per step (`delays` holds the steps' durations,
        a sequence per run or step) where one sum would round differently from their running sum."""
        if now + (end - now) == end:
            yield self.env.timeout(end - now)
        else:
            for delay in chain.from_iterable(delays):
                yield self.env.timeout(delay)
        assert self.env.now == end

    def _run(self, run: DecodeRun, start: float, delays: list) -> float:
        """Commit a run of decode steps from `start`; return its end. The run stops after the first step that
        ends at or after the next arrival (which may change the step after it), or at the policy's limit."""
        policy = self.policy
        costs = self._decode_costs(run.num_decode, run.context_tokens, run.live, run.max_steps, start,
                                   self._next_arrival_s, self._detail)
        usage = policy.kv.usage()
        if self.observer is not None:
            self.observer.run(start, costs.ends, run)
        outcome = policy.commit_run(run, costs.ends)
        k = len(costs.ends)
        self.num_runs += 1
        self.num_run_steps += k
        self.num_steps += k
        self.recorder.run(start, costs, run, usage, outcome.new_blocks, policy.kv.growth_block_tokens or 0,
                          outcome.first_gaps)
        delays.append(costs.seconds)
        for req in outcome.finished:
            self._done(req, costs.ends[-1])
        if self.progress:
            self.progress(costs.ends[-1], self.num_done, len(self.specs))
        return costs.ends[-1]

    # ---- one step ----
    def _price(self, batch, start: float) -> StepRecord:
        """The step's record: its cost, shape, queues and KV usage, all taken when it starts (at `start`)."""
        policy, cost_model = self.policy, self.parts.cost_model
        fields = batch.shape_fields()
        cost = self._step_costs.get(fields)
        if cost is None:                          # a plain-tuple key is cheaper to hash than a StepShape
            cost = cost_model.step_cost(StepShape(*fields))
            if len(self._step_costs) < 1 << 16:
                self._step_costs[fields] = cost
        prefill, num_decode, context, _, verify = fields
        num_prefill = 0
        for n, c in prefill:                      # prompt chunks: their tokens, and their cached context
            num_prefill += n
            context += c
        for n, c in verify:                       # verify chunks count as decode tokens
            num_decode += n
            context += c + n
        swap_s = cost_model.swap_seconds(batch.swap_bytes) if batch.swap_bytes else 0.0
        kv = policy.kv
        used = policy.kv_used_tokens + batch.num_batched_tokens - kv.shared_tokens   # shared blocks once
        if self.observer is not None:
            self.observer.step(start, len(policy.running), policy.num_waiting, used)
        return new_step_record((cost, cost.seconds + swap_s, swap_s, batch.batch_size, num_prefill, num_decode,
                                context, len(policy.running), policy.num_waiting, batch.num_preempted, used,
                                kv.usage()))

    def _commit(self, batch, rec: StepRecord, start: float, end: float) -> None:
        """Commit a step that ran from `start` to `end`, and record it."""
        outcome = self.policy.commit(batch, start, end)
        self.num_steps += 1
        self.recorder.step(start, rec)
        if outcome.itl_gaps:
            self.recorder.itl_gaps(outcome.itl_gaps, outcome.itl_counts)
        for req in outcome.finished:
            self._done(req, end)
        if self.progress:
            self.progress(end, self.num_done, len(self.specs))

    def _answer_router(self) -> None:
        """Wake the serve loop if it waits for the router (see _idle)."""
        if self._router_call is not None and not self._router_call.triggered:
            self._router_call.succeed()
        self._router_call = None

    def _idle(self):
        """Sleep until the next arrival or the policy's deadline; a stall with nothing to wait for is a bug."""
        now = self.env.now
        if self.observer is not None:
            self.observer.idle(now, len(self.policy.running), self.policy.num_waiting, self.policy.kv_used_tokens)
        deadline = self.policy.next_deadline(now)
        wake = min(self._next_arrival_s, INF if deadline is None else deadline)
        if self.open and wake >= self.horizon_s:
            # Nothing happens here before the router's next arrival, which it has not placed yet: wait for the
            # router to feed, advance or close, not for a timer at the horizon. advance() stops simpy at the
            # horizon, and where rounding puts that stop one float later, such a timer would fire at the
            # horizon again and again (the step loop sees the horizon as the next arrival), never returning.
            self._router_call = self.env.event()
            yield self._router_call
            return
        if wake == INF:
            raise RuntimeError(f"scheduler stalled at t={now:.6f}s with work left: "
                               f"{len(self.policy.running)} running, {self.policy.num_waiting} waiting")
        yield self.env.timeout(max(0.0, wake - now))
        if wake == self._next_arrival_s:
            self._admit_arrivals(wake)       # even if now + (wake - now) rounded below it
