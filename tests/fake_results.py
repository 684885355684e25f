"""Small synthetic results with exactly the columns of the results contract, for testing plots and reports
without running the simulator. Values are plausible, not simulated."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

REQUEST_COLUMNS = ["request_id", "arrival_s", "prompt_tokens", "output_tokens", "status", "reject_reason",
                   "scheduled_s", "first_token_s", "finish_s", "ttft_s", "tpot_s", "e2e_s", "queueing_s",
                   "num_preemptions", "recomputed_tokens", "swapped_bytes", "cached_tokens", "met_slo"]
STEP_COLUMNS = ["step", "start_s", "duration_s", "batch_size", "num_prefill_tokens", "num_decode_tokens",
                "context_tokens", "flops", "bytes", "bound", "gemm_s", "attention_s", "elementwise_s",
                "communication_s", "overhead_s", "num_running", "num_waiting", "num_preempted"]
KV_COLUMNS = ["time_s", "used_tokens", "allocated_tokens", "capacity_tokens", "free_tokens",
              "largest_free_hole_tokens", "cached_tokens", "evictable_tokens", "utilization",
              "internal_fragmentation",
              "external_fragmentation",
              "num_running", "num_waiting", "preemptions_total"]


@dataclass
class FakeResult:
    """Quacks like SimResult for the report: three frames and summary()."""

    requests: pd.DataFrame
    steps: pd.DataFrame
    kv: pd.DataFrame
    summary_values: dict

    def summary(self) -> dict:
        return dict(self.summary_values)


def fake_requests(rng: np.random.Generator, n: int, rate_per_s: float) -> pd.DataFrame:
    arrival = np.cumsum(rng.exponential(1 / rate_per_s, n))
    prompt = rng.integers(16, 2048, n)
    output = rng.integers(2, 256, n)
    queue = rng.exponential(0.05, n)
    ttft = queue + prompt * 2e-5 + 0.01
    tpot = rng.uniform(0.01, 0.04, n)
    status = np.where(np.arange(n) % 17 == 16, "rejected", "finished")
    done = status == "finished"
    nan = np.where(done, 1.0, np.nan)
    return pd.DataFrame({
        "request_id": np.arange(n), "arrival_s": arrival, "prompt_tokens": prompt, "output_tokens": output,
        "status": status, "reject_reason": np.where(done, "", "too long"),
        "scheduled_s": (arrival + queue) * nan, "first_token_s": (arrival + ttft) * nan,
        "finish_s": (arrival + ttft + tpot * (output - 1)) * nan, "ttft_s": ttft * nan, "tpot_s": tpot * nan,
        "e2e_s": (ttft + tpot * (output - 1)) * nan, "queueing_s": queue * nan,
        "num_preemptions": rng.integers(0, 2, n), "recomputed_tokens": np.zeros(n, int),
        "swapped_bytes": np.zeros(n), "cached_tokens": np.zeros(n, int), "met_slo": done & (ttft < 0.5) & (tpot < 0.03)})[REQUEST_COLUMNS]


def fake_steps(rng: np.random.Generator, n: int) -> pd.DataFrame:
    duration = rng.uniform(0.01, 0.05, n)
    prefill = np.where(rng.random(n) < 0.2, rng.integers(100, 2048, n), 0)
    decode = rng.integers(1, 64, n)
    flops = (prefill + decode) * 2 * 8e9
    nbytes = 16e9 + decode * 1e6
    running = decode + (prefill > 0)
    return pd.DataFrame({
        "step": np.arange(n), "start_s": np.cumsum(duration) - duration, "duration_s": duration,
        "batch_size": running, "num_prefill_tokens": prefill, "num_decode_tokens": decode,
        "context_tokens": decode * 500, "flops": flops, "bytes": nbytes,
        "bound": np.where(prefill > 0, "compute", "memory"), "gemm_s": duration * 0.7,
        "attention_s": duration * 0.2, "elementwise_s": duration * 0.05, "communication_s": np.zeros(n),
        "overhead_s": duration * 0.05, "num_running": running, "num_waiting": rng.integers(0, 20, n),
        "num_preempted": (rng.random(n) < 0.02).astype(int)})[STEP_COLUMNS]


def fake_kv(steps: pd.DataFrame, capacity_tokens: int = 50_000) -> pd.DataFrame:
    n = len(steps)
    used = (steps["num_running"].to_numpy() * 400) % capacity_tokens
    allocated = np.minimum(used * 1.3, capacity_tokens).astype(int)
    free = capacity_tokens - allocated
    return pd.DataFrame({
        "time_s": steps["start_s"].to_numpy(), "used_tokens": used, "allocated_tokens": allocated,
        "capacity_tokens": np.full(n, capacity_tokens), "free_tokens": free,
        "largest_free_hole_tokens": free // 2, "cached_tokens": np.zeros(n, int),
        "evictable_tokens": np.zeros(n, int), "utilization": used / capacity_tokens,
        "internal_fragmentation": (allocated - used) / capacity_tokens,
        "external_fragmentation": np.where(free > 0, 0.5, 0.0),
        "num_running": steps["num_running"].to_numpy(), "num_waiting": steps["num_waiting"].to_numpy(),
        "preemptions_total": np.cumsum(steps["num_preempted"].to_numpy())})[KV_COLUMNS]


def fake_summary(requests: pd.DataFrame, steps: pd.DataFrame) -> dict:
    done = requests[requests["status"] == "finished"]
    duration = float(done["finish_s"].max() - requests["arrival_s"].min())
    out = {"num_requests": len(requests), "completed": len(done), "rejected": len(requests) - len(done),
           "duration_s": duration, "request_throughput": len(done) / duration,
           "output_token_throughput": done["output_tokens"].sum() / duration,
           "total_token_throughput": (done["output_tokens"].sum() + done["prompt_tokens"].sum()) / duration}
    for metric in ("ttft", "tpot", "e2e"):
        values = done[f"{metric}_s"]
        out |= {f"{metric}_mean_s": values.mean(), f"{metric}_p50_s": values.quantile(0.5),
                f"{metric}_p90_s": values.quantile(0.9), f"{metric}_p99_s": values.quantile(0.99),
                f"{metric}_max_s": values.max()}
    out |= {f"itl_{k}_s": out[f"tpot_{k}_s"] for k in ("mean", "p50", "p90", "p99", "max")}
    out |= {"goodput": requests["met_slo"].sum() / duration, "slo_attainment": requests["met_slo"].mean(),
            "kv_utilization_mean": 0.4, "internal_fragmentation_mean": 0.1, "external_fragmentation_mean": 0.0,
            "preemptions": int(steps["num_preempted"].sum()), "preemptions_recompute": 0, "preemptions_swap": 0,
            "mfu": 0.3, "mbu": 0.6, "rejected_reasons": {"too long": len(requests) - len(done)}}
    return out


def make_fake_result(seed: int = 0, num_requests: int = 200, num_steps: int = 400,
                     rate_per_s: float = 5.0) -> FakeResult:
    """A deterministic synthetic result (same seed, same frames)."""
    rng = np.random.default_rng(seed)
    requests = fake_requests(rng, num_requests, rate_per_s)
    steps = fake_steps(rng, num_steps)
    return FakeResult(requests, steps, fake_kv(steps), fake_summary(requests, steps))


def fake_load_frames(configs: tuple[str, ...] = ("a", "b"), rates=(2.0, 4.0, 8.0)) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A sweep's load frame (config x rate) and capacity frame with made-up saturation curves."""
    rows = []
    for k, config in enumerate(configs, start=1):
        for rate in rates:
            rows.append({"config": config, "rate_per_s": rate, "output_token_throughput": min(rate, 5 * k) * 100,
                         "ttft_p99_s": 0.1 * rate / k, "tpot_p99_s": 0.01 * rate / k})
    capacity = pd.DataFrame({"config": list(configs), "capacity_rate_per_s": [5.0 * k for k in range(1, len(configs) + 1)]})
    return pd.DataFrame(rows), capacity
