"""`servesim plan`: the cheapest deployment that serves a target rate within the SLOs.

For every configuration of the search space (the cross product of the listed options: GPU, TP, batching knobs,
dtype, ...) the plan finds the fewest replicas n such that one replica, offered target/n requests/s, meets the
SLOs (at least `attainment` of the requests within every SLO given; a rejected request misses). That assumes
the target's Poisson arrivals split evenly at random over the replicas (each then sees a Poisson stream at
target/n); no router is simulated. Cost per hour = n x GPUs per replica x the GPU's price per GPU-hour (an
input: the catalog's dated list price, `--price gpu=USD`, or the GPU file's `usd_per_gpu_hour`); cost per million
output tokens divides it by the output tokens the target rate brings in an hour.

The replica search is a search over n: probe n, 2n-1, 4n-3, ... until one meets the SLOs, then bisect down to
the smallest n that does (the load per replica only falls as n grows). The probe that meets the SLOs at the
answer is the deployment's operating point, whose p99 latencies the plan reports.

What keeps it from wasting simulations (all off with `exhaustive=True`, which returns the same plan):
- bounds (simulator.runs.bounds): configurations that cannot meet the SLOs at any rate are found without
  simulating; the capacity bound gives the fewest replicas that could possibly do, where the search starts;
- dominance: configurations run cheapest-bound first, and once `top` configurations are known, one whose
  cheapest possible cost is above the top-th cost cannot enter the table and is skipped;
- early stops (simulator.runs.early_stop): a probe ends once its verdict is certainly "missed";
- reuse: a run whose running requests never reached max-num-seqs is the same run for any larger
  max-num-seqs, so the probe is not repeated.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pandas as pd

from simulator.config import ConfigError, SimConfig
from simulator.runs.bounds import Bound, WorkloadStats, bound_config
from simulator.runs.sweep import AxisError, label_of, value_text, varied

PROBE_METRICS = ("slo_attainment", "request_throughput", "output_token_throughput", "ttft_p50_s", "ttft_p99_s",
                 "tpot_p50_s", "tpot_p99_s", "e2e_p99_s", "max_concurrent_requests", "rejected")
DEFAULT_TP = (1, 2, 4, 8)
DEFAULT_MAX_NUM_SEQS = (64, 256)
DEFAULT_CHUNKED = (False, True)
WAVE_PER_WORKER = 4        # configurations searched at once per worker


@dataclass(frozen=True)
class PlanSpec:
    """What the plan must achieve and how it searches."""

    target_rate: float                       # requests/s to serve, over all replicas
    attainment: float = 0.9
    top: int = 10                            # rows of the plan (also what dominance protects)
    max_replicas: int = 512
    prices: Mapping[str, float] = field(default_factory=dict)   # GPU name -> USD per GPU-hour overrides
    exhaustive: bool = False                 # no bounds, no skipping, no early stops, no reuse
    cluster_router: str | None = None        # check the top rows as n replicas behind this router (one simulation)

    def __post_init__(self) -> None:
        if not (isinstance(self.target_rate, (int, float)) and self.target_rate > 0):
            raise AxisError(f"--target-rate must be positive, got {self.target_rate}")
        if not 0 < self.attainment <= 1:
            raise AxisError(f"--attainment must be in (0, 1], got {self.attainment}")
        if self.top < 1:
            raise AxisError(f"--top must be at least 1, got {self.top}")
        from simulator.cluster import ROUTERS
        if self.cluster_router is not None and self.cluster_router not in ROUTERS:
            raise AxisError(f"--cluster-check: unknown router '{self.cluster_router}'; choose one of: "
                            f"{', '.join(ROUTERS)}")


# ---- one probe: does one replica meet the SLOs at this rate? ----------------------------------------------------
@dataclass(frozen=True)
class Probe:
    """The verdict of one simulation, and what the plan keeps of it (small: it travels back from workers)."""

    meets: bool
    stopped_early: bool
    max_running: int
    metrics: Mapping[str, float]


def probe(config: SimConfig, progress=None, *, attainment: float, early_stop: bool) -> Probe:
    """Simulate `config` and judge it (an executor task: module level, picklable through functools.partial)."""
    from simulator.api import simulate
    from simulator.runs.capacity import meets_slos
    from simulator.runs.early_stop import SloVerdict
    stop = SloVerdict(config.slo_ttft_s, config.slo_tpot_s, attainment) if early_stop else None
    result = simulate(config, progress=progress, stop=stop)
    summary = result.summary()
    stopped = bool(result.meta.get("stopped_early"))
    metrics = {} if stopped else {k: summary[k] for k in PROBE_METRICS}
    return Probe(not stopped and meets_slos(summary, attainment), stopped,
                 int(summary["max_concurrent_requests"]), metrics)


class ProbeCache:
    """Probes by (config without max_num_seqs, rate); a probe whose running set stayed below its own
    max_num_seqs serves any config that differs only by a max_num_seqs above that running count."""

    def __init__(self) -> None:
        self._runs: dict[SimConfig, list[tuple[int, Probe]]] = {}

    @staticmethod
    def _key(config: SimConfig) -> SimConfig:
        return config.replace(max_num_seqs=1)

    def find(self, config: SimConfig) -> Probe | None:
        for cap, found in self._runs.get(self._key(config), ()):
            if found.max_running < cap and found.max_running < config.max_num_seqs:
                return found
        return None

    def add(self, config: SimConfig, found: Probe) -> None:
        self._runs.setdefault(self._key(config), []).append((config.max_num_seqs, found))


# ---- the search over replica counts ----------------------------------------------------------------------------
@dataclass
class ReplicaSearch:
    """The fewest replicas n in [start, limit] whose per-replica rate target/n meets the SLOs."""

    start: int
    limit: int
    tested: dict[int, bool] = field(default_factory=dict)

    def next_n(self) -> int | None:
        """The next replica count to probe; None when the search is over."""
        passing = [n for n, ok in self.tested.items() if ok]
        if not passing:
            if not self.tested:
                return self.start
            top = max(self.tested)
            return None if top >= self.limit else min(self.limit, 2 * top - self.start + 1)
        best = min(passing)
        below = [n for n, ok in self.tested.items() if not ok and n < best]
        low = max(below) if below else self.start - 1
        return None if best - low <= 1 else (low + best) // 2

    def answer(self) -> int | None:
        passing = [n for n, ok in self.tested.items() if ok]
        return min(passing) if passing else None


# ---- configurations ---------------------------------------------------------------------------------------------
@dataclass
class Candidate:
    """One configuration of the search space and what the plan learned of it."""

    label: str
    values: Mapping[str, Any]
    config: SimConfig | None
    status: str = "pending"          # ok | does not fit | invalid | cannot meet SLO | skipped
    reason: str = ""
    gpu_name: str = ""
    gpus_per_replica: int = 0
    usd_per_gpu_hour: float = math.nan
    bound: Bound | None = None
    search: ReplicaSearch | None = None
    probes: dict[int, Probe] = field(default_factory=dict)     # replica count -> its probe
    cluster: Probe | None = None     # the deployment simulated whole: n replicas behind a router
    simulations: int = 0
    reused: int = 0
    stopped_early: int = 0

    @property
    def min_replicas(self) -> int:
        return self.search.start if self.search else 1

    @property
    def replicas(self) -> int | None:
        return self.search.answer() if self.search else None

    @property
    def operating(self) -> Probe | None:
        """The probe at the answer: one replica of the deployment at its share of the target rate."""
        n = self.replicas
        return self.probes.get(n) if n else None

    def cost_per_hour(self, replicas: int | None = None) -> float:
        n = self.replicas if replicas is None else replicas
        return math.nan if n is None else n * self.gpus_per_replica * self.usd_per_gpu_hour


def _price(config: SimConfig, gpu, prices: Mapping[str, float]) -> float:
    for key in (gpu.name, config.gpu):
        if key in prices:
            return float(prices[key])
    if gpu.usd_per_gpu_hour > 0:
        return gpu.usd_per_gpu_hour
    raise AxisError(f"no price for GPU '{gpu.name}': give --price {gpu.name}=USD_PER_GPU_HOUR "
                    "(or usd_per_gpu_hour in its GPU file)")


def check_names(base: SimConfig, axes: Mapping[str, Sequence[Any]]) -> None:
    """Unknown GPU, model or dtype names are input errors (one line naming the flag), not plan rows."""
    from hardware.gpus import get_gpu
    from simulator.models import KV_DTYPES, WEIGHT_DTYPES, resolve_model
    from simulator.runs.options import OPTIONS_BY_FIELD
    checks = {"gpu": get_gpu, "model": lambda v: resolve_model(v, None),
              "dtype": lambda v: _choice(v, WEIGHT_DTYPES), "kv_dtype": lambda v: _choice(v, KV_DTYPES)}
    for name, check in checks.items():
        for value in axes.get(name, (getattr(base, name),)):
            try:
                check(value)
            except ValueError as exc:
                raise AxisError(f"{OPTIONS_BY_FIELD[name].flag} {value_text(value)}: {exc}") from None


def _choice(value: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"choose one of: {', '.join(choices)}")


def candidates(base: SimConfig, axes: Mapping[str, Sequence[Any]], spec: PlanSpec,
               stats: WorkloadStats) -> list[Candidate]:
    """Every configuration of the cross product, built and bounded (or marked: does not fit / invalid)."""
    from simulator.api import build_parts
    from simulator.cost import CostModelError
    from simulator.memory import ModelDoesNotFit
    check_names(base, axes)
    singles = {name: values[0] for name, values in axes.items() if len(values) == 1}
    base = base.replace(**singles)
    grid = varied(axes)
    out = []
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo))
        cand = Candidate(label_of(values) or "base", values, None)
        try:
            cand.config = base.replace(**values)
            parts = build_parts(cand.config)
        except ModelDoesNotFit as exc:
            cand.status, cand.reason = "does not fit", " ".join(str(exc).split())
        except (ConfigError, CostModelError) as exc:
            cand.status, cand.reason = "invalid", " ".join(str(exc).split())
        else:
            _assess(cand, parts, spec, stats)
        out.append(cand)
    return out


def _assess(cand: Candidate, parts, spec: PlanSpec, stats: WorkloadStats) -> None:
    """Price, GPUs per replica and (unless exhaustive) the bounds of a configuration that fits."""
    from simulator.api import resolve_hardware
    cfg = cand.config
    _, gpu = resolve_hardware(cfg)
    cand.gpu_name = gpu.name
    cand.usd_per_gpu_hour = _price(cfg, gpu, spec.prices)
    cand.gpus_per_replica = cfg.tp * cfg.pp
    start = 1
    if not spec.exhaustive:
        cand.bound = bound_config(cfg, parts, stats, spec.attainment)
        if cand.bound.infeasible_reason:
            cand.status, cand.reason = "cannot meet SLO", cand.bound.infeasible_reason + " (bound, not simulated)"
            return
        start = max(1, math.ceil(spec.target_rate / cand.bound.max_rate_per_s))
    if start > spec.max_replicas:
        cand.status = "cannot meet SLO"
        cand.reason = (f"capacity bound {cand.bound.max_rate_per_s:.3g} req/s per replica needs {start} replicas, "
                       f"more than --max-replicas {spec.max_replicas}")
        return
    cand.search = ReplicaSearch(start, spec.max_replicas)


# ---- running the plan ---------------------------------------------------------------------------------------------
@dataclass
class PlanOutcome:
    """Every configuration with its verdict, and how much work the search did and saved."""

    spec: PlanSpec
    base: SimConfig
    axes: dict[str, tuple[Any, ...]]
    candidates: list[Candidate]
    stats: WorkloadStats
    counts: dict[str, int]

    def frame(self) -> pd.DataFrame:
        """plan.csv: one row per configuration, cheapest first, then the rest by status."""
        rows = [self._row(c) for c in self.candidates]
        frame = pd.DataFrame(rows)
        order = {"ok": 0, "skipped": 1, "cannot meet SLO": 2, "does not fit": 3, "invalid": 4}
        frame["_order"] = frame["status"].map(order)
        frame = frame.sort_values(["_order", "cost_per_hour", "e2e_p99_s", "config"], kind="stable")
        frame = frame.drop(columns="_order").reset_index(drop=True)
        frame[["replicas", "gpus"]] = frame[["replicas", "gpus"]].astype("Int64")   # whole, or missing
        frame.insert(0, "rank", [i + 1 if s == "ok" else None for i, s in enumerate(frame["status"])])
        frame["rank"] = frame["rank"].astype("Int64")
        return frame

    def best(self) -> pd.DataFrame:
        frame = self.frame()
        return frame[frame["status"] == "ok"].head(self.spec.top)

    def _row(self, c: Candidate) -> dict:
        target = self.spec.target_rate
        n = c.replicas if c.status == "ok" else None
        cost = c.cost_per_hour() if n else math.nan
        tokens_per_hour = target * self.stats.mean_output * 3600
        metrics = c.operating.metrics if (c.operating and n) else {}
        return {"config": c.label, **{k: value_text(v) for k, v in c.values.items()}, "status": c.status,
                "reason": c.reason, "gpu_name": c.gpu_name, "replicas": n, "gpus": n * c.gpus_per_replica if n else None,
                "usd_per_gpu_hour": c.usd_per_gpu_hour, "cost_per_hour": cost,
                "cost_per_million_output_tokens": cost / tokens_per_hour * 1e6 if n else math.nan,
                "rate_per_replica": target / n if n else math.nan,
                "capacity_at_least": target / n if n else math.nan,
                "capacity_below": target / (n - 1) if n and n > 1 and (n - 1) in c.search.tested else math.nan,
                "capacity_per_gpu_at_least": target / n / c.gpus_per_replica if n else math.nan,
                "capacity_bound": c.bound.max_rate_per_s if c.bound else math.nan,
                **{k: metrics.get(k, math.nan) for k in ("ttft_p99_s", "tpot_p99_s", "e2e_p99_s",
                                                         "slo_attainment")},
                "cluster_meets_slo": c.cluster.meets if c.cluster else None,
                "cluster_slo_attainment": c.cluster.metrics.get("slo_attainment") if c.cluster else math.nan,
                "cluster_ttft_p99_s": c.cluster.metrics.get("ttft_p99_s") if c.cluster else math.nan,
                "simulations": c.simulations, "reused": c.reused, "stopped_early": c.stopped_early}


def workload_stats(base: SimConfig) -> WorkloadStats:
    """The lengths the plan's workload draws (they do not depend on the rate)."""
    from simulator.api import workload
    if base.trace is not None:
        raise AxisError("plan needs a synthetic workload (its arrival rate is what the plan scales): drop --trace "
                        "and describe the lengths with --prompt-len/--output-len (e.g. sharegpt)")
    specs = workload(base)
    if not specs:
        raise AxisError("the workload has no requests")
    return WorkloadStats.of(specs)


