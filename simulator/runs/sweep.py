"""Many scenarios at once: comma lists and ranges of options, their cross product, and capacity search.

- `parse_axes` reads command-line values: comma lists (`static,continuous`), numeric ranges `start:stop[:step]`
  (stop included), or both (`1,2,5:20:5`). Every bad value is a one-line AxisError naming the flag.
- `expand` turns a base SimConfig and the varied options into labelled scenarios (the cross product).
- `run_comparison` runs them (in parallel, see simulator.runs.parallel) and keeps every result.
- `run_sweep` finds each configuration's capacity: the highest arrival rate at which at least `attainment`
  (default 90%) of the requests meet every SLO given (TTFT and/or TPOT; a rejected request misses). The
  listed rates are tried first; then the search bisects between the highest rate that met the SLOs and the
  lowest that did not, until the two are within `tolerance` (default 2%) of each other; if every listed
  rate met (or missed) them, it doubles (or halves) the rate first, at most `max_outside` times.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from simulator.config import SimConfig
from simulator.runs.options import OPTIONS_BY_FIELD, ScenarioOption, split_items

LOAD_AXES = ("rate", "batch_size", "prompt_len", "output_len", "max_num_seqs")
AXIS_TITLES = {"rate": "offered load (requests/s)", "batch_size": "static batch size (requests)",
               "prompt_len": "prompt length (tokens)", "output_len": "output length (tokens)",
               "max_num_seqs": "max running requests (max-num-seqs)"}
SELF_EXPLAINING = ("batching", "kv", "gpu", "model")   # their values name themselves in a label
MAX_SCENARIOS = 2000
MAX_RANGE_POINTS = 1000


class AxisError(ValueError):
    """A bad list, range or combination of options; the message is one line naming the flag."""


def split_list(flag: str, text: str) -> list[str]:
    """Split a comma list (options.split_items); an empty item is an error."""
    items = split_items(text)
    if "" in items:
        raise AxisError(f"{flag}: empty value in '{text}'; write a comma list like a,b,c")
    return items


def expand_range(opt: ScenarioOption, text: str) -> list[Any]:
    """`start:stop[:step]` -> [start, start+step, ..., <= stop] (step defaults to 1)."""
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise AxisError(f"{opt.flag}: bad range '{text}'; write start:stop:step, e.g. 2:40:2")
    try:
        start, stop, step = (opt.parse(p) for p in (parts + ["1"])[:3])
    except ValueError as exc:
        raise AxisError(f"{opt.flag}: bad range '{text}': {exc}") from None
    if step <= 0:
        raise AxisError(f"{opt.flag}: range step must be positive in '{text}'")
    if start > stop:
        raise AxisError(f"{opt.flag}: empty range '{text}' (start {start:g} is above stop {stop:g})")
    count = int(math.floor((stop - start) / step + 1e-9)) + 1
    if count > MAX_RANGE_POINTS:
        raise AxisError(f"{opt.flag}: range '{text}' has {count} points; at most {MAX_RANGE_POINTS}")
    return [opt.kind(round(start + i * step, 10)) for i in range(count)]


def parse_axis(field_name: str, text: Any) -> tuple[Any, ...]:
    """All values one option takes: a comma list whose numeric items may be ranges. Duplicates are errors."""
    opt = OPTIONS_BY_FIELD[field_name]
    values: list[Any] = []
    for item in split_list(opt.flag, text) if isinstance(text, str) else [text]:
        if isinstance(item, str) and opt.kind in (int, float) and ":" in item:
            values += expand_range(opt, item)
            continue
        try:
            values.append(opt.parse(item) if isinstance(item, str) else item)
        except ValueError as exc:
            raise AxisError(f"{opt.flag}: {exc}") from None
    repeated = sorted({value_text(v) for v in values if values.count(v) > 1})
    if repeated:
        raise AxisError(f"{opt.flag}: {', '.join(repeated)} listed more than once")
    return tuple(values)


def parse_axes(scenario: Mapping[str, Any]) -> dict[str, tuple[Any, ...]]:
    """{field: raw command-line text} -> {field: values}, in SCENARIO_OPTIONS order."""
    return {name: parse_axis(name, scenario[name]) for name in OPTIONS_BY_FIELD if name in scenario}


def value_text(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def label_of(values: Mapping[str, Any], skip: Sequence[str] = ()) -> str:
    """'static / contiguous / rate=5': choice values alone, other options as name=value."""
    parts = [value_text(v) if name in SELF_EXPLAINING else f"{name.replace('_', '-')}={value_text(v)}"
             for name, v in values.items() if name not in skip]
    return " / ".join(parts)


def describe(config: SimConfig) -> str:
    """A label for a configuration when nothing is varied."""
    return f"{config.gpu} / {config.model} / {config.batching} / {config.kv}"


@dataclass(frozen=True)
class Scenario:
    """One point of the cross product: its label, config, and the values of the varied options."""

    label: str
    config: SimConfig
    values: Mapping[str, Any] = field(default_factory=dict)


def varied(axes: Mapping[str, Sequence[Any]]) -> dict[str, tuple[Any, ...]]:
    """The options that take more than one value (single values belong to the base config)."""
    return {name: tuple(values) for name, values in axes.items() if len(values) > 1}


def expand(base: SimConfig, axes: Mapping[str, Sequence[Any]]) -> list[Scenario]:
    """The cross product of the varied options over `base`, first option varying slowest."""
    empty = [OPTIONS_BY_FIELD[n].flag if n in OPTIONS_BY_FIELD else n for n, v in axes.items() if len(v) == 0]
    if empty:
        raise AxisError(f"{', '.join(empty)}: no values, so there is nothing to run")
    singles = {name: values[0] for name, values in axes.items() if len(values) == 1}
    base = _replace(base, singles, "")
    grid = varied(axes)
    grid = {n: grid[n] for n in sorted(grid, key=lambda n: n in LOAD_AXES)}  # load axes vary fastest
    count = math.prod(len(v) for v in grid.values())
    if count > MAX_SCENARIOS:
        raise AxisError(f"{count} scenarios in the cross product; at most {MAX_SCENARIOS}: list fewer values")
    scenarios = []
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo))
        label = label_of(values) or describe(base)
        scenarios.append(Scenario(label, _replace(base, values, label), values))
    return scenarios


def _replace(base: SimConfig, values: Mapping[str, Any], label: str) -> SimConfig:
    try:
        return base.replace(**values)
    except ValueError as exc:
        where = f"scenario '{label}': " if label else ""
        raise AxisError(f"{where}{exc}") from None


def validate(base: SimConfig, axes: Mapping[str, Sequence[Any]], scenarios: Sequence[Scenario]) -> None:
    """Fail before running anything: each listed value alone (error names its flag), then each scenario."""
    from simulator.api import build_parts, workload
    for name, values in varied(axes).items():
        flag = OPTIONS_BY_FIELD[name].flag if name in OPTIONS_BY_FIELD else name
        for value in values:
            try:
                cfg = base.replace(**{name: value})
                build_parts(cfg)
                workload(cfg)
            except ValueError as exc:
                raise AxisError(f"{flag} {value_text(value)}: {' '.join(str(exc).split())}") from None
    for scenario in scenarios:
        try:
            build_parts(scenario.config)
        except ValueError as exc:
            raise AxisError(f"scenario '{scenario.label}': {' '.join(str(exc).split())}") from None


# ---- running a comparison ------------------------------------------------------------------------------------
RUN_METRICS = ("completed", "rejected", "request_throughput", "output_token_throughput", "goodput",
               "slo_attainment", "ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s", "e2e_p99_s",
               "kv_utilization_mean", "preemptions", "mfu", "mbu", "offered_rate", "saturated")


@dataclass
class Comparison:
    """Scenarios and their results, in order, plus what was varied (for tables, CSV and the report)."""

    base: SimConfig
    scenarios: list[Scenario]
    results: list[Any]

    @property
    def varied_fields(self) -> list[str]:
        return list(self.scenarios[0].values) if self.scenarios else []

    def runs(self) -> list[tuple[str, Any]]:
        return [(s.label, r) for s, r in zip(self.scenarios, self.results)]

    def option_rows(self) -> list[dict[str, str]]:
        """The varied options of each scenario, as text (the first columns of the comparison table)."""
        return [{k: value_text(v) for k, v in s.values.items()} for s in self.scenarios]

    def frame(self) -> pd.DataFrame:
        """comparison.csv: one row per scenario, the varied options, then every flat summary metric."""
        rows = []
        for s, r in zip(self.scenarios, self.results):
            flat = {k: v for k, v in r.summary().items() if not isinstance(v, dict)}
            rows.append({"scenario": s.label, **{k: value_text(v) for k, v in s.values.items()}, **flat})
        return pd.DataFrame(rows)

    def load_frame(self) -> pd.DataFrame | None:
        """Throughput and p99 latency versus rate, one curve per scenario minus its rate (when rate varies)."""
        if "rate" not in self.varied_fields:
            return None
        rows = [{"config": label_of(s.values, skip=("rate",)) or describe(self.base),
                 "rate_per_s": s.config.rate, **{m: r.summary()[m] for m in RUN_METRICS}}
                for s, r in zip(self.scenarios, self.results)]
        return pd.DataFrame(rows)


def run_comparison(base: SimConfig, axes: Mapping[str, Sequence[Any]], *, jobs: int | None = None,
                   board=None, save_root: Path | None = None, executor: str = "local",
                   address: str | None = None) -> Comparison:
    """Expand, validate, and run every scenario (results identical whatever `jobs` or `executor`). With
    `save_root`, each result is also saved there, in folder_name(i, label)."""
    from simulator.runs.executors import make_executor
    from simulator.runs.outputs import folder_name
    scenarios = expand(base, axes)
    validate(base, axes, scenarios)
    dirs = [save_root / folder_name(i, s.label) for i, s in enumerate(scenarios, 1)] if save_root else None
    with make_executor(executor, jobs=jobs, board=board, address=address) as runner:
        results = runner.run([s.label for s in scenarios], [s.config for s in scenarios], dirs)
    return Comparison(base, scenarios, results)


# ---- the notebook API: compare(...) -------------------------------------------------------------------------
def _as_values(name: str, value: Any) -> tuple[Any, ...]:
    """A Python axis value: a list/tuple/range of values, a command-line string ('5,10' or '2:40:2'), or one value."""
    if name not in OPTIONS_BY_FIELD and name not in SimConfig.__dataclass_fields__:
        valid = ", ".join(sorted(SimConfig.__dataclass_fields__))
        raise AxisError(f"unknown option '{name}'; valid options: {valid}")
    if isinstance(value, str) and name in OPTIONS_BY_FIELD:
        return parse_axis(name, value)
    if isinstance(value, (list, tuple, range)):
        return tuple(value)
    return (value,)


def _labels_by_difference(dicts: Sequence[Mapping[str, Any]]) -> list[str]:
    """Label each config by the fields whose values differ across the list ('static / rate=5'). None is
    'not set here' (a saved result records the resolved value), so it differs from nothing."""
    keys = [k for k in (dicts[0] if dicts else {}) if k != "resolved"
            and len({repr(d.get(k)) for d in dicts if d.get(k) is not None}) > 1]
    labels = [label_of({k: d.get(k) for k in keys}) for d in dicts]
    return labels if len(set(labels)) == len(labels) and all(labels) else \
        [f"{i}: {label}" if label else f"scenario {i}" for i, label in enumerate(labels, 1)]


def _named_items(configs: Any) -> list[tuple[str, Any]]:
    """(label, SimConfig or already-computed result) pairs from a mapping or a sequence."""
    if isinstance(configs, Mapping):
        return [(str(label), item) for label, item in configs.items()]
    items = list(configs)
    dicts = [item.to_dict() if isinstance(item, SimConfig) else dict(getattr(item, "config", {})) for item in items]
    return list(zip(_labels_by_difference(dicts), items))


def compare_many(configs: Any = None, *, jobs: int | None = None, progress: bool = False,
                 **axes: Any) -> dict[str, Any]:
    """Run several scenarios on the local cores (or the configured executor); return {label: SimResult} in order.

    compare(SimConfig(num_requests=500), batching=["static", "continuous"], rate=[5, 10])  # cross product
    compare([config_a, config_b])                 # labelled by the fields that differ
    compare({"mine": config, "saved": SimResult.load("servesim-out")})   # results are used as they are
    Each scenario is deterministic from its seed, so results do not depend on `jobs` (default: all cores).
    Exported as simulator.compare.
    """
    from simulator.runs.parallel import Board, Runner
    if configs is None or isinstance(configs, SimConfig):
        base = configs or SimConfig()
        grid = {name: _as_values(name, value) for name, value in axes.items()}
        scenarios = expand(base, grid)
        validate(base, grid, scenarios)
        named = [(s.label, s.config) for s in scenarios]
    elif axes:
        raise AxisError("give option lists (compare(base, rate=[5, 10])) or a list of configs, not both")
    else:
        named = _named_items(configs)
    todo = [(label, item) for label, item in named if isinstance(item, SimConfig)]
    board = Board("scenarios") if progress else None
    with (board or _nothing()), Runner(jobs, board) as runner:
        computed = dict(zip([label for label, _ in todo], runner.run(*zip(*todo)) if todo else []))
    return {label: computed.get(label, item) if isinstance(item, SimConfig) else item for label, item in named}


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
