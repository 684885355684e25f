"""What the experiments share: controlled workloads, running many scenarios on the local cores, KV windows.

Workloads are explicit RequestSpec lists from one seeded Generator, so each experiment controls exactly what
the published setup controlled (fixed shapes, filtered lengths, everything arriving at once).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd

from simulator.config import SimConfig
from simulator.metrics import SimResult
from workloads.lengths import bundled_table
from workloads.spec import RequestSpec

SEED = 0


def specs(arrivals_s: np.ndarray, prompts: np.ndarray, outputs: np.ndarray) -> list[RequestSpec]:
    """RequestSpecs numbered in arrival order."""
    order = np.argsort(arrivals_s, kind="stable")
    return [RequestSpec(i, float(arrivals_s[j]), int(prompts[j]), int(outputs[j])) for i, j in enumerate(order)]


def poisson_arrivals_s(n: int, rate: float | None, rng: np.random.Generator) -> np.ndarray:
    """n Poisson arrival times at `rate` req/s; rate None puts every request at t=0 (an offline batch)."""
    if rate is None:
        return np.zeros(n)
    return np.cumsum(rng.exponential(1.0 / rate, size=n))


def sharegpt_vllm(n: int, rate: float | None, *, seed: int = SEED, max_prompt: int = 1024,
                  max_total: int = 2048) -> list[RequestSpec]:
    """ShareGPT conversations (the bundled sample) filtered as vLLM's benchmark_serving samples them
    (prompt <= 1024 and prompt + output <= 2048 tokens, OPT's context), with Poisson arrivals."""
    prompt, output = bundled_table("sharegpt")
    keep = np.flatnonzero((prompt <= max_prompt) & (prompt + output <= max_total))
    rng = np.random.default_rng(seed)
    arrivals = poisson_arrivals_s(n, rate, rng)
    rows = rng.choice(keep, size=n, replace=True)
    return specs(arrivals, prompt[rows], output[rows])


def fixed_requests(n: int, prompt_tokens: int, output_tokens: int) -> list[RequestSpec]:
    """n identical requests, all arriving at t=0."""
    return [RequestSpec(i, 0.0, prompt_tokens, output_tokens) for i in range(n)]


@dataclass(frozen=True)
class Job:
    """One scenario: a config and (optionally) the exact requests to replay."""

    label: str
    config: SimConfig
    requests: tuple[RequestSpec, ...] | None = None


def _run_one(job: Job, measure: Callable[[SimResult], dict]) -> dict:
    from simulator.api import simulate
    result = simulate(job.config, requests=list(job.requests) if job.requests is not None else None)
    return {"label": job.label, **measure(result)}


def run_jobs(jobs: Sequence[Job], measure: Callable[[SimResult], dict], workers: int | None = None) -> pd.DataFrame:
    """Simulate every job (in a process pool when there are several cores) and reduce each result with
    `measure` (a module-level function, so it can run in a worker). Rows come back in job order."""
    workers = workers or max(1, os.cpu_count() or 1)
    if workers == 1 or len(jobs) == 1:
        return pd.DataFrame([_run_one(job, measure) for job in jobs])
    with ProcessPoolExecutor(min(workers, len(jobs))) as pool:
        rows = list(pool.map(_run_one, jobs, [measure] * len(jobs)))
    return pd.DataFrame(rows)


def kv_window(result: SimResult, waiting_only: bool = True) -> pd.DataFrame:
    """KV samples with the time each one stands for; with `waiting_only`, only while requests wait (memory
    is then the bottleneck, which is when the vLLM paper measures waste)."""
    kv = result.kv.copy()
    if kv.empty:
        return kv.assign(weight_s=[])
    end_s = float(result.steps.start_s.iloc[-1] + result.steps.duration_s.iloc[-1])
    kv["weight_s"] = np.diff(kv.time_s.to_numpy(), append=end_s)
    return kv[kv.num_waiting > 0] if waiting_only else kv


def weighted_mean(frame: pd.DataFrame, column: str) -> float:
    weights = frame.weight_s.to_numpy()
    if len(frame) == 0 or weights.sum() <= 0:
        return float("nan")
    return float(np.average(frame[column].to_numpy(), weights=weights))


def crossing_rate(rates: Sequence[float], values: Sequence[float], limit: float) -> float:
    """The rate where `values` first rises through `limit`, interpolated linearly between grid points;
    the highest rate if it never does, NaN if even the lowest rate is above it."""
    rates, values = list(rates), list(values)
    if not values or not values[0] <= limit:
        return float("nan")
    for (r0, v0), (r1, v1) in zip(zip(rates, values), zip(rates[1:], values[1:])):
        if not v1 <= limit:           # NaN (nothing finished) counts as above the limit
            if not np.isfinite(v1) or v1 == v0:
                return r0
            return r0 + (limit - v0) * (r1 - r0) / (v1 - v0)
    return rates[-1]


def capacity_search(make_job: Callable[[str, float], Job], labels: Sequence[str], measure: Callable[[SimResult], dict],
                    meets: Callable[[dict], bool], grid: Sequence[float], tolerance: float = 0.03,
                    workers: int | None = None) -> tuple[pd.DataFrame, dict[str, float]]:
    """For each label, the highest rate whose run `meets` the target: the grid first, then bisection (the
    CLI sweep's CapacitySearch), every label's next probes run together. Returns every run's row (label,
    rate, meets, measured columns) and {label: capacity}; a label that never passes gets NaN."""
    from simulator.runs.capacity import CapacitySearch
    searches = {label: CapacitySearch(grid=tuple(grid), tolerance=tolerance) for label in labels}
    rows: list[pd.DataFrame] = []
    while True:
        todo = [(label, rate) for label, s in searches.items() for rate in s.next_rates()]
        if not todo:
            break
        frame = run_jobs([make_job(label, rate) for label, rate in todo], measure, workers)
        frame.insert(1, "rate", [rate for _, rate in todo])
        frame["meets"] = [bool(meets(row)) for row in frame.to_dict("records")]
        for (label, rate), ok in zip(todo, frame.meets):
            searches[label].record(rate, ok)
        rows.append(frame)
    data = pd.concat(rows, ignore_index=True).sort_values(["label", "rate"], kind="stable", ignore_index=True)
    capacity = {}
    for label, s in searches.items():
        rate, bound = s.capacity()
        capacity[label] = float("nan") if bound == "<" else rate
    return data, capacity
