"""Recorder (appends rows while the simulation runs) and SimResult (DataFrames and the METRICS.md summary).

Rows are kept in typed columns (`array.array`: 8 bytes a value, appends as cheap as a list's) and turned into
DataFrames once, at the end (SimPy's monitoring advice). One row per engine step holds both the step and the KV
sample taken at its start; a run of decode steps extends every column at once. Inter-token latencies are kept
as (gap, count) pairs: gaps within one step are mostly equal, so this is exact and small.

With `summary_only`, rows are folded into running sums as they are flushed (every `RUN_BATCH` steps or runs)
and inter-token gaps into a log-spaced histogram, so memory does not grow with simulated time; the summary's
means, maxima, busy time and MFU/MBU are the same sums (up to float rounding order), and ITL percentiles come
from the histogram (bins 0.1% wide).
"""
from __future__ import annotations

import json
import math
import shutil
from array import array
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from itertools import chain, repeat
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from simulator.kv_cache.base import KVUsage
from simulator.percentiles import weighted_percentile  # noqa: F401  (also imported from here)
from simulator.step import BOUNDS, FAMILIES, RunCosts, StepCost
from simulator.saturation import ArrivalFit, load_summary

STEP_COLUMNS = ("step", "start_s", "duration_s", "batch_size", "num_prefill_tokens", "num_decode_tokens",
                "context_tokens", "flops", "bytes", "bound", "gemm_s", "attention_s", "elementwise_s",
                "communication_s", "overhead_s", "swap_s", "num_running", "num_waiting", "num_preempted")
KV_COLUMNS = ("time_s", "used_tokens", "allocated_tokens", "capacity_tokens", "free_tokens",
              "largest_free_hole_tokens", "cached_tokens", "evictable_tokens", "utilization", "internal_fragmentation",
              "external_fragmentation",
              "num_running", "num_waiting", "preemptions_total")
REQUEST_COLUMNS = ("request_id", "arrival_s", "prompt_tokens", "output_tokens", "status", "reject_reason",
                   "scheduled_s", "first_token_s", "finish_s", "ttft_s", "tpot_s", "e2e_s", "queueing_s",
                   "num_preemptions", "recomputed_tokens", "swapped_bytes", "cached_tokens", "met_slo")
# What a request's row holds when it is taken (request_log.py); requests_frame derives the latencies.
RAW_REQUEST_COLUMNS = ("request_id", "arrival_s", "prompt_tokens", "output_tokens", "status", "reject_reason",
                       "scheduled_s", "first_token_s", "finish_s", "num_preemptions", "recomputed_tokens",
                       "swapped_bytes", "cached_tokens")
# Speculative decoding (vLLM's spec-decode metrics), in the summary of speculative runs only: verify steps, mean
# accepted drafts per verify step, acceptance rate (accepted / proposed drafts), mean acceptance length (tokens per
# verify step: accepted + 1).
SPEC_KEYS = ("spec_verify_steps", "spec_mean_accepted_tokens", "spec_acceptance_rate",
             "spec_mean_acceptance_length")
_LAT = lambda name: tuple(f"{name}_{k}_s" for k in ("mean", "p50", "p90", "p99", "max"))   # noqa: E731
SUMMARY_KEYS = ("num_requests", "completed", "rejected", "duration_s", "request_throughput",
                "output_token_throughput", "total_token_throughput", *_LAT("ttft"), *_LAT("tpot"), *_LAT("itl"),
                *_LAT("e2e"), "goodput", "slo_attainment", "offered_rate", "ttft_growth", "saturated", "kv_utilization_mean", "internal_fragmentation_mean",
                "external_fragmentation_mean", "kv_utilization_max", "max_concurrent_requests", "preemptions",
                "preemptions_recompute", "preemptions_swap", "preemption_rate_per_s", "prefix_cache_hit_rate",
                "cached_prompt_tokens", "prefix_cache_evictions", "mfu", "mbu", "busy_s", "num_steps", *SPEC_KEYS,
                "rejected_reasons")
# What one row holds, in append order: (name, array typecode). 'bound' is a code into BOUNDS.
ROW_FIELDS = (("start_s", "d"), ("duration_s", "d"), ("batch_size", "q"), ("num_prefill_tokens", "q"),
              ("num_decode_tokens", "q"), ("context_tokens", "q"), ("flops", "d"), ("bytes", "d"), ("bound", "b"),
              ("gemm_s", "d"), ("attention_s", "d"), ("elementwise_s", "d"), ("communication_s", "d"),
              ("overhead_s", "d"), ("swap_s", "d"), ("num_running", "q"), ("num_waiting", "q"),
              ("num_preempted", "q"), ("used_tokens", "q"), ("allocated_tokens", "q"), ("capacity_tokens", "q"),
              ("free_tokens", "q"), ("largest_free_hole_tokens", "q"), ("cached_tokens", "q"),
              ("evictable_tokens", "q"),
              ("preemptions_total", "q"))
