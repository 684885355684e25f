"""The GPU cost model: operators counted in FLOPs and bytes, priced on a roofline with calibrated rates.

Import from here: `from simulator.cost import CostModel, StepShape, StepCost, ...` (see model.py for the pieces).
"""
from simulator.cost.attention import ATTENTION_KINDS
from simulator.cost.elementwise import ELEMENTWISE, Elementwise, Ew
from simulator.cost.model import CUDA_GRAPH_MAX_BATCH, CostModel, CostModelError
from simulator.cost.operators import Op
from simulator.cost.rates import Rates
from simulator.step import BOUNDS, FAMILIES, RunCosts, StepCost, StepShape

__all__ = ["ATTENTION_KINDS", "BOUNDS", "CUDA_GRAPH_MAX_BATCH", "ELEMENTWISE", "FAMILIES", "CostModel", "CostModelError",
           "Elementwise", "Ew", "Op", "Rates", "RunCosts", "StepCost", "StepShape"]
