"""Assembly: a SimConfig resolved into what the engine drives (model, GPU, cost model, KV manager, policy) and
into its workload. Below simulator.api and simulator.cluster, which both build engines from it."""
from __future__ import annotations

from dataclasses import asdict
from functools import lru_cache

from hardware.gpus import GPUSpec, resolve_gpu
from simulator.batching import PolicyParams, make_policy
from simulator.config import DEFAULT_MAX_MODEL_LEN, SimConfig
from simulator.cost import CostModel
from simulator.cost.speculative import SpeculativeCostModel, make_drafter
from simulator.engines import cost_model_options, get_engine
from simulator.engine import EngineOptions, EngineParts
from simulator.kv_cache import make_kv_cache
from simulator.memory import plan_memory
from simulator.models import ModelSpec, resolve_model
from workloads import make_requests
from workloads.spec import RequestSpec


def resolve_hardware(cfg: SimConfig) -> tuple[ModelSpec, GPUSpec]:
    """The model and GPU a config names (presets, or user files when given)."""
    # A user file overrides the (defaulted) catalog name, as --gpu-file / --model-config document.
    gpu = resolve_gpu(None if cfg.gpu_file else cfg.gpu, cfg.gpu_file)
    return resolve_model(None if cfg.model_config else cfg.model, cfg.model_config), gpu


@lru_cache(maxsize=16)
def shared_cost_model(model: ModelSpec, gpu: GPUSpec, tp: int, pp: int, step_overhead_s: float | None,
                      options: tuple) -> CostModel:
    """The cost model of these arguments, built once: a CostModel is a pure function of them (its caches only
    remember answers), so the replicas of a cluster and the runs of a sweep that share a configuration share
    one, and its caches warm once instead of once per replica."""
    return CostModel(model, gpu, tp=tp, pp=pp, step_overhead_s=step_overhead_s, **dict(options))


def build_parts(cfg: SimConfig, model: ModelSpec | None = None) -> EngineParts:
    """Resolve a config into the policy, KV manager and cost model the engine drives (`model`: instead of the
    config's, e.g. one data-parallel rank's share of an MoE model's experts)."""
    resolved, gpu = resolve_hardware(cfg)
    model = model or resolved
    engine = get_engine(cfg.engine)
    if cfg.max_model_len is None:
        cfg = cfg.replace(max_model_len=min(model.max_model_len, DEFAULT_MAX_MODEL_LEN))
    if cfg.max_model_len > model.max_model_len:
        raise ValueError(f"max-model-len {cfg.max_model_len} exceeds {model.name}'s context of "
                         f"{model.max_model_len} tokens")
    engine_options = cost_model_options(engine)
    step_overhead_s = engine_options.pop("step_overhead_s")
    if cfg.attention is not None:
        engine_options["attention"] = cfg.attention
    options = dict(dtype=cfg.dtype, kv_dtype=cfg.kv_dtype, cuda_graphs=cfg.cuda_graphs, link=cfg.link,
                   bandwidth_scale=cfg.bandwidth_scale, flops_scale=cfg.flops_scale, **engine_options)
    cost_model = shared_cost_model(model, gpu, cfg.tp, cfg.pp, step_overhead_s, tuple(options.items()))
    drafter = make_drafter(cfg.draft, cfg.draft_model, model, cfg.tp) if cfg.speculative_tokens else None
    if drafter is not None and drafter.model is not None:
        draft_cost = shared_cost_model(drafter.model, gpu, drafter.tp, 1, 0.0, tuple(options.items()))
        cost_model = SpeculativeCostModel(cost_model, draft_cost, cfg.speculative_tokens)
    plan = plan_memory(cfg, model, gpu, cost_model.activation_workspace_bytes(cfg.token_budget), drafter)
    kv = make_kv_cache(cfg.kv, plan.capacity_tokens, block_size=cfg.block_size, max_model_len=cfg.max_model_len,
                       reservation=cfg.kv_reservation, prefix_caching=cfg.prefix_cache, watermark=engine.watermark)
    params = PolicyParams(max_num_seqs=cfg.max_num_seqs, max_num_batched_tokens=cfg.token_budget,
                          chunked_prefill=cfg.chunked, admit_whole_sequence=engine.admit_whole_sequence,
                          preemption=cfg.preemption,
                          swap_space_bytes=cfg.swap_space_gb * 1e9, kv_bytes_per_token=plan.kv_bytes_per_token,
                          batch_size=cfg.batch_size, max_batch_size=cfg.max_batch_size, max_wait_s=cfg.max_wait_s,
                          speculation=cfg.speculation)
    policy = make_policy(cfg.batching, kv, params)
    meta = {"model": asdict(model), "gpu": asdict(gpu), "memory": asdict(plan),
            "kv_capacity_tokens": plan.capacity_tokens, "max_num_batched_tokens": cfg.token_budget,
            # one GPU's peaks: a step's FLOPs and bytes are one tensor-parallel shard's (simulator.cost)
            "peak_flops_per_s": gpu.matrix_flops_per_s(cfg.dtype) * cfg.flops_scale,
            "peak_bytes_per_s": gpu.hbm_bytes_per_s * cfg.bandwidth_scale}
    return EngineParts(policy=policy, cost_model=cost_model, max_model_len=cfg.max_model_len,
                       config=cfg.to_dict(), meta=meta, slo=(cfg.slo_ttft_s, cfg.slo_tpot_s, cfg.slo_e2e_s),
                       options=EngineOptions(fast_path=cfg.fast_path, summary_only=cfg.summary_only,
                                             max_request_rows=cfg.max_request_rows,
                                             request_rows_path=cfg.request_rows_path,
                                             max_concurrency=cfg.max_concurrency))


def workload(cfg: SimConfig) -> list[RequestSpec]:
    """The requests a config describes (synthetic, or a replayed trace)."""
    return make_requests(seed=cfg.seed, rate=cfg.rate, arrival=cfg.arrival, prompt_len=cfg.prompt_len,
                         output_len=cfg.output_len, num_requests=cfg.request_cap, duration_s=cfg.duration_s,
                         trace=cfg.trace, trace_format=cfg.trace_format, rate_scale=cfg.rate_scale,
                         dataset=cfg.dataset, burstiness=cfg.burstiness, system_prompts=cfg.system_prompts,
                         sessions=cfg.sessions)
