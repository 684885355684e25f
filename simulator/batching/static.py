"""Request-level batching (FasterTransformer-style): a batch is formed once and run until its longest member
finishes. Finished members keep their slot and are still computed as padding until the batch ends; KV is
released only then.

`StaticBatching` waits for `batch_size` waiting requests (or the end of the workload) before it starts a batch.
"""
from __future__ import annotations

from simulator.batch import Batch
from simulator.batching.base import BatchingPolicy
from simulator.batching.lazy import DecodeRun, RunOutcome
from simulator.request import Request, RequestStatus


class RunToCompletionPolicy(BatchingPolicy):
    """Shared run-to-completion mechanics; subclasses decide when a batch closes and how big it is."""

    def __init__(self, kv, params) -> None:
        super().__init__(kv, params)
        self.batch: list[Request] = []

    def _batch_limit(self) -> int:
        raise NotImplementedError

    def _should_close(self, now: float) -> bool:
        raise NotImplementedError

    def schedule(self, now: float) -> Batch | None:
        if self.batch and all(r.is_finished for r in self.batch):
            self._end_batch()
        if not self.batch:
            if not self.waiting or not self._should_close(now):
                return None
            self._form_batch()
        live = [r for r in self.batch if not r.is_finished]
        padding = [r.max_tokens for r in self.batch if r.is_finished]
        return Batch(live, [r.num_uncomputed_tokens for r in live], padding_context_tokens=padding)

    def _form_batch(self) -> None:
        """Take waiting requests FCFS while they fit; each reserves KV for its whole sequence up front."""
        while self.waiting and len(self.batch) < self._batch_limit():
            req = self.waiting[0]
            if not self.kv.can_allocate(req, req.max_tokens):
                break
            self.waiting.popleft()
            self.kv.allocate(req, req.max_tokens)
            req.status = RequestStatus.RUNNING
            self.batch.append(req)
            self._add_running(req)
        assert self.batch, "a request that fits an empty KV cache could not be placed"

    def _end_batch(self) -> None:
        for req in self.batch:
            self._free(req)
        self.batch = []

    def _on_finish(self, req: Request) -> None:
        self.running.remove(req)          # its slot and KV stay with the batch until the batch ends

    def plan_run(self, now: float) -> DecodeRun | None:
        """Once a batch has prefilled, its live members decode together until the first of them finishes;
        finished members stay in the step as padding of constant context."""
        live = self.running                        # the batch's unfinished members, in batch order
        if not self.batch or not live or any(r.num_uncomputed_tokens != 1 or r.last_token_s is None for r in live):
            return None
        padding = [r.max_tokens + 1 for r in self.batch if r.is_finished]
        context = sum(r.num_computed_tokens for r in live) + len(live) + sum(padding)
        steps = min(r.output_tokens - r.num_output_tokens for r in live)
        return DecodeRun(num_decode=len(self.batch), live=len(live), context_tokens=context, max_steps=steps,
                         used_tokens=self.kv_used_tokens, num_running=len(live), num_waiting=len(self.waiting))

    def commit_run(self, run: DecodeRun, ends_s: list[float]) -> RunOutcome:
        k, end = len(ends_s), ends_s[-1]
        first_gaps = [(req.last_token_s, 1) for req in self.running]
        done = []
        for req in list(self.running):
            req.num_computed_tokens += k
            req.num_output_tokens += k
            req.last_token_s = end
            if req.num_output_tokens == req.output_tokens:
                req.status = RequestStatus.FINISHED
                req.finish_s = end
                done.append(req)
                self._on_finish(req)
        self.kv_used_tokens += run.live * k
        return RunOutcome(done, first_gaps, [0] * k)


class StaticBatching(RunToCompletionPolicy):
    def _batch_limit(self) -> int:
        return self.params.batch_size

    def _should_close(self, now: float) -> bool:
        return len(self.waiting) >= self.params.batch_size or self.workload_ended
