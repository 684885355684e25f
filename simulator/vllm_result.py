"""vllm_result.json: a simulated run in the exact form `vllm bench serve --save-result` saves.

Keys, order, units (ms) and definitions follow vllm/benchmarks/serve.py and the files it saves (a public
`vllm bench serve --save-result` file of the vLLM 0.18 era has exactly these keys): the run's header (date,
endpoint_type, backend, label, model_id, tokenizer_id, num_prompts, request_rate, burstiness, max_concurrency),
then duration, completed, failed, total_input_tokens, total_output_tokens, request_throughput, request_goodput
(null without an SLO), output_throughput, total_token_throughput, the peak output tokens in any one-second
bucket, the peak number of requests in flight, rtfx, then per metric of `percentile_metrics` mean_, median_, std_
(population) and p<P>_ (numpy's linear percentile) in milliseconds. (Later vLLM versions add the per-request
lists `latencies` and `queue_times`; the per-request rows are in requests.csv.)

Definitions, as vLLM computes them over succeeded (here: finished) requests: TTFT from arrival to the first
token; TPOT = (latency - TTFT) / (output tokens - 1) over requests with more than one output token; ITL every
gap between consecutive tokens; E2EL = latency. duration = last finish - first arrival (vLLM times from the
start of sending, which is the first arrival). Goodput counts finished requests within every SLO (a
single-token request's TPOT counts as 0). What a simulation has no wall clock for is null: `date`, and `label`;
so is max_output_tokens_per_s where the steps do not count the tokens exactly (see _peak_tokens_per_s).
vLLM writes e2el statistics only when asked (--percentile-metrics ttft,tpot,itl,e2el); servesim's default asks.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

PERCENTILE_METRICS = ("ttft", "tpot", "itl", "e2el")
COLUMNS = {"ttft": "ttft_s", "tpot": "tpot_s", "e2el": "e2e_s"}


def parse_percentiles(text: str) -> tuple[float, ...]:
    """'25,50,99' -> (25.0, 50.0, 99.0); each in [0, 100]."""
    try:
        values = tuple(float(p) for p in str(text).split(","))
    except ValueError:
        raise ValueError(f"metric-percentiles: expected a comma list of numbers such as 25,50,99, got '{text}'") \
            from None
    if not all(0 <= v <= 100 for v in values):
        raise ValueError(f"metric-percentiles: every percentile must be within 0..100, got '{text}'")
    return values


def parse_percentile_metrics(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in str(text).split(","))
    bad = [n for n in names if n not in PERCENTILE_METRICS]
    if bad:
        raise ValueError(f"percentile-metrics: unknown metric '{bad[0]}'; choose from {', '.join(PERCENTILE_METRICS)}")
    return names


def percentile_key(p: float, metric: str) -> str:
    """vLLM's key: p99_ttft_ms, p99.9_ttft_ms (an integral percentile loses its '.0')."""
    word = str(int(p)) if int(p) == p else str(p)
    return f"p{word}_{metric}_ms"


def vllm_result(config: dict[str, Any], meta: dict[str, Any], requests: pd.DataFrame, steps: pd.DataFrame,
                itl: pd.DataFrame) -> dict[str, Any]:
    """The result dict of one run (frames as SimResult holds them)."""
    done = requests[requests.status == "finished"]
    duration = float(done.finish_s.max() - requests.arrival_s.min()) if len(done) else 0.0
    per_s = (lambda x: x / duration) if duration > 0 else (lambda x: math.nan)
    out_tokens = int(done.output_tokens.sum())
    slo_given = any(config.get(k) is not None for k in ("slo_ttft_s", "slo_tpot_s", "slo_e2e_s"))
    result = {**_header(config, meta, len(requests)), "duration": duration, "completed": int(len(done)),
              "failed": int(len(requests) - len(done)), "total_input_tokens": int(done.prompt_tokens.sum()),
              "total_output_tokens": out_tokens, "request_throughput": per_s(len(done)),
              "request_goodput": per_s(int(requests.met_slo.sum())) if slo_given else None,
              "output_throughput": per_s(out_tokens),
              "total_token_throughput": per_s(out_tokens + int(done.prompt_tokens.sum())),
              "max_output_tokens_per_s": _peak_tokens_per_s(done, steps, float(requests.arrival_s.min())),
              "max_concurrent_requests": _peak_in_flight(done), "rtfx": 0.0}
    percentiles = parse_percentiles(config.get("metric_percentiles", "99"))
    for metric in parse_percentile_metrics(config.get("percentile_metrics", ",".join(PERCENTILE_METRICS))):
        if metric == "itl":
            result.update(_itl_stats(itl, percentiles))
        else:
            result.update(_stats(metric, done[COLUMNS[metric]].dropna().to_numpy(float), percentiles))
    return result


