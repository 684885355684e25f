"""Speculative decoding's drafter, priced on the target's GPU next to the target's verify step.

After every step, the drafter proposes K tokens for each sequence that sampled in it (vLLM V1 proposes in the same
engine step, right after the target's forward pass: GPUModelRunner.propose_draft_token_ids):
- `ngram` (prompt lookup) runs on the CPU while the GPU idles between steps: free here.
- `eagle` is one extra decoder layer (EAGLE, Li et al. ICML 2024) that shares the target's embedding and LM head:
  a forward pass of that layer plus the LM head per proposed token.
- a draft model (`--draft-model NAME`) is a small model of its own, with its own weights and KV cache.
Both model drafters run K forward passes (vLLM's EagleProposer.propose, which the draft-model proposer shares):
the first over all of the step's tokens (it must also cache what the target just computed: prompt chunks,
verified drafts), each later one a decode of one token per proposing sequence, its context one token longer.
The drafter's passes pay their kernels but not the engine's per-step scheduling overhead, which the target's step
already pays once.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from simulator.cost.model import CostModel, tp_split_error
from simulator.step import FAMILIES, StepCost, StepShape
from simulator.models import ModelSpec, resolve_model


@dataclass(frozen=True)
class Drafter:
    """What proposes the drafts: its name, and the model it runs (None: free, as ngram)."""

    name: str
    model: ModelSpec | None = None
    shares_embeddings: bool = False       # EAGLE reuses the target's embedding and LM head (no weights of its own)
    tp: int = 1                           # GPUs its layers are split over

    def weight_bytes(self, dtype: str) -> float:
        """Weights the drafter adds to each of its GPUs."""
        if self.model is None:
            return 0.0
        total = self.model.weight_bytes(dtype)
        return (total - self.model.embedding_params() * 2.0 if self.shares_embeddings else total) / self.tp


def make_drafter(draft: str | None, draft_model: str | None, target: ModelSpec, tp: int = 1) -> Drafter | None:
    """The drafter a config names (--draft ngram|eagle, or --draft-model PRESET); None without speculation."""
    if draft_model is not None:
        try:
            model = resolve_model(draft_model, None)
        except ValueError as err:
            raise ValueError(f"draft-model: {err}") from None
        return Drafter(draft_model, model, tp=draft_tp(model, tp))
    if draft == "ngram":
        return Drafter("ngram")
    if draft == "eagle":
        return Drafter("eagle", eagle_head(target), shares_embeddings=True, tp=tp)
    return None


def draft_tp(draft: ModelSpec, tp: int) -> int:
    """The drafter's tensor parallelism: the target's where the draft's heads split over it evenly, else one GPU
    (vLLM's speculative_draft_tensor_parallel_size=1; a 0.5B draft's 14 heads do not split four ways)."""
    return 1 if tp_split_error(draft, tp) else tp


def eagle_head(target: ModelSpec) -> ModelSpec:
    """EAGLE's draft head: one dense decoder layer of the target's width (EAGLE's released heads are one
    LlamaDecoderLayer, plus a 2h -> h input projection left out here as under 1% of the layer's weights)."""
    return dataclasses.replace(target, name=f"{target.name}-eagle-head", num_layers=1, num_experts=0,
                               num_experts_per_tok=0, moe_intermediate_size=0, num_shared_experts=0,
                               first_dense_layers=0)


class SpeculativeCostModel:
    """A step's cost: the target's (verify chunks included in its shape) plus the drafter's K passes.

    Wraps the target CostModel and offers what the engine and memory planning call (step_cost, swap_seconds,
    activation_workspace_bytes); it has no decode_run_costs, so the engine never prices decode runs with it.
    """

    def __init__(self, target: CostModel, draft: CostModel, num_tokens: int) -> None:
        self.target, self.draft, self.num_tokens = target, draft, num_tokens
        self.model, self.gpu = target.model, target.gpu
        self._costs: dict[StepShape, StepCost] = {}

    def step_cost(self, shape: StepShape) -> StepCost:
        cost = self._costs.get(shape)
        if cost is None:
            cost = add_costs(self.target.step_cost(shape), *self.draft_costs(shape))
            if len(self._costs) < 1 << 16:
                self._costs[shape] = cost
        return cost

    def draft_costs(self, shape: StepShape) -> list[StepCost]:
        """The drafter's passes after a step: one over all its tokens, then K - 1 one-token decodes."""
        seqs = shape.num_sampling_seqs
        if not seqs or not shape.num_tokens:
            return []
        draft = self.draft.step_cost
        passes = [draft(dataclasses.replace(shape, num_sampled=seqs))]
        context = proposing_context(shape)
        for j in range(1, self.num_tokens):
            passes.append(draft(StepShape((), seqs, context + j * seqs, seqs)))
        return passes

    def swap_seconds(self, num_bytes: float) -> float:
        return self.target.swap_seconds(num_bytes)

    def activation_workspace_bytes(self, max_num_batched_tokens: int) -> float:
        return self.target.activation_workspace_bytes(max_num_batched_tokens)


def proposing_context(shape: StepShape) -> int:
    """Tokens the proposing sequences attend after the step: decodes' and verifies' contexts in full, and of the
    prompt chunks the share that completes (a shape does not say which chunks do: spread evenly)."""
    verify = sum(c + n for n, c in shape.verify)
    completing = shape.num_sampling_seqs - shape.num_decode - len(shape.verify)
    prefill = 0
    if completing > 0 and shape.prefill:
        prefill = round(sum(c + n for n, c in shape.prefill) * completing / len(shape.prefill))
    return shape.decode_context_tokens + verify + prefill


def add_costs(first: StepCost, *more: StepCost) -> StepCost:
    """Costs run one after another: seconds, FLOPs, bytes and families add; the bound is the longest part's."""
    if not more:
        return first
    parts = (first, *more)
    families = [dict(c.breakdown) for c in parts]
    breakdown = tuple((f, sum(fam.get(f, 0.0) for fam in families)) for f in FAMILIES)
    return StepCost(seconds=sum(c.seconds for c in parts), flops=sum(c.flops for c in parts),
                    bytes=sum(c.bytes for c in parts), bound=max(parts, key=lambda c: c.seconds).bound,
                    breakdown=breakdown)
