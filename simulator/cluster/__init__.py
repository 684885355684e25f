"""Scale-out: replicas behind a router in one simulation (sim.py), routers (router.py), replica pools from a
file (pools.py), and the merged results with load balance (result.py)."""
from __future__ import annotations

from simulator.cluster.router import ROUTERS, make_router


def simulate_cluster(cfg, specs):
    """Simulate the cluster `cfg` describes (replicas, router, pools) on `specs`; return a ClusterResult."""
    from simulator.cluster.result import merge_runs
    from simulator.cluster.sim import run_replicas
    return merge_runs(cfg.to_dict(), run_replicas(cfg, specs))


__all__ = ["ROUTERS", "make_router", "simulate_cluster"]
