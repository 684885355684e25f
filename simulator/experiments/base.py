"""What an experiment is and what it returns: a published claim, servesim's number beside it, a table, a figure.

An `Experiment` is a small declarative record (name, title, source, the claim in one sentence, how servesim's
scenario differs from the published one) plus a `run(quick)` function. `run` simulates at run time and returns
an `ExperimentResult`: one `Claim` row per checked number (published, measured, held), a DataFrame (the CSV)
and a plotly figure. Nothing servesim reports is stored here: every measured number comes from a run.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go


class ExperimentError(ValueError):
    """An unknown experiment name (or none given); the message lists the choices."""


@dataclass(frozen=True)
class Claim:
    """One published number and servesim's: `held` says whether servesim's lies where the claim says.

    `check` states the rule `held` applies (e.g. "20% <= measured <= 38%"), so a reader can judge it.
    """

    claim: str
    published: str
    measured: float
    measured_text: str
    held: bool
    check: str

    def to_dict(self) -> dict[str, Any]:
        value = None if not math.isfinite(self.measured) else float(self.measured)
        return {"claim": self.claim, "published": self.published, "servesim": self.measured_text,
                "servesim_value": value, "held": bool(self.held), "check": self.check}


@dataclass(frozen=True)
class ExperimentResult:
    """An experiment's outcome: claims, the data behind the figure (written as CSV), the figure, notes."""

    name: str
    title: str
    source: str
    claims: tuple[Claim, ...]
    data: pd.DataFrame
    figure: go.Figure
    notes: tuple[str, ...] = ()
    wall_s: float = 0.0

    @property
    def held(self) -> bool:
        return all(c.held for c in self.claims)

    def to_dict(self) -> dict[str, Any]:
        return {"experiment": self.name, "title": self.title, "source": self.source, "held": self.held,
                "claims": [c.to_dict() for c in self.claims], "notes": list(self.notes),
                "wall_s": round(self.wall_s, 2)}


@dataclass(frozen=True)
class Experiment:
    """A built-in experiment: the published claim, where it comes from, and the function that checks it."""

    name: str
    title: str
    source: str
    claim: str
    setup: str
    run_fn: Callable[[bool], ExperimentResult] = field(repr=False)

    def run(self, quick: bool = False) -> ExperimentResult:
        """Run the scenarios (`quick`: a reduced version, same claims, fewer requests and points)."""
        return self.run_fn(quick)


def within(value: float, lo: float | None = None, hi: float | None = None) -> bool:
    """lo <= value <= hi (a missing bound is open); NaN is never within."""
    if not math.isfinite(value):
        return False
    return bool((lo is None or value >= lo) and (hi is None or value <= hi))


def claim(text: str, published: str, measured: float, fmt: str, *, lo: float | None = None,
          hi: float | None = None) -> Claim:
    """A claim checked as lo <= measured <= hi; `fmt` formats numbers (e.g. '{:.1%}', '{:.2f}x')."""
    bounds = [f"{fmt.format(lo)} <= " if lo is not None else "", "servesim",
              f" <= {fmt.format(hi)}" if hi is not None else ""]
    text_value = fmt.format(measured) if math.isfinite(measured) else "n/a"
    return Claim(claim=text, published=published, measured=measured, measured_text=text_value,
                 held=within(measured, lo, hi), check="".join(bounds))


def write_outputs(result: ExperimentResult, folder: Path) -> Path:
    """figure.html, data.csv and claims.json into `folder`, via a temporary sibling: no partial output."""
    from simulator.runs.outputs import staged
    with staged(Path(folder)) as tmp:
        result.figure.write_html(tmp / "figure.html", include_plotlyjs=True, full_html=True)
        result.data.to_csv(tmp / "data.csv", index=False)
        (tmp / "claims.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return Path(folder)