# What a summary-only step row keeps (the columns StepSums.add reads), in order.
SUM_FIELDS = ("duration_s", "flops", "bytes", "num_running", "num_waiting", "used_tokens", "allocated_tokens",
              "capacity_tokens", "free_tokens", "largest_free_hole_tokens", "cached_tokens",
              "evictable_tokens")
BOUND_CODE = {b: i for i, b in enumerate(BOUNDS)}
RUN_BATCH = 256                     # steps or runs queued before they become rows (summary-only: are summed)
ITL_COMPACT = 1 << 20                # gaps kept before equal ones are merged (or binned, summary-only)
ITL_BINS_PER_DECADE = 2303           # ln(10) / ln(1.001): bins 0.1% wide
ITL_MIN_S, ITL_DECADES = 1e-7, 12    # histogram range 0.1 us .. 100 ks


class StepRecord(NamedTuple):
    """One engine step as it is recorded: its cost and shape, the queues and the KV usage when it starts."""

    cost: StepCost
    seconds: float                  # how long the step holds the GPU: cost.seconds + swap_s
    swap_s: float                   # KV moved between GPU and host before the step
    batch_size: int
    num_prefill_tokens: int
    num_decode_tokens: int
    context_tokens: int
    num_running: int
    num_waiting: int
    num_preempted: int              # requests this step's schedule preempted
    used_tokens: int                # KV tokens stored once the step has run
    usage: KVUsage


class RunRecord(NamedTuple):
    """A run of decode steps, queued until it is expanded into rows (`expand_runs`)."""

    row0: int                       # the step number of its first step
    start_s: float
    costs: RunCosts
    num_decode: int                 # sequences computed each step (live requests and padding)
    live: int                       # of which requests, each computing and sampling one token
    context_tokens: int             # attended in the first step; + live per later step
    used_tokens: int                # KV tokens stored before the run
    num_running: int
    num_waiting: int
    usage: KVUsage                  # KV snapshot before the run
    new_blocks: list[int]           # blocks allocated in each step
    block_tokens: int               # tokens per block (0: requests do not grow)
    preemptions_total: int
    first_gaps: list[tuple[float, int]]   # (last token time, requests) behind the gaps of the run's first tokens


# StepRecord(*fields) and RunRecord(*fields) without the named tuples' Python-level __new__ (every field given, in
# order): one of them is built every engine step or run, and tuple.__new__ builds one in under half the time.
new_step_record = partial(tuple.__new__, StepRecord)
_new_run_record = partial(tuple.__new__, RunRecord)


