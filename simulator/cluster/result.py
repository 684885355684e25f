"""A cluster's results: the replicas' rows merged into one SimResult, one row per replica, and load balance.

The merged frames carry a `replica` column; the summary is METRICS.md's over every request of the cluster (busy
time, FLOPs and bytes add up over replicas, so MFU/MBU are the fleet's; KV means are busy-time weighted over
all replicas), plus:
  replicas                    number of replicas
  outstanding_max_over_mean   the busiest replica's mean outstanding requests over the mean replica's (1 = even)
  outstanding_jain_index      Jain's fairness index of the replicas' mean outstanding requests, (sum x)^2 / (N sum
                              x^2): 1 when even, 1/N when one replica holds everything
A replica's mean outstanding is its requests' total time in the system over the cluster's duration (Little's
law: the time average of the requests it holds); peak outstanding is the most it held at once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from simulator.cluster.disagg import PD_PARTS, transfer_stats, ttft_split
from simulator.metrics import SimResult, meets_slo, summarize
from simulator.speculative import SpecStats

BALANCE_KEYS = ("replicas", "outstanding_max_over_mean", "outstanding_jain_index")


@dataclass
class ClusterResult(SimResult):
    """SimResult of the whole cluster plus `replicas` (one row per replica; replicas.csv when saved)."""

    replicas: pd.DataFrame = field(default_factory=pd.DataFrame)

    def summary(self) -> dict[str, Any]:
        extra = {k: v for k, v in self.meta["balance"].items() if k != "per_replica"}
        return {**summarize(self), **extra, **self.meta.get("disaggregation", {})}

    def save(self, path: str | Path) -> Path:
        out = super().save(path)
        self.replicas.to_csv(out / "replicas.csv", index=False)
        return out


def merge_runs(config: dict, runs: list) -> ClusterResult:
    """One ClusterResult from the ReplicaRuns of a cluster (in replica order)."""
    frames = {name: _stack([getattr(r.result, name) for r in runs], [r.index for r in runs])
              for name in ("requests", "steps", "kv")}
    frames["requests"] = frames["requests"].sort_values("request_id", kind="stable").reset_index(drop=True)
    itl = pd.concat([r.result.itl for r in runs if len(r.result.itl)], ignore_index=True) \
        if any(len(r.result.itl) for r in runs) else runs[0].result.itl
    meta = _merged_meta(runs)
    balance, per_replica = load_balance(frames["requests"], len(runs))
    meta["balance"] = {**balance, "per_replica": per_replica.to_dict("records")}
    result = ClusterResult(config=config, meta=meta, itl=itl, replicas=pd.DataFrame(), **frames)
    result.replicas = replica_rows(runs, per_replica)
    return result


def merge_disaggregated(cfg, prefill_runs: list, decode_runs: list, transfers: list, link) -> ClusterResult:
    """One ClusterResult of a prefill pool and a decode pool (disagg.py): a request's row joins its prefill, its
    transfer and its decode; replicas are numbered prefill first; load balance is the decode pool's (the
    prefill pool's under prefill_*)."""
    runs = prefill_runs + decode_runs
    pre = _stack([r.result.requests for r in prefill_runs], [r.index for r in prefill_runs]).set_index("request_id")
    dec = _stack([r.result.requests for r in decode_runs], [r.index for r in decode_runs]).set_index("request_id")
    moved = pd.DataFrame([t.__dict__ for t in transfers]).set_index("request_id") if transfers else None
    rows = _join_phases(pre, dec, moved)
    refused = pre[pre.status != "finished"].copy()          # rejected by a prefill replica: never transferred
    refused["prefill_replica"] = refused.replica
    requests = pd.concat([rows, refused]).sort_index(kind="stable").reset_index()
    requests["ttft_s"] = requests.first_token_s - requests.arrival_s
    requests["e2e_s"] = requests.finish_s - requests.arrival_s
    requests["queueing_s"] = requests.scheduled_s - requests.arrival_s
    requests["met_slo"] = meets_slo(requests, cfg.slo_ttft_s, cfg.slo_tpot_s, cfg.slo_e2e_s)
    frames = {name: _stack([getattr(r.result, name) for r in runs], [r.index for r in runs])
              for name in ("steps", "kv")}
    itl = pd.concat([r.result.itl for r in decode_runs], ignore_index=True)
    meta = _merged_meta(runs)
    meta["balance"], per_replica = _two_pool_balance(pre, dec, prefill_runs, decode_runs)
    decode_sums = merge_step_sums([r.result.meta.get("step_sums") or _step_sums_of(r.result) for r in decode_runs])
    meta["disaggregation"] = {"prefill_replicas": len(prefill_runs), "decode_replicas": len(decode_runs),
                              "kv_link": link.name, **transfer_stats(transfers),
                              "decode_kv_utilization_mean": decode_sums["utilization_mean"],
                              "decode_kv_utilization_max": decode_sums["kv_utilization_max"],
                              **ttft_split(requests)}
    result = ClusterResult(config=cfg.to_dict(), meta=meta, requests=requests, itl=itl, replicas=pd.DataFrame(),
                           **frames)
    result.replicas = replica_rows(runs, per_replica).assign(
        role=["prefill"] * len(prefill_runs) + ["decode"] * len(decode_runs))
    assert set(PD_PARTS) <= set(requests.columns) or not len(rows)
    return result


