"""Dynamic batching (Triton-style): a batch closes when `max_batch_size` requests wait or the oldest has waited
`max_wait_s`; it then runs to completion like a static batch, without waiting for a full batch."""
from __future__ import annotations

from simulator.batching.static import RunToCompletionPolicy


class DynamicBatching(RunToCompletionPolicy):
    def _batch_limit(self) -> int:
        return self.params.max_batch_size

    def _oldest_deadline(self) -> float:
        return self.waiting[0].arrival_s + self.params.max_wait_s

    def _should_close(self, now: float) -> bool:
        return (len(self.waiting) >= self.params.max_batch_size or self.workload_ended
                or now >= self._oldest_deadline())

    def next_deadline(self, now: float) -> float | None:
        if self.batch or not self.waiting:
            return None
        return self._oldest_deadline()