class Recorder:
    """Collects one row per engine step (the step and the KV sample at its start) and inter-token gaps.

    Step-by-step rows are appended as they come; runs of decode steps are queued as one record each and turned
    into rows in batches with numpy (`_expand_runs`), so a run costs one append in the simulation loop. Every
    row carries its step number, which orders the two kinds of rows at the end.
    """

    def __init__(self, summary_only: bool = False) -> None:
        self.summary_only = summary_only
        self.cols = _columns()                  # step-by-step rows
        self.run_cols = _columns()              # rows expanded from runs
        self._step_rows: list[tuple] = []       # step-by-step rows not yet in the columns
        self._cost_parts: dict[int, tuple] = {}  # id(StepCost) -> (the cost, its row fields)
        self._runs: list[RunRecord] = []        # runs not yet expanded
        self.num_rows = 0                       # steps recorded so far
        self.preemptions_total = 0
        self.itl_values, self.itl_counts = array("d"), array("q")
        self.folded = StepSums()
        self.itl_hist = np.zeros(ITL_BINS_PER_DECADE * ITL_DECADES + 1, dtype=np.int64)

    def step(self, start_s: float, rec: StepRecord) -> None:
        """One step's row (before this step's preemptions count in preemptions_total). Rows wait in a list and go
        into the columns in bulk; summary-only rows keep just what the sums need."""
        self.num_rows += 1
        cost = rec.cost
        if self.summary_only:
            self._step_rows.append((rec.seconds, cost.flops, cost.bytes, rec.num_running, rec.num_waiting,
                                    rec.used_tokens, *rec.usage))
        else:
            part = self._cost_parts.get(id(cost))
            if part is None or part[0] is not cost:       # the entry pins `cost`, so its id is not reused
                fam = dict(cost.breakdown)
                part = (cost, cost.flops, cost.bytes, BOUND_CODE[cost.bound], *(fam.get(f, 0.0) for f in FAMILIES))
                if len(self._cost_parts) >= 1 << 14:
                    self._cost_parts.clear()
                self._cost_parts[id(cost)] = part
            self._step_rows.append((start_s, rec.seconds, rec.batch_size, rec.num_prefill_tokens,
                                    rec.num_decode_tokens, rec.context_tokens, *part[1:], rec.swap_s, rec.num_running,
                                    rec.num_waiting, rec.num_preempted, rec.used_tokens, *rec.usage,
                                    self.preemptions_total, self.num_rows - 1))
        self.preemptions_total += rec.num_preempted
        if len(self._step_rows) >= RUN_BATCH:
            self._flush_steps()

    def _flush_steps(self) -> None:
        rows, self._step_rows = self._step_rows, []
        if not rows:
            return
        if self.summary_only:
            self.folded.add(dict(zip(SUM_FIELDS, map(np.asarray, zip(*rows)))))
            return
        for col, values in zip(self.cols.values(), zip(*rows)):
            col.extend(values)

    def run(self, start_s: float, costs: RunCosts, run, usage: KVUsage, new_blocks: list[int], block_tokens: int,
            first_gaps: list[tuple[float, int]]) -> None:
        """A run of decode steps, recorded as the step-by-step path would record each of its steps.

        `usage` is the KV snapshot before the run; `new_blocks[j]` blocks of `block_tokens` tokens are allocated
        in step j (block managers serve any request from any free block, so the largest hole is all free
        memory). `first_gaps` lists (last token time, requests) for the run's first tokens; every later step
        adds one gap per live request.
        """
        self._runs.append(_new_run_record((self.num_rows, start_s, costs, run.num_decode, run.live,
                                           run.context_tokens, run.used_tokens, run.num_running, run.num_waiting,
                                           usage, new_blocks, block_tokens, self.preemptions_total, first_gaps)))
        self.num_rows += len(costs.ends)
        if len(self._runs) >= RUN_BATCH:
            self._expand_runs()

    def itl_gaps(self, gaps: list[float], counts: list[int] | None = None) -> None:
        """Inter-token gaps of a step: `gaps[i]` seen `counts[i]` times (once each by default)."""
        self.itl_values.extend(gaps)
        self.itl_counts.extend(counts if counts is not None else repeat(1, len(gaps)))
        if len(self.itl_values) >= ITL_COMPACT:
            self._compact_itl()

    # ---- turning runs into rows ----
    def _expand_runs(self) -> None:
        runs, self._runs = self._runs, []
        if not runs:
            return
        rows, gaps, counts = expand_runs(runs, full=not self.summary_only)
        if self.summary_only:
            self.folded.add(rows)
        else:
            for name, col in self.run_cols.items():
                col.frombytes(rows[name].astype(col.typecode, copy=False).tobytes())
        self.itl_values.frombytes(gaps.tobytes())
        self.itl_counts.frombytes(counts.tobytes())
        if len(self.itl_values) >= ITL_COMPACT:
            self._compact_itl()

    def _compact_itl(self) -> None:
        """Merge equal gaps (exact), or in summary-only mode bin them into the histogram."""
        values, counts = _as_numpy(self.itl_values), _as_numpy(self.itl_counts)
        if self.summary_only:
            self.folded.add_itl(values, counts)
            self.itl_hist += np.bincount(itl_bin(values), weights=counts,
                                         minlength=len(self.itl_hist)).astype(np.int64)
            self.itl_values, self.itl_counts = array("d"), array("q")
            return
        unique, inverse = np.unique(values, return_inverse=True)
        merged = np.bincount(inverse, weights=counts, minlength=len(unique)).astype(np.int64)
        self.itl_values, self.itl_counts = array("d", unique.tobytes()), array("q", merged.tobytes())

    # ---- summary-only folding ----
    def fold(self) -> None:
        """Fold the rows kept so far into running sums and drop them."""
        self._flush_steps()
        self._expand_runs()
        for cols in (self.cols, self.run_cols):
            if len(cols["row"]):
                self.folded.add({name: _as_numpy(col) for name, col in cols.items()})
                for col in cols.values():
                    del col[:]
        self._compact_itl()

    # ---- results ----
    def result(self, config: dict, meta: dict, req_df: pd.DataFrame) -> "SimResult":
        """The SimResult of the run, with the requests frame the engine's RequestLog made."""
        if self.summary_only:
            self.fold()
            centers = itl_bin_centers()
            hit = np.nonzero(self.itl_hist)[0]
            itl = pd.DataFrame({"itl_s": centers[hit], "count": self.itl_hist[hit]})
            empty = {name: _as_numpy(col) for name, col in _columns().items()}
            return SimResult(config=config, meta={**meta, "step_sums": self.folded.as_dict()}, requests=req_df,
                             steps=steps_frame(empty), kv=kv_frame(empty), itl=itl)
        self._flush_steps()
        self._expand_runs()
        self._compact_itl()
        rows = self._rows_in_order()
        itl = pd.DataFrame({"itl_s": _as_numpy(self.itl_values), "count": _as_numpy(self.itl_counts)})
        return SimResult(config=config, meta=meta, requests=req_df, steps=steps_frame(rows), kv=kv_frame(rows),
                         itl=itl)


    def _rows_in_order(self) -> dict[str, np.ndarray]:
        """Every row, step-by-step and expanded ones, in step order; each column is written once, straight to
        its rows' places (every step has one row, numbered from 0), and the typed columns are dropped as they are
        used (a long run holds millions of rows)."""
        at_step, at_run = _view(self.cols["row"]), _view(self.run_cols["row"])     # the views keep their buffers
        assert len(at_step) + len(at_run) == self.num_rows, "a step without a row, or with two"
        rows = {}
        for name in self.cols:
            step, run = _view(self.cols[name]), _view(self.run_cols[name])
            rows[name] = np.empty(self.num_rows, step.dtype)
            rows[name][at_step] = step
            rows[name][at_run] = run
            self.cols[name], self.run_cols[name] = array(self.cols[name].typecode), array(self.run_cols[name].typecode)
        return rows


