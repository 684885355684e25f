"""Where many simulations run: this machine's cores, or a Ray cluster.

Both executors take the same call, `run(labels, configs, save_dirs=None, task=None)`, and return the task's
result for each config in order. A simulation is deterministic from its config (its seed included), so where
it runs cannot change its result: the Ray executor returns exactly what the local one does.

- `local` (default): simulator.runs.parallel.Runner, a process pool of `jobs` workers with a live board.
- `ray`: each simulation is one Ray task (`pip install 'servesim[ray]'`). Without an address it starts a
  private Ray instance on this machine; with `--address HOST:PORT` (or `ray://HOST:PORT`, or `auto`) it joins
  a running cluster, whose nodes must have the same servesim installed. Progress: the board counts finished
  simulations as they come back.
"""
from __future__ import annotations

import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simulator.config import SimConfig
from simulator.runs.parallel import Runner, Task, run_task

EXECUTORS = ("local", "ray")
CONNECT_TIMEOUT_S = 5.0


class ExecutorError(ValueError):
    """An executor that cannot start (unknown kind, Ray missing, cluster unreachable); one line."""


def make_executor(kind: str = "local", *, jobs: int | None = None, board=None, address: str | None = None):
    """The executor named `kind`, as a context manager with run(labels, configs, save_dirs, task)."""
    if kind == "local":
        if address:
            raise ExecutorError("--address is for --executor ray; the local executor uses this machine's cores")
        return Runner(jobs, board)
    if kind == "ray":
        return RayExecutor(address=address, board=board, num_cpus=jobs)
    raise ExecutorError(f"unknown executor '{kind}'; choose one of: {', '.join(EXECUTORS)}")


def _ray_task(task: Task | None, config: SimConfig) -> Any:
    """The body of every Ray task (module level, so workers import it by name)."""
    return run_task(task, config)


def check_reachable(address: str) -> None:
    """A quick TCP check of HOST:PORT (ray.init would retry for minutes before failing)."""
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ExecutorError(f"--address '{address}': expected HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ExecutorError(f"cannot reach the Ray cluster at {address}: {reason}") from None


class RayExecutor:
    """Runs each simulation as a Ray task. Joins Ray if it is already initialized in this process (and then
    leaves it running), else starts or connects as `address` says, and shuts down on exit."""

    def __init__(self, address: str | None = None, board=None, num_cpus: int | None = None) -> None:
        self.address, self.board, self.num_cpus = address, board, num_cpus
        self._owns = False
        self._next_index = 0
        self.workers = 1

    def _count_workers(self) -> None:
        """Simulations that run at once: the cluster's CPUs."""
        self.workers = max(1, int(self._ray.cluster_resources().get("CPU", 1)))

    def __enter__(self) -> "RayExecutor":
        try:
            import ray
        except ModuleNotFoundError:
            raise ExecutorError("--executor ray needs Ray, which is not installed: "
                                "pip install 'servesim[ray]'") from None
        self._ray = ray
        if ray.is_initialized():
            self._count_workers()
            return self
        if self.address and self.address != "auto":
            check_reachable(self.address)
        try:
            ray.init(address=self.address, num_cpus=None if self.address else self.num_cpus,
                     include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"at {self.address}" if self.address else "on this machine"
            raise ExecutorError(f"cannot start or reach Ray {where}: {' '.join(str(exc).split())}") from None
        self._owns = True
        self._count_workers()
        return self

    def __exit__(self, *exc) -> None:
        if self._owns:
            self._ray.shutdown()

    def run(self, labels: Sequence[str], configs: Sequence[SimConfig],
            save_dirs: Sequence[Path | None] | None = None, task: Task | None = None) -> list:
        """Results in the order of `configs`; saved here (the driver) to save_dirs when given."""
        ray = self._ray
        remote = ray.remote(_ray_task)
        indices = list(range(self._next_index, self._next_index + len(configs)))
        self._next_index += len(configs)
        if self.board:
            self.board.queued(labels)
        refs = [remote.remote(task, config) for config in configs]
        index_of = {ref: i for ref, i in zip(refs, indices)}
        self._wait(refs, index_of)
        results = ray.get(refs)
        for result, out in zip(results, save_dirs or []):
            if out is not None:
                result.save(out)
        return results

    def _wait(self, refs: list, index_of: dict) -> None:
        """Block until every task is done, ticking the board as each one comes back; a failed task raises."""
        pending = list(refs)
        while pending:
            done, pending = self._ray.wait(pending, num_returns=1, timeout=0.25)
            for ref in done:
                self._ray.get(ref)                      # raises the task's exception, if any
                if self.board:
                    self.board.finished(index_of[ref])
