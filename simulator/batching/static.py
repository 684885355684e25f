"""Request-level batching (FasterTransformer-style): a batch is formed once and run until its longest member
finishes. Finished members keep their slot and are still computed as padding until the batch ends; KV is
released only then.

`StaticBatching` waits for `batch_size` waiting requests (or the end of the workload) before it starts a batch.
"""
from __future__ import annotations

from simulator.batch import Batch
from simulator.batching.base import BatchingPolicy
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
            self.running.append(req)
        assert self.batch, "a request that fits an empty KV cache could not be placed"

    def _end_batch(self) -> None:
        for req in self.batch:
            self._free(req)
        self.batch = []

    def _on_finish(self, req: Request) -> None:
        self.running.remove(req)          # its slot and KV stay with the batch until the batch ends

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)


class StaticBatching(RunToCompletionPolicy):
    def _batch_limit(self) -> int:
        return self.params.batch_size

    def _should_close(self, now: float) -> bool:
        return len(self.waiting) >= self.params.batch_size or self.workload_ended
