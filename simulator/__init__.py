"""servesim: a discrete-event simulator of LLM inference serving."""
from simulator.config import ConfigError, SimConfig
from simulator.metrics import SimResult


def simulate(*args, **kwargs):
    """Run one scenario (see simulator.api.simulate)."""
    from simulator.api import simulate as _simulate
    return _simulate(*args, **kwargs)


def compare(*args, **kwargs):
    """Run several scenarios in parallel, {label: SimResult} (see simulator.runs.sweep.compare_many)."""
    from simulator.runs.sweep import compare_many
    return compare_many(*args, **kwargs)


__all__ = ["ConfigError", "SimConfig", "SimResult", "compare", "simulate"]
