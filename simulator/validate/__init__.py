"""`servesim validate`: replay a real serving run (a run folder or a vLLM bench result) and compare.

real.py reads the run, compare.py simulates it with the run's engine settings and builds the real vs simulated
table, page.py writes validation.json / .csv / .html.
"""
from simulator.validate.compare import Validation, replay_config, validate
from simulator.validate.real import RealRun, RunFileError, load_real_run

__all__ = ["RealRun", "RunFileError", "Validation", "load_real_run", "replay_config", "validate"]
