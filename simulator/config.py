"""SimConfig: the one frozen object of scenario knobs, validated on construction; no I/O here."""
from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
from dataclasses import dataclass, fields
from typing import Any, Mapping

from hardware.links import LINKS
from simulator.engines import ENGINES
from simulator.speculative import DRAFT_METHODS, Speculation, parse_acceptance_profile


class ConfigError(ValueError):
    """A bad knob: the message is one line naming the problem and the valid choices; `field` names the knob."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ConfigTypeError(ConfigError, TypeError):
    """A knob of the wrong type (a string where a number belongs): both a ValueError and a TypeError."""


DEFAULT_NUM_REQUESTS = 2000
DEFAULT_MAX_MODEL_LEN = 8192
MAX_REQUESTS = 10_000_000      # one run's requests at most (memory grows with them; see README "How fast")


@dataclass(frozen=True)
class SimConfig:
    """Every knob of a scenario. Defaults are the built-in scenario: Llama-3.1-8B bf16 on one H100-SXM,
    continuous batching, paged KV, ShareGPT lengths, Poisson arrivals."""

    # hardware and model
    gpu: str = "h100-sxm"
    gpu_file: str | None = None            # a user GPU in TOML/YAML (overrides --gpu)
    model: str = "llama-3.1-8b"
    model_config: str | None = None        # a Hugging Face config.json (overrides --model)
    dtype: str = "bf16"                    # weight precision
    kv_dtype: str = "bf16"
    tp: int = 1
    pp: int = 1                            # pipeline stages (layers split; one batch flows through them in turn)
    link: str | None = None                # GPU-to-GPU interconnect (hardware/links.py); None: the GPU entry's
    cuda_graphs: bool = True
    attention: str | None = None           # None: the engine's kernel; 'flash' (FlashAttention IO, prefill and
    #                                        decode kernels), 'naive' (scores through HBM), 'varlen' (vLLM V1's)
    bandwidth_scale: float = 1.0           # what-if: the GPU's memory bandwidth times this
    flops_scale: float = 1.0               # what-if: the GPU's matrix rates times this
    # workload
    rate: float = 6.4                      # requests/s: below the default scenario's saturation (6.9 req/s)
    arrival: str = "poisson"
    burstiness: float | None = None        # vLLM's gamma arrivals (shape = burstiness, mean 1/rate), rescaled as vLLM
    num_requests: int | None = None        # None: 2000 synthetic requests, or the whole trace
    duration_s: float | None = None
    prompt_len: str = "sharegpt"
    output_len: str = "sharegpt"
    trace: str | None = None
    dataset: str | None = None             # prompt/output lengths from a ShareGPT JSON or a vLLM bench result
    trace_format: str = "auto"
    rate_scale: float = 1.0
    seed: int = 0
    system_prompts: str | None = None      # 'N:LEN[:SHARE]': shared system prompts before prompts (workloads.sessions)
    sessions: str | None = None            # 'multi-turn:...' or 'agentic:...': closed-loop sessions
    max_concurrency: int | None = None     # at most this many requests in flight (vllm bench serve's clients)
    # serving
    engine: str = "vllm-v1"                # engine preset (simulator/engines.py): scheduler rules, kernels, graphs
    batching: str = "continuous"
    kv: str = "paged"
    max_model_len: int | None = None       # None: the model's context, at most DEFAULT_MAX_MODEL_LEN
    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None   # None: 8192, or max_model_len when chunked prefill is off
    chunked_prefill: bool | None = None    # None: the engine's default (on for vllm-v1, off for vllm-v0)
    batch_size: int = 8
    max_batch_size: int = 8
    max_wait_s: float = 0.1
    block_size: int = 16
    kv_reservation: str = "max-model-len"
    gpu_memory_utilization: float = 0.9
    num_gpu_blocks: int | None = None
    kv_capacity_tokens: int | None = None
    preemption: str = "recompute"
    swap_space_gb: float = 4.0
    prefix_caching: bool | None = None     # share cached prompt blocks between requests (vLLM V1's prefix caching);
    #                                        None: the engine's default where it applies (continuous + paged)
    # speculative decoding (continuous batching): K drafts verified per decode step
    speculative_tokens: int = 0            # K; 0 turns speculation off
    draft: str | None = None               # 'ngram' or 'eagle' (a drafter without a model of its own)...
    draft_model: str | None = None         # ...or a draft model preset, priced on the same GPU
    acceptance_rate: float | None = None   # each draft accepted with this probability given the earlier ones were
    acceptance_profile: str | None = None  # or per-position rates 'p1,p2,...,pK' (vLLM's per-position metric)
    # metrics
    slo_ttft_s: float | None = None
    slo_tpot_s: float | None = None
    slo_e2e_s: float | None = None
    metric_percentiles: str = "99"         # vllm_result.json: percentiles, as vLLM's --metric-percentiles
    percentile_metrics: str = "ttft,tpot,itl,e2el"   # ... of these metrics (vLLM's --percentile-metrics)
    summary_only: bool = False             # keep histograms and running sums, not per-step and per-token rows
    max_request_rows: int | None = 1_000_000   # per-request rows kept in memory, more stream to Parquet (None: all)
    request_rows_path: str | None = None   # where they stream (None: a temporary file, named in the results)
    # cluster (simulator/cluster): replicas behind a router
    replicas: int = 1
    router: str = "round-robin"
    router_delay_s: float = 0.0            # replicas' load reports reach the router this late
    pools: str | None = None               # a TOML/YAML file of replica groups (instead of `replicas`)
    prefill_replicas: int = 0              # prefill/decode disaggregation: this many prefill replicas...
    decode_replicas: int = 0               # ...and this many decode replicas (both, or neither)
    dp: int = 1                            # data-parallel ranks (cluster/dp_ep.py with expert_parallel)
    expert_parallel: bool = False          # MoE: experts sharded over the dp ranks, which step in lockstep
    kv_link: str = "ib-ndr"                # the link prompts' KV crosses from prefill to decode (per GPU)
    kv_transfer: str = "whole"             # 'whole' after the prefill, or 'layerwise' as layers finish
    workers: int | None = None             # processes simulating independent replicas at once (None: auto;
    #                                        results are identical for any number: simulator/cluster/parallel.py)
    # speed
    fast_path: bool = True                 # advance runs of identical decode steps at once (identical results)

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, check_field(f.name, getattr(self, f.name)))
        if self.trace is None and self.num_requests is None and self.duration_s is not None \
                and self.rate * self.duration_s > MAX_REQUESTS:
            raise ConfigError(f"duration_s {self.duration_s:g} at rate {self.rate:g} makes about "
                              f"{self.rate * self.duration_s:.3g} requests, more than {MAX_REQUESTS:,}; lower it or "
                              "set num_requests", "duration_s")
        if self.prefix_caching and self.batching != "continuous":
            raise ConfigError(f"prefix caching needs continuous batching (the {self.batching} policy runs whole "
                              "batches and takes no cache hits); use --batching continuous or --prefix-caching off")
        self._check_cluster()
        if self.attention is not None:
            _check_choice("attention", self.attention, ("flash", "naive", "varlen"))
        _check_choice("engine", self.engine, tuple(ENGINES))
        if self.link is not None:
            _check_choice("link", self.link, tuple(LINKS))
        _check_choice("preemption", self.preemption, ("recompute", "swap"))
        _check_choice("kv_reservation", self.kv_reservation, ("max-model-len", "request"))
        _check_vllm_workload(self)
        _check_speculation(self)
        if self.num_gpu_blocks is not None and self.kv_capacity_tokens is not None:
            raise ConfigError("give num_gpu_blocks or kv_capacity_tokens, not both")
        if not self.chunked and self.max_num_batched_tokens is not None and self.max_model_len \
                and self.max_num_batched_tokens < self.max_model_len:
            raise ConfigError(f"max_num_batched_tokens ({self.max_num_batched_tokens}) is smaller than max_model_len "
                              f"({self.max_model_len}): a long prompt could never be scheduled; raise it or "
                              "enable chunked prefill")

    def _check_cluster(self) -> None:
        from simulator.cluster.router import ROUTERS
        _check_choice("router", self.router, tuple(ROUTERS))
        if not isinstance(self.router_delay_s, (int, float)) or self.router_delay_s < 0:
            raise ConfigError(f"router-delay must not be negative, got {self.router_delay_s}")
        if self.pools is not None and self.replicas != 1:
            raise ConfigError("give replicas or pools, not both (a pools file sets each group's count)")
        _check_choice("kv_transfer", self.kv_transfer, ("whole", "layerwise"))
        pd = (self.prefill_replicas, self.decode_replicas)
        if any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in pd) or (min(pd) == 0 < max(pd)):
            raise ConfigError(f"prefill-replicas and decode-replicas must both be positive integers (or both 0), "
                              f"got {pd[0]} and {pd[1]}")
        if max(pd) and (self.replicas != 1 or self.pools is not None):
            raise ConfigError("give prefill-replicas and decode-replicas, or replicas, or pools; not several")
        if self.dp > 1 and (self.replicas != 1 or self.pools is not None or max(pd)):
            raise ConfigError("give dp, or replicas, or pools, or prefill/decode replicas; not several")
        if self.expert_parallel and self.dp < 2:
            raise ConfigError("expert-parallel shards experts over data-parallel ranks: give --dp 2 or more")

    @property
    def is_cluster(self) -> bool:
        """Several replicas (or a pools file): simulated by simulator.cluster."""
        return self.replicas > 1 or self.pools is not None or self.prefill_replicas > 0 or self.dp > 1

    @property
    def prefix_cache(self) -> bool:
        """Whether prompts share cached blocks: the scenario's choice, else the engine's default where prefix
        caching applies (continuous batching over a paged KV cache)."""
        if self.prefix_caching is not None:
            return self.prefix_caching
        return ENGINES[self.engine].prefix_caching and self.batching == "continuous" and self.kv == "paged"

    @property
    def chunked(self) -> bool:
        """Whether prompts are chunked: the scenario's choice, else the engine's default."""
        return ENGINES[self.engine].chunked_prefill if self.chunked_prefill is None else self.chunked_prefill

    @property
    def speculation(self) -> Speculation | None:
        """The acceptance model of speculative decoding, or None when it is off."""
        if not self.speculative_tokens:
            return None
        if self.acceptance_profile is not None:
            return Speculation(parse_acceptance_profile(self.acceptance_profile), self.seed)
        return Speculation.from_rate(self.speculative_tokens, self.acceptance_rate, self.seed)

    @property
    def token_budget(self) -> int:
        """Tokens per step: vLLM's default 8192 with chunked prefill, else at least max_model_len."""
        if self.max_num_batched_tokens is not None:
            return self.max_num_batched_tokens
        return 8192 if self.chunked else max(8192, self.max_model_len or DEFAULT_MAX_MODEL_LEN)

    @property
    def request_cap(self) -> int | None:
        """Requests to generate or replay: the given cap; 2000 for a synthetic workload with no cap at all."""
        if self.num_requests is None and self.duration_s is None and self.trace is None:
            return DEFAULT_NUM_REQUESTS
        return self.num_requests

    def replace(self, **changes: Any) -> "SimConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "SimConfig":
        """Build from a mapping (a TOML/YAML file); keys may use dashes; unknown keys are errors."""
        known = {f.name for f in fields(cls)}
        clean = {str(k).replace("-", "_"): v for k, v in data.items()}
        unknown = sorted(set(clean) - known)
        if unknown:
            hint = difflib.get_close_matches(unknown[0], sorted(known), n=1)
            raise ConfigError(f"unknown config key(s) {', '.join(map(short, unknown))}"
                              f"{f' (did you mean {hint[0]!r}?)' if hint else ''}; valid keys: {', '.join(sorted(known))}")
        return cls(**clean)