def _header(config: dict[str, Any], meta: dict[str, Any], num_prompts: int) -> dict[str, Any]:
    model = config.get("model_config") or config.get("model")
    synthetic = config.get("trace") is None
    rate = config.get("rate")
    return {"date": None, "endpoint_type": "servesim", "backend": "servesim", "label": None, "model_id": model,
            "tokenizer_id": model, "num_prompts": num_prompts,
            "request_rate": ("inf" if math.isinf(rate) else rate) if synthetic and rate is not None else None,
            "burstiness": _burstiness(config) if synthetic else None,
            "max_concurrency": config.get("max_concurrency")}


def _burstiness(config: dict[str, Any]) -> float | None:
    """vLLM's burstiness of the arrivals: the gamma shape (1 for Poisson, 1/cv^2 for gamma:cv)."""
    if config.get("burstiness") is not None:
        return config["burstiness"]
    kind, _, arg = str(config.get("arrival", "poisson")).partition(":")
    if kind == "poisson":
        return 1.0
    if kind == "gamma":
        return 1.0 / float(arg.rpartition("=")[2]) ** 2
    return None                                  # constant spacing is vLLM's burstiness inf, not JSON


def _stats(metric: str, values: np.ndarray, percentiles: tuple[float, ...]) -> dict[str, float]:
    """vLLM's statistics of one metric in ms (0 for an empty list, as vLLM's `np.mean(x or 0)`)."""
    v = values if len(values) else np.zeros(1)
    out = {f"mean_{metric}_ms": float(np.mean(v)) * 1e3, f"median_{metric}_ms": float(np.median(v)) * 1e3,
           f"std_{metric}_ms": float(np.std(v)) * 1e3}
    out.update({percentile_key(p, metric): float(np.percentile(v, p)) * 1e3 for p in percentiles})
    return out


def _itl_stats(itl: pd.DataFrame, percentiles: tuple[float, ...]) -> dict[str, float]:
    """The same statistics from (gap, count) pairs, without expanding them."""
    from simulator.percentiles import weighted_percentile
    values, counts = itl.itl_s.to_numpy(float), itl["count"].to_numpy(np.int64)
    if counts.sum() == 0:
        return _stats("itl", np.zeros(0), percentiles)
    mean = float((values * counts).sum() / counts.sum())
    std = math.sqrt(float((counts * (values - mean) ** 2).sum() / counts.sum()))
    out = {"mean_itl_ms": mean * 1e3, "median_itl_ms": weighted_percentile(values, counts, 50) * 1e3,
           "std_itl_ms": std * 1e3}
    out.update({percentile_key(p, "itl"): weighted_percentile(values, counts, p) * 1e3 for p in percentiles})
    return out


def _peak_in_flight(done: pd.DataFrame) -> int:
    """Most requests between arrival and finish at once (half-open intervals: a finish frees first)."""
    times = np.concatenate([done.arrival_s.to_numpy(float), done.finish_s.to_numpy(float)])
    delta = np.concatenate([np.ones(len(done)), -np.ones(len(done))])
    order = np.lexsort((delta, times))
    return int(max(0.0, np.cumsum(delta[order]).max())) if len(times) else 0


def _peak_tokens_per_s(done: pd.DataFrame, steps: pd.DataFrame, origin_s: float) -> float | None:
    """Most output tokens in one one-second bucket from the first arrival: first tokens at their times, every
    later token at the end of the step that decoded it. None when the steps do not count exactly the finished
    requests' tokens: without per-step rows (summary-only runs), or when finished members of a static batch
    are still decoded as padding."""
    if not len(done):
        return 0.0
    if not len(steps) or len(done) + steps.num_decode_tokens.sum() != done.output_tokens.sum():
        return None
    ends = (steps.start_s + steps.duration_s).to_numpy(float)
    times = np.concatenate([done.first_token_s.to_numpy(float), ends])
    weights = np.concatenate([np.ones(len(done)), steps.num_decode_tokens.to_numpy(float)])
    buckets = np.floor(times - origin_s).astype(np.int64)
    return float(np.bincount(buckets[buckets >= 0], weights=weights[buckets >= 0]).max())
