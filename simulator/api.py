"""The Python API that the CLI and notebooks call: simulate(config) -> SimResult (compare, which runs many
scenarios, is simulator.runs.sweep.compare_many, exported as simulator.compare)."""
from __future__ import annotations

from simulator.assembly import build_parts, resolve_hardware, workload
from simulator.config import SimConfig
from simulator.engine import Engine, ProgressFn, StopFn
from simulator.metrics import SimResult
from workloads.spec import RequestSpec

__all__ = ["build_parts", "resolve_hardware", "simulate", "workload"]


def simulate(config: SimConfig | None = None, *, requests: list[RequestSpec] | None = None,
             progress: ProgressFn | None = None, stop: StopFn | None = None, **overrides) -> SimResult:
    """Run one scenario. `overrides` replace config fields (simulate(rate=10)); `requests` bypasses the workload;
    `stop(engine, now)` may end the run early (then result.meta["stopped_early"] is True)."""
    cfg = config or SimConfig()
    if overrides:
        cfg = cfg.replace(**overrides)
    specs = requests if requests is not None else workload(cfg)
    if cfg.is_cluster:
        from simulator.cluster import simulate_cluster
        return simulate_cluster(cfg, specs)
    return Engine(build_parts(cfg), specs, progress, stop=stop).run()
