"""Continuous (iteration-level) batching, as in Orca and vLLM: the batch is re-formed every step.

Knobs are vLLM's: `max_num_seqs` running requests and `max_num_batched_tokens` tokens per step; FCFS,
running requests first. Without chunked prefill a step is all-prefill or all-decode, prefills first (vLLM v0's
default scheduler). With chunked prefill, decodes go first and prompt chunks fill the rest of the token budget
(Sarathi-Serve; vLLM v1), and under `admit_whole_sequence` a waiting request is admitted only when blocks for its
whole sequence are free (vLLM V1). When KV memory runs out, the most recently admitted request is preempted: by
recompute (free its KV, recompute prompt and outputs later) or by swap (copy its KV to host memory over PCIe).
"""
from __future__ import annotations

from collections import deque
from functools import partial
from typing import NamedTuple

from simulator.batch import Batch
from simulator.batching.base import BatchingPolicy, StepOutcome
from simulator.batching.lazy import DecodeRun, LazyDecoders, RunOutcome, new_decode_run, new_run_outcome
from simulator.request import Request, RequestStatus


class Admission(NamedTuple):
    """A waiting request the next step admits, and the tokens it computes in that step."""

    request: Request
    tokens: int            # new tokens it computes in the step
    cached: int = 0        # leading tokens served from the prefix cache instead


_new_admission = partial(tuple.__new__, Admission)    # Admission(*fields) without its Python-level __new__ (per step)