def run_plan(base: SimConfig, axes: Mapping[str, Sequence[Any]], spec: PlanSpec, *, jobs: int | None = None,
             board=None, executor: str = "local", address: str | None = None) -> PlanOutcome:
    """Search the cross product of `axes` over `base` for the cheapest deployments (see the module docstring)."""
    from simulator.runs.executors import make_executor
    if base.slo_ttft_s is None and base.slo_tpot_s is None:
        raise AxisError("plan needs an SLO: give --slo-ttft and/or --slo-tpot (seconds)")
    if base.replicas != 1 or base.pools or "replicas" in axes:
        raise AxisError("plan chooses the replica count itself: drop --replicas/--pools (see --cluster-check)")
    pool = make_executor(executor, jobs=jobs, board=board, address=address)   # a bad name fails before work
    stats = workload_stats(base)
    cands = candidates(base, axes, spec, stats)
    with pool as runner:
        width = WAVE_PER_WORKER * _workers(runner)
        counts = _search(cands, spec, runner, width)
        if spec.cluster_router:
            counts["cluster_simulations"] = check_clusters(cands, spec, runner)
    return PlanOutcome(spec, base, dict(axes), cands, stats, counts)


def _workers(runner) -> int:
    return getattr(runner, "workers", None) or 1


def _search(cands: list[Candidate], spec: PlanSpec, runner, width: int) -> dict[str, int]:
    """Search configurations cheapest-bound first, `width` at a time, their probes run together."""
    queue = sorted((c for c in cands if c.search), key=lambda c: (c.cost_per_hour(c.min_replicas), c.label))
    cache = None if spec.exhaustive else ProbeCache()
    task = partial(probe, attainment=spec.attainment, early_stop=not spec.exhaustive)
    active: list[Candidate] = []
    done: list[float] = []                    # cost per hour of every configuration found to work
    while queue or active:
        threshold = sorted(done)[spec.top - 1] if len(done) >= spec.top and not spec.exhaustive else math.inf
        while queue and len(active) < width:
            cand = queue.pop(0)
            if cand.cost_per_hour(cand.min_replicas) > threshold:
                _skip(cand, threshold, spec.top)
            else:
                active.append(cand)
        todo = [(c, c.search.next_n()) for c in active]
        _run_probes(todo, spec, runner, cache, task)
        for cand in list(active):
            if cand.search.next_n() is None:
                active.remove(cand)
                _finish(cand, spec)
                if cand.status == "ok":
                    done.append(cand.cost_per_hour())
    return _counts(cands)


