"""The cost model: price one engine step (a mixed batch of prefill chunks and decodes) operator by operator.

Every operator of a decoder layer (QKV, attention, output projection, MLP, norms / RoPE / activations, and
the tensor-parallel all-reduces) plus the LM head on the sampled positions is a kernel priced by
`hardware.roofline.kernel_time`: a fixed latency plus the FLOP time and the byte time blended near the ridge.
The pieces, one idea each:
  simulator/cost/rates.py        achievable rates: datasheet peak x what-if scale x calibration (hardware/gpus.py)
  simulator/cost/elementwise.py  how an implementation runs the small operators ('fused' or 'unfused' recipes)
  simulator/cost/operators.py    the operator catalogue: each kernel's FLOPs, bytes and kernels as an `Op`
  simulator/cost/attention.py    the attention operators (the only ones that depend on the contexts)
  simulator/cost/decode_run.py   a run of decode-only steps priced at once (the engine's fast path)
Eager steps pay a CPU launch cost per kernel that CUDA graphs remove.

The engine calls `CostModel.step_cost(StepShape) -> StepCost` once per step. It is `operators(shape)` reduced
(`operators.totals`), with the operators that depend only on the number of tokens (everything but attention)
reduced once per token count and kept; only attention is priced per step. `operators(shape)` lists the same
operators one row each (for `servesim explain`); their seconds add up to step_cost's.
"""
from __future__ import annotations

from bisect import bisect_left
from functools import lru_cache

from hardware.gpus import GPUSpec
from simulator.cost.attention import ATTENTION_KINDS, attention_ops, decode_work
from simulator.cost.decode_run import DecodeRun, RunConstants, prepare, price
from simulator.cost.elementwise import ELEMENTWISE
from simulator.cost.operators import Catalogue, Op, Totals, dims, scale, totals
from simulator.cost.rates import INF, rates
from simulator.cost.varlen import sampler_seconds, varlen_params
from simulator.models import KV_DTYPES, WEIGHT_DTYPES, ModelSpec
from simulator.step import BOUNDS, FAMILIES, RunCosts, StepCost, StepShape

# vLLM captures CUDA graphs for decode batches up to 512 sequences by default (vllm/config: the largest
# cudagraph capture size is 512); bigger batches run eagerly.
CUDA_GRAPH_MAX_BATCH = 512


class CostModelError(ValueError):
    """A cost model that cannot be built from its arguments; the message is one line."""


