"""GPU catalog, user GPU files, and the roofline."""
from hardware.gpus import GPUS, GPUFileError, GPUSpec, get_gpu, load_gpu_file, resolve_gpu

__all__ = ["GPUS", "GPUFileError", "GPUSpec", "get_gpu", "load_gpu_file", "resolve_gpu"]
