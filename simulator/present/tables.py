"""Terminal and machine-readable tables of many scenarios: the comparison and the capacities.

The comparison table shows the varied options, then the summary metrics in display units, with the best value
of each column in bold green and starred, so that it stays visible without colors (which direction is better
comes from report.SUMMARY_COLUMNS). CSV and JSON carry every metric, unrounded, in SI units.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from simulator.present.report import SATURATED, SUMMARY_COLUMNS, best_labels, format_value, summary_frame

TERMINAL_COLUMNS = ("done", "req/s", "out tok/s", "goodput req/s", "SLO met %", "TTFT p50 ms", "TTFT p99 ms",
                    "TPOT p50 ms", "TPOT p99 ms", "E2E p99 s", "KV used %", "preempt", "MFU %")
BEST_STYLE = "bold green"
TABLE_WIDTH = 120             # stdout that is not a terminal (a file, a pipe): tables wrap to this width
BEST_CAPTION = "* best value per column (bold green); SATURATED: offered load above what it serves (latency grows " \
               "with run length), never best"


def best(text: str) -> str:
    """A best cell: colored where the terminal has colors, starred everywhere."""
    return f"[{BEST_STYLE}]{text}*[/]"


def _console():
    """stdout console; when stdout is not a terminal, wide enough that tables are not squeezed."""
    from rich.console import Console
    console = Console()
    return console if console.is_terminal else Console(width=TABLE_WIDTH)


def comparison_table(runs: Sequence[tuple[str, Any]], option_values: Sequence[dict[str, str]], title: str):
    """A rich Table: one row per scenario, varied options first, best value of each metric highlighted.

    It fits TABLE_WIDTH columns (cells wrap): a metric with one value in every row moves to the caption, and a
    metric nobody measured (goodput without an SLO) is left out."""
    from rich import box
    from rich.table import Table
    frame = summary_frame([(label, r.summary()) for label, r in runs])
    top = best_labels(frame)
    options = list(option_values[0]) if option_values else []
    shown = {c.header: [format_value(c, v) for v in frame[c.header]] for c in SUMMARY_COLUMNS}
    measured = [c for c in SUMMARY_COLUMNS if c.header in TERMINAL_COLUMNS and frame[c.header].notna().any()]
    same = [c for c in measured if len(runs) > 1 and len(set(shown[c.header])) == 1]
    columns = [c for c in measured if c not in same]
    caption = BEST_CAPTION + "".join(f"; {c.header} {shown[c.header][0]} in every row" for c in same)
    table = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, pad_edge=False,
                  min_width=min(len(title) + 4, TABLE_WIDTH))
    for name in options or ["scenario"]:
        table.add_column(name.replace("_", "-"), overflow="fold")
    table.add_column("load", overflow="fold", min_width=9)
    for c in columns:
        table.add_column(c.header, justify="right", overflow="fold")
    for (label, _), values in zip(runs, option_values or [{} for _ in runs]):
        cells = [values[o] for o in options] or [label]
        cells.append("[bold red]SATURATED[/]" if frame.loc[label, SATURATED] else "ok")
        for c in columns:
            text = format_value(c, frame.loc[label, c.header])
            cells.append(best(text) if label in top.get(c.header, ()) else text)
        table.add_row(*cells)
    return table


def capacity_table(capacity: pd.DataFrame, option_columns: Sequence[str], title: str):
    """A rich Table of capacities with throughput, p99 TTFT and p99 TPOT at capacity; best capacity bold."""
    from rich.table import Table
    table = Table(title=title, caption="capacity: highest rate meeting the SLOs; metrics measured at it; "
                                       "* highest capacity")
    for name in option_columns or ["config"]:
        table.add_column(name.replace("_", "-"))
    for header in ("capacity req/s", "req/s", "out tok/s", "TTFT p99 ms", "TPOT p99 ms", "SLO met %", "sims"):
        table.add_column(header, justify="right")
    top = capacity["capacity_rate_per_s"].max()
    for row in capacity.to_dict("records"):
        rate = f"{'' if row['bound'] == '=' else row['bound'] + ' '}{row['capacity_rate_per_s']:g}"
        cells = [str(row[o]) for o in option_columns] or [row["config"]]
        cells += [best(rate) if row["capacity_rate_per_s"] == top and len(capacity) > 1 else rate,
                  _g(row["request_throughput"]), _g(row["output_token_throughput"], "{:.0f}"),
                  _g(row["ttft_p99_s"] * 1e3), _g(row["tpot_p99_s"] * 1e3), _g(row["slo_attainment"] * 100, "{:.1f}"),
                  str(row["simulations"])]
        table.add_row(*cells)
    return table


def _g(value: float, fmt: str = "{:.3g}") -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:,.0f}" if abs(value) >= 1000 else fmt.format(value)


def emit(frame: pd.DataFrame, fmt: str, table_factory) -> None:
    """Print `frame` as CSV or JSON records, or the rich table that `table_factory()` builds."""
    if fmt == "csv":
        print(frame.to_csv(index=False), end="")
    elif fmt == "json":
        records = json.loads(frame.to_json(orient="records"))
        print(json.dumps(records, indent=2))
    else:
        _console().print(table_factory())


def summary_rows(runs: Sequence[tuple[str, Any]]) -> pd.DataFrame:
    """One row per scenario: its label and every flat summary metric (SI units)."""
    return pd.DataFrame([{"scenario": label, **{k: v for k, v in r.summary().items() if not isinstance(v, dict)}}
                         for label, r in runs])
