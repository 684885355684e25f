"""Is the offered load sustained? Arrival rate against completion rate, and queue growth over the run.

A replica that serves fewer requests per second than arrive builds a queue that grows for as long as requests
keep arriving: a request arriving at time t waits about t * (offered / served - 1), so every latency grows with
the run's length and its mean says nothing about the configuration. Two signs together mark a run SATURATED:
- it served less than SERVED_SHARE of the offered rate (completed / duration against arrivals / arrival span);
- TTFT grows with arrival time: the least-squares slope of TTFT over arrival time (seconds of TTFT per second of
  arrivals) exceeds GROWTH. A short unsaturated run also serves below its offered rate (its last requests
  drain after the last arrival), but its TTFT does not grow, so it is not marked.
Arrivals all at once (`--rate inf`) are saturated by construction when more than one step's worth arrive.
Both signs come from running sums (ArrivalFit), so summary-only runs whose rows stream away are judged alike.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

SERVED_SHARE = 0.9
GROWTH = 0.1
MIN_REQUESTS = 10


@dataclass
class ArrivalFit:
    """Running sums for the offered rate and the TTFT-over-arrival slope."""

    arrivals: int = 0
    first_arrival_s: float = math.inf
    last_arrival_s: float = -math.inf
    n: int = 0                 # completed requests in the fit
    sum_a: float = 0.0
    sum_aa: float = 0.0
    sum_t: float = 0.0
    sum_at: float = 0.0

    def add(self, arrival_s: np.ndarray, ttft_s: np.ndarray) -> None:
        """Every request's arrival, and the TTFT of completed ones (NaN for the others)."""
        arrival_s = np.asarray(arrival_s, dtype=np.float64)
        if len(arrival_s):
            self.arrivals += len(arrival_s)
            self.first_arrival_s = min(self.first_arrival_s, float(arrival_s.min()))
            self.last_arrival_s = max(self.last_arrival_s, float(arrival_s.max()))
        ttft_s = np.asarray(ttft_s, dtype=np.float64)
        done = np.isfinite(ttft_s)
        a, t = arrival_s[done], ttft_s[done]
        self.n += len(a)
        self.sum_a += float(a.sum())
        self.sum_aa += float((a * a).sum())
        self.sum_t += float(t.sum())
        self.sum_at += float((a * t).sum())

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def offered_rate(fit: ArrivalFit) -> float:
    """Requests per second arriving: (arrivals - 1) over the arrival span; inf when they all arrive at once."""
    if fit.arrivals < 2:
        return math.nan
    span = fit.last_arrival_s - fit.first_arrival_s
    return (fit.arrivals - 1) / span if span > 0 else math.inf


def ttft_growth(fit: ArrivalFit) -> float:
    """Slope of TTFT over arrival time (s/s) by least squares; NaN with too few requests or one arrival time."""
    if fit.n < MIN_REQUESTS:
        return math.nan
    var = fit.sum_aa / fit.n - (fit.sum_a / fit.n) ** 2
    if not var > 1e-12 * max(1.0, (fit.sum_a / fit.n) ** 2):
        return math.nan
    cov = fit.sum_at / fit.n - (fit.sum_a / fit.n) * (fit.sum_t / fit.n)
    return cov / var


def load_summary(fit: ArrivalFit | dict, served_rate: float) -> dict[str, Any]:
    """The summary's `offered_rate`, `ttft_growth` and `saturated` (None when there are too few requests)."""
    fit = fit if isinstance(fit, ArrivalFit) else ArrivalFit(**fit)
    offered, growth = offered_rate(fit), ttft_growth(fit)
    if fit.n < MIN_REQUESTS or not math.isfinite(served_rate):
        saturated = None
    elif math.isinf(offered):
        saturated = True
    else:
        saturated = bool(served_rate < SERVED_SHARE * offered and growth > GROWTH)
    return {"offered_rate": offered, "ttft_growth": growth, "saturated": saturated}


def verdict(summary: dict[str, Any]) -> str:
    """One line on the load: 'SATURATED: offered 1000 req/s, served 7.9 req/s; latency grows with run length'."""
    offered, served = summary.get("offered_rate"), summary.get("request_throughput")
    rate = "all at once" if offered is not None and math.isinf(offered) else f"{_rate(offered)} req/s"
    if summary.get("saturated") is None:
        return f"offered {rate}, served {_rate(served)} req/s (too few requests to judge saturation)"
    if summary["saturated"]:
        growth = summary.get("ttft_growth")
        grows = f" (TTFT +{growth:.2f} s per s of arrivals)" if growth is not None and math.isfinite(growth) else ""
        return f"SATURATED: offered {rate}, served {_rate(served)} req/s; latency grows with run length{grows}"
    return f"sustained: offered {rate}, served {_rate(served)} req/s"


def _rate(value: Any) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3g}"
