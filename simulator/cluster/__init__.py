"""Scale-out: replicas behind a router in one simulation (sim.py), routers (router.py), replica pools from a
file (pools.py), and the merged results with load balance (result.py)."""
from __future__ import annotations

from dataclasses import replace

from simulator.cluster.router import ROUTERS, make_router


def simulate_cluster(cfg, specs, progress=None):
    """Simulate the cluster `cfg` describes (replicas, router, pools, prefill/decode pools) on `specs`; return a
    ClusterResult. `progress(simulated s, requests done, total)` is called as replicas finish, where replicas run
    one by one or in worker processes (a state-free router)."""
    from simulator.cluster.pools import ReplicaGroup, replica_groups, split_roles
    from simulator.cluster.result import merge_runs
    from simulator.cluster.sim import check_open_loop, run_replicas, simulate_disaggregated
    if cfg.dp > 1:
        if cfg.expert_parallel:
            from simulator.cluster.dp_ep import simulate_dp_ep
            return simulate_dp_ep(cfg, specs)
        spread = cfg.replace(replicas=cfg.dp, dp=1)
        return merge_runs(cfg.to_dict(), run_replicas(spread, specs, replica_groups(spread), progress))
    if cfg.prefill_replicas:
        base = cfg.replace(prefill_replicas=0, decode_replicas=0)
        roles = ([ReplicaGroup("prefill", cfg.prefill_replicas, base, "prefill")],
                 [ReplicaGroup("decode", cfg.decode_replicas, base, "decode")])
    else:
        groups = replica_groups(cfg)
        roles = split_roles(groups, str(cfg.pools))
        if roles is None:
            return merge_runs(cfg.to_dict(), run_replicas(cfg, specs, groups, progress))
    check_open_loop(cfg, specs)
    prefill, decode = roles
    decode = [replace(g, config=g.config.replace(prefix_caching=False)) for g in decode]
    return simulate_disaggregated(cfg, specs, prefill, decode)


__all__ = ["ROUTERS", "make_router", "simulate_cluster"]
