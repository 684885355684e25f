"""Independent replicas simulated in worker processes at once.

Behind a router that reads no replica state (round-robin, random) every replica's requests are known up front,
so the replicas are independent simulations: they may run in any order, in any process, with the same results
to the last bit (each is deterministic given its engine parts and its requests). `run_all` runs them in
`workers` forked processes: a worker inherits the parts and the requests (nothing is pickled on the way in, so
a million requests cost no transfer) and sends back each finished replica (its summary-only result, or its
rows). Where the platform cannot fork, or in a process that is itself a worker of a pool, replicas run here,
one after another.
"""
from __future__ import annotations

import multiprocessing
import os
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")
AUTO_MIN_REQUESTS = 2000        # below this, starting processes costs about what it saves (auto stays serial)
_JOB: tuple[Callable[[int], object], int] | None = None       # (task, how many) inherited by forked workers


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the platform tells it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:                       # not on Linux
        return max(1, os.cpu_count() or 1)


def can_fork() -> bool:
    """Whether workers can be forked here: a platform with fork, and not already a pool's worker process."""
    return "fork" in multiprocessing.get_all_start_methods() and multiprocessing.parent_process() is None


def worker_count(setting: int | None, num_replicas: int, num_requests: int) -> int:
    """Processes to simulate `num_replicas` independent replicas in: `setting` if given (at most one per
    replica), else (auto) every usable core when the run has at least AUTO_MIN_REQUESTS requests; 1 (this
    process) where workers cannot be forked."""
    if not can_fork():
        return 1
    if setting is None:
        setting = usable_cores() if num_requests >= AUTO_MIN_REQUESTS else 1
    return max(1, min(setting, num_replicas))


def run_all(task: Callable[[int], T], sizes: Sequence[int], workers: int,
            done: Callable[[int, T], None] | None = None) -> list[T]:
    """[task(i) for i in range(len(sizes))], computed in `workers` forked processes (here when 1), the largest
    `sizes` first so that the workers finish together; `done(i, result)` is called here as each one ends."""
    order = sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))
    results: dict[int, T] = {}
    if workers <= 1:
        for i in range(len(sizes)):
            results[i] = task(i)
            if done is not None:
                done(i, results[i])
        return [results[i] for i in range(len(sizes))]
    global _JOB
    _JOB = (task, len(sizes))
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for i, result in pool.imap_unordered(_call, order, chunksize=1):
                results[i] = result
                if done is not None:
                    done(i, result)
    finally:
        _JOB = None
    return [results[i] for i in range(len(sizes))]


def _call(i: int) -> tuple[int, object]:
    """In a worker: run task i of the job inherited from the parent."""
    assert _JOB is not None, "a cluster worker started without its job (not forked from run_all)"
    return i, _JOB[0](i)