def check_clusters(cands: list[Candidate], spec: PlanSpec, runner) -> int:
    """Simulate each of the `top` cheapest deployments whole: its n replicas behind the router, offered the
    target rate, with n times the workload's requests (so each replica sees as many as in the search)."""
    ok = sorted((c for c in cands if c.status == "ok"), key=lambda c: (c.cost_per_hour(), c.label))[:spec.top]
    configs = [c.config.replace(replicas=c.replicas, router=spec.cluster_router, rate=spec.target_rate,
                                num_requests=c.config.request_cap * c.replicas) for c in ok]
    task = partial(probe, attainment=spec.attainment, early_stop=False)
    results = runner.run([f"{c.label} cluster x{c.replicas}" for c in ok], configs, task=task) if ok else []
    for cand, found in zip(ok, results):
        cand.cluster = found
        cand.reason += (f"; as {cand.replicas} replicas behind a {spec.cluster_router} router: "
                        f"{found.metrics['slo_attainment']:.1%} of requests meet the SLOs")
    return len(results)


def _run_probes(todo, spec: PlanSpec, runner, cache: ProbeCache | None, task) -> None:
    """Each (candidate, n): probe one replica at target/n, reusing a cached run where it is the same run."""
    fresh = []
    for cand, n in todo:
        config = cand.config.replace(rate=spec.target_rate / n)
        found = cache.find(config) if cache else None
        if found is not None:
            cand.reused += 1
            _record(cand, n, found)
        else:
            fresh.append((cand, n, config))
    labels = [f"{c.label} x{n}" for c, n, _ in fresh]
    results = runner.run(labels, [config for _, _, config in fresh], task=task) if fresh else []
    for (cand, n, config), found in zip(fresh, results):
        cand.simulations += 1
        cand.stopped_early += found.stopped_early
        if cache:
            cache.add(config, found)
        _record(cand, n, found)


