"""Recorder (appends rows while the simulation runs) and SimResult (DataFrames and the METRICS.md summary).

Rows are kept in plain lists of columns and turned into DataFrames once, at the end (SimPy's monitoring advice).
Inter-token latencies are kept as (gap, count) pairs: gaps within one step are mostly equal, so this is exact
and small.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from simulator.cost_model import StepCost
from simulator.kv_cache.base import KVUsage
from simulator.request import Request, RequestStatus

STEP_COLUMNS = ("step", "start_s", "duration_s", "batch_size", "num_prefill_tokens", "num_decode_tokens",
                "context_tokens", "flops", "bytes", "bound", "gemm_s", "attention_s", "elementwise_s",
                "communication_s", "overhead_s", "swap_s", "num_running", "num_waiting", "num_preempted")
KV_COLUMNS = ("time_s", "used_tokens", "allocated_tokens", "capacity_tokens", "free_tokens",
              "largest_free_hole_tokens", "utilization", "internal_fragmentation", "external_fragmentation",
              "num_running", "num_waiting", "preemptions_total")
REQUEST_COLUMNS = ("request_id", "arrival_s", "prompt_tokens", "output_tokens", "status", "reject_reason",
                   "scheduled_s", "first_token_s", "finish_s", "ttft_s", "tpot_s", "e2e_s", "queueing_s",
                   "num_preemptions", "recomputed_tokens", "swapped_bytes", "met_slo")
FAMILIES = ("gemm", "attention", "elementwise", "communication", "overhead")


class Recorder:
    """Collects per-step, per-KV-sample and inter-token rows during a run."""

    def __init__(self) -> None:
        self.steps: dict[str, list] = {c: [] for c in STEP_COLUMNS}
        self.kv: dict[str, list] = {c: [] for c in KV_COLUMNS}
        self.itl: Counter[float] = Counter()
        self.preemptions_total = 0

    def step(self, start_s: float, cost: StepCost, swap_s: float, shape_counts: tuple[int, int, int, int],
             queues: tuple[int, int], num_preempted: int) -> None:
        batch_size, prefill, decode, context = shape_counts
        fam = dict(cost.breakdown)
        row = (len(self.steps["step"]), start_s, cost.seconds + swap_s, batch_size, prefill, decode, context,
               cost.flops, cost.bytes, cost.bound, *(fam.get(f, 0.0) for f in FAMILIES), swap_s, *queues,
               num_preempted)
        for col, value in zip(STEP_COLUMNS, row):
            self.steps[col].append(value)
        self.preemptions_total += num_preempted

    def kv_sample(self, time_s: float, used_tokens: int, usage: KVUsage, queues: tuple[int, int]) -> None:
        cap = usage.capacity_tokens
        waiting = queues[1]
        external = 0.0
        if waiting and usage.free_tokens:
            external = 1.0 - usage.largest_free_hole_tokens / usage.free_tokens
        row = (time_s, used_tokens, usage.allocated_tokens, cap, usage.free_tokens, usage.largest_free_hole_tokens,
               used_tokens / cap, (usage.allocated_tokens - used_tokens) / cap, external, *queues,
               self.preemptions_total)
        for col, value in zip(KV_COLUMNS, row):
            self.kv[col].append(value)

    def run_steps(self, start_s: float, ends_s: list[float], costs: list[StepCost], run, usage: KVUsage,
                  new_blocks: list[int], block_tokens: int, preemptions_total: int) -> None:
        """Rows of a run of decode steps, each as the step-by-step path records it. `usage` is the KV snapshot
        before the run; block managers (block_tokens > 0) serve any request from any free block."""
        queues = (run.num_running, run.num_waiting)
        allocated, t = usage.allocated_tokens, start_s
        self.preemptions_total = preemptions_total
        for j, (end, cost) in enumerate(zip(ends_s, costs)):
            allocated += new_blocks[j] * block_tokens
            free = usage.capacity_tokens - allocated
            snapshot = KVUsage(allocated, usage.capacity_tokens, free,
                               free if block_tokens else usage.largest_free_hole_tokens)
            self.kv_sample(t, run.used_tokens + run.live * (j + 1), snapshot, queues)
            self.step(t, cost, 0.0, (run.num_decode, 0, run.num_decode, run.context_tokens + j * run.live),
                      queues, 0)
            t = end

    def itl_gaps(self, gaps: list[float], counts: list[int] | None = None) -> None:
        if counts is None:
            self.itl.update(gaps)
        else:
            for gap, count in zip(gaps, counts):
                self.itl[gap] += count

    def result(self, config: dict, meta: dict, requests: list[Request], slo: tuple[float | None, float | None]):
        req_df = requests_frame(requests, slo)
        itl = pd.DataFrame(sorted(self.itl.items()), columns=["itl_s", "count"])
        return SimResult(config=config, meta=meta, requests=req_df, steps=pd.DataFrame(self.steps),
                         kv=pd.DataFrame(self.kv), itl=itl)


def requests_frame(requests: list[Request], slo: tuple[float | None, float | None]) -> pd.DataFrame:
    rows = []
    for r in sorted(requests, key=lambda r: r.request_id):
        rows.append((r.request_id, r.arrival_s, r.prompt_tokens, r.output_tokens,
                     "finished" if r.status == RequestStatus.FINISHED else "rejected", r.reject_reason,
                     r.scheduled_s, r.first_token_s, r.finish_s, r.num_preemptions, r.recomputed_tokens,
                     r.swapped_bytes))
    df = pd.DataFrame(rows, columns=["request_id", "arrival_s", "prompt_tokens", "output_tokens", "status",
                                     "reject_reason", "scheduled_s", "first_token_s", "finish_s",
                                     "num_preemptions", "recomputed_tokens", "swapped_bytes"])
    for col in ("scheduled_s", "first_token_s", "finish_s"):
        df[col] = df[col].astype(float)
    df["ttft_s"] = df.first_token_s - df.arrival_s
    df["e2e_s"] = df.finish_s - df.arrival_s
    df["queueing_s"] = df.scheduled_s - df.arrival_s
    # TPOT = (finish - first token) / (output tokens - 1); undefined for a single output token.
    df["tpot_s"] = (df.finish_s - df.first_token_s) / (df.output_tokens - 1).where(df.output_tokens > 1)
    df["met_slo"] = meets_slo(df, *slo)
    return df[list(REQUEST_COLUMNS)]


def meets_slo(df: pd.DataFrame, slo_ttft_s: float | None, slo_tpot_s: float | None) -> pd.Series:
    ok = df.status == "finished"
    if slo_ttft_s is not None:
        ok &= df.ttft_s <= slo_ttft_s
    if slo_tpot_s is not None:
        ok &= df.tpot_s.fillna(0.0) <= slo_tpot_s
    return ok


def weighted_percentile(values: np.ndarray, counts: np.ndarray, q: float) -> float:
    """np.percentile(np.repeat(values, counts), q) (linear interpolation), without expanding the array."""
    if counts.sum() == 0:
        return float("nan")
    order = np.argsort(values)
    values, cum = values[order], np.cumsum(counts[order])
    pos = q / 100.0 * (cum[-1] - 1)
    lo, hi = int(np.floor(pos)), int(np.ceil(pos))
    v_lo = values[np.searchsorted(cum, lo, side="right")]
    v_hi = values[np.searchsorted(cum, hi, side="right")]
    return float(v_lo + (v_hi - v_lo) * (pos - lo))


def _stats(name: str, series: pd.Series) -> dict[str, float]:
    s = series.dropna().to_numpy()
    if len(s) == 0:
        return {f"{name}_{k}_s": float("nan") for k in ("mean", "p50", "p90", "p99", "max")}
    p50, p90, p99 = np.percentile(s, [50, 90, 99])
    return {f"{name}_mean_s": float(s.mean()), f"{name}_p50_s": float(p50), f"{name}_p90_s": float(p90),
            f"{name}_p99_s": float(p99), f"{name}_max_s": float(s.max())}


def _itl_stats(itl: pd.DataFrame) -> dict[str, float]:
    v, c = itl.itl_s.to_numpy(float), itl["count"].to_numpy(np.int64)
    if c.sum() == 0:
        return _stats("itl", pd.Series([], dtype=float))
    out = {"itl_mean_s": float((v * c).sum() / c.sum())}
    for q in (50, 90, 99):
        out[f"itl_p{q}_s"] = weighted_percentile(v, c, q)
    out["itl_max_s"] = float(v.max())
    return out


@dataclass
class SimResult:
    """One scenario's results: the resolved config, meta (GPU peaks, memory plan), and DataFrames."""

    config: dict[str, Any]
    meta: dict[str, Any]
    requests: pd.DataFrame
    steps: pd.DataFrame
    kv: pd.DataFrame
    itl: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["itl_s", "count"]))

    def summary(self) -> dict[str, Any]:
        """The run summary of METRICS.md (times in seconds)."""
        return summarize(self)

    def save(self, path: str | Path) -> Path:
        """Write requests/steps/kv/itl CSVs, summary.json and config.json into folder `path`."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        for name in ("requests", "steps", "kv", "itl"):
            getattr(self, name).to_csv(out / f"{name}.csv", index=False)
        (out / "summary.json").write_text(json.dumps(_jsonable(self.summary()), indent=2) + "\n")
        (out / "config.json").write_text(json.dumps(_jsonable({**self.config, "resolved": self.meta}), indent=2)
                                         + "\n")
        return out

    @classmethod
    def load(cls, path: str | Path) -> "SimResult":
        """Read a folder written by `save` (or by `servesim run`)."""
        src = Path(path)
        if not (src / "config.json").is_file():
            raise FileNotFoundError(f"{src} is not a servesim results folder (no config.json)")
        config = json.loads((src / "config.json").read_text())
        meta = config.pop("resolved", {})
        frames = {n: pd.read_csv(src / f"{n}.csv", keep_default_na=False, na_values=[""])
                  for n in ("requests", "steps", "kv")}
        frames["requests"]["reject_reason"] = frames["requests"]["reject_reason"].astype(str)
        itl_path = src / "itl.csv"
        itl = pd.read_csv(itl_path) if itl_path.is_file() else pd.DataFrame(columns=["itl_s", "count"])
        return cls(config=config, meta=meta, itl=itl, **frames)


def summarize(res: SimResult) -> dict[str, Any]:
    req, steps, kv = res.requests, res.steps, res.kv
    done = req[req.status == "finished"]
    first_arrival = req.arrival_s.min() if len(req) else 0.0
    duration = float(done.finish_s.max() - first_arrival) if len(done) else 0.0
    per_s = (lambda x: x / duration) if duration > 0 else (lambda x: float("nan"))
    busy = float(steps.duration_s.sum()) if len(steps) else 0.0
    weights = steps.duration_s.to_numpy() if len(steps) else np.array([])
    out: dict[str, Any] = {
        "num_requests": int(len(req)), "completed": int(len(done)), "rejected": int((req.status == "rejected").sum()),
        "duration_s": duration, "request_throughput": per_s(len(done)),
        "output_token_throughput": per_s(float(done.output_tokens.sum())),
        "total_token_throughput": per_s(float(done.prompt_tokens.sum() + done.output_tokens.sum())),
    }
    out.update(_stats("ttft", done.ttft_s))
    out.update(_stats("tpot", done.tpot_s))
    out.update(_itl_stats(res.itl))
    out.update(_stats("e2e", done.e2e_s))
    met = int(req.met_slo.sum())
    out.update({"goodput": per_s(met), "slo_attainment": met / len(req) if len(req) else float("nan")})
    for col, key in (("utilization", "kv_utilization_mean"), ("internal_fragmentation", "internal_fragmentation_mean"),
                     ("external_fragmentation", "external_fragmentation_mean")):
        out[key] = float(np.average(kv[col], weights=weights)) if busy > 0 else 0.0
    out["kv_utilization_max"] = float(kv.utilization.max()) if len(kv) else 0.0
    out["max_concurrent_requests"] = int(kv.num_running.max()) if len(kv) else 0
    out["preemptions"] = int(req.num_preemptions.sum())
    out["preemptions_recompute"] = int(res.meta.get("preemptions_recompute", 0))
    out["preemptions_swap"] = int(res.meta.get("preemptions_swap", 0))
    out["preemption_rate_per_s"] = per_s(out["preemptions"])
    peak_flops, peak_bw = res.meta.get("peak_flops_per_s", 0), res.meta.get("peak_bytes_per_s", 0)
    out["mfu"] = float(steps.flops.sum() / (busy * peak_flops)) if busy and peak_flops else 0.0
    out["mbu"] = float(steps.bytes.sum() / (busy * peak_bw)) if busy and peak_bw else 0.0
    out["busy_s"] = busy
    out["num_steps"] = int(len(steps))
    out["rejected_reasons"] = dict(Counter(req.loc[req.status == "rejected", "reject_reason"]))
    return out


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return None if np.isnan(obj) else float(obj)
    return obj
