"""GPU memory plan: how much KV cache fits once weights and activations are placed.

KV capacity = GPU memory x gpu_memory_utilization - weights - activation workspace, over KV bytes per token
(all per GPU under tensor and pipeline parallelism). `num_gpu_blocks` / `kv_capacity_tokens` override it, as vLLM's
num_gpu_blocks_override does.
"""
from __future__ import annotations

from dataclasses import dataclass

from hardware.gpus import GPUSpec
from simulator.config import ConfigError, SimConfig
from simulator.models import ModelSpec

GB = 1e9


class ModelDoesNotFit(ConfigError):
    """The weights (plus workspace) need more memory than the GPU offers."""


@dataclass(frozen=True)
class MemoryPlan:
    usable_bytes: float              # GPU memory x gpu_memory_utilization
    weight_bytes: float              # per GPU
    activation_bytes: float          # per GPU, peak workspace of one step
    kv_bytes_per_token: float        # per GPU
    capacity_tokens: int             # KV capacity C

def kv_bytes_per_token_per_gpu(model: ModelSpec, kv_dtype: str, tp: int, pp: int = 1) -> float:
    """KV heads split across TP ranks (replicated when fewer heads than ranks; an MLA latent is replicated);
    layers split across PP stages."""
    full = model.kv_bytes_per_token(kv_dtype) / pp
    if model.is_mla:
        return full
    heads_per_gpu = -(-model.num_kv_heads // tp)
    return full * heads_per_gpu / model.num_kv_heads


def plan_memory(cfg: SimConfig, model: ModelSpec, gpu: GPUSpec, activation_bytes: float,
                drafter=None) -> MemoryPlan:
    """Place weights and workspace, then give the rest to KV (or take the user's override). A speculative
    decoding drafter with a model (simulator.cost.speculative.Drafter) adds its weights, and its KV to every
    token's (vLLM allocates the draft's KV cache in the same blocks as the target's)."""
    kv_per_token = kv_bytes_per_token_per_gpu(model, cfg.kv_dtype, cfg.tp, cfg.pp)
    usable = gpu.hbm_bytes * cfg.gpu_memory_utilization
    weights = model.weight_bytes(cfg.dtype) / (cfg.tp * cfg.pp)
    if drafter is not None and drafter.model is not None:
        kv_per_token += kv_bytes_per_token_per_gpu(drafter.model, cfg.kv_dtype, drafter.tp)
        weights += drafter.weight_bytes(cfg.dtype)
    free = usable - weights - activation_bytes
    if cfg.num_gpu_blocks is not None:
        capacity = cfg.num_gpu_blocks * cfg.block_size
    elif cfg.kv_capacity_tokens is not None:
        capacity = cfg.kv_capacity_tokens
    else:
        if free <= 0:
            with_draft = f" with its {drafter.name} drafter" if drafter is not None and drafter.model else ""
            raise ModelDoesNotFit(
                f"{model.name} ({cfg.dtype}){with_draft} needs {weights / GB:.1f} GB of weights and "
                f"{activation_bytes / GB:.1f} GB of activations per GPU, but {gpu.name} offers {usable / GB:.1f} GB ({gpu.hbm_bytes / GB:.1f} GB x "
                f"{cfg.gpu_memory_utilization} utilization): {-free / GB:.1f} GB ({-free:.0f} bytes) missing; "
                "try a larger --tp, a smaller --dtype or a bigger GPU")
        capacity = int(free // kv_per_token)
    if capacity < cfg.block_size:
        raise ModelDoesNotFit(f"only {capacity} KV tokens fit on {gpu.name} with {model.name}; no room for one "
                              f"block of {cfg.block_size}")
    return MemoryPlan(usable_bytes=usable, weight_bytes=weights, activation_bytes=activation_bytes,
                      kv_bytes_per_token=kv_per_token, capacity_tokens=capacity)