# The kind and allowed range of every field, written once: SimConfig checks them on construction (so the API,
# config files and the command line share them). Bounds keep every count and time inside what the simulator
# can represent and finish; (low, high) are inclusive unless the low bound is marked open.
OPEN = "open"
FIELD_RANGES: dict[str, tuple[float, float] | tuple[float, float, str]] = {
    "tp": (1, 1024), "pp": (1, 1024), "bandwidth_scale": (0, 1e6, OPEN), "flops_scale": (0, 1e6, OPEN),
    "rate": (0, math.inf, OPEN), "num_requests": (1, MAX_REQUESTS), "duration_s": (0, 1e9, OPEN),
    "rate_scale": (0, 1e9, OPEN), "seed": (0, 2**63 - 1),
    "max_model_len": (1, 10**9), "max_num_seqs": (1, 10**7), "max_num_batched_tokens": (1, 10**9),
    "batch_size": (1, 10**7), "max_batch_size": (1, 10**7), "max_wait_s": (0, 1e9), "block_size": (1, 10**6),
    "gpu_memory_utilization": (0, 1, OPEN), "num_gpu_blocks": (1, 10**15), "kv_capacity_tokens": (1, 10**16),
    "swap_space_gb": (0, 1e9), "slo_ttft_s": (0, 1e9, OPEN), "slo_tpot_s": (0, 1e9, OPEN),
    "max_request_rows": (1, 10**10), "max_concurrency": (1, 10**7), "replicas": (1, 10_000), "dp": (1, 10_000),
    "workers": (1, 1024),
    "router_delay_s": (0, 1e6), "burstiness": (0, 1e6, OPEN),
    "slo_e2e_s": (0, 1e9, OPEN),
}
FIELD_KINDS: dict[str, tuple[type, bool]] = {}        # field -> (int/float/str/bool, None allowed), filled below