def _record(cand: Candidate, n: int, found: Probe) -> None:
    cand.search.tested[n] = found.meets
    cand.probes[n] = found


def _finish(cand: Candidate, spec: PlanSpec) -> None:
    n = cand.replicas
    if n is None:
        cand.status = "cannot meet SLO"
        cand.reason = (f"misses the SLOs even at {spec.target_rate / cand.search.limit:.3g} req/s per replica "
                       f"(--max-replicas {cand.search.limit})")
        return
    cand.status = "ok"
    below = [m for m, ok in cand.search.tested.items() if not ok and m < n]
    cand.reason = (f"{n} replica{'s' * (n > 1)} meet the SLOs at {spec.target_rate / n:.3g} req/s each"
                   + (f"; {max(below)} did not" if below else ""))


def _skip(cand: Candidate, threshold: float, top: int) -> None:
    cand.status = "skipped"
    n = cand.min_replicas
    cand.reason = (f"costs at least ${cand.cost_per_hour(n):,.2f}/h ({n} replica{'s' * (n > 1)} by the capacity "
                   f"bound), above the {top}th cheapest found (${threshold:,.2f}/h): not simulated")


def _counts(cands: list[Candidate]) -> dict[str, int]:
    by_status = {status: sum(c.status == status for c in cands)
                 for status in ("ok", "skipped", "cannot meet SLO", "does not fit", "invalid")}
    bound_ruled = sum(c.status == "cannot meet SLO" and c.search is None for c in cands)
    return {"configurations": len(cands), **by_status, "ruled_out_by_bounds": bound_ruled,
            "simulations": sum(c.simulations for c in cands), "reused": sum(c.reused for c in cands),
            "stopped_early": sum(c.stopped_early for c in cands)}


