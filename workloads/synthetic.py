"""Synthetic workloads: an arrival process x a prompt length x an output length -> RequestSpecs.

Vidur's split of a workload into an interval generator and a length generator, as plain functions. All
randomness comes from the one Generator passed in: arrival gaps are drawn first, then lengths.
"""
from __future__ import annotations

import math

import numpy as np

from workloads._build import build_specs
from workloads.arrivals import ArrivalProcess, arrival_times_s
from workloads.lengths import LengthDist, sample_lengths
from workloads.spec import RequestSpec


def check_caps(num_requests: int | None, duration_s: float | None) -> None:
    """Validate the workload caps (each optional, but positive when given)."""
    if num_requests is not None and (isinstance(num_requests, bool) or int(num_requests) != num_requests
                                     or num_requests < 1):
        raise ValueError(f"num_requests must be a positive integer, got {num_requests}")
    if duration_s is not None and not (math.isfinite(duration_s) and duration_s > 0):
        raise ValueError(f"duration_s must be positive, got {duration_s}")


def generate(
    arrival: ArrivalProcess,
    rate: float,
    prompt: LengthDist,
    output: LengthDist,
    rng: np.random.Generator,
    *,
    num_requests: int | None = None,
    duration_s: float | None = None,
) -> list[RequestSpec]:
    """Requests 0..n-1 arriving at `rate` req/s, capped by `num_requests` and/or `duration_s` (at least one).

    With both caps, at most `num_requests` requests arrive, all at or before `duration_s`. With only
    `duration_s`, requests keep arriving until the process passes `duration_s`.
    """
    check_caps(num_requests, duration_s)
    times = arrival_times_s(
        arrival, rate, rng, num_requests=None if num_requests is None else int(num_requests), duration_s=duration_s
    )
    prompts, outputs = sample_lengths(prompt, output, len(times), rng)
    return build_specs(times, prompts, outputs)
