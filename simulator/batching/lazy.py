"""The decode-run fast path: advance a run of identical decode steps at once, with Python work per run that
does not grow with the batch.

Contract (the whole of the fast path; tests/test_fast_path.py checks that it changes no result, bit for bit):
- Engine (engine.py `_advance`, `_run`): between two arrivals it asks `policy.plan_run(t)`. Given a DecodeRun it
  prices it (`cost_model.decode_run_costs`, or step_cost step by step when the cost model has none), cuts it
  after the first step that ends at or after the next arrival, and calls `policy.commit_run(run, ends)` and
  `recorder.run(...)`. Otherwise it takes one step through `schedule()` and `commit()`.
- Policy: `plan_run(now)` returns a run only when schedule() would give exactly those decode steps one after
  another if nothing arrived: the same running set, one token each, no admission, swap-in or preemption, no
  finish before its last step. The default is None (every step through schedule()). ContinuousBatching asks
  its own rules (`_pick_next`, `_next_swap_in`) whether the next step admits, so a policy that overrides a rule
  keeps the fast path exact, provided the rule only reads state and a "no" stays "no" while free KV memory only
  shrinks. `commit_run(run, ends)` leaves every request and counter as len(ends) commits would.
- Mixed steps (chunked prefill, vLLM V1): schedule() keeps the tracked decoders lazy in a step that also
  computes prompt chunks or admits requests. The Batch then lists only the untracked running requests and the
  admissions, and carries the decoders as an aggregate (`lazy_decode` sequences attending `lazy_context`
  tokens: Batch.shape_fields gives the step-by-step StepShape); their blocks of the step are reserved at
  schedule time, and commit() advances them as a one-step run, releasing the requests that finish in running
  order (prefix caching's LRU order follows the order of frees). This is taken only where the step-by-step
  path would give the same step (every tracked decoder sits before every untracked request, the budget covers
  the decoders, no preemption, at most one untracked request grows), else every decoder is synced and the
  step goes step by step. Python work per such step does not grow with the number of decoders.
- KV manager: `growth_block_tokens` says how running requests grow (kv_cache/base.py); a manager that does not
  say (None, the default) gets no decode runs from continuous batching, so it is slower but never wrong.
- Cost model: `decode_run_costs`, if present, equals step_cost step by step to the last bit.

How continuous batching's runs are advanced (`LazyDecoders`):
Between two events (an arrival, a finish, a KV block the free pool cannot serve) every step of continuous
batching decodes the same running set, one token each. `LazyDecoders` advances such a run without touching the
requests: each tracked request's counters lag by the decode steps run since it was last synced
(`Request.lazy_step`), and the run keeps only aggregates up to date (decode steps so far, tokens held, the
blocks the run crosses into). A request is synced (its counters brought level, its reserved KV blocks named)
when it finishes or when the step-by-step path needs it (a step that preempts or cannot be scheduled around
the lazy decoders); a mixed step advances the tracked requests by one step without syncing them.

Finishes come off a heap keyed by the decode step at which each request samples its last token. Block
crossings are counted by phase: a request holding t tokens needs a new block in the step after which it holds
t + 1 where t % block_size == 0, so requests are bucketed by the decode step (mod block_size) at which that
happens, and a step's crossings are one bucket's size.
"""
from __future__ import annotations

import heapq
from functools import partial
from typing import NamedTuple

from simulator.kv_cache.base import KVCacheManager
from simulator.request import Request


class DecodeRun(NamedTuple):
    """A run of decode steps the engine may advance at once, as planned before its first step.

    Step j (0-based) decodes `num_decode` sequences attending `context_tokens + j * live` tokens; `live` of
    them are requests (the rest are run-to-completion padding), each computing and sampling one token. The
    engine may run at most `max_steps` steps: the last of them may finish requests, and a longer run would
    need memory the pool cannot give, or would change the batch.
    """

    num_decode: int
    live: int
    context_tokens: int
    max_steps: int
    used_tokens: int           # KV tokens stored before the run
    num_running: int
    num_waiting: int


class RunOutcome(NamedTuple):
    """What a committed run produced: finished requests (at its last step), the (last token time, requests)
    pairs behind the gaps of its first tokens (each later step adds a gap per live request), and the KV blocks
    each step allocated."""

    finished: list[Request]
    first_gaps: list[tuple[float, int]]
    new_blocks: list[int]


# DecodeRun(*fields) and RunOutcome(*fields) without the named tuples' Python-level __new__ (one of each per run)
new_decode_run = partial(tuple.__new__, DecodeRun)
new_run_outcome = partial(tuple.__new__, RunOutcome)


