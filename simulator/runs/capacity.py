"""Capacity: the highest arrival rate at which a configuration still meets its SLOs.

"Meets the SLOs" at a rate: at least `attainment` (default 0.9) of all requests finish with TTFT <= the TTFT
SLO and TPOT <= the TPOT SLO (the summary's slo_attainment; a rejected request counts as a miss).
The search tries the listed rates, then bisects between the highest rate that met the SLOs below the first
rate that did not, until the gap is within `tolerance` of the failing rate. When no listed rate fails (or
none passes) it doubles (or halves) the rate, at most `max_outside` times, and reports a bound instead.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from simulator.config import SimConfig
from simulator.runs.sweep import (AXIS_TITLES, LOAD_AXES, RUN_METRICS, AxisError, Scenario, describe, expand, label_of,
                             validate, value_text, varied)


@dataclass
class CapacitySearch:
    """Bisection state of one configuration: rates tried and whether each met the SLOs."""

    grid: tuple[float, ...]
    tolerance: float = 0.02
    max_outside: int = 6
    tested: dict[float, bool] = field(default_factory=dict)
    outside: int = 0

    def bracket(self) -> tuple[float | None, float | None]:
        """(highest passing rate below the first failure, first failing rate); None where there is none."""
        rates = sorted(self.tested)
        fail = next((r for r in rates if not self.tested[r]), None)
        passing = [r for r in rates if self.tested[r] and (fail is None or r < fail)]
        return (passing[-1] if passing else None), fail

    def next_rates(self) -> list[float]:
        """The listed rates not yet tried, else the next probe; [] when the search is over."""
        untested = [r for r in self.grid if r not in self.tested]
        if untested:
            return untested
        lo, hi = self.bracket()
        if hi is None or lo is None:
            if self.outside >= self.max_outside:
                return []
            self.outside += 1
            return [_round(max(self.tested) * 2 if hi is None else min(self.tested) / 2)]
        mid = _round((lo + hi) / 2)
        return [mid] if hi - lo > self.tolerance * hi and lo < mid < hi else []

    def record(self, rate: float, meets: bool) -> None:
        self.tested[rate] = meets

    def capacity(self) -> tuple[float, str]:
        """(rate, bound): '=' found within tolerance, '>=' never failed, '<' failed even at the lowest rate."""
        lo, hi = self.bracket()
        if lo is None:
            return min(self.tested), "<"
        return lo, ("=" if hi is not None else ">=")


def _round(rate: float) -> float:
    """Four significant digits keep probe rates readable (and labels short)."""
    return float(f"{rate:.4g}")


def meets_slos(summary: Mapping[str, Any], attainment: float) -> bool:
    value = summary.get("slo_attainment")
    return value is not None and value == value and value >= attainment


def load_axis(axes: Mapping[str, Sequence[Any]]) -> str:
    """The swept load axis: rate if it varies, else the first varied of LOAD_AXES."""
    grid = varied(axes)
    axis = next((name for name in LOAD_AXES if name in grid), None)
    if axis is None:
        flags = ", ".join("--" + name.replace("_", "-") for name in LOAD_AXES)
        raise AxisError(f"sweep needs a load axis: give one of {flags} several values (e.g. --rate 2:40:2)")
    return axis


@dataclass
class SweepOutcome:
    """All simulations of a sweep, each configuration's capacity, and the results at capacity."""

    base: SimConfig
    axis: str
    configs: list[Scenario]
    simulations: pd.DataFrame
    capacity: pd.DataFrame
    at_capacity: list[Any]
    attainment: float

    def curves(self) -> tuple[pd.DataFrame, str, str]:
        """(frame for plots.load_figure, its x column, x title): per configuration versus rate, or per
        configuration-without-the-axis versus the axis at the base rate."""
        sims = self.simulations
        if self.axis == "rate":
            return sims.rename(columns={"configuration": "config"}), "rate_per_s", AXIS_TITLES["rate"]
        at_base = sims[sims["kind"] == "listed"].copy()
        at_base["config"] = at_base["series"]
        return at_base, self.axis, f"{AXIS_TITLES[self.axis]} at {value_text(self.base.rate)} requests/s"

    def runs(self) -> list[tuple[str, Any]]:
        """The result at each configuration's capacity, labelled with it."""
        return [(f"{c.label} @ {value_text(rate)}/s", r) for c, r, rate
                in zip(self.configs, self.at_capacity, self.capacity["capacity_rate_per_s"])]


