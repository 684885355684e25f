"""When requests reach the server: open-loop arrivals at their times, closed-loop ones after a finish.

A request with `spec.after` >= 0 is the next turn of a conversation (or an agent's next call): it arrives
`think_s` seconds after request `after` finishes (or is rejected), and not before its own `arrival_s`. With
`max_concurrency` N, at most N requests are in flight (arrived and not finished), as `vllm bench serve
--max-concurrency` limits its clients: a request due while N are in flight arrives when one of them finishes.
Plain Python (the engine drives it), so it is testable without SimPy.
"""
from __future__ import annotations

import heapq
from bisect import bisect_right
from collections import defaultdict
from operator import attrgetter
from typing import Iterable, Iterator

from workloads.spec import RequestSpec

INF = float("inf")


class ArrivalQueue:
    """The requests that have not arrived yet; see the module docstring."""

    def __init__(self, specs: list[RequestSpec], max_concurrency: int | None = None) -> None:
        # Open-loop requests known up front, and those fed later in order, wait in a list sorted by (time, request
        # id) and read by an index (no heap pops: a million pops cost a second); released turns and requests fed
        # out of order wait in a heap. Keys (time, request id) are unique, so taking the smaller head of the two
        # gives the order one heap of them all would.
        self.due = [s for s in specs if s.after < 0]
        self.due.sort(key=attrgetter("request_id"))      # two stable sorts: by time, then request id
        self.due.sort(key=attrgetter("arrival_s"))       # (each linear on a workload already in order)
        self.due_s = [s.arrival_s for s in self.due]
        self.next_due = 0
        self.heap: list[tuple[float, int, RequestSpec]] = []
        self.children: dict[int, list[RequestSpec]] = defaultdict(list)
        if len(self.due) < len(specs):               # closed-loop requests: each waits for an earlier one
            ids = {s.request_id for s in specs}
            for s in specs:
                if s.after < 0:
                    continue
                if s.after not in ids or s.after >= s.request_id:
                    raise ValueError(f"request {s.request_id} follows request {s.after}, which is not an earlier "
                                     "request of the workload")
                self.children[s.after].append(s)
        self.cap = max_concurrency
        self.in_flight = 0                 # counted under a cap only (nothing else reads it)
        self.gated = self.cap is not None and self.in_flight >= self.cap   # none arrives before one finishes
        self.open_s = 0.0                  # when the last slot opened after all were taken
        # Whether a finish can change when requests arrive (a cap, or turns that follow others): if not, the
        # engine need not report finishes, and arrivals are read straight off the sorted list.
        self.follows_finishes = self.cap is not None or bool(self.children)
        self._plain = not self.follows_finishes and (not self.due_s or self.due_s[0] >= self.open_s)

    def add(self, spec: RequestSpec) -> None:
        """One more open-loop request (a cluster's router feeds replicas one request at a time)."""
        if spec.after >= 0:
            raise ValueError(f"request {spec.request_id}: a request that follows another cannot be fed on its own")
        if spec.arrival_s < self.open_s:
            self._plain = False                      # arrives at open_s, not at its own time (see pop_until)
        due = self.due
        if not due or (spec.arrival_s, spec.request_id) > (due[-1].arrival_s, due[-1].request_id):
            due.append(spec)                         # in arrival order, as a router feeds them: the sorted list
            self.due_s.append(spec.arrival_s)
        else:
            heapq.heappush(self.heap, (spec.arrival_s, spec.request_id, spec))

    def _head(self) -> tuple[float, int, RequestSpec] | None:
        """The earliest waiting request's (time, request id, spec), or None."""
        i = self.next_due
        due = (self.due_s[i], self.due[i].request_id, self.due[i]) if i < len(self.due) else None
        if self.heap and (due is None or self.heap[0] < due):
            return self.heap[0]
        return due

    def next_s(self) -> float:
        """When the next request arrives, if no request finishes first (INF: none can)."""
        if self._plain and not self.heap:
            return self.due_s[self.next_due] if self.next_due < len(self.due_s) else INF
        head = None if self.gated else self._head()
        return INF if head is None else max(head[0], self.open_s)

    @property
    def ended(self) -> bool:
        """No request can arrive before one in flight finishes."""
        return self.gated or (self.next_due >= len(self.due) and not self.heap)

    def pop_until(self, until_s: float) -> Iterable[tuple[RequestSpec, float]]:
        """(spec, arrival time) of every request that arrives by `until_s`, in arrival order; requests released
        meanwhile (by `finished`) are included."""
        if not self._plain or self.heap:
            return self._pop_each(until_s)
        i, due_s = self.next_due, self.due_s                 # open loop, nothing fed: a slice of the sorted list
        if i >= len(due_s) or due_s[i] > until_s:
            return ()
        j = i + 1                                            # most often one arrives: no search for it
        if j < len(due_s) and due_s[j] <= until_s:
            j = bisect_right(due_s, until_s, j)
        self.next_due = j
        return zip(self.due[i:j], due_s[i:j])

    def _pop_each(self, until_s: float) -> Iterator[tuple[RequestSpec, float]]:
        """pop_until one request at a time, seeing releases and the cap as they happen."""
        cap = self.cap
        while not self.gated and (head := self._head()) is not None and max(head[0], self.open_s) <= until_s:
            if self.heap and head is self.heap[0]:
                heapq.heappop(self.heap)
            else:
                self.next_due += 1
            if cap is not None:
                self.in_flight += 1
                self.gated = self.in_flight >= cap
            yield head[2], max(head[0], self.open_s)

    def finished(self, request_id: int, time_s: float) -> bool:
        """Request `request_id` finished (or was rejected) at `time_s`: release its slot and its next turns. True
        if that may bring the next arrival forward (a full server's slot opened, or turns were released)."""
        if self.cap is not None:
            self.in_flight -= 1
        opened = self.gated
        if opened:
            self.open_s = time_s
            self.gated = self.in_flight >= self.cap
        released = self.children.pop(request_id, ()) if self.children else ()
        for spec in released:
            heapq.heappush(self.heap, (max(spec.arrival_s, time_s + spec.think_s), spec.request_id, spec))
        return opened or bool(released)
