"""Built-in experiments: the field's headline results, re-run in servesim and checked against the papers.

`EXPERIMENTS` maps a name to an `Experiment`; `get_experiment(name)` fails with the list of choices. Each
experiment's `run(quick)` returns an `ExperimentResult` (claims with published and measured numbers, a
DataFrame, a plotly figure); `write_outputs` saves figure.html, data.csv and claims.json; `print_result` and
`print_listing` are what `servesim experiment` prints.
Add one: a module with an `EXPERIMENT` record, plus one line in the tuple below.
"""
from __future__ import annotations

import dataclasses
import time

from simulator.experiments import (bandwidth_what_if, bound_by_phase, chunked_prefill, continuous_vs_static,
                                   cuda_graphs, gqa_and_quantization, kv_waste, paged_throughput,
                                   pd_disaggregation, prefix_caching, speculative_decoding)
from simulator.experiments.base import Claim, Experiment, ExperimentError, ExperimentResult, write_outputs
from simulator.experiments.render import print_listing, print_result

EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (
    kv_waste.EXPERIMENT,
    paged_throughput.EXPERIMENT,
    continuous_vs_static.EXPERIMENT,
    chunked_prefill.EXPERIMENT,
    bound_by_phase.EXPERIMENT,
    bandwidth_what_if.EXPERIMENT,
    gqa_and_quantization.EXPERIMENT,
    cuda_graphs.EXPERIMENT,
    speculative_decoding.EXPERIMENT,
    prefix_caching.EXPERIMENT,
    pd_disaggregation.EXPERIMENT,
)}


def get_experiment(name: str | None) -> Experiment:
    """The experiment called `name`; unknown (or no) names raise ExperimentError listing the choices."""
    if name not in EXPERIMENTS:
        given = f"unknown experiment '{name}'" if name else "no experiment given"
        raise ExperimentError(f"{given}; choose one of: {', '.join(EXPERIMENTS)} (or --list)")
    return EXPERIMENTS[name]


def run_experiment(name: str, quick: bool = False) -> ExperimentResult:
    """Run one experiment and record its wall time."""
    start = time.perf_counter()
    result = get_experiment(name).run(quick)
    return dataclasses.replace(result, wall_s=time.perf_counter() - start)


__all__ = ["EXPERIMENTS", "Claim", "Experiment", "ExperimentError", "ExperimentResult", "get_experiment",
           "print_listing", "print_result", "run_experiment", "write_outputs"]