def _join_phases(pre: pd.DataFrame, dec: pd.DataFrame, moved: pd.DataFrame | None) -> pd.DataFrame:
    """The decode pool's rows (indexed by request id) joined with each request's prefill and KV transfer."""
    rows = dec.copy()
    if len(rows):
        p = pre.loc[rows.index]
        rows["prefill_replica"] = p.replica
        rows["arrival_s"] = p.arrival_s
        rows["decode_scheduled_s"] = dec.scheduled_s
        rows["scheduled_s"] = p.scheduled_s
        if "cached_tokens" in rows:      # the decode side's "hit" is the transferred prompt, not a cache hit
            rows["cached_tokens"] = p.cached_tokens
        rows["transfer_end_s"] = moved.loc[rows.index, "end_s"]
        rows["kv_transfer_bytes"] = moved.loc[rows.index, "bytes"]
        rows["queue_s"] = p.scheduled_s - p.arrival_s
        rows["prefill_s"] = p.first_token_s - p.scheduled_s
        rows["transfer_s"] = rows.transfer_end_s - p.first_token_s
        rows["decode_queue_s"] = dec.scheduled_s - rows.transfer_end_s
        rows["first_step_s"] = dec.first_token_s - dec.scheduled_s
    return rows


def _two_pool_balance(pre: pd.DataFrame, dec: pd.DataFrame, prefill_runs: list, decode_runs: list):
    """Load balance of a P/D cluster: the decode pool's, the prefill pool's under prefill_*, and per-replica rows
    numbered prefill first. Returns (meta["balance"], per-replica frame)."""
    first = prefill_runs[0].index
    pool_pre, per_pre = load_balance(pre.reset_index().assign(replica=pre.replica.to_numpy() - first),
                                     len(prefill_runs))
    pool_dec, per_dec = load_balance(dec.reset_index().assign(replica=dec.replica.to_numpy() - len(prefill_runs)),
                                     len(decode_runs))
    per_replica = pd.concat([per_pre, per_dec.assign(replica=per_dec.replica + len(prefill_runs))],
                            ignore_index=True)
    balance = {**pool_dec, "replicas": len(prefill_runs) + len(decode_runs),
               "prefill_outstanding_max_over_mean": pool_pre["outstanding_max_over_mean"],
               "prefill_outstanding_jain_index": pool_pre["outstanding_jain_index"],
               "per_replica": per_replica.to_dict("records")}
    return balance, per_replica


def _stack(frames: list[pd.DataFrame], indices: list[int]) -> pd.DataFrame:
    tagged = [f.assign(replica=np.full(len(f), i, dtype=np.int64)) for f, i in zip(frames, indices)]
    return pd.concat(tagged, ignore_index=True)


def _merged_meta(runs: list) -> dict[str, Any]:
    """Meta of the fleet: counts add up; peaks are busy-weighted so MFU/MBU are fleet FLOPs over fleet peak."""
    metas = [r.result.meta for r in runs]
    sums = [r.result.meta.get("step_sums") or _step_sums_of(r.result) for r in runs]
    busy = [s["busy_s"] for s in sums]
    out = {"replica_meta": metas[0], "num_replicas": len(runs),
           "groups": sorted({r.group for r in runs}),
           "kv_capacity_tokens": sum(int(m["kv_capacity_tokens"]) for m in metas if "kv_capacity_tokens" in m)}
    for key in ("preemptions_recompute", "preemptions_swap", "engine_steps", "run_steps", "runs",
                "prefix_cache_evictions"):
        out[key] = sum(int(m.get(key, 0)) for m in metas)
    if any("speculative" in m for m in metas):
        totals = SpecStats()
        for m in metas:
            spec = m.get("speculative") or {}
            totals.verify_steps += spec.get("spec_verify_steps", 0)
            totals.draft_tokens += spec.get("spec_draft_tokens", 0)
            totals.accepted_tokens += spec.get("spec_accepted_tokens", 0)
        out["speculative"] = totals.as_dict()
    for key in ("peak_flops_per_s", "peak_bytes_per_s"):
        peaks = [float(m.get(key, 0.0)) for m in metas]
        total = sum(busy)
        out[key] = sum(p * b for p, b in zip(peaks, busy)) / total if total else peaks[0]
    out["wall_s"] = sum(float(m.get("wall_s", 0.0)) for m in metas)
    if any("step_sums" in m for m in metas):
        out["step_sums"] = merge_step_sums(sums)
    return out


