"""The Python API that the CLI and notebooks call: simulate(config) -> SimResult (compare, which runs many
scenarios, is simulator.runs.sweep.compare_many, exported as simulator.compare)."""
from __future__ import annotations

from simulator.assembly import build_parts, resolve_hardware, workload
from simulator.config import SimConfig
from simulator.engine import Engine, ProgressFn, StopFn
from simulator.metrics import SimResult
from workloads.spec import RequestSpec

__all__ = ["build_parts", "resolve_hardware", "simulate", "workload"]


def check_requests(requests) -> list[RequestSpec]:
    """`requests` as a list, each a RequestSpec (whose own checks ran on construction) with a distinct id."""
    if isinstance(requests, (str, bytes)) or not hasattr(requests, "__iter__"):
        raise TypeError(f"simulate: requests must be a list of RequestSpec, got {type(requests).__name__}")
    specs = list(requests)
    seen: set[int] = set()
    for i, spec in enumerate(specs):
        if not isinstance(spec, RequestSpec):
            raise TypeError(f"simulate: requests[{i}] must be a RequestSpec, got {type(spec).__name__} "
                            f"{repr(spec)[:60]}")
        if spec.request_id in seen:
            raise ValueError(f"simulate: requests[{i}] repeats request_id {spec.request_id}; ids must be distinct")
        seen.add(spec.request_id)
    return specs


def simulate(config: SimConfig | None = None, *, requests: list[RequestSpec] | None = None,
             progress: ProgressFn | None = None, stop: StopFn | None = None, **overrides) -> SimResult:
    """Run one scenario. `overrides` replace config fields (simulate(rate=10)); `requests` bypasses the workload;
    `stop(engine, now)` may end the run early (then result.meta["stopped_early"] is True)."""
    if config is not None and not isinstance(config, SimConfig):
        raise TypeError(f"simulate: config must be a SimConfig or None, got {type(config).__name__} "
                        f"{repr(config)[:60]}; set fields by keyword instead, e.g. simulate(gpu='h100-sxm')")
    cfg = config or SimConfig()
    if overrides:
        unknown = sorted(set(overrides) - set(cfg.to_dict()))
        if unknown:
            raise TypeError(f"simulate: unknown option {unknown[0]!r}; options are SimConfig's fields")
        cfg = cfg.replace(**overrides)
    specs = check_requests(requests) if requests is not None else workload(cfg)
    if cfg.is_cluster:
        from simulator.cluster import simulate_cluster
        return simulate_cluster(cfg, specs, progress)
    return Engine(build_parts(cfg), specs, progress, stop=stop).run()
