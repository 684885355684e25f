"""Run many scenarios on the local cores, with a live progress board.

Each scenario is deterministic from its config (its seed included), so where it runs cannot change its result:
the same list of configs gives the same results, in the same order, whatever the job count. Workers report
(scenario index, simulated seconds, requests done, requests total) over a queue, at most every PROGRESS_EVERY_S
of wall time; the parent turns those into rich progress rows on stderr (stdout stays for tables and CSV).
"""
from __future__ import annotations

import multiprocessing
import queue
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path

from simulator.cluster.parallel import usable_cores
from simulator.config import SimConfig

PROGRESS_EVERY_S = 0.25
Report = Callable[[int, float, int, int], None]   # (index, simulated seconds, requests done, requests total)
# What runs for each config, in a worker: task(config, progress) -> a picklable result. A module-level function,
# so that a process pool (or a Ray worker) can import it by name.
Task = Callable[[SimConfig, Callable | None], object]

_worker_queue = None


def default_jobs() -> int:
    """All local cores this process may run on (at least one): the count cluster workers use too."""
    return usable_cores()


def _init_worker(progress_queue) -> None:
    global _worker_queue
    _worker_queue = progress_queue


def _throttled(index: int, report: Report) -> Callable[[float, int, int], None]:
    """An engine progress callback that forwards at most every PROGRESS_EVERY_S (and the final call)."""
    last = [0.0]

    def progress(now_s: float, done: int, total: int) -> None:
        tick = time.monotonic()
        if tick - last[0] >= PROGRESS_EVERY_S or done == total:
            last[0] = tick
            report(index, now_s, done, total)
    return progress


def simulate_task(config: SimConfig, progress=None):
    """The default task: the whole SimResult."""
    from simulator.api import simulate
    return simulate(config, progress=progress)


def run_task(task: Task | None, config: SimConfig, progress=None, save_dir: Path | None = None):
    """Run one config through `task` (default: simulate) and save the result there when asked, so that
    writing large CSVs is spread over the workers too."""
    result = (task or simulate_task)(config, progress)
    if save_dir is not None:
        result.save(save_dir)
    return result


def _simulate_indexed(index: int, config: SimConfig, save_dir: Path | None = None, task: Task | None = None):
    """Process-pool entry point: run_task, streaming progress to the parent's queue when there is one."""
    progress = None if _worker_queue is None else _throttled(index, lambda *row: _worker_queue.put(row))
    return run_task(task, config, progress, save_dir)


class Board:
    """Live progress on stderr: one bar over scenarios, one row per scenario running now."""

    def __init__(self, title: str = "scenarios") -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                                 console=Console(stderr=True), transient=True)
        self.overall = self.progress.add_task(title, total=0, info="")
        self.rows: dict[int, object] = {}
        self.ended: set[int] = set()
        self.count = 0

    def __enter__(self) -> "Board":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def queued(self, labels: Sequence[str]) -> None:
        """More scenarios to run (a capacity search adds them round by round)."""
        self.count += len(labels)
        done = int(self.progress.tasks[0].completed)
        self.progress.update(self.overall, total=self.count, description=f"scenario {done} of {self.count}")

    def update(self, index: int, label: str, now_s: float, done: int, total: int) -> None:
        if index in self.ended:  # a late report from a scenario already counted as finished
            return
        if index not in self.rows:
            self.rows[index] = self.progress.add_task("", total=total, info="")
        self.progress.update(self.rows[index], completed=done, total=total,
                             description=f"  {label[:48]}", info=f"requests, t={now_s:9.1f} s simulated")

    def finished(self, index: int) -> None:
        self.ended.add(index)
        if index in self.rows:
            self.progress.remove_task(self.rows.pop(index))
        self.progress.advance(self.overall)
        done = int(self.progress.tasks[0].completed)
        self.progress.update(self.overall, description=f"scenario {done} of {self.count}")


class Runner:
    """Runs lists of configs, in a process pool when jobs > 1 (kept open across calls), else in-process."""

    def __init__(self, jobs: int | None = None, board: Board | None = None) -> None:
        self.jobs = jobs if jobs is not None else default_jobs()
        if self.jobs < 1:
            raise ValueError(f"--jobs must be at least 1, got {self.jobs}")
        self.board = board
        self._pool: ProcessPoolExecutor | None = None
        self._queue = None
        self._next_index = 0

    @property
    def workers(self) -> int:
        """Simulations that run at once."""
        return self.jobs

    def __enter__(self) -> "Runner":
        if self.jobs > 1:
            ctx = multiprocessing.get_context()
            self._queue = ctx.Queue() if self.board else None
            self._pool = ProcessPoolExecutor(self.jobs, mp_context=ctx, initializer=_init_worker,
                                             initargs=(self._queue,))
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def run(self, labels: Sequence[str], configs: Sequence[SimConfig],
            save_dirs: Sequence[Path | None] | None = None, task: Task | None = None) -> list:
        """`task` (default: simulate) of each config, in the order of `configs` (each also saved to its
        save_dirs entry, if given). The first failure cancels the rest and is raised."""
        indices = list(range(self._next_index, self._next_index + len(configs)))
        self._next_index += len(configs)
        names = dict(zip(indices, labels))
        jobs = list(zip(indices, configs, save_dirs or [None] * len(configs)))
        if self.board:
            self.board.queued(labels)
        if self._pool is None:
            return [self._run_here(i, names[i], cfg, out, task) for i, cfg, out in jobs]
        futures = {self._pool.submit(_simulate_indexed, i, cfg, out, task): i for i, cfg, out in jobs}
        results = self._collect(futures, names)
        return [results[i] for i in indices]

    def _run_here(self, index: int, label: str, config: SimConfig, save_dir: Path | None, task: Task | None):
        progress = None
        if self.board:
            progress = _throttled(index, lambda i, now, done, total: self.board.update(i, label, now, done, total))
        result = run_task(task, config, progress, save_dir)
        if self.board:
            self.board.finished(index)
        return result

    def _collect(self, futures: dict[Future, int], names: dict[int, str]) -> dict[int, object]:
        results: dict[int, object] = {}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
            self._drain(names)
            for future in done:
                if future.exception() is not None:
                    for other in pending:
                        other.cancel()
                    raise future.exception()
                results[futures[future]] = future.result()
                if self.board:
                    self.board.finished(futures[future])
        return results

    def _drain(self, names: dict[int, str]) -> None:
        """Move queued worker progress onto the board (rows of finished scenarios are dropped)."""
        while self._queue is not None:
            try:
                index, now_s, done, total = self._queue.get_nowait()
            except queue.Empty:
                return
            if index in names and self.board:
                self.board.update(index, names[index], now_s, done, total)