class LazyDecoders:
    """Running requests in decode, advanced together by runs; see the module docstring."""

    def __init__(self, kv: KVCacheManager) -> None:
        self.kv = kv
        self.block_tokens = kv.growth_block_tokens
        self.step = 0                      # decode steps run so far (all tracked requests took part in each)
        self.last_end_s = 0.0              # end of the latest run step: the last token time of lagging requests
        self.fresh: list[Request] = []     # tracked but not yet in a run: their own last_token_s counts
        self.heap: list[tuple[int, int, int, Request]] = []   # (finish step, seat, lazy_id, request)
        self.phases = [0] * max(1, self.block_tokens)
        self.num_tracked = 0
        self.tokens = 0                    # computed tokens of the tracked requests, lag included
        self.max_seat = -1                 # no tracked request sits later than this (an upper bound)
        self._next_id = 0

    def track(self, req: Request) -> None:
        """Start advancing `req` lazily (it is running, synced, and decodes one token per step)."""
        req.lazy_step = self.step
        req.lazy_id = self._next_id
        self._next_id += 1
        heapq.heappush(self.heap, (self.step + req.output_tokens - req.num_output_tokens, req.seat, req.lazy_id,
                                   req))
        if self.block_tokens:
            self.phases[(self.step - req.num_computed_tokens) % self.block_tokens] += 1
        self.fresh.append(req)
        self.num_tracked += 1
        self.tokens += req.num_computed_tokens
        self.max_seat = max(self.max_seat, req.seat)

    def sync(self, req: Request, *, finishing: bool = False) -> None:
        """Bring `req`'s counters and KV blocks level and stop tracking it (a `finishing` request is freed next,
        so the blocks reserved for its growth go back to the pool unnamed)."""
        if req.lazy_id < 0:
            return
        lag = self.step - req.lazy_step
        if self.block_tokens:
            self.phases[(req.lazy_step - req.num_computed_tokens) % self.block_tokens] -= 1
        if lag:
            req.num_computed_tokens += lag
            req.num_output_tokens += lag
            req.last_token_s = self.last_end_s
            self.kv.settle(req, req.num_computed_tokens, keep=not finishing)
        req.lazy_id = -1
        self.num_tracked -= 1
        self.tokens -= req.num_computed_tokens
        if not self.num_tracked:
            self.max_seat = -1

    def sync_all(self, running: list[Request]) -> None:
        """Sync every request (before the step-by-step path looks at the running set)."""
        for req in running:
            self.sync(req)
        assert self.num_tracked == 0 and self.tokens == 0
        self.heap.clear()
        self.fresh.clear()
        self.max_seat = -1

    def last_tokens(self) -> list[tuple[float, int]]:
        """(last token time, requests) over every tracked request: fresh ones have their own, the others that of
        the latest run step. The next step's inter-token gaps run from these."""
        out = [(req.last_token_s, 1) for req in self.fresh]
        if self.num_tracked > len(self.fresh):
            out.append((self.last_end_s, self.num_tracked - len(self.fresh)))
        return out

    def steps_to_finish(self) -> int:
        """Decode steps until the first tracked request samples its last token."""
        heap = self.heap
        while heap[0][2] != heap[0][3].lazy_id:
            heapq.heappop(heap)                       # stale: that request was synced since
        return heap[0][0] - self.step

    def steps_kv_allows(self, limit: int, num_tracked: int) -> int:
        """The longest run (at most `limit` steps) whose block crossings the free pool can serve."""
        if not self.block_tokens:
            return limit
        free = self.kv.free_growth_blocks()
        if free >= num_tracked * -(-limit // self.block_tokens):
            return limit                             # each request crosses at most once per block_size steps
        b, phases, p = self.block_tokens, self.phases, self.step
        for j in range(limit):
            free -= phases[(p + j) % b]
            if free < 0:
                return j
        return limit

    def new_blocks(self, num_steps: int) -> list[int]:
        """KV blocks each of the next `num_steps` decode steps allocates."""
        if not self.block_tokens:
            return [0] * num_steps
        b, phases, p = self.block_tokens, self.phases, self.step
        return [phases[(p + j) % b] for j in range(num_steps)]

    def first_step_blocks(self) -> int:
        return self.phases[self.step % self.block_tokens] if self.block_tokens else 0

    def advance(self, num_steps: int, new_blocks: int, end_s: float) -> list[Request]:
        """Account a run of `num_steps` steps ending at `end_s`; return the requests it finished, in seat order
        (heap entries of one finish step come off by seat)."""
        self.step += num_steps
        self.tokens += self.num_tracked * num_steps
        self.last_end_s = end_s
        self.kv.reserve(new_blocks)
        self.fresh.clear()
        done = []
        heap = self.heap
        while heap and heap[0][0] <= self.step:
            _, _, lazy_id, req = heapq.heappop(heap)
            if lazy_id == req.lazy_id:
                assert self.step == req.lazy_step + req.output_tokens - req.num_output_tokens, "run overshot a finish"
                done.append(req)
        return done