def _check_slos(base: SimConfig) -> None:
    if base.slo_ttft_s is None and base.slo_tpot_s is None and base.slo_e2e_s is None:
        raise AxisError("sweep needs an SLO to find capacity: give --slo-ttft and/or --slo-tpot (seconds)")


def run_sweep(base: SimConfig, axes: Mapping[str, Sequence[Any]], *, attainment: float = 0.9,
              tolerance: float = 0.02, jobs: int | None = None, board=None, executor: str = "local",
              address: str | None = None) -> SweepOutcome:
    """Find the capacity of every configuration (the cross product of the non-rate options)."""
    if not 0 < attainment <= 1:
        raise AxisError(f"--attainment must be in (0, 1], got {attainment}")
    if not 0 < tolerance < 1:
        raise AxisError(f"--tolerance must be in (0, 1), got {tolerance}")
    axis = load_axis(axes)
    rates = tuple(sorted(axes.get("rate", (base.rate,))))
    others = {name: values for name, values in axes.items() if name != "rate"}
    configs = expand(base, others)
    _check_slos(configs[0].config)
    validate(base, axes, configs)
    searches = [CapacitySearch(rates, tolerance) for _ in configs]
    from simulator.runs.executors import make_executor
    with make_executor(executor, jobs=jobs, board=board, address=address) as runner:
        rows, best = _search(configs, searches, axis, attainment, runner)
    capacity = _capacity_frame(configs, searches, rows)
    return SweepOutcome(base, axis, configs, pd.DataFrame(rows), capacity, best, attainment)


def _search(configs, searches, axis, attainment, runner) -> tuple[list[dict], list[Any]]:
    """Round by round: every configuration's next rates run together, so all workers stay busy."""
    rows: list[dict] = []
    best: list[Any] = [None] * len(configs)
    while todo := [(i, rate) for i, s in enumerate(searches) for rate in s.next_rates()]:
        labels = [f"{configs[i].label or 'base'} @ {value_text(rate)}/s" for i, rate in todo]
        results = runner.run(labels, [configs[i].config.replace(rate=rate) for i, rate in todo])
        for (i, rate), result in zip(todo, results):
            summary = result.summary()
            meets = meets_slos(summary, attainment)
            searches[i].record(rate, meets)
            rows.append(_row(configs[i], axis, rate, rate in searches[i].grid, meets, summary))
            lo, _ = searches[i].bracket()
            if best[i] is None or rate == lo or (lo is None and rate == min(searches[i].tested)):
                best[i] = result
    return rows, _at_capacity(configs, searches, rows, best)


def _at_capacity(configs, searches, rows, best) -> list[Any]:
    """The kept result per configuration must be the one at its reported capacity."""
    for i, search in enumerate(searches):
        rate, _ = search.capacity()
        assert best[i] is not None and best[i].config["rate"] == rate, "result kept at capacity"
    return best


def _row(config: Scenario, axis: str, rate: float, listed: bool, meets: bool, summary: dict) -> dict:
    series = label_of(config.values, skip=(axis,)) or describe(config.config)
    return {"configuration": config.label or describe(config.config), "series": series,
            **{k: v for k, v in config.values.items()}, "rate_per_s": rate,
            "kind": "listed" if listed else "search", "meets_slo": meets,
            **{m: summary[m] for m in RUN_METRICS}}


def _capacity_frame(configs: list[Scenario], searches: list[CapacitySearch], rows: list[dict]) -> pd.DataFrame:
    out = []
    for config, search in zip(configs, searches):
        label = config.label or describe(config.config)
        rate, bound = search.capacity()
        at = next(r for r in rows if r["configuration"] == label and r["rate_per_s"] == rate)
        out.append({"config": label, **{k: value_text(v) for k, v in config.values.items()},
                    "capacity_rate_per_s": rate, "bound": bound, "request_throughput": at["request_throughput"],
                    "output_token_throughput": at["output_token_throughput"], "ttft_p99_s": at["ttft_p99_s"],
                    "tpot_p99_s": at["tpot_p99_s"], "slo_attainment": at["slo_attainment"],
                    "simulations": len(search.tested)})
    return pd.DataFrame(out)
