"""Terminal output of `servesim experiment`: the claim table (rich) or JSON, and the experiment list."""
from __future__ import annotations

import json

from simulator.experiments.base import Experiment, ExperimentResult


def print_result(result: ExperimentResult, as_json: bool = False) -> None:
    """The claims of one run: published number, servesim's, held; JSON with `as_json`."""
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
        return
    from rich.console import Console
    from rich.table import Table
    verdict = "every claim held" if result.held else "not every claim held"
    table = Table(title=f"servesim experiment {result.name}: {verdict} ({result.wall_s:.1f} s)",
                  caption=result.source, show_lines=True)
    for col in ("claim", "published", "servesim", "held", "check"):
        table.add_column(col, overflow="fold")
    for c in result.claims:
        table.add_row(c.claim, c.published, c.measured_text, "[green]yes[/]" if c.held else "[red]no[/]", c.check)
    console = Console()
    console.print(table)
    for note in result.notes:
        console.print(f"[dim]{note}[/]")


def print_listing(experiments: dict[str, Experiment], as_json: bool = False) -> None:
    rows = [{"name": e.name, "title": e.title, "source": e.source, "claim": e.claim} for e in experiments.values()]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table
    table = Table(title="servesim experiments (run one: servesim experiment NAME)", show_lines=True)
    for col in ("name", "claim", "source"):
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(row["name"], row["claim"], row["source"])
    Console().print(table)
