"""Regenerate docs/figures/<experiment>.png and the numbers in docs/experiments.md from fresh runs.

    python benchmarks/experiments_docs.py            # every experiment, full size
    python benchmarks/experiments_docs.py kv-waste   # just these
    python benchmarks/experiments_docs.py --quick    # reduced runs (a smoke test of the docs step)

PNG export needs kaleido (pip install 'servesim[docs]') and a Chrome/Chromium it can find. Generated text
lives between `<!-- BEGIN generated:KEY -->` and `<!-- END generated:KEY -->` markers in docs/experiments.md
(KEY is an experiment name, or `summary` for the table of every claim); the prose around them is kept.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simulator.experiments import EXPERIMENTS, ExperimentResult, run_experiment  # noqa: E402

DOC = ROOT / "docs" / "experiments.md"
FIGURES = ROOT / "docs" / "figures"
PNG_WIDTH = 1300


def claims_table(result: ExperimentResult, with_name: bool = False) -> str:
    """A markdown table of one experiment's claims (the summary names the experiment instead of the check)."""
    cols = ["experiment"] * with_name + ["claim", "published", "servesim", "held"] + ["check"] * (not with_name)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for c in result.claims:
        cells = [f"`{result.name}`"] * with_name + [c.claim, c.published, c.measured_text,
                                                      "yes" if c.held else "**no**"] + [c.check] * (not with_name)
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    return "\n".join(lines)


def section(result: ExperimentResult) -> str:
    held = sum(c.held for c in result.claims)
    return (f"{claims_table(result)}\n\n{held} of {len(result.claims)} claims held; run time {result.wall_s:.1f} s "
            f"on the docs machine. Scenario: {result.notes[0]}\n\n"
            f"![{result.name}](figures/{result.name}.png)")


def summary(results: list[ExperimentResult]) -> str:
    rows = [claims_table(r, with_name=True).splitlines()[2:] for r in results]
    head = claims_table(results[0], with_name=True).splitlines()[:2]
    times = ", ".join(f"`{r.name}` {r.wall_s:.1f} s" for r in results)
    return "\n".join(head + [line for block in rows for line in block]) + f"\n\nWall time per experiment: {times}."


def replace_block(text: str, key: str, body: str) -> str:
    begin, end = f"<!-- BEGIN generated:{key} -->\n", f"<!-- END generated:{key} -->"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"docs/experiments.md has no generated:{key} markers")
    return pattern.sub(lambda m: begin + body + "\n" + end, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="experiments to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="reduced runs")
    args = parser.parse_args()
    names = args.names or list(EXPERIMENTS)
    FIGURES.mkdir(parents=True, exist_ok=True)
    text = DOC.read_text()
    results = []
    for name in names:
        result = run_experiment(name, quick=args.quick)
        height = result.figure.layout.height or 480
        result.figure.write_image(FIGURES / f"{name}.png", width=PNG_WIDTH, height=height, scale=1)
        text = replace_block(text, name, section(result))
        results.append(result)
        print(f"{name}: {sum(c.held for c in result.claims)}/{len(result.claims)} held, {result.wall_s:.1f} s")
    if len(results) == len(EXPERIMENTS):
        text = replace_block(text, "summary", summary(results))
    DOC.write_text(text)


if __name__ == "__main__":
    main()
