"""Stop a capacity probe as soon as its SLO verdict is certain to be "missed".

A probe asks one thing of a run: does at least `attainment` of all requests meet every SLO? Some misses are
known long before the run ends, and no later step can undo them:
- a rejected request;
- a request with no first token yet, waiting longer than the TTFT SLO (its TTFT can only grow);
- a request with a first token whose TTFT already exceeded the SLO;
- a request still decoding whose TPOT, if it finished right now, would already exceed the TPOT SLO
  ((now - first token) / (output tokens - 1): it finishes later than now, so its TPOT is larger);
- a finished request that missed either SLO.
Once the certain misses leave fewer than `attainment` of the requests able to meet the SLOs, the verdict is
"missed" whatever happens next, so the run stops there. A saturated configuration (its queue growing
without bound) piles up TTFT misses at once, so it stops after a small share of the workload. The verdict
of a stopped probe is the one the full run would give: stopping never changes a plan.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from simulator.request import Request, RequestStatus


@dataclass
class SloVerdict:
    """A StopFn (see simulator.engine): True once the run certainly misses `attainment`.

    It looks at the requests that have arrived (the engine's `requests` list; a run that does not keep them,
    summary-only or huge, is never stopped) every `every` arrivals, keeping only the undecided ones.
    """

    slo_ttft_s: float | None
    slo_tpot_s: float | None
    attainment: float
    every: int = 0                       # arrivals between checks; 0: 1/64 of the workload, at least 8
    misses: int = 0
    checks: int = 0
    _open: list[Request] = field(default_factory=list)
    _seen: int = 0
    _next_check: int = 0

    def __call__(self, engine, now: float) -> bool:
        total = len(engine.specs)
        arrived = len(engine.requests)
        if arrived < self._next_check or total == 0:
            return False
        self._next_check = arrived + (self.every or max(8, total // 64))
        self.checks += 1
        self._open.extend(engine.requests[self._seen:arrived])
        self._seen = arrived
        self._open = [req for req in self._open if not self._settle(req, now)]
        return (total - self.misses) / total < self.attainment

    def _settle(self, req: Request, now: float) -> bool:
        """Count a request that is a certain miss; True once its outcome is decided (miss or finished)."""
        if req.status == RequestStatus.REJECTED or self._certain_miss(req, now):
            self.misses += 1
            return True
        return req.status == RequestStatus.FINISHED

    def _certain_miss(self, req: Request, now: float) -> bool:
        ttft, tpot = self.slo_ttft_s, self.slo_tpot_s
        first = req.first_token_s
        if ttft is not None and (now - req.arrival_s > ttft if first is None else first - req.arrival_s > ttft):
            return True
        if tpot is None or first is None or req.output_tokens <= 1:
            return False
        end = req.finish_s if req.status == RequestStatus.FINISHED else now
        return (end - first) / (req.output_tokens - 1) > tpot