def _view(col: array) -> np.ndarray:
    dtype = {"d": np.float64, "q": np.int64, "b": np.int8}[col.typecode]
    return np.frombuffer(col, dtype=dtype) if len(col) else np.zeros(0, dtype)


def _spread(totals: list[float], k: np.ndarray) -> np.ndarray:
    """Per-run totals spread evenly over each run's steps (only their sums are used)."""
    return np.repeat(np.asarray(totals, dtype=np.float64) / k, k)


def _per_step(values: list, k: np.ndarray, flat) -> np.ndarray:
    """A RunCosts family over all steps of the runs: floats repeat over their run, lists are taken as they are."""
    if not any(isinstance(v, list) for v in values):
        return np.repeat(np.asarray(values, dtype=np.float64), k)
    return flat(v if isinstance(v, list) else [v] * int(n) for v, n in zip(values, k))


def _columns() -> dict[str, array]:
    return {name: array(code) for name, code in ROW_FIELDS + (("row", "q"),)}


def _as_numpy(col: array) -> np.ndarray:
    dtype = {"d": np.float64, "q": np.int64, "b": np.int8}[col.typecode]
    return np.frombuffer(col, dtype=dtype).copy() if len(col) else np.zeros(0, dtype)


def expand_runs(runs: list[RunRecord], full: bool = True) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Rows (as columns) and inter-token gaps of queued runs (see Recorder.run), with numpy; without `full`,
    only the columns the summary's sums need.

    Every value is the same float operation the step-by-step path performs: a step starts where the previous
    one ended, context and stored tokens grow by one per live request, blocks add up within a run.
    """
    r = RunRecord(*zip(*runs))                           # each field as a tuple over the runs
    costs, live, usage, first_gaps = r.costs, r.live, r.usage, r.first_gaps
    ends = [c.ends for c in costs]
    k = np.fromiter(map(len, ends), np.int64, len(runs))
    total = int(k.sum())
    offset = np.cumsum(k) - k
    within = np.arange(total) - np.repeat(offset, k)
    rep = lambda values, dtype=np.int64: np.repeat(np.asarray(values, dtype=dtype), k)
    flat = lambda lists, dtype=np.float64: np.fromiter(chain.from_iterable(lists), dtype, total)
    end = flat(ends)
    begin = np.empty(total)
    begin[1:] = end[:-1]
    if total:
        begin[offset] = r.start_s
    live_rep = rep(live)
    step_blocks = flat(r.new_blocks, np.int64)
    blocks = np.cumsum(step_blocks)
    blocks -= np.repeat(blocks[offset] - step_blocks[offset], k)          # cumulative within each run
    grown = blocks * rep(r.block_tokens)
    u = KVUsage(*map(rep, zip(*usage)))                   # each KV snapshot field, per step
    free = u.free_tokens - grown
    largest = np.where(rep(r.block_tokens) > 0, free, u.largest_free_hole_tokens)
    totals = costs[0].flops_total is not None          # priced without detail: only FLOP/byte totals per run
    rows = {"duration_s": flat(c.seconds for c in costs),
            "flops": _spread([c.flops_total for c in costs], k) if totals else flat(c.flops for c in costs),
            "bytes": _spread([c.bytes_total for c in costs], k) if totals else flat(c.bytes for c in costs),
            "num_running": rep(r.num_running), "num_waiting": rep(r.num_waiting),
            "used_tokens": rep(r.used_tokens) + (within + 1) * live_rep,
            "allocated_tokens": u.allocated_tokens + grown, "capacity_tokens": u.capacity_tokens,
            "free_tokens": free, "largest_free_hole_tokens": largest, **_run_cache(u, grown)}
    if full:
        zeros = np.zeros(total, np.int64)
        rows.update({"start_s": begin, "batch_size": rep(r.num_decode), "num_prefill_tokens": zeros,
                     "num_decode_tokens": rep(r.num_decode), "context_tokens": rep(r.context_tokens) + within * live_rep,
                     "bound": np.fromiter(map(BOUND_CODE.__getitem__, chain.from_iterable(c.bound for c in costs)),
                                          np.int8, total),
                     **{f"{f}_s": _per_step([getattr(c, f"{f}_s") for c in costs], k, flat) for f in FAMILIES},
                     "swap_s": np.zeros(total), "num_preempted": zeros, "preemptions_total": rep(r.preemptions_total),
                     "row": rep(r.row0) + within})
    return (rows, *_run_gaps(ends, first_gaps, end, within, live_rep))


def _run_gaps(ends, first_gaps, end: np.ndarray, within: np.ndarray, live_rep: np.ndarray):
    """(gaps, counts) of runs' inter-token gaps: their first tokens' (from each run's first_gaps), then one gap
    per live request for every later step of a run."""
    idx = np.nonzero(within > 0)[0]
    first_vals = [e[0] - t for e, pairs in zip(ends, first_gaps) for t, _ in pairs]
    first_counts = [c for pairs in first_gaps for _, c in pairs]
    gaps = np.concatenate([np.asarray(first_vals, dtype=np.float64), end[idx] - end[idx - 1]])
    counts = np.concatenate([np.asarray(first_counts, dtype=np.int64), live_rep[idx]])
    return gaps, counts


def _run_cache(u: KVUsage, grown: np.ndarray) -> dict[str, np.ndarray]:
    """Prefix-cache tokens at each step of runs (`u`: the KV snapshot before each step's run, per step): a run
    caches nothing, and its growth takes never-cached free blocks first, then evicts cached free ones (as the
    step-by-step path does, step by step)."""
    evicted = np.maximum(grown - (u.free_tokens - u.evictable_tokens), 0)
    return {"cached_tokens": u.cached_tokens - evicted, "evictable_tokens": u.evictable_tokens - evicted}


def steps_frame(rows: dict[str, np.ndarray]) -> pd.DataFrame:
    """The steps frame from rows in step order (bound codes become text)."""
    n = len(rows["start_s"])
    data = {"step": np.arange(n, dtype=np.int64)}
    for name in STEP_COLUMNS[1:]:
        data[name] = pd.Series(np.asarray(BOUNDS, dtype=object)[rows[name]]) if name == "bound" else rows[name]
    return pd.DataFrame(data, copy=False)                # the arrays are fresh; pandas copies on write


def kv_frame(rows) -> pd.DataFrame:
    """KV samples, one per step at its start; the ratios of METRICS.md (external only while requests wait)."""
    return pd.DataFrame({"time_s": rows["start_s"], "used_tokens": rows["used_tokens"],
                         "allocated_tokens": rows["allocated_tokens"], "capacity_tokens": rows["capacity_tokens"],
                         "free_tokens": rows["free_tokens"],
                         "largest_free_hole_tokens": rows["largest_free_hole_tokens"],
                         "cached_tokens": rows["cached_tokens"], "evictable_tokens": rows["evictable_tokens"],
                         **kv_ratios(rows), "num_running": rows["num_running"], "num_waiting": rows["num_waiting"],
                         "preemptions_total": rows["preemptions_total"]}, copy=False)


def kv_ratios(rows) -> dict[str, np.ndarray]:
    """utilization, internal and external fragmentation of each KV sample (columns of `rows`)."""
    cap = np.asarray(rows["capacity_tokens"])
    used, alloc = np.asarray(rows["used_tokens"]), np.asarray(rows["allocated_tokens"])
    free, largest = np.asarray(rows["free_tokens"]), np.asarray(rows["largest_free_hole_tokens"])
    external = np.zeros(len(cap))
    holes = (np.asarray(rows["num_waiting"]) > 0) & (free > 0)
    external[holes] = 1.0 - largest[holes] / free[holes]
    return {"utilization": used / cap if len(cap) else np.zeros(0),
            "internal_fragmentation": (alloc - used) / cap if len(cap) else np.zeros(0),
            "external_fragmentation": external}


def itl_bin(values: np.ndarray) -> np.ndarray:
    """Histogram bin of each gap (log-spaced, ITL_BINS_PER_DECADE per decade from ITL_MIN_S)."""
    pos = np.floor(np.log10(np.maximum(values, ITL_MIN_S) / ITL_MIN_S) * ITL_BINS_PER_DECADE)
    return np.minimum(pos, ITL_BINS_PER_DECADE * ITL_DECADES).astype(np.int64)


def itl_bin_centers() -> np.ndarray:
    """Geometric centre of each bin, seconds."""
    i = np.arange(ITL_BINS_PER_DECADE * ITL_DECADES + 1)
    return ITL_MIN_S * 10.0 ** ((i + 0.5) / ITL_BINS_PER_DECADE)


@dataclass
class StepSums:
    """Running sums of folded rows: what summarize() needs from the steps, KV samples and gaps."""

    num_steps: int = 0
    busy_s: float = 0.0
    flops: float = 0.0
    bytes: float = 0.0
    weighted: dict[str, float] = field(default_factory=lambda: {"utilization": 0.0, "internal_fragmentation": 0.0,
                                                                "external_fragmentation": 0.0})
    kv_utilization_max: float = 0.0
    max_running: int = 0
    itl_count: int = 0
    itl_sum_s: float = 0.0
    itl_max_s: float = float("nan")

    def add(self, rows) -> None:
        """Add rows given as columns (those expand_runs gives without `full`, at least)."""
        ratios = kv_ratios(rows)
        w = np.asarray(rows["duration_s"])
        if not len(w):
            return
        self.num_steps += len(w)
        self.busy_s += float(w.sum())
        self.flops += float(np.sum(rows["flops"]))
        self.bytes += float(np.sum(rows["bytes"]))
        for col in self.weighted:
            self.weighted[col] += float((ratios[col] * w).sum())
        self.kv_utilization_max = max(self.kv_utilization_max, float(ratios["utilization"].max()))
        self.max_running = max(self.max_running, int(np.max(rows["num_running"])))

    def add_itl(self, values: np.ndarray, counts: np.ndarray) -> None:
        self.itl_count += int(counts.sum())
        self.itl_sum_s += float((values * counts).sum())
        top = float(values.max())
        self.itl_max_s = top if math.isnan(self.itl_max_s) else max(self.itl_max_s, top)

    def as_dict(self) -> dict[str, Any]:
        return {"num_steps": self.num_steps, "busy_s": self.busy_s, "flops": self.flops, "bytes": self.bytes,
                **{f"{k}_mean": v / self.busy_s if self.busy_s > 0 else 0.0 for k, v in self.weighted.items()},
                "kv_utilization_max": self.kv_utilization_max, "max_running": self.max_running,
                "itl_count": self.itl_count, "itl_sum_s": self.itl_sum_s, "itl_max_s": self.itl_max_s}


def requests_frame(columns: dict[str, np.ndarray], slo: tuple[float | None, ...]) -> pd.DataFrame:
    """One row per request, by request_id, from the columns of RAW_REQUEST_COLUMNS (times NaN where unset,
    status and reject_reason as text), with the derived latencies."""
    order = np.argsort(columns["request_id"], kind="stable")
    df = pd.DataFrame({name: pd.Series(np.asarray(columns[name])[order],
                                       dtype=object if name in ("status", "reject_reason") and not len(order) else None)
                       for name in RAW_REQUEST_COLUMNS})
    df["ttft_s"] = df.first_token_s - df.arrival_s
    df["e2e_s"] = df.finish_s - df.arrival_s
    df["queueing_s"] = df.scheduled_s - df.arrival_s
    # TPOT = (finish - first token) / (output tokens - 1); undefined for a single output token.
    df["tpot_s"] = (df.finish_s - df.first_token_s) / (df.output_tokens - 1).where(df.output_tokens > 1)
    df["met_slo"] = meets_slo(df, *slo)
    return df[list(REQUEST_COLUMNS)]


def meets_slo(df: pd.DataFrame, slo_ttft_s: float | None, slo_tpot_s: float | None,
              slo_e2e_s: float | None = None) -> pd.Series:
    """Finished within every SLO given; a single-token request's TPOT counts as 0 (vLLM's goodput rule)."""
    ok = df.status == "finished"
    if slo_ttft_s is not None:
        ok &= df.ttft_s <= slo_ttft_s
    if slo_tpot_s is not None:
        ok &= df.tpot_s.fillna(0.0) <= slo_tpot_s
    if slo_e2e_s is not None:
        ok &= df.e2e_s <= slo_e2e_s
    return ok


def _stats(name: str, series: pd.Series) -> dict[str, float]:
    s = series.dropna().to_numpy()
    if len(s) == 0:
        return {f"{name}_{k}_s": float("nan") for k in ("mean", "p50", "p90", "p99", "max")}
    p50, p90, p99 = np.percentile(s, [50, 90, 99])
    return {f"{name}_mean_s": float(s.mean()), f"{name}_p50_s": float(p50), f"{name}_p90_s": float(p90),
            f"{name}_p99_s": float(p99), f"{name}_max_s": float(s.max())}


def _itl_stats(itl: pd.DataFrame) -> dict[str, float]:
    v, c = itl.itl_s.to_numpy(float), itl["count"].to_numpy(np.int64)
    if c.sum() == 0:
        return _stats("itl", pd.Series([], dtype=float))
    out = {"itl_mean_s": float((v * c).sum() / c.sum())}
    for q in (50, 90, 99):
        out[f"itl_p{q}_s"] = weighted_percentile(v, c, q)
    out["itl_max_s"] = float(v.max())
    return out


@dataclass
class SimResult:
    """One scenario's results: the resolved config, meta (GPU peaks, memory plan), and DataFrames."""

    config: dict[str, Any]
    meta: dict[str, Any]
    requests: pd.DataFrame
    steps: pd.DataFrame
    kv: pd.DataFrame
    itl: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["itl_s", "count"]))

    def summary(self) -> dict[str, Any]:
        """The run summary of METRICS.md (times in seconds)."""
        return summarize(self)

    def vllm_result(self) -> dict[str, Any]:
        """This run as `vllm bench serve --save-result` saves one (keys and units of simulator/vllm_result.py)."""
        from simulator.vllm_result import vllm_result
        streamed = self.meta.get("request_rows_path") if "request_sums" in self.meta else None
        requests = pd.read_parquet(streamed) if streamed and Path(streamed).is_file() else self.requests
        return vllm_result(self.config, self.meta, requests, self.steps, self.itl)

    def save(self, path: str | Path) -> Path:
        """Write requests/steps/kv/itl CSVs, summary.json, vllm_result.json and config.json into folder `path`
        (and requests.parquet when the request rows streamed to Parquet)."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        for name in ("requests", "steps", "kv", "itl"):
            getattr(self, name).to_csv(out / f"{name}.csv", index=False)
        streamed = self.meta.get("request_rows_path")
        if streamed and Path(streamed).is_file():      # request rows went to Parquet: keep them with the rest
            shutil.copyfile(streamed, out / "requests.parquet")
        (out / "summary.json").write_text(json.dumps(_jsonable(self.summary()), indent=2) + "\n")
        (out / "vllm_result.json").write_text(json.dumps(_jsonable(self.vllm_result())) + "\n")
        resolved = {k: v for k, v in self.meta.items() if k not in VOLATILE_META}
        (out / "config.json").write_text(json.dumps(_jsonable({**self.config, "resolved": resolved}), indent=2)
                                         + "\n")
        return out

    @classmethod
    def load(cls, path: str | Path) -> "SimResult":
        """Read a folder written by `save` (or by `servesim run`); a truncated or edited file is a one-line
        ValueError naming it (row counts are checked against summary.json)."""
        src = Path(path)
        if not (src / "config.json").is_file():
            raise FileNotFoundError(f"{src} is not a servesim results folder (no config.json)")
        config = _load_json(src / "config.json")
        meta = config.pop("resolved", {})
        frames = {n: _load_csv(src / f"{n}.csv") for n in ("requests", "steps", "kv")}
        summary = _load_json(src / "summary.json") if (src / "summary.json").is_file() else {}
        _check_rows(src / "requests.csv", frames["requests"], None if "request_sums" in meta else
                    summary.get("num_requests"), "requests")
        _check_rows(src / "steps.csv", frames["steps"], None if "step_sums" in meta else summary.get("num_steps"),
                    "steps")
        if "reject_reason" not in frames["requests"]:
            raise ValueError(f"{src / 'requests.csv'}: no reject_reason column; not a servesim requests table")
        frames["requests"]["reject_reason"] = frames["requests"]["reject_reason"].astype(str)
        itl_path = src / "itl.csv"
        itl = _load_csv(itl_path) if itl_path.is_file() else pd.DataFrame(columns=["itl_s", "count"])
        return cls(config=config, meta=meta, itl=itl, **frames)


def _load_json(path: Path) -> dict[str, Any]:
    from workloads.files import read_json
    return read_json(path, "results file", max_bytes=1_000_000_000)


def _load_csv(path: Path) -> pd.DataFrame:
    from workloads.files import check_file
    check_file(path, "results file", max_bytes=100_000_000_000)
    with path.open("rb") as handle:
        handle.seek(0, 2)
        if handle.tell():
            handle.seek(-1, 2)
            if handle.read(1) != b"\n":                     # every row servesim writes ends its line
                raise ValueError(f"{path}: the last line is cut short: the file is truncated")
    try:
        return pd.read_csv(path, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a servesim CSV table ({' '.join(str(exc).split())[:200]})") from None


def _check_rows(path: Path, frame: pd.DataFrame, expected: Any, what: str) -> None:
    if isinstance(expected, int) and len(frame) != expected:
        raise ValueError(f"{path}: {len(frame)} {what} rows where summary.json counts {expected}: the file is "
                         "truncated or edited")


def summarize(res: SimResult) -> dict[str, Any]:
    req = res.requests
    out = _request_summary(req) if "request_sums" not in res.meta else _streamed_summary(res.meta["request_sums"])
    duration = out["duration_s"]
    per_s = (lambda x: x / duration) if duration > 0 else (lambda x: float("nan"))
    out.update(_itl_stats(res.itl))
    sums = res.meta.get("step_sums") or _step_sums(res.steps, res.kv)
    if "itl_count" in sums and sums["itl_count"]:        # summary-only: exact mean and max, binned percentiles
        out["itl_mean_s"] = sums["itl_sum_s"] / sums["itl_count"]
        out["itl_max_s"] = sums["itl_max_s"]
    busy = sums["busy_s"]
    for col, key in (("utilization", "kv_utilization_mean"), ("internal_fragmentation", "internal_fragmentation_mean"),
                     ("external_fragmentation", "external_fragmentation_mean")):
        out[key] = sums[f"{col}_mean"]
    out["kv_utilization_max"] = sums["kv_utilization_max"]
    out["max_concurrent_requests"] = sums["max_running"]
    out["preemptions_recompute"] = int(res.meta.get("preemptions_recompute", 0))
    out["preemptions_swap"] = int(res.meta.get("preemptions_swap", 0))
    out["preemption_rate_per_s"] = per_s(out["preemptions"])
    out["prefix_cache_evictions"] = int(res.meta.get("prefix_cache_evictions", 0))
    peak_flops, peak_bw = res.meta.get("peak_flops_per_s", 0), res.meta.get("peak_bytes_per_s", 0)
    # Per GPU: a step's FLOPs and bytes are one tensor-parallel shard's, over every layer; each of the pp
    # pipeline stages holds 1/pp of the layers, and idles while the others run (no micro-batch overlap).
    pp = int(res.config.get("pp") or 1)
    out["mfu"] = float(sums["flops"] / (busy * peak_flops * pp)) if busy and peak_flops else 0.0
    out["mbu"] = float(sums["bytes"] / (busy * peak_bw * pp)) if busy and peak_bw else 0.0
    out["busy_s"] = busy
    out["num_steps"] = sums["num_steps"]
    out.update({key: value for key, value in (res.meta.get("speculative") or {}).items() if key in SPEC_KEYS})
    fit = res.meta["request_sums"]["arrival_fit"] if "request_sums" in res.meta else _arrival_fit(req)
    out.update(load_summary(fit, out["request_throughput"]))
    if not any(res.config.get(k) is not None for k in SLO_FIELDS):     # no SLO: goodput is not defined
        out["goodput"] = out["slo_attainment"] = None
    return {key: out[key] for key in SUMMARY_KEYS if key in out}       # spec-decode keys only when it was on


SLO_FIELDS = ("slo_ttft_s", "slo_tpot_s", "slo_e2e_s")
VOLATILE_META = ("wall_s",)      # how long the run took: not a result, so identical runs write identical files


def _arrival_fit(req: pd.DataFrame) -> ArrivalFit:
    fit = ArrivalFit()
    done = (req.status == "finished").to_numpy()
    fit.add(req.arrival_s.to_numpy(), np.where(done, req.ttft_s.to_numpy(dtype=np.float64), np.nan))
    return fit


def _request_summary(req: pd.DataFrame) -> dict[str, Any]:
    """The summary's request statistics, from the requests frame."""
    done = req[req.status == "finished"]
    first_arrival = req.arrival_s.min() if len(req) else 0.0
    duration = float(done.finish_s.max() - first_arrival) if len(done) else 0.0
    per_s = (lambda x: x / duration) if duration > 0 else (lambda x: float("nan"))
    met = int(req.met_slo.sum())
    return {"num_requests": int(len(req)), "completed": int(len(done)),
            "rejected": int((req.status == "rejected").sum()), "duration_s": duration,
            "request_throughput": per_s(len(done)),
            "output_token_throughput": per_s(float(done.output_tokens.sum())),
            "total_token_throughput": per_s(float(done.prompt_tokens.sum() + done.output_tokens.sum())),
            **_stats("ttft", done.ttft_s), **_stats("tpot", done.tpot_s), **_stats("e2e", done.e2e_s),
            "goodput": per_s(met), "slo_attainment": met / len(req) if len(req) else float("nan"),
            "preemptions": int(req.num_preemptions.sum()), **_cache_hits(req[req.status == "finished"]),
            "rejected_reasons": dict(Counter(req.loc[req.status == "rejected", "reject_reason"]))}