# ---- command-line helpers -----------------------------------------------------------------------------------------
def parse_prices(items: Sequence[str]) -> dict[str, float]:
    """['h100-sxm=2.49', 'h200=3.5,l40s=0.9'] -> {gpu name: USD per GPU-hour}; catalog names are normalized."""
    from hardware.gpus import get_gpu
    prices: dict[str, float] = {}
    for item in (piece.strip() for text in items for piece in str(text).split(",")):
        name, sep, usd = item.partition("=")
        try:
            value = float(usd)
        except ValueError:
            value = math.nan
        if not sep or not name.strip() or not value > 0 or not math.isfinite(value):
            raise AxisError(f"--price {item}: expected GPU=USD_PER_GPU_HOUR with a positive price, "
                            "e.g. --price h100-sxm=2.49")
        try:
            key = get_gpu(name).name
        except ValueError:
            key = name.strip().lower()           # a GPU file's name (its stem)
        prices[key] = value
    return prices


def with_default_axes(base: SimConfig, axes: Mapping[str, Sequence[Any]], given: set[str]) -> dict:
    """The search space: the given axes, plus defaults for the options not given at all (TP 1,2,4,8,
    max-num-seqs 64,256, chunked prefill off,on, and every priced catalog GPU that holds the model's weights
    at the largest TP)."""
    out = dict(axes)
    if "tp" not in given:
        out["tp"] = DEFAULT_TP
    if "max_num_seqs" not in given and base.batching == "continuous":
        out["max_num_seqs"] = DEFAULT_MAX_NUM_SEQS
    if "chunked_prefill" not in given and base.batching == "continuous":
        out["chunked_prefill"] = DEFAULT_CHUNKED
    if "gpu" not in given and "gpu_file" not in given:
        out["gpu"] = _gpus_that_fit(base, max(out.get("tp", (base.tp,))) * base.pp)
    from simulator.runs.options import OPTIONS_BY_FIELD
    order = list(OPTIONS_BY_FIELD)                      # labels read in the options' order: gpu first
    return {name: out[name] for name in sorted(out, key=lambda n: order.index(n) if n in order else len(order))}


def _gpus_that_fit(base: SimConfig, gpus_per_replica: int) -> tuple[str, ...]:
    from hardware.gpus import GPUS
    from simulator.models import resolve_model
    model = resolve_model(None if base.model_config else base.model, base.model_config)
    per_gpu = model.weight_bytes(base.dtype) / gpus_per_replica
    fit = tuple(name for name, gpu in GPUS.items()
                if gpu.usd_per_gpu_hour > 0 and per_gpu < gpu.hbm_bytes * base.gpu_memory_utilization)
    if not fit:
        raise AxisError(f"no catalog GPU holds {model.name}'s weights at {gpus_per_replica} GPUs per replica; "
                        "give --gpu and --tp")
    return fit
