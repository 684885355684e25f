"""Results folders of many scenarios (compare, sweep) and reading them back for `servesim report`.

A folder holds one sub-folder per scenario (SimResult.save), a CSV of the comparison or of the sweep, the
curves and capacities the report draws (load.csv, capacity.csv), scenarios.json (what is where), and
report.html. Everything is written into a temporary sibling first and moved in at the end, so a failure
leaves no partial output.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from simulator.present.report import LoadCurves, ReportInputs, Roofline, write_report

MANIFEST = "scenarios.json"


def folder_name(index: int, label: str) -> str:
    """'03-static_contiguous_rate=5': ordered, and safe on every filesystem."""
    slug = re.sub(r"[^A-Za-z0-9.=+-]+", "_", label).strip("_")[:80]
    return f"{index:02d}-{slug or 'scenario'}"


# Every name a results folder's writers produce (SimResult.save, the commands, report.html): a new result
# written into an old results folder replaces all of them, so no stale scenario or table survives.
PRODUCTS = ("requests.csv", "steps.csv", "kv.csv", "itl.csv", "summary.json", "config.json", "requests.parquet",
            "vllm_result.json", "report.html", "comparison.csv", "sweep.csv", "capacity.csv", "load.csv", MANIFEST)
SCENARIO_FOLDER = re.compile(r"^\d{2,}-")


class OutError(ValueError):
    """An --out that cannot take results (a file, under a file, not writable): found before any work."""


def check_out(out: Path, flag: str = "--out") -> Path:
    """Refuse an output folder that could not be written, before anything runs; return its nearest existing
    ancestor (where the temporary folder goes)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutError(f"{flag} {out}: is a file, not a folder")
    ancestor = out if out.exists() else out.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutError(f"{flag} {out}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutError(f"{flag} {out}: cannot write into {ancestor}")
    return ancestor


@contextlib.contextmanager
def staged(out: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder next to `out` to write into; on success move its entries into `out`
    (after clearing the products of an earlier result there), on failure or Ctrl-C delete it: no partial
    output, and no folder created, either way."""
    out = Path(out)
    ancestor = check_out(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name or 'out'}-", dir=ancestor))
    try:
        yield tmp
        out.mkdir(parents=True, exist_ok=True)
        clear_products(out)
        for item in tmp.iterdir():
            target = out / item.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(item, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def clear_products(folder: Path) -> None:
    """Delete what servesim wrote into `folder` before (files of PRODUCTS, scenario folders); keep the rest."""
    if not any((folder / name).is_file() for name in ("config.json", MANIFEST, "summary.json")):
        return                                   # not a results folder: leave the user's files alone
    for item in folder.iterdir():
        if item.name in PRODUCTS and item.is_file():
            item.unlink()
        elif SCENARIO_FOLDER.match(item.name) and item.is_dir() and (item / "config.json").is_file():
            shutil.rmtree(item)


def write_run_report(tmp: Path, out: Path, result) -> None:
    """report.html of one run (its label: the folder's name)."""
    runs = [(out.name or str(out), result)]
    write_report(tmp / "report.html", ReportInputs(runs, None, roofline_of(runs), title=f"servesim run: {out}"))


def roofline_of(runs: Sequence[tuple[str, Any]]) -> Roofline | None:
    """The roofline of the scenario with the highest output throughput (among those that know their GPU's
    peaks: results of simulate() record them in meta)."""
    known = [(label, r) for label, r in runs if (getattr(r, "meta", None) or {}).get("peak_flops_per_s")
             and r.meta.get("peak_bytes_per_s")]
    if not known:
        return None
    label, result = max(known, key=lambda run: _number(run[1].summary().get("output_token_throughput")))
    return Roofline(label, float(result.meta["peak_flops_per_s"]), float(result.meta["peak_bytes_per_s"]))


def _number(value: Any) -> float:
    return value if isinstance(value, (int, float)) and value == value else -math.inf


def _slos(config: Any) -> tuple[float | None, float | None]:
    return getattr(config, "slo_ttft_s", None), getattr(config, "slo_tpot_s", None)


def save_scenarios(tmp: Path, runs: Sequence[tuple[str, Any]], manifest: dict, tables: dict[str, pd.DataFrame],
                   inputs: ReportInputs) -> None:
    """Write scenario folders, CSV tables, the manifest and report.html into `tmp`."""
    entries = []
    for i, (label, result) in enumerate(runs, start=1):
        name = folder_name(i, label)
        if not (tmp / name).is_dir():  # the worker that ran it may have saved it already
            result.save(tmp / name)
        entries.append({"label": label, "folder": name})
    for name, frame in tables.items():
        if frame is not None:
            frame.to_csv(tmp / name, index=False)
    (tmp / MANIFEST).write_text(json.dumps({**manifest, "scenarios": entries}, indent=2, default=_plain) + "\n")
    write_report(tmp / "report.html", inputs)


def _plain(value: Any) -> Any:
    """JSON for numpy scalars and NaN-free floats."""
    if hasattr(value, "item"):
        value = value.item()
    return None if isinstance(value, float) and math.isnan(value) else value


def write_comparison(tmp: Path, comparison) -> None:
    """Into a staged folder: compare's: comparison.csv, load.csv (when rate varies), one folder per scenario, report.html."""
    runs = comparison.runs()
    load = comparison.load_frame()
    slo_ttft_s, slo_tpot_s = _slos(comparison.base)
    curves = LoadCurves(load, None, slo_ttft_s, slo_tpot_s) if load is not None else None
    inputs = ReportInputs(runs, curves, roofline_of(runs), title=f"servesim compare: {len(runs)} scenarios",
                          notes=_notes(comparison.base, comparison.varied_fields))
    manifest = {"kind": "compare", "varied": comparison.varied_fields, "slo_ttft_s": slo_ttft_s,
                "slo_tpot_s": slo_tpot_s, "load": "load.csv" if load is not None else None,
                "x_col": "rate_per_s", "x_title": curves.x_title if curves else None}
    tables = {"comparison.csv": comparison.frame(), "load.csv": load}
    save_scenarios(tmp, runs, manifest, tables, inputs)


def write_sweep(tmp: Path, outcome) -> None:
    """Into a staged folder: sweep's: sweep.csv (every simulation), capacity.csv, load.csv, results at capacity, report.html."""
    runs = outcome.runs()
    curves_frame, x_col, x_title = outcome.curves()
    slo_ttft_s, slo_tpot_s = _slos(outcome.configs[0].config)
    capacity = outcome.capacity if outcome.axis == "rate" else None
    curves = LoadCurves(curves_frame, capacity, slo_ttft_s, slo_tpot_s, x_col, x_title)
    notes = _notes(outcome.base, list(outcome.configs[0].values)) + [
        f"capacity: the highest rate at which at least {outcome.attainment:.0%} of requests meet every SLO "
        f"(bisection); charts below show each configuration at its capacity"]
    inputs = ReportInputs(runs, curves, roofline_of(runs), title=f"servesim sweep: {len(runs)} configurations",
                          notes=notes)
    manifest = {"kind": "sweep", "axis": outcome.axis, "slo_ttft_s": slo_ttft_s, "slo_tpot_s": slo_tpot_s,
                "attainment": outcome.attainment, "load": "load.csv", "capacity": "capacity.csv",
                "x_col": x_col, "x_title": x_title}
    tables = {"sweep.csv": outcome.simulations, "capacity.csv": outcome.capacity, "load.csv": curves_frame}
    save_scenarios(tmp, runs, manifest, tables, inputs)


def _notes(base: Any, varied_fields: Sequence[str]) -> list[str]:
    fixed = {k: v for k, v in base.to_dict().items() if k not in varied_fields and v is not None}
    keys = ("gpu", "model", "dtype", "tp", "batching", "kv", "rate", "num_requests", "prompt_len", "output_len",
            "seed", "slo_ttft_s", "slo_tpot_s")
    return [("varied: " + ", ".join(varied_fields)) if varied_fields else "one configuration",
            "fixed: " + ", ".join(f"{k}={fixed[k]}" for k in keys if k in fixed and k not in varied_fields)]


def load_inputs(paths: Sequence[Path]) -> ReportInputs:
    """Rebuild report inputs from saved folders: compare/sweep folders (scenarios.json) or single runs."""
    from simulator.cluster.result import load_cluster
    from simulator.metrics import SimResult
    runs: list[tuple[str, Any]] = []
    curves = None
    for path in map(Path, paths):
        if (path / MANIFEST).is_file():
            manifest = json.loads((path / MANIFEST).read_text())
            runs += [(e["label"], load_cluster(path / e["folder"], SimResult.load(path / e["folder"])))
                     for e in manifest["scenarios"]]
            curves = curves or _curves(path, manifest)
        elif (path / "config.json").is_file():
            runs.append((path.name or str(path), load_cluster(path, SimResult.load(path))))
        else:
            raise FileNotFoundError(f"{path} is not a servesim results folder (no {MANIFEST} or config.json)")
    runs = _unique(runs)
    return ReportInputs(runs, curves, roofline_of(runs),
                        title=f"servesim report: {len(runs)} scenario{'s' * (len(runs) != 1)}")


def _curves(path: Path, manifest: dict) -> LoadCurves | None:
    if not manifest.get("load"):
        return None
    capacity = pd.read_csv(path / manifest["capacity"]) if manifest.get("capacity") and \
        manifest.get("x_col") == "rate_per_s" else None
    return LoadCurves(pd.read_csv(path / manifest["load"]), capacity, manifest.get("slo_ttft_s"),
                      manifest.get("slo_tpot_s"), manifest["x_col"], manifest["x_title"])


def _unique(runs: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Labels must differ (they key colors and legends): repeat labels get ' (2)', ' (3)'."""
    seen: dict[str, int] = {}
    out = []
    for label, result in runs:
        seen[label] = seen.get(label, 0) + 1
        out.append((label if seen[label] == 1 else f"{label} ({seen[label]})", result))
    return out