class ContinuousBatching(BatchingPolicy):
    def __init__(self, kv, params) -> None:
        super().__init__(kv, params)
        self.swapped: deque[Request] = deque()
        self.host_swap_bytes = 0.0
        self.lazy: LazyDecoders | None = None
        # the running requests the lazy decoders do not track, by seat (so in running order)
        self.untracked: dict[int, Request] = {}

    def enable_fast_path(self) -> None:
        super().enable_fast_path()
        # no runs under speculation (see base), nor with a KV manager that does not say how it grows
        if self.fast_path and self.kv.growth_block_tokens is not None:
            self.lazy = LazyDecoders(self.kv)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.swapped)

    def schedule(self, now: float) -> Batch | None:
        batch = Batch([], [], [])
        if self.swapped:
            self._swap_in(batch)
        if self.params.chunked_prefill:
            budget = self._schedule_around_lazy(batch, self.params.max_num_batched_tokens)
            if budget is None:
                self._sync_running()
                budget = self._schedule_running(batch, self.params.max_num_batched_tokens)
            if not batch.num_preempted and not self.swapped:
                self._admit_waiting(batch, budget)
        elif not self._admit_waiting(batch, self.params.max_num_batched_tokens):
            self._sync_running()
            self._schedule_running(batch, self.params.max_num_batched_tokens)
        return batch if batch.requests or batch.lazy_decode else None

    def _sync_running(self) -> None:
        """Bring lazily advanced requests level before the step-by-step path reads the running set."""
        if self.lazy is not None and self.lazy.num_tracked:
            self.lazy.sync_all(self.running)
            self.untracked = {req.seat: req for req in self.running}

    def _schedule_around_lazy(self, batch: Batch, budget: int) -> int | None:
        """`_schedule_running` with the lazy decoders left lazy (chunked prefill: a mixed step); the budget left,
        or None, having changed nothing, where the step-by-step path must decide.

        The tracked decoders each take one token and the blocks they cross into (reserved, unnamed), counted in
        the batch as an aggregate; the untracked running requests are scheduled as `_schedule_running` would.
        That is the step-by-step step exactly when every tracked decoder sits before every untracked request
        (so the decoders come first in running order), the budget covers the decoders, and KV memory serves
        everyone without a preemption: the decoders' blocks, and at most one untracked request that grows
        (several could each fit alone but not together). Otherwise None.
        """
        lazy = self.lazy
        if lazy is None or not lazy.num_tracked:
            return None
        untracked, num, first = self.untracked, lazy.num_tracked, lazy.first_step_blocks()
        if num > budget or first > self.kv.free_growth_blocks() or (untracked and next(iter(
                untracked)) <= lazy.max_seat):
            return None
        budget -= num
        chunks = []                                # (request, new tokens), in running order
        for req in untracked.values():
            if budget <= 0:
                break
            n = min(self._next_tokens(req), budget)
            chunks.append((req, n))
            budget -= n
        self.kv.reserve(first)
        if not self._chunks_fit(chunks):
            self.kv.reserve(-first)
            return None
        for req, n in chunks:
            self.kv.allocate(req, req.num_computed_tokens + n)
            batch.requests.append(req)
            batch.num_new_tokens.append(n)
        batch.lazy_decode, batch.lazy_context = num, lazy.tokens + num
        return budget

    def _chunks_fit(self, chunks: list[tuple[Request, int]]) -> bool:
        """Can KV memory serve these (request, new tokens) all at once: each fits, and at most one grows?"""
        kv, growing = self.kv, 0
        for req, n in chunks:
            tokens = req.num_computed_tokens + n
            if not kv.can_allocate(req, tokens):
                return False
            growing += tokens > kv.allocated_tokens(req)
        return growing <= 1

    def _schedule_running(self, batch: Batch, budget: int) -> int:
        """Give running requests (oldest first) their next tokens, preempting the newest when KV runs out."""
        for req in list(self.running):
            if budget <= 0:
                break
            if req.status != RequestStatus.RUNNING:
                continue                                    # preempted earlier in this loop
            n = min(self._next_tokens(req), budget)
            if not self._make_room(req, req.num_computed_tokens + n, batch):
                continue
            self.kv.allocate(req, req.num_computed_tokens + n)
            batch.requests.append(req)
            batch.num_new_tokens.append(n)
            budget -= n
        return budget

    def _next_tokens(self, req: Request) -> int:
        """Tokens a running request computes next: what it has not computed yet, plus, when it decodes under
        speculative decoding, the drafts proposed after its last step (vLLM V1: num_tokens_with_spec -
        num_computed_tokens)."""
        n = req.num_uncomputed_tokens
        spec = self.params.speculation
        if spec is not None and n == 1 and req.num_output_tokens:
            n += spec.num_drafts(req.output_tokens - req.num_output_tokens)
        return n

    def _make_room(self, req: Request, num_tokens: int, batch: Batch) -> bool:
        """Preempt the most recently admitted running requests until `req` fits; False if `req` itself went."""
        while not self.kv.can_allocate(req, num_tokens):
            victim = self.running[-1]
            self._preempt(victim, batch)
            if victim is req:
                return False
        return True

    def _pick_next(self, budget: int) -> Admission | None:
        """The admission rule, written once: the waiting request the next step admits with `budget` tokens left
        in it (FCFS: the queue's head or nobody), or None. schedule() admits through it, and the fast path asks
        it whether the next step would admit.

        It must only read state, and a None must stay None while free KV memory only shrinks and the queues
        and the running set stay as they are (what a run of decode steps does); see simulator/batching/lazy.py.
        """
        if self.swapped or not self.waiting or len(self.running) >= self.params.max_num_seqs or budget <= 0:
            return None                                     # swapped requests come back before any admission
        return self._admission(self.waiting[0], budget)

    def _admit_waiting(self, batch: Batch, budget: int) -> bool:
        """Admit waiting requests while `_pick_next` names one; True if any was admitted."""
        admitted = False
        while (pick := self._pick_next(budget)) is not None:
            req, n, hit = pick
            if self.waiting[0] is req:
                self.waiting.popleft()
            else:
                self.waiting.remove(req)
            self.kv.allocate(req, req.num_computed_tokens + hit + n, cached_tokens=hit)
            if hit:
                self._take_hit(req, hit)
            req.status = RequestStatus.RUNNING
            self._add_running(req)
            batch.requests.append(req)
            batch.num_new_tokens.append(n)
            budget -= n
            admitted = True
        return admitted

    def _admission(self, req: Request, budget: int) -> Admission | None:
        """How the waiting request `req` would be admitted within `budget` tokens now (its prefix-cache hit and
        new tokens), or None if it cannot be (the whole uncached prompt must fit without chunked prefill; under
        `admit_whole_sequence` the KV blocks of its whole sequence must be free)."""
        kv, params = self.kv, self.params
        hit = kv.prefix_hit(req) if kv.prefix_caching and not req.num_computed_tokens else 0
        n = req.num_uncomputed_tokens - hit
        if n > budget:
            if not params.chunked_prefill:
                return None
            n = budget
        # vLLM V1 (scheduler_reserve_full_isl): blocks for the whole sequence so far must be free, although only
        # this step's chunk is allocated now
        need = req.num_tokens if params.admit_whole_sequence else req.num_computed_tokens + hit + n
        if not kv.can_allocate(req, need, admission=True, cached_tokens=hit):
            return None
        return _new_admission((req, n, hit))

    def _take_hit(self, req: Request, hit: int) -> None:
        """`req` starts from `hit` cached tokens: counted as served from the cache on its first admission, as
        work saved from its recompute after a preemption."""
        req.num_computed_tokens += hit
        self.kv_used_tokens += hit
        if req.num_preemptions:
            req.recomputed_tokens -= hit
        else:
            req.num_cached_tokens = hit

    # BatchingPolicy's named, not super(): in Python 3.11 super() builds an object per call (once per request)
    def _add_running(self, req: Request) -> None:
        BatchingPolicy._add_running(self, req)
        self.untracked[req.seat] = req

    def _on_finish(self, req: Request) -> None:
        BatchingPolicy._on_finish(self, req)
        self.untracked.pop(req.seat, None)

    def _preempt(self, victim: Request, batch: Batch) -> None:
        self.running.remove(victim)
        self.untracked.pop(victim.seat, None)
        victim.num_preemptions += 1
        batch.num_preempted += 1
        nbytes = victim.num_computed_tokens * self.params.kv_bytes_per_token
        if self.params.preemption == "swap" and self.host_swap_bytes + nbytes <= self.params.swap_space_bytes:
            self._free(victim)
            victim.status = RequestStatus.SWAPPED
            victim.swapped_bytes += nbytes
            self.host_swap_bytes += nbytes
            batch.swap_bytes += nbytes
            self.swapped.append(victim)
            self.num_preemptions["swap"] += 1
            return
        self._free(victim)
        victim.recomputed_tokens += victim.num_computed_tokens
        victim.num_computed_tokens = 0
        victim.status = RequestStatus.PREEMPTED
        self.waiting.appendleft(victim)
        self.num_preemptions["recompute"] += 1

    def _next_swap_in(self) -> Request | None:
        """The swap-in rule: the swapped request the next step brings back (oldest first, while a seat is free
        and its KV fits), or None."""
        if not self.swapped or len(self.running) >= self.params.max_num_seqs:
            return None
        req = self.swapped[0]
        return req if self.kv.can_allocate(req, req.num_computed_tokens + 1, admission=True) else None

    def _swap_in(self, batch: Batch) -> None:
        """Bring swapped requests back while `_next_swap_in` names one, before any new admission."""
        while (req := self._next_swap_in()) is not None:
            self.swapped.popleft()
            self.kv.allocate(req, req.num_computed_tokens)
            self.kv_used_tokens += req.num_computed_tokens
            nbytes = req.num_computed_tokens * self.params.kv_bytes_per_token
            self.host_swap_bytes -= nbytes
            req.swapped_bytes += nbytes
            batch.swap_bytes += nbytes
            req.status = RequestStatus.RUNNING
            self._add_running(req)

    # ---- the decode-run fast path (see simulator/batching/lazy.py) ----
    def commit(self, batch: Batch, start_s: float, end_s: float) -> StepOutcome:
        if batch.lazy_decode:
            out = self._commit_lazy(batch, start_s, end_s)
        else:
            out = BatchingPolicy.commit(self, batch, start_s, end_s)
        lazy = self.lazy
        if lazy is not None:                       # track the running decoders the step left untracked
            members = self.running if lazy.num_tracked == 0 else batch.requests
            for req in members:
                if (req.lazy_id < 0 and req.status == RequestStatus.RUNNING and req.num_uncomputed_tokens == 1
                        and req.last_token_s is not None):     # a prompt's last token is not a decode yet
                    lazy.track(req)
                    del self.untracked[req.seat]
        return out

    def _commit_lazy(self, batch: Batch, start_s: float, end_s: float) -> StepOutcome:
        """Commit a step whose tracked decoders stayed lazy (`_schedule_around_lazy`): they advance one step as a
        one-step run (their blocks were reserved when scheduled); the listed requests commit as usual. Requests
        finishing in the step are released in running order, as the step-by-step path releases them (prefix
        caching's eviction order follows the order of frees)."""
        lazy = self.lazy
        out = self._commit_tokens(batch, start_s, end_s)
        counts = [1] * len(out.itl_gaps)
        for last_s, count in lazy.last_tokens():
            out.itl_gaps.append(end_s - last_s)
            counts.append(count)
        out.itl_counts = counts
        self.kv_used_tokens += batch.lazy_decode
        done = lazy.advance(1, 0, end_s)
        if done:
            out.finished = sorted(done + out.finished, key=lambda req: req.seat)
        for req in out.finished:
            lazy.sync(req, finishing=True)
            self._finish(req, end_s)
        return out

    def plan_run(self, now: float) -> DecodeRun | None:
        lazy, n = self.lazy, len(self.running)
        if lazy is None or not n or lazy.num_tracked != n or n > self.params.max_num_batched_tokens:
            return None
        if not self.params.chunked_prefill and (self.waiting or self.swapped) and self._next_step_admits():
            return None                            # the next step admits: step by step
        steps = lazy.steps_kv_allows(lazy.steps_to_finish(), n)
        if not steps or (self.params.chunked_prefill and self._next_step_admits()):
            return None                            # the next step preempts or admits: step by step
        # DecodeRun(num_decode, live, context_tokens, max_steps, used_tokens, num_running, num_waiting)
        return new_decode_run((n, n, self.kv_used_tokens + n, steps, self.kv_used_tokens - self.kv.shared_tokens, n,
                               len(self.waiting)))

    def _next_step_admits(self) -> bool:
        """Would the next step swap in or admit a request? Asked of the rules schedule() follows (_next_swap_in,
        _pick_next), with the budget and KV the next step leaves for admission. If not now, then not during a
        run either: a run only takes memory, and seats and the token budget stay as they are."""
        p = self.params
        if self.swapped:
            return self._next_swap_in() is not None
        if not p.chunked_prefill:              # admission comes before the running requests' tokens
            return self._pick_next(p.max_num_batched_tokens) is not None
        if not self.waiting:                   # nobody to admit (no need to reserve the decodes' blocks to see it)
            return False
        first = self.lazy.first_step_blocks()  # admission comes after the decodes took their tokens and blocks
        self.kv.reserve(first)
        try:
            return self._pick_next(p.max_num_batched_tokens - len(self.running)) is not None
        finally:
            self.kv.reserve(-first)

    def commit_run(self, run: DecodeRun, ends_s: list[float]) -> RunOutcome:
        lazy, n, k = self.lazy, run.num_decode, len(ends_s)
        # First tokens of the run: requests that decoded in the previous run share its end as their last
        # token time; requests tracked since then have their own.
        first_gaps = lazy.last_tokens()
        new_blocks = lazy.new_blocks(k)
        self.kv_used_tokens += n * k
        done = lazy.advance(k, sum(new_blocks), ends_s[-1])
        for req in done:
            lazy.sync(req, finishing=True)
            self._finish(req, ends_s[-1])
        return new_run_outcome((done, first_gaps, new_blocks))