class CostModel:
    """Operator-level roofline cost of a step of `model` on `gpu`.

    Keyword options: dtype (weights), kv_dtype, tp (tensor parallel: weights and heads split, two all-reduces
    per layer), pp (pipeline stages run one after another for a step, so a step's latency pays the hand-offs and
    the bubbles), cuda_graphs with cuda_graph_max_batch (decode-only steps up to that batch replay a graph),
    cuda_graph_prefill (also graph whole steps with prefill tokens, as a fully captured forward pass does),
    piecewise_graphs (vLLM V1: steps with prefill tokens, up to cuda_graph_max_batch tokens, replay graphs of
    everything but attention, which is launched eagerly), cuda_graph_sizes (the captured sizes: a graphed step
    is padded up to the next one; () = no padding), attention ('flash', 'naive': the score matrix goes through
    HBM, or 'varlen': vLLM V1's one launch for the step, simulator/cost/varlen.py), elementwise (the recipe of
    the small operators), sampler (vLLM's GPU sampler after the LM head), bandwidth_scale and flops_scale
    (what-if multipliers of the datasheet rates), step_overhead_s (default: the GPU entry's), link (the
    GPU-to-GPU interconnect by name, hardware/links.py; default: the GPU entry's).
    """

    def __init__(self, model: ModelSpec, gpu: GPUSpec, *, dtype: str = "bf16", kv_dtype: str = "bf16",
                 tp: int = 1, pp: int = 1, cuda_graphs: bool = True, cuda_graph_max_batch: int = CUDA_GRAPH_MAX_BATCH,
                 cuda_graph_prefill: bool = False, piecewise_graphs: bool = False,
                 cuda_graph_sizes: tuple[int, ...] = (), attention: str = "flash", elementwise: str = "fused",
                 sampler: bool = False, bandwidth_scale: float = 1.0, flops_scale: float = 1.0,
                 step_overhead_s: float | None = None, link: str | None = None) -> None:
        _validate(model, gpu, dtype, kv_dtype, tp, pp, attention, elementwise, bandwidth_scale, flops_scale,
                  cuda_graph_max_batch, link)
        self.model, self.gpu, self.dtype, self.kv_dtype = model, gpu, dtype, kv_dtype
        self.tp, self.pp, self.attention, self.elementwise = tp, pp, attention, elementwise
        self.cuda_graphs, self.cuda_graph_max_batch, self.cuda_graph_prefill = (
            cuda_graphs, cuda_graph_max_batch, cuda_graph_prefill)
        self.piecewise_graphs, self.cuda_graph_sizes = piecewise_graphs, tuple(sorted(cuda_graph_sizes))
        self.sampler, self.link = sampler, link
        self.bandwidth_scale, self.flops_scale = bandwidth_scale, flops_scale
        self.step_overhead_s = gpu.step_overhead_s if step_overhead_s is None else step_overhead_s
        self.rates = rates(gpu, dtype, tp, flops_scale, bandwidth_scale, link)
        self.dims = dims(model, dtype, kv_dtype, tp)
        self.varlen = (varlen_params(gpu, model, tp=tp, kv_dtype=kv_dtype, flops_scale=flops_scale,
                                     bandwidth_scale=bandwidth_scale) if attention == "varlen" else None)
        self.catalogue = Catalogue(model, self.dims, self.rates, ELEMENTWISE[elementwise], tp, pp)
        self.peak_flops_per_s, self.peak_bytes_per_s = self.rates.peak_flops_per_s, self.rates.peak_bytes_per_s
        self._dense = lru_cache(maxsize=None)(self._dense_totals)
        self._head = lru_cache(maxsize=None)(self._head_totals)
        self._base = lru_cache(maxsize=1 << 16)(self._base_totals)
        self._decode_plan = lru_cache(maxsize=None)(self._decode_plan_of)
        self.step_cost = lru_cache(maxsize=1 << 16)(self._step_cost)

    # ------------------------------------------------------------------ CUDA graphs
    def graph_mode(self, shape: StepShape) -> str:
        """How the step runs: 'full' (one CUDA graph replay, no launch cost), 'piecewise' (graphs of all but
        attention, whose kernels are launched from the CPU) or 'eager' (every kernel launched)."""
        return self._graph_mode(shape, shape.num_tokens)

    def _graph_mode(self, shape: StepShape, num_tokens: int) -> str:
        if not self.cuda_graphs:
            return "eager"
        if not shape.prefill or self.cuda_graph_prefill:
            return "full" if shape.num_seqs <= self.cuda_graph_max_batch else "eager"
        if self.piecewise_graphs and num_tokens <= self.cuda_graph_max_batch:
            return "piecewise"
        return "eager"

    def graphed(self, shape: StepShape) -> bool:
        """Whether this step replays a CUDA graph for all of it (no per-kernel launch cost)."""
        return self.graph_mode(shape) == "full"

    def padded_tokens(self, shape: StepShape) -> int:
        """Tokens the step's token-wise operators compute: a graphed step runs the captured size at or above
        its token count (vLLM pads the batch up to it), an eager one exactly its tokens."""
        t = shape.num_tokens
        return self._padded(t, self._graph_mode(shape, t))

    def _padded(self, num_tokens: int, mode: str) -> int:
        sizes = self.cuda_graph_sizes
        if sizes and mode != "eager":
            i = bisect_left(sizes, num_tokens)            # the first captured size >= num_tokens
            return sizes[i] if i < len(sizes) else num_tokens
        return num_tokens

    # ------------------------------------------------------------------ the step
    def operators(self, shape: StepShape) -> list[Op]:
        """Every operator of the step over all layers, in execution order, plus overhead rows.

        Their seconds add up to `step_cost(shape).seconds`.
        """
        t, cat, layers = shape.num_tokens, self.catalogue, self.dims.layers
        ops, attention = [], self._attention(shape)
        if t > 0:
            tp = self.padded_tokens(shape)
            ops = [cat.embedding(tp), *(_scaled(cat.before_attention(tp), layers)), *attention,
                   *_scaled(cat.after_attention(tp), layers), *self._head_ops(shape.num_sampled)]
            if self.pp > 1:
                ops.append(cat.pp_send(tp))
        rows = [op._replace(kernels=int(round(op.kernels))) for op in ops]
        launch = self._launch_excess(shape, totals(ops, self.rates.launch_s), totals(attention, self.rates.launch_s))
        if launch:
            rows.append(Op("kernel_launch", "overhead", 0.0, 0.0, launch, "latency", 0))
        if self.step_overhead_s:
            rows.append(Op("step_overhead", "overhead", 0.0, 0.0, self.step_overhead_s, "latency", 0))
        return rows

    def _launch_excess(self, shape: StepShape, everything: Totals, attention: Totals) -> float:
        """CPU launch time the GPU waits for: none in a full graph, attention's in a piecewise one."""
        mode = self.graph_mode(shape)
        return 0.0 if mode == "full" else attention.excess_s if mode == "piecewise" else everything.excess_s

    def _step_cost(self, shape: StepShape) -> StepCost:
        """operators(shape) reduced: the cached totals of the dense and head operators, plus attention's (the
        only part priced per step; `_launch_excess` written out, so that attention is reduced twice only in a
        piecewise graph)."""
        t = shape.num_tokens
        if t <= 0:
            return StepCost(self.step_overhead_s, 0.0, 0.0, "latency", (("overhead", self.step_overhead_s),))
        mode = self._graph_mode(shape, t)
        attention = self._attention(shape)
        tot = totals(attention, self.rates.launch_s, self._base(self._padded(t, mode), shape.num_sampled))
        launch = (0.0 if mode == "full" else totals(attention, self.rates.launch_s).excess_s if mode == "piecewise"
                  else tot.excess_s)
        return self._finish(tot, launch)

    def _base_totals(self, padded_tokens: int, num_sampled: int) -> Totals:
        """The operators of a step but attention: the dense ones on its padded tokens, the head's on its samples."""
        return self._dense(padded_tokens).plus(self._head(num_sampled))

    def _finish(self, tot: Totals, launch_s: float) -> StepCost:
        """A step's cost from its operators' totals: GPU time plus the step overhead and the launches waited for."""
        fam = list(tot.family_s)
        gpu_s = sum(fam)
        fam[-1] = self.step_overhead_s + launch_s                                 # FAMILIES[-1] == "overhead"
        bound = BOUNDS[max(range(len(BOUNDS)), key=tot.bound_s.__getitem__)]
        return StepCost(seconds=gpu_s + fam[-1], flops=tot.flops, bytes=tot.bytes, bound=bound,
                        breakdown=tuple(zip(FAMILIES, fam)))

    def _attention(self, shape: StepShape) -> list[Op]:
        return attention_ops(self.dims, self.rates, self.attention, shape, self.varlen)

    def _dense_totals(self, t: int) -> Totals:
        """catalogue.dense(t) reduced (its per-layer operators scaled inside the reduction, bit for bit)."""
        cat, launch_s = self.catalogue, self.rates.launch_s
        return totals(cat.dense_per_step(t), launch_s, totals(cat.dense_per_layer(t), launch_s, k=self.dims.layers))

    def _head_ops(self, s: int) -> list[Op]:
        """Final norm and LM head on the sampled positions, then (vLLM) the GPU sampler over their logits."""
        ops = self.catalogue.head(s)
        if self.sampler and s > 0:
            g = self.gpu
            seconds = sampler_seconds(g.sampler_floor_s, g.sampler_passes, self.model.vocab_size, self.rates.bw, s)
            num_bytes = g.sampler_passes * s * self.model.vocab_size * 4.0
            ops.append(Op("sampler", "elementwise", 0.0, num_bytes, seconds, "memory", 1))
        return ops

    def _head_totals(self, s: int) -> Totals:
        return totals(self._head_ops(s), self.rates.launch_s)

    # ------------------------------------------------------------------ decode runs (the engine's fast path)
    def decode_run_costs(self, num_seqs: int, context_tokens: int, context_step: int, max_steps: int,
                         start_s: float = 0.0, stop_s: float = INF, detail: bool = True) -> RunCosts:
        """Decode-only steps one after another from `start_s`: step j decodes `num_seqs` sequences attending
        `context_tokens + j * context_step` tokens. Stops after `max_steps`, or after the first step that ends at
        or after `stop_s`; `ends` holds the running sums of the step times, added as the engine adds them.

        Each step's numbers are bit-for-bit those of step_cost(StepShape((), num_seqs, context, num_seqs)) (a
        test checks): the same operators reduced in the same order (simulator/cost/decode_run.py). Without
        `detail` only the times are kept per step, and the FLOPs and bytes as totals.
        """
        return price(self._decode_plan(num_seqs), context_tokens, context_step, max_steps, start_s, stop_s, detail)

    def _decode_plan_of(self, num_seqs: int) -> RunConstants:
        """The constants of every decode-only step of `num_seqs` sequences (decode_run.prepare), once per size."""
        shape = StepShape((), num_seqs, 0, num_seqs)
        run = DecodeRun(self._dense(self.padded_tokens(shape)).plus(self._head(num_seqs)), self.graphed(shape),
                        decode_work(self.dims, num_seqs), self.varlen, num_seqs)
        return prepare(run, self.rates, self.dims.layers, self.step_overhead_s)

    # ------------------------------------------------------------------ other engine-facing costs
    def swap_seconds(self, num_bytes: float) -> float:
        """Time to move KV bytes between GPU and host memory over the host link."""
        return num_bytes / self.gpu.host_link_bytes_per_s

    def activation_workspace_bytes(self, max_num_batched_tokens: int) -> float:
        """Peak activation memory of one step, reserved out of KV memory (as vLLM's profiling run does)."""
        m = self.model
        per_token = (4 * m.hidden_size + 2 * m.intermediate_size + m.num_heads * m.head_dim) * 2
        return max_num_batched_tokens * per_token / self.tp + m.vocab_size * 4 * 256