def short(value: Any, limit: int = 60) -> str:
    """repr of a value for an error line, cut to `limit` characters (a huge value never floods the terminal)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 20]}...({len(text):,} characters)"


def check_field(name: str, value: Any) -> Any:
    """`value` as field `name` holds it (numpy scalars made plain); a ConfigTypeError for a wrong type, a
    ConfigError for a value out of FIELD_RANGES. Strings are never read as numbers or booleans here: the
    command line and config files parse them first (simulator.runs.options)."""
    kind, optional = FIELD_KINDS[name]
    if value is None:
        if optional:
            return None
        raise ConfigTypeError(f"{name} must be {_KIND_NAMES[kind]}, got None", name)
    if kind is bool:
        if not isinstance(value, (bool, _np_bool())):
            raise ConfigTypeError(f"{name} must be True or False, got {short(value)}", name)
        return bool(value)
    if kind is str:
        if not isinstance(value, str):
            raise ConfigTypeError(f"{name} must be a string, got {short(value)}", name)
        return value
    ok = isinstance(value, numbers.Integral if kind is int else numbers.Real) and not isinstance(value, bool)
    if not ok:
        raise ConfigTypeError(f"{name} must be {_KIND_NAMES[kind]}, got {short(value)}", name)
    value = kind(value)
    _check_range(name, value)
    return value


_KIND_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "True or False"}


def _np_bool() -> type:
    import numpy as np
    return np.bool_


def _check_range(name: str, value: float) -> None:
    if name not in FIELD_RANGES:
        return
    low, high, *open_low = FIELD_RANGES[name]
    if math.isnan(value):
        raise ConfigError(f"{name} must be a number, got {value}", name)
    if value < low or (open_low and value == low):
        bound = "positive" if open_low and low == 0 else f"at least {_num(low)}"
        raise ConfigError(f"{name} must be {bound}, got {short(value)}", name)
    if value > high:
        raise ConfigError(f"{name} must be at most {_num(high)}, got {short(value)}", name)


def _num(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() and abs(value) < 1e13 else f"{value:g}"


def _fill_kinds() -> None:
    for f in fields(SimConfig):
        parts = [p.strip() for p in str(f.type).split("|")]
        kind = {"int": int, "float": float, "str": str, "bool": bool}[parts[0]]
        FIELD_KINDS[f.name] = (kind, "None" in parts or kind is str)   # a name left None: its resolver says so


def _check_speculation(cfg: SimConfig) -> None:
    """Drafter and acceptance values valid wherever given; with K > 0, exactly one drafter and one acceptance model,
    on continuous batching. With K = 0 they are ignored, so `compare --speculative-tokens 0,4` sweeps K."""
    k = cfg.speculative_tokens
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ConfigError(f"speculative-tokens must be a non-negative integer, got {k}")
    if cfg.draft is not None:
        _check_choice("draft", cfg.draft, DRAFT_METHODS)
    rate = cfg.acceptance_rate
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1):
        raise ConfigError(f"acceptance-rate must lie in [0, 1], got {rate}")
    rates = None
    if cfg.acceptance_profile is not None:
        try:
            rates = parse_acceptance_profile(cfg.acceptance_profile)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    if not k:
        return
    if (cfg.draft is None) == (cfg.draft_model is None):
        raise ConfigError("speculative decoding needs one drafter: --draft ngram|eagle or --draft-model NAME "
                          "(a model preset), not both")
    if (rate is None) == (rates is None):
        raise ConfigError("speculative decoding needs one acceptance model: --acceptance-rate A or "
                          "--acceptance-profile p1,...,pK, not both")
    if rates is not None and len(rates) != k:
        raise ConfigError(f"acceptance-profile gives {len(rates)} rates for {k} speculative tokens; give one "
                          "rate per draft position")
    if cfg.batching != "continuous":
        raise ConfigError(f"speculative decoding needs --batching continuous, got '{cfg.batching}'")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        hint = difflib.get_close_matches(value, choices, n=1)
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {short(value)}"
                          f"{f' (did you mean {hint[0]!r}?)' if hint else ''}", name)


_fill_kinds()


def _check_vllm_workload(cfg: SimConfig) -> None:
    """The vLLM-form workload options: one source of lengths and of arrivals, and vllm_result.json's lists."""
    from simulator.vllm_result import parse_percentile_metrics, parse_percentiles
    if cfg.dataset is not None and cfg.trace is not None:
        raise ConfigError("give --trace or --dataset, not both (a trace has its own lengths)")
    if cfg.dataset is not None and (cfg.prompt_len, cfg.output_len) != ("sharegpt", "sharegpt"):
        raise ConfigError("--dataset gives the prompt and output lengths; drop --prompt-len / --output-len")
    if cfg.burstiness is not None and not cfg.burstiness > 0:
        raise ConfigError(f"burstiness must be positive, got {cfg.burstiness}")
    if cfg.burstiness is not None and cfg.arrival != "poisson":
        raise ConfigError(f"give --arrival or --burstiness, not both (got arrival '{cfg.arrival}')")
    parse_percentiles(cfg.metric_percentiles)
    parse_percentile_metrics(cfg.percentile_metrics)