def _cache_hits(done: pd.DataFrame) -> dict[str, Any]:
    """Prompt tokens served from the prefix cache, and their share of all prompt tokens (completed requests)."""
    cached = int(done.cached_tokens.sum()) if "cached_tokens" in done else 0   # results saved before the column
    prompt = int(done.prompt_tokens.sum())
    return {"cached_prompt_tokens": cached, "prefix_cache_hit_rate": cached / prompt if prompt else 0.0}


def _streamed_summary(sums: dict[str, Any]) -> dict[str, Any]:
    """The same from the sums of rows that streamed to Parquet (percentiles from 0.1% bins)."""
    n, done = sums["num_requests"], sums["completed"]
    duration = sums["last_finish_s"] - sums["first_arrival_s"] if done else 0.0
    per_s = (lambda x: x / duration) if duration > 0 else (lambda x: float("nan"))
    latency = {k: v for k, v in sums.items() if k.startswith(("ttft_", "tpot_", "e2e_"))}
    return {"num_requests": n, "completed": done, "rejected": sums["rejected"], "duration_s": duration,
            "request_throughput": per_s(done), "output_token_throughput": per_s(float(sums["output_tokens"])),
            "total_token_throughput": per_s(float(sums["total_tokens"])), **latency,
            "goodput": per_s(sums["met_slo"]), "slo_attainment": sums["met_slo"] / n if n else float("nan"),
            "preemptions": sums["preemptions"], "cached_prompt_tokens": sums["cached_tokens"],
            "prefix_cache_hit_rate": sums["cached_tokens"] / sums["prompt_tokens"] if sums["prompt_tokens"] else 0.0,
            "rejected_reasons": dict(sums["rejected_reasons"])}


def _step_sums(steps: pd.DataFrame, kv: pd.DataFrame) -> dict[str, Any]:
    """The sums summarize() needs, from full per-step frames (duration-weighted KV means, as np.average)."""
    busy = float(steps.duration_s.sum()) if len(steps) else 0.0
    weights = steps.duration_s.to_numpy() if len(steps) else np.array([])
    out = {"num_steps": int(len(steps)), "busy_s": busy,
           "flops": float(steps.flops.sum()) if len(steps) else 0.0,
           "bytes": float(steps.bytes.sum()) if len(steps) else 0.0,
           "kv_utilization_max": float(kv.utilization.max()) if len(kv) else 0.0,
           "max_running": int(kv.num_running.max()) if len(kv) else 0}
    for col in ("utilization", "internal_fragmentation", "external_fragmentation"):
        out[f"{col}_mean"] = float(np.average(kv[col], weights=weights)) if busy > 0 else 0.0
    return out


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return None if np.isnan(obj) else float(obj)
    return obj
