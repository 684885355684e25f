"""Engine presets: the scheduler rules, kernel recipe and per-step CPU cost of one real serving engine, bundled.

`--engine vllm-v1` (the default) is vLLM's V1 engine as of 0.19; `--engine vllm-v0` keeps vLLM's V0 behaviour
(servesim's behaviour before engines were modelled). The plain-PyTorch harness that measured the step sets in
benchmarks/data is not an engine: benchmarks/fidelity_steps.py builds its cost model directly (unfused
elementwise recipe, FlashAttention IO, no sampler).

Facts of vLLM V1 used here, from its source (vllm/v1/core/sched/scheduler.py, vllm/config/scheduler.py,
vllm/config/compilation.py at v0.19) and the resolved config of the shared RTX 4090 run:
- chunked prefill is always on: running requests are scheduled first, then waiting ones fill the token budget;
- no free-block watermark on admission (V0's BlockSpaceManager kept 1% free);
- `scheduler_reserve_full_isl` (default True): a waiting request is admitted only if blocks for its whole
  sequence so far (prompt, plus outputs of a preempted request) are free, although only this step's chunk is
  allocated; an admission that fails stops admissions for the step;
- prefix caching is on by default (`enable_prefix_caching`);
- CUDA graphs in FULL_AND_PIECEWISE mode: decode-only batches replay a full graph (attention included) and
  mixed or prefill steps replay piecewise graphs of everything but attention, for padded sizes 1, 2, 4, 8,
  then every 8 up to 256 and every 16 up to 512 (`cudagraph_capture_sizes`); a batch is padded up to the next
  captured size; above 512 tokens the compiled model runs without graphs;
- async scheduling (`async_scheduling`: the scheduler prepares step n+1 while the GPU runs step n), so the CPU
  time left between steps is small: the engine's own measurements show steps equal to their summed kernel
  time within about 1 ms.
"""
from __future__ import annotations

from dataclasses import dataclass

# vLLM V1's default cudagraph_capture_sizes (vllm/config/compilation.py; the list in the shared RTX 4090 run's
# resolved config): 1, 2, 4, then multiples of 8 up to 256, then multiples of 16 up to 512.
V1_CUDA_GRAPH_SIZES: tuple[int, ...] = (1, 2, 4) + tuple(range(8, 257, 8)) + tuple(range(272, 513, 16))


@dataclass(frozen=True)
class EnginePreset:
    """What an engine decides that a scenario does not: scheduler rules, kernels, graphs, CPU time per step."""

    name: str
    description: str
    chunked_prefill: bool            # default when the scenario does not say
    watermark: float                 # share of KV blocks kept free when admitting a waiting request
    admit_whole_sequence: bool       # admission needs blocks for the whole sequence so far, not just the chunk
    prefix_caching: bool             # default when the scenario does not say (see SimConfig.prefix_caching)
    attention_kernel: str            # 'varlen' (vLLM V1's FlashAttention varlen) or 'flash' (separate kernels)
    elementwise: str                 # recipe of the small operators (simulator/cost/elementwise.py)
    sampler: bool                    # the GPU sampler runs each step (top-k/top-p over the vocabulary)
    cuda_graph_mode: str             # 'full-and-piecewise' (V1) or 'decode' (V0: decode-only batches)
    cuda_graph_sizes: tuple[int, ...]  # captured batch sizes; () = any size up to the maximum, unpadded
    step_overhead_s: float | None    # CPU time per step not hidden behind the GPU (None: the GPU entry's)


ENGINES: dict[str, EnginePreset] = {
    "vllm-v1": EnginePreset(
        name="vllm-v1", description="vLLM V1 (0.19): chunked prefill, full-prompt admission, async scheduling",
        chunked_prefill=True, watermark=0.0, admit_whole_sequence=True, prefix_caching=True,
        attention_kernel="varlen", elementwise="vllm-v1", sampler=True, cuda_graph_mode="full-and-piecewise",
        cuda_graph_sizes=V1_CUDA_GRAPH_SIZES,
        # With async scheduling only the step's bookkeeping that cannot overlap is left: the sampled token ids
        # come back to the CPU and the next step's inputs are launched. 0.2 ms is an estimate of that gap
        # (vLLM's profiles put whole steps within ~1 ms of their kernels' sum), not a fit to any run.
        step_overhead_s=0.2e-3),
    "vllm-v0": EnginePreset(
        name="vllm-v0", description="vLLM V0: prefill-first steps, 1% watermark, decode-only CUDA graphs",
        chunked_prefill=False, watermark=0.01, admit_whole_sequence=False, prefix_caching=False,
        attention_kernel="flash", elementwise="fused", sampler=False, cuda_graph_mode="decode", cuda_graph_sizes=(),
        step_overhead_s=None),
}
DEFAULT_ENGINE = "vllm-v1"


def cost_model_options(engine: EnginePreset) -> dict:
    """The CostModel keyword options the engine decides (attention kernel, small-operator recipe, sampler,
    CUDA graph mode and sizes, CPU time per step)."""
    return {"attention": engine.attention_kernel, "elementwise": engine.elementwise, "sampler": engine.sampler,
            "piecewise_graphs": engine.cuda_graph_mode == "full-and-piecewise",
            "cuda_graph_sizes": engine.cuda_graph_sizes, "step_overhead_s": engine.step_overhead_s}


def get_engine(name: str) -> EnginePreset:
    """Look up an engine preset; unknown names raise ValueError listing the choices."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine '{name}'; choose one of: {', '.join(ENGINES)}")
    return ENGINES[name]