def _scaled(ops: list[Op], k: float) -> list[Op]:
    return [scale(op, k) for op in ops]


def tp_split_error(model: ModelSpec, tp: int) -> str:
    """Why `model`'s heads cannot be split over `tp` GPUs ('' when they can)."""
    if model.num_heads % tp:
        return f"tp={tp} does not divide {model.name}'s {model.num_heads} attention heads"
    kv = model.num_kv_heads
    if not model.is_mla and (kv % tp if kv >= tp else tp % kv):
        # As vLLM requires: KV heads split evenly over the GPUs, or each replicated on tp / kv_heads of them.
        return f"tp={tp} and {model.name}'s {kv} KV heads: one must divide the other"
    return ""


def _validate(model: ModelSpec, gpu: GPUSpec, dtype: str, kv_dtype: str, tp: int, pp: int, attention: str,
              elementwise: str, bandwidth_scale: float, flops_scale: float, cuda_graph_max_batch: int,
              link: str | None) -> None:
    """One-line errors naming the bad argument and the valid choices."""
    if dtype not in WEIGHT_DTYPES:
        raise CostModelError(f"unknown weight dtype '{dtype}'; choose one of: {', '.join(WEIGHT_DTYPES)}")
    if kv_dtype not in KV_DTYPES:
        raise CostModelError(f"unknown KV cache dtype '{kv_dtype}'; choose one of: {', '.join(KV_DTYPES)}")
    if attention not in ATTENTION_KINDS:
        raise CostModelError(f"unknown attention '{attention}'; choose one of: {', '.join(ATTENTION_KINDS)}")
    if elementwise not in ELEMENTWISE:
        raise CostModelError(f"unknown elementwise '{elementwise}'; choose one of: {', '.join(ELEMENTWISE)}")
    for name, value in (("tp", tp), ("pp", pp)):
        if not isinstance(value, int) or value < 1:
            raise CostModelError(f"{name} must be a positive integer, got {value!r}")
    split = tp_split_error(model, tp)
    if split:
        raise CostModelError(split)
    if (tp > 1 or pp > 1) and gpu.interconnect(link).bus_bytes_per_s <= 0:
        raise CostModelError(f"tp={tp} needs a GPU-to-GPU link, and {gpu.name} has none in its entry")
    for name, value in (("bandwidth_scale", bandwidth_scale), ("flops_scale", flops_scale)):
        if not value > 0:
            raise CostModelError(f"{name} must be positive, got {value!r}")
    if cuda_graph_max_batch < 0:
        raise CostModelError(f"cuda_graph_max_batch must be >= 0, got {cuda_graph_max_batch}")
