"""Workloads: arrival processes x length distributions, and real-trace readers, all producing RequestSpecs.

`make_requests` is the one entry point the simulator and the CLI call; the modules below it are usable alone:
arrivals (Poisson, gamma, constant), lengths (fixed, uniform, lognormal, empirical and the bundled real
samples), synthetic (arrivals x lengths) and traces (azure, mooncake, plain readers).
"""
from __future__ import annotations

import math

import numpy as np

from workloads._build import build_specs
from workloads.arrivals import ARRIVAL_FORMS, ARRIVAL_KINDS, arrival_times_s, parse_arrival_spec
from workloads.errors import SpecError, TraceError
from workloads.lengths import LENGTH_DATASETS, LENGTH_FORMS, parse_length_spec, sample_lengths
from workloads.sessions import generate_sessions, parse_sessions, parse_system_prompts, with_system_prompts
from workloads.spec import RequestSpec
from workloads.synthetic import check_caps, generate
from workloads.traces import TRACE_FORMATS, TRACE_READERS, read_trace
from workloads.vllm import dataset_lengths, vllm_arrival_times

__all__ = [
    "ARRIVAL_FORMS",
    "ARRIVAL_KINDS",
    "LENGTH_DATASETS",
    "LENGTH_FORMS",
    "TRACE_FORMATS",
    "TRACE_READERS",
    "RequestSpec",
    "SpecError",
    "TraceError",
    "make_requests",
    "parse_arrival_spec",
    "parse_length_spec",
    "read_trace",
]


def make_requests(
    *,
    seed: int,
    rate: float | None,
    arrival: str = "poisson",
    prompt_len: str = "sharegpt",
    output_len: str = "sharegpt",
    num_requests: int | None = None,
    duration_s: float | None = None,
    trace: str | None = None,
    trace_format: str = "auto",
    rate_scale: float = 1.0,
    dataset: str | None = None,
    burstiness: float | None = None,
    system_prompts: str | None = None,
    sessions: str | None = None,
) -> list[RequestSpec]:
    """The workload as RequestSpecs 0..n-1 in arrival order.

    Synthetic when `trace` is None: `arrival` gaps at `rate` req/s, lengths from `prompt_len`/`output_len`
    (spec strings; see workloads.lengths), capped by `num_requests` and/or `duration_s` (at least one). All
    randomness comes from one `np.random.default_rng(seed)`, so a seed fixes the list.

    Replay when `trace` is a file path: read with `trace_format`, arrivals divided by `rate_scale`, capped by
    `num_requests`/`duration_s` if given. `rate`, `arrival` and the length specs do not apply to a replay
    (they are still checked, so a typo fails early), and neither does `seed` (a replay draws nothing).

    vLLM's forms (workloads.vllm): `dataset` takes the prompt/output lengths from a ShareGPT JSON or a saved
    `vllm bench serve` result instead of the length specs; `burstiness` draws vLLM's gamma arrivals; an infinite
    `rate` sends every request at time 0. The plain synthetic path is untouched by them.

    `system_prompts` ('N:LEN[:SHARE]') puts shared system prompts before synthetic prompts; `sessions`
    ('multi-turn:...' or 'agentic:...') makes closed-loop sessions instead, `rate` then counting sessions per
    second (workloads.sessions).
    """
    process = parse_arrival_spec(arrival)
    prompt = parse_length_spec(prompt_len, "prompt")
    output = parse_length_spec(output_len, "output")
    check_caps(num_requests, duration_s)
    if isinstance(rate_scale, bool) or not (math.isfinite(rate_scale) and rate_scale > 0):
        raise ValueError(f"rate_scale must be positive, got {rate_scale}")
    system = None if system_prompts is None else parse_system_prompts(system_prompts)
    loops = None if sessions is None else parse_sessions(sessions)
    if trace is not None and (system or loops):
        raise ValueError("--system-prompts and --sessions make synthetic workloads; a replayed trace brings its own "
                         "content (drop --trace or those options)")
    if trace is not None:
        return read_trace(
            trace, trace_format, rate_scale=rate_scale, max_requests=num_requests, max_duration_s=duration_s
        )
    if rate is None or not rate > 0:
        raise ValueError(f"rate must be positive, got {rate}")
    if num_requests is None and duration_s is None:
        raise ValueError("a synthetic workload needs num_requests or duration_s (or both)")
    rng = np.random.default_rng(seed)
    if loops is not None:
        if dataset is not None or burstiness is not None or not math.isfinite(rate):
            raise ValueError("--sessions draws its own session starts and message lengths; drop --dataset, "
                             "--burstiness and --rate inf")
        requests = generate_sessions(loops, process, rate, prompt, output, rng, num_requests=num_requests,
                                     duration_s=duration_s, system=system)
    elif dataset is None and burstiness is None and math.isfinite(rate):
        requests = generate(process, rate, prompt, output, rng, num_requests=num_requests, duration_s=duration_s)
    else:
        requests = _vllm_form(process, rate, burstiness, prompt, output, dataset, rng, seed, num_requests,
                              duration_s)
    if system is not None and loops is None:
        requests = with_system_prompts(requests, system, rng)
    if not requests:
        raise ValueError(
            f"no request arrives within duration_s={duration_s} at rate {rate} req/s; raise duration_s or rate"
        )
    return requests


def _vllm_form(process, rate, burstiness, prompt, output, dataset, rng, seed, num_requests, duration_s):
    """Arrivals as vLLM draws them (or the arrival process), then lengths from the dataset (or the specs)."""
    if burstiness is not None or math.isinf(rate):
        if num_requests is None:
            raise ValueError("--rate inf and --burstiness need --num-requests (vLLM spreads num-requests "
                             "arrivals over num-requests / rate seconds)")
        times = vllm_arrival_times(rate, 1.0 if burstiness is None else burstiness, int(num_requests), rng)
        times = times if duration_s is None else times[times <= duration_s]
    else:
        times = arrival_times_s(process, rate, rng, num_requests=num_requests, duration_s=duration_s)
    if dataset is not None:
        prompts, outputs = dataset_lengths(dataset, len(times), seed)
    else:
        prompts, outputs = sample_lengths(prompt, output, len(times), rng)
    return build_specs(times, prompts, outputs)
