"""GPU catalog and the roofline."""
from hardware.gpus import GPUS, GPUSpec, get_gpu

__all__ = ["GPUS", "GPUSpec", "get_gpu"]
