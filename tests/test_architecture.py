"""The layout's rules, read from the source: no import cycle, and no module importing a layer above its own.

Layers, bottom up: hardware/ and workloads/; the simulation core (simulator/*.py, cost/, batching/, kv_cache/);
simulator/assembly.py, simulator/api.py, cluster/sim.py and cluster/dp_ep.py (one replica or many); present/ (tables, plots, reports); runs/ (many scenarios: sweep, capacity, parallel,
outputs); experiments/ and validate/; cli.py and the `simulator` package facade. Imports inside functions count.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("simulator", "hardware", "workloads", "cli")


def modules() -> dict[str, Path]:
    found = {}
    for path in [*ROOT.glob("simulator/**/*.py"), *ROOT.glob("hardware/**/*.py"), *ROOT.glob("workloads/**/*.py"),
                 ROOT / "cli.py"]:
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def import_graph() -> dict[str, set[str]]:
    mods = modules()

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            for target in filter(None, map(owner, names)):
                if target != m and target.split(".")[0] in PACKAGES:
                    graph[m].add(target)
    return graph


def layer(module: str) -> int:
    if module in ("cli", "simulator"):
        return 6
    if module in ("simulator.cluster", "simulator.cluster.sim", "simulator.cluster.dp_ep"):
        return 2                                  # replicas built like simulate() builds one (routers, pools: core)
    for rank, prefixes in ((5, ("simulator.experiments", "simulator.validate")), (4, ("simulator.runs",)),
                           (3, ("simulator.present",)),
                           (2, ("simulator.api", "simulator.assembly")), (0, ("hardware", "workloads"))):
        if module.startswith(prefixes):
            return rank
    return 1


def test_no_import_cycles():
    graph, state, cycles = import_graph(), {}, []

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for t in sorted(graph[m]):
            if state.get(t) == "open":
                cycles.append(path[path.index(t):] + [t])
            elif t not in state:
                visit(t, path + [t])
        state[m] = "done"
    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_no_module_imports_a_layer_above_its_own():
    upward = sorted(f"{a} -> {b}" for a, targets in import_graph().items() for b in targets if layer(b) > layer(a))
    assert upward == []


def test_the_cost_model_batches_and_metrics_share_step_types_from_a_leaf():
    # StepShape, StepCost, RunCosts, FAMILIES and BOUNDS live in simulator/step.py, which imports nothing of
    # servesim; the batch, the metrics and the KV managers do not import the cost model or the engine.
    graph = import_graph()
    assert graph["simulator.step"] == set()
    for low in ("simulator.batch", "simulator.metrics", "simulator.request", "simulator.kv_cache.base"):
        assert not {t for t in graph[low] if t.startswith(("simulator.cost", "simulator.engine"))}, low
