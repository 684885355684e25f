"""The batching-policy interface, and what every policy shares: queues, commit, preemption bookkeeping.

A policy owns the waiting and running queues and a KV-cache manager. The engine calls `schedule(now)` for the
next step's `Batch` (or None when there is nothing to run yet), prices and times it, then calls
`commit(batch, start_s, end_s)` to advance counters, stamp tokens, finish requests and free their KV.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field

from simulator.batch import Batch
from simulator.batching.lazy import DecodeRun, RunOutcome
from simulator.kv_cache.base import KVCacheManager
from simulator.request import Request, RequestStatus
from simulator.speculative import Speculation, SpecStats


@dataclass(frozen=True)
class PolicyParams:
    """Knobs of every policy (each policy reads those it uses)."""

    max_num_seqs: int = 256               # continuous: running requests at most (vLLM default 256)
    max_num_batched_tokens: int = 8192    # continuous: tokens computed per step at most
    chunked_prefill: bool = False         # continuous: split long prompts across steps, mixed with decodes
    admit_whole_sequence: bool = False    # continuous: admission needs KV for the whole sequence (vLLM V1)
    preemption: str = "recompute"         # continuous: 'recompute' or 'swap'
    swap_space_bytes: float = 4 * 1024**3  # host memory for swapped-out KV (vLLM's default swap_space: 4 GiB)
    kv_bytes_per_token: float = 0.0       # per GPU; prices swap traffic
    batch_size: int = 8                   # static: requests per batch
    max_batch_size: int = 8               # dynamic: close a batch at this many waiting requests...
    max_wait_s: float = 0.1               # ...or once the oldest has waited this long
    speculation: Speculation | None = None  # continuous: speculative decoding's drafts and acceptance model


@dataclass
class StepOutcome:
    """What a committed step produced: finished requests and inter-token gaps (seconds) of non-first tokens."""

    finished: list[Request] = field(default_factory=list)
    itl_gaps: list[float] = field(default_factory=list)
    itl_counts: list[int] | None = None   # how often each gap occurs (None: once each)


class BatchingPolicy(ABC):
    """Base class: override `schedule()` (and `_on_finish()` if KV is released at a different time)."""

    def __init__(self, kv: KVCacheManager, params: PolicyParams) -> None:
        self.kv = kv
        self.params = params
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.kv_used_tokens = 0          # K/V actually stored: computed tokens of requests holding GPU KV
        self.workload_ended = False      # set by the engine while no request can arrive before one finishes
        self.num_preemptions = {"recompute": 0, "swap": 0}
        self.fast_path = False           # decode runs: see enable_fast_path
        self.spec_stats = SpecStats()    # speculative decoding: verify steps, drafts proposed and accepted
        self._next_seat = 0

    def enable_fast_path(self) -> None:
        """Let the engine advance runs of identical decode steps at once (plan_run / commit_run). Not with
        speculative decoding: verify steps differ from one another (each draws its own acceptances), so
        `fast_path` stays off and subclasses must plan no runs."""
        self.fast_path = self.params.speculation is None

    def plan_run(self, now: float) -> DecodeRun | None:
        """The run of decode steps that schedule() would give from now on, step after step, if nothing arrives;
        None when the next step is not such a step (the engine then calls schedule())."""
        return None

    def commit_run(self, run: DecodeRun, ends_s: list[float]) -> RunOutcome:
        """Commit the first len(ends_s) steps of `run`, step j ending at ends_s[j]."""
        raise NotImplementedError(f"{type(self).__name__} plans no runs")

    def _add_running(self, req: Request) -> None:
        """Append to the running set; seats number the running order."""
        req.seat = self._next_seat
        self._next_seat += 1
        self.running.append(req)

    def add_request(self, req: Request) -> None:
        self.waiting.append(req)

    @abstractmethod
    def schedule(self, now: float) -> Batch | None:
        """The next step's batch, or None if nothing can run now."""

    def next_deadline(self, now: float) -> float | None:
        """When schedule() may change its answer without an arrival (dynamic batching's window), or None."""
        return None

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    def commit(self, batch: Batch, start_s: float, end_s: float) -> StepOutcome:
        """Advance every scheduled request by its new tokens; sample, stamp and finish.

        A request that computed past its known tokens verified that many drafts: it keeps the accepted ones plus
        one sampled token and rolls its computed tokens back by the rejected ones (vLLM V1's
        Scheduler.update_from_output). Its tokens arrive together, as one streamed chunk: one inter-token gap.
        Requests that finish are released after the whole step is counted, in batch order.
        """
        out = self._commit_tokens(batch, start_s, end_s)
        for req in out.finished:
            self._finish(req, end_s)
        return out

    def _commit_tokens(self, batch: Batch, start_s: float, end_s: float) -> StepOutcome:
        """Advance and stamp the batch's requests; those that sampled their last token are listed in
        `finished`, not yet released (see `_finish`)."""
        out = StepOutcome([], [])
        for req, n in zip(batch.requests, batch.num_new_tokens):
            if req.scheduled_s is None:
                req.scheduled_s = start_s
            req.num_computed_tokens += n
            self.kv_used_tokens += n
            if req.num_computed_tokens < req.num_tokens:
                continue                                    # a prefill chunk: no token sampled yet
            new_tokens = 1
            drafts = req.num_computed_tokens - req.num_tokens
            if drafts:
                new_tokens += self._verify(req, drafts)
            if req.last_token_s is None:
                req.first_token_s = end_s
            else:
                out.itl_gaps.append(end_s - req.last_token_s)
            req.last_token_s = end_s
            req.num_output_tokens += new_tokens
            if req.num_output_tokens == req.output_tokens:
                out.finished.append(req)
        return out

    def _finish(self, req: Request, end_s: float) -> None:
        """`req` sampled its last token in the step that ended at `end_s`: mark it finished and release it."""
        req.status = RequestStatus.FINISHED
        req.finish_s = end_s
        self._on_finish(req)

    def _verify(self, req: Request, drafts: int) -> int:
        """Draw how many of `drafts` verified drafts are accepted; drop the KV of the rejected ones."""
        accepted = self.params.speculation.accepted(req.request_id, req.num_verify_steps, drafts)
        req.num_verify_steps += 1
        self.spec_stats.add(drafts, accepted)
        rejected = drafts - accepted
        req.num_computed_tokens -= rejected
        self.kv_used_tokens -= rejected
        return accepted

    def _on_finish(self, req: Request) -> None:
        """Release a finished request at once (iteration-level policies)."""
        self.running.remove(req)
        self._free(req)

    def _free(self, req: Request) -> None:
        if self.kv.allocated_tokens(req):
            self.kv_used_tokens -= req.num_computed_tokens
        self.kv.free(req)
