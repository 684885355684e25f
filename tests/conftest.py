"""Shared fixtures: a stub cost model with round numbers, engine builders, tiny workloads."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simulator.batching import PolicyParams, make_policy  # noqa: E402
from simulator.cost import StepCost, StepShape  # noqa: E402
from simulator.engine import Engine, EngineOptions, EngineParts  # noqa: E402
from simulator.kv_cache import make_kv_cache  # noqa: E402
from workloads.spec import RequestSpec  # noqa: E402


class RoundCostModel:
    """Hand-checkable step times: 10 ms per step plus 0.1 ms per prefill token; swaps cost 1 s per GB."""

    def step_cost(self, shape: StepShape) -> StepCost:
        seconds = 0.010 + 0.0001 * shape.num_prefill_tokens
        return StepCost(seconds=seconds, flops=0.0, bytes=0.0, bound="memory", breakdown=(("overhead", seconds),))

    def swap_seconds(self, num_bytes: float) -> float:
        return num_bytes / 1e9


def make_parts(*, batching="continuous", kv="paged", capacity_tokens=100_000, max_model_len=4096, cost_model=None,
               max_concurrency=None, fast_path=True, **params) -> EngineParts:
    kv_manager = make_kv_cache(kv, capacity_tokens, block_size=params.pop("block_size", 16),
                               max_model_len=max_model_len, reservation=params.pop("reservation", "max-model-len"),
                               watermark=params.pop("watermark", 0.01),
                               prefix_caching=params.pop("prefix_caching", False))
    policy = make_policy(batching, kv_manager, PolicyParams(**params))
    return EngineParts(policy=policy, cost_model=cost_model or RoundCostModel(), max_model_len=max_model_len,
                       config={}, meta={"kv_capacity_tokens": capacity_tokens},
                       options=EngineOptions(max_concurrency=max_concurrency, fast_path=fast_path))


def make_engine(specs, *, progress=None, fast_path=None, **kwargs) -> Engine:
    return Engine(make_parts(**kwargs), specs, progress, fast_path=fast_path)


def specs_from(rows) -> list[RequestSpec]:
    """[(arrival_s, prompt_tokens, output_tokens), ...] -> RequestSpecs numbered in order."""
    return [RequestSpec(i, a, p, o) for i, (a, p, o) in enumerate(rows)]


@pytest.fixture
def three_requests() -> list[RequestSpec]:
    # A at 0 s (100 prompt, 3 out), B at 5 ms (200, 2), C at 15 ms (100, 4)
    return specs_from([(0.0, 100, 3), (0.005, 200, 2), (0.015, 100, 4)])
