"""Replay a real run in the simulator and compare: the metric table of `servesim validate`.

Both sides are summarised by one function (`run_metrics`) from the same columns, so a difference in the table
is a difference in the runs, never in how they were counted. Errors are signed: (simulated - real) / real.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from simulator.config import SimConfig
from simulator.metrics import SimResult, weighted_percentile
from simulator.models import get_model
from simulator.validate.real import RealRun

LATENCIES = ("ttft", "tpot", "itl", "e2e")
STATS = ("mean", "p50", "p90", "p99")
RATES = (("completed", "requests"), ("request_throughput", "req/s"), ("output_token_throughput", "tok/s"),
         ("total_token_throughput", "tok/s"), ("duration", "s"))
METRIC_COLUMNS = ("metric", "stat", "unit", "real", "simulated", "error_pct")


@dataclass(frozen=True)
class Validation:
    """A replay's outcome: the config simulated, the table of real vs simulated, and both sides' rows."""

    run: RealRun
    config: SimConfig
    result: SimResult
    table: pd.DataFrame            # METRIC_COLUMNS; latencies in ms, throughputs per second, duration in s

    def mean_errors(self) -> dict[str, float]:
        """Signed % error of each latency mean the real run has."""
        rows = self.table[(self.table.stat == "mean") & self.table.error_pct.notna()]
        return dict(zip(rows.metric, rows.error_pct))

    def worst_mean(self, limit_pct: float) -> list[str]:
        """'ttft mean +12.3%' for every latency mean off by more than limit_pct."""
        return [f"{name} mean {err:+.1f}%" for name, err in self.mean_errors().items() if abs(err) > limit_pct]


def gpu_for_device(device_name: str) -> str | None:
    """A catalog GPU for a device name as CUDA reports it ('NVIDIA GeForce RTX 4090' -> 'rtx-4090'): the entry
    (or alias) whose every word appears in the name, the most specific one; None when nothing fits."""
    from hardware.gpus import GPU_ALIASES, GPUS
    words = set(re.sub(r"[^a-z0-9]+", " ", device_name.lower()).split())
    fits = [name for name in (*GPUS, *GPU_ALIASES) if set(name.split("-")) <= words]
    if not fits:
        return None
    best = max(fits, key=lambda name: (len(name.split("-")), name in GPUS))
    return GPU_ALIASES.get(best, best)


def replay_config(run: RealRun, overrides: dict[str, Any]) -> SimConfig:
    """The run's engine settings, its model and GPU mapped to presets, then the overrides (command line);
    workload options are refused (the run's own requests and arrivals are replayed)."""
    from simulator.runs.options import SCENARIO_OPTIONS
    workload = [o.flag for o in SCENARIO_OPTIONS if o.panel == "Workload" and o.field in overrides]
    if workload:
        raise ValueError(f"{workload[0]}: validate replays the run's own requests and arrivals; workload options "
                         "do not apply")
    values = dict(run.settings)
    if "model" not in overrides and "model_config" not in overrides:
        values["model"] = _model_preset(run)
    if "gpu" not in overrides and "gpu_file" not in overrides:
        values["gpu"] = _gpu_preset(run)
    values.update(overrides)
    known = {f.name for f in dataclasses.fields(SimConfig)}
    return SimConfig.from_mapping({k: v for k, v in values.items() if k in known})


def _model_preset(run: RealRun) -> str:
    name = run.hints.get("model")
    if not name:
        raise ValueError(f"{run.name}: the run does not name its model; give --model or --model-config")
    try:
        return get_model(name).name
    except ValueError:
        raise ValueError(f"{run.name}: no model preset for '{name}' (see `servesim models`); give --model or "
                         "--model-config") from None


def _gpu_preset(run: RealRun) -> str:
    device = run.hints.get("gpu")
    gpu = gpu_for_device(device) if device else None
    if gpu is None:
        what = f"no catalog GPU for '{device}'" if device else "the run does not name its GPU"
        raise ValueError(f"{run.name}: {what} (see `servesim gpus`); give --gpu or --gpu-file")
    return gpu


def run_metrics(requests: pd.DataFrame, itl_values: np.ndarray | None, itl_counts: np.ndarray | None
                ) -> dict[str, float]:
    """Latency statistics (s), throughputs and duration of finished requests; the ITL mean falls back to
    sum(finish - first token) / sum(output tokens - 1), which equals the mean of all gaps, when gaps are absent."""
    done = requests[requests.status == "finished"]
    out: dict[str, float] = {}
    for name in ("ttft", "tpot", "e2e"):
        out.update(_stats(name, done[f"{name}_s"].dropna().to_numpy(float)))
    if itl_values is not None and len(itl_values):
        counts = itl_counts if itl_counts is not None else np.ones(len(itl_values), np.int64)
        out["itl_mean"] = float((itl_values * counts).sum() / counts.sum())
        for q in (50, 90, 99):
            out[f"itl_p{q}"] = weighted_percentile(np.asarray(itl_values, float), np.asarray(counts), q)
    else:
        gaps = (done.output_tokens - 1).sum()
        out["itl_mean"] = float((done.finish_s - done.first_token_s).sum() / gaps) if gaps else np.nan
        out.update({f"itl_p{q}": np.nan for q in (50, 90, 99)})
    duration = float(done.finish_s.max() - requests.arrival_s.min()) if len(done) else np.nan
    out["duration"] = duration
    out["completed"] = float(len(done))
    out["request_throughput"] = len(done) / duration
    out["output_token_throughput"] = float(done.output_tokens.sum()) / duration
    out["total_token_throughput"] = float(done.output_tokens.sum() + done.prompt_tokens.sum()) / duration
    return out


def _stats(name: str, values: np.ndarray) -> dict[str, float]:
    if not len(values):
        return {f"{name}_{s}": np.nan for s in STATS}
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {f"{name}_mean": float(values.mean()), f"{name}_p50": float(p50), f"{name}_p90": float(p90),
            f"{name}_p99": float(p99)}


def metric_table(real: dict[str, float], sim: dict[str, float]) -> pd.DataFrame:
    rows = []
    for name in LATENCIES:
        for stat in STATS:
            key = f"{name}_{stat}"
            rows.append((name, stat, "ms", 1e3 * real[key], 1e3 * sim[key]))
    rows += [(name, "", unit, real[name], sim[name]) for name, unit in RATES]
    table = pd.DataFrame(rows, columns=METRIC_COLUMNS[:-1])
    with np.errstate(divide="ignore", invalid="ignore"):
        table["error_pct"] = 100.0 * (table.simulated - table.real) / table.real
    return table


def validate(run: RealRun, overrides: dict[str, Any] | None = None) -> Validation:
    """Simulate the run's requests with its settings (and `overrides`) and compare with what it measured."""
    from simulator.api import simulate
    config = replay_config(run, overrides or {})
    result = simulate(config, requests=run.specs)
    real = run_metrics(run.requests, run.itl_s, None)
    sim = run_metrics(result.requests, result.itl.itl_s.to_numpy(float), result.itl["count"].to_numpy(np.int64))
    return Validation(run=run, config=config, result=result, table=metric_table(real, sim))
