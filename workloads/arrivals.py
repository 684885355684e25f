"""Arrival processes: inter-arrival gaps drawn from an explicit numpy Generator at a given rate (req/s).

Each process is a frozen dataclass describing only the *shape* of the gaps; the rate is passed when drawing, so
one spec string (`gamma:cv=2`) can be swept over rates. Arrival times are the running sum of the gaps, so the
first request arrives after one gap (a renewal process started at t=0), not at t=0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from workloads.errors import SpecError


class ArrivalProcess(Protocol):
    """Anything that can draw `n` inter-arrival gaps (seconds) with mean 1/rate from `rng`."""

    def gaps_s(self, rate: float, n: int, rng: np.random.Generator) -> np.ndarray: ...


@dataclass(frozen=True)
class PoissonArrivals:
    """A Poisson process: exponential gaps with mean 1/rate (CV 1). Gaps are not clipped or truncated."""

    def gaps_s(self, rate: float, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.exponential(1.0 / rate, size=n)


@dataclass(frozen=True)
class GammaArrivals:
    """Gamma-distributed gaps with mean 1/rate and coefficient of variation `cv` (std/mean).

    shape k = 1/cv^2 and scale = 1/(rate*k) give mean k*scale = 1/rate and CV 1/sqrt(k) = cv. cv=1 is the
    exponential (Poisson) case; cv > 1 is burstier than Poisson, cv < 1 more regular.
    """

    cv: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.cv) and self.cv > 0):
            raise SpecError(f"gamma cv must be a positive number, got {self.cv}")

    def gaps_s(self, rate: float, n: int, rng: np.random.Generator) -> np.ndarray:
        shape = 1.0 / self.cv**2
        return rng.gamma(shape, 1.0 / (rate * shape), size=n)


@dataclass(frozen=True)
class ConstantArrivals:
    """Evenly spaced arrivals, exactly 1/rate apart (no randomness drawn)."""

    def gaps_s(self, rate: float, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.full(n, 1.0 / rate)


# Registry: kind name -> class. Only gamma takes a parameter (cv).
ARRIVALS: dict[str, type] = {"poisson": PoissonArrivals, "gamma": GammaArrivals, "constant": ConstantArrivals}
ARRIVAL_KINDS: tuple[str, ...] = tuple(ARRIVALS)
MIN_CV, MAX_CV = 1e-3, 1e3     # gamma shape 1/cv^2 within [1e-6, 1e6]: finite gaps at any rate
ARRIVAL_FORMS = "poisson, gamma:cv=<float> (or gamma:<float>), constant"


def parse_arrival_spec(text: str) -> ArrivalProcess:
    """Parse `poisson`, `constant`, `gamma:cv=2.0` or `gamma:2.0` into an arrival process."""
    kind, _, arg = str(text).strip().partition(":")
    kind = kind.strip().lower()
    if kind not in ARRIVALS:
        raise SpecError(f"unknown arrival spec {text!r}; accepted forms: {ARRIVAL_FORMS}")
    if kind != "gamma":
        if arg:
            raise SpecError(f"arrival {kind!r} takes no parameters, got {text!r}; accepted forms: {ARRIVAL_FORMS}")
        return ARRIVALS[kind]()
    key, eq, value = arg.partition("=")
    if not eq:
        key, value = "cv", key
    if key.strip().lower() != "cv":
        raise _bad_gamma(text, "the only parameter is cv")
    try:
        cv = float(value)
    except ValueError:
        raise _bad_gamma(text, "cv must be a number") from None
    if not (math.isfinite(cv) and MIN_CV <= cv <= MAX_CV):
        raise _bad_gamma(text, f"cv must be in [{MIN_CV:g}, {MAX_CV:g}]")
    return GammaArrivals(cv)


def _bad_gamma(text: str, why: str) -> SpecError:
    return SpecError(f"bad gamma arrival spec {text!r}: {why}; accepted forms: {ARRIVAL_FORMS}")


def arrival_times_s(
    process: ArrivalProcess,
    rate: float,
    rng: np.random.Generator,
    *,
    num_requests: int | None = None,
    duration_s: float | None = None,
) -> np.ndarray:
    """Arrival times (s, increasing) of at most `num_requests` requests, all at or before `duration_s`.

    At least one cap must be given. With only a duration, gaps are drawn in chunks until the running sum
    passes `duration_s`, so the count is random (Poisson: mean rate*duration_s), as in a real process.
    """
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"rate must be positive, got {rate}")
    if num_requests is None and duration_s is None:
        raise ValueError("give num_requests or duration_s (or both) to bound a synthetic workload")
    if num_requests is not None:
        times = np.cumsum(process.gaps_s(rate, num_requests, rng))
        return times if duration_s is None else times[times <= duration_s]
    return _times_until(process, rate, rng, duration_s)


def _times_until(process: ArrivalProcess, rate: float, rng: np.random.Generator, duration_s: float) -> np.ndarray:
    expected = rate * duration_s
    # First chunk: mean count plus ~8 standard deviations (CV-scaled), so a second draw is rare but handled.
    cv = getattr(process, "cv", 1.0)
    chunk = int(math.ceil(expected + 8.0 * max(cv, 1.0) * math.sqrt(expected))) + 16
    parts: list[np.ndarray] = []
    last_s = 0.0
    while last_s <= duration_s:
        times = last_s + np.cumsum(process.gaps_s(rate, chunk, rng))
        parts.append(times)
        last_s = float(times[-1])
    times = np.concatenate(parts)
    return times[times <= duration_s]