def _step_sums_of(result: SimResult) -> dict[str, Any]:
    from simulator.metrics import _step_sums
    return _step_sums(result.steps, result.kv)


def merge_step_sums(sums: list[dict[str, Any]]) -> dict[str, Any]:
    """Fleet sums from per-replica StepSums dicts: totals add, KV means re-weighted by busy time, maxima max."""
    busy = sum(s["busy_s"] for s in sums)
    out = {k: sum(s.get(k, 0) for s in sums) for k in ("num_steps", "busy_s", "flops", "bytes", "itl_count",
                                                         "itl_sum_s")}
    for col in ("utilization", "internal_fragmentation", "external_fragmentation"):
        key = f"{col}_mean"
        out[key] = sum(s[key] * s["busy_s"] for s in sums) / busy if busy else 0.0
    out["kv_utilization_max"] = max(s["kv_utilization_max"] for s in sums)
    out["max_running"] = max(s["max_running"] for s in sums)
    maxima = [s.get("itl_max_s", float("nan")) for s in sums]
    maxima = [m for m in maxima if m == m]
    out["itl_max_s"] = max(maxima) if maxima else float("nan")
    return out


def load_balance(requests: pd.DataFrame, num_replicas: int) -> tuple[dict[str, float], pd.DataFrame]:
    """Balance figures (BALANCE_KEYS) and per-replica mean and peak outstanding requests, from request rows."""
    done = requests[requests.status == "finished"]
    start = float(requests.arrival_s.min()) if len(requests) else 0.0
    duration = float(done.finish_s.max()) - start if len(done) else 0.0
    held = done.groupby("replica").e2e_s.sum().reindex(range(num_replicas), fill_value=0.0).to_numpy()
    mean_out = held / duration if duration > 0 else np.zeros(num_replicas)
    peak = np.array([_peak(done[done.replica == i]) for i in range(num_replicas)], dtype=np.int64)
    total = mean_out.sum()
    balance = {"replicas": num_replicas,
               "outstanding_max_over_mean": float(mean_out.max() / mean_out.mean()) if total > 0 else 1.0,
               "outstanding_jain_index": float(total ** 2 / (num_replicas * (mean_out ** 2).sum())) if total > 0
               else 1.0}
    return balance, pd.DataFrame({"replica": np.arange(num_replicas), "mean_outstanding": mean_out,
                                  "peak_outstanding": peak})


def _peak(rows: pd.DataFrame) -> int:
    """Most requests in the system at once (an arrival at the instant of a finish counts after it)."""
    if not len(rows):
        return 0
    times = np.concatenate([rows.arrival_s.to_numpy(), rows.finish_s.to_numpy()])
    delta = np.concatenate([np.ones(len(rows), np.int64), -np.ones(len(rows), np.int64)])
    order = np.lexsort((delta, times))                    # finishes (-1) before arrivals (+1) at equal times
    return int(np.cumsum(delta[order]).max())


REPLICA_SUMMARY = ("num_requests", "completed", "rejected", "request_throughput", "output_token_throughput",
                   "ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s", "e2e_p50_s", "e2e_p99_s",
                   "kv_utilization_mean", "preemptions", "busy_s", "mfu", "mbu")


def replica_rows(runs: list, per_replica: pd.DataFrame) -> pd.DataFrame:
    """replicas.csv: where each replica sits and what it did (its own summary; throughputs over its own span)."""
    rows = []
    for run, balance in zip(runs, per_replica.to_dict("records")):
        summary = run.summary if run.summary is not None else run.result.summary()
        cfg = run.config
        rows.append({"replica": run.index, "group": run.group, "gpu": (cfg.gpu_file or cfg.gpu) if cfg else "",
                     "model": (cfg.model_config or cfg.model) if cfg else "", "tp": cfg.tp if cfg else 1,
                     **{k: summary[k] for k in REPLICA_SUMMARY},
                     "mean_outstanding": balance["mean_outstanding"],
                     "peak_outstanding": balance["peak_outstanding"]})
    return pd.DataFrame(rows)


def load_cluster(path: Path, result: SimResult) -> SimResult:
    """A saved cluster folder (replicas.csv beside the usual files) as a ClusterResult; else `result` as is."""
    table = Path(path) / "replicas.csv"
    if not table.is_file() or "balance" not in result.meta:
        return result
    return ClusterResult(config=result.config, meta=result.meta, requests=result.requests, steps=result.steps,
                         kv=result.kv, itl=result.itl, replicas=pd.read_csv(table))

