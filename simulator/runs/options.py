"""The scenario options every CLI command shares, declared once: flag, help text and value parser per field.

`run` takes one value per option; `compare` and `sweep` take comma lists of the same options, so the table
lives here and commands are generated from it (no option block re-declared per command).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from hardware.links import LINKS
from simulator.batching import BATCHING_POLICIES
from simulator.config import short
from simulator.cluster.parallel import AUTO_MIN_REQUESTS
from simulator.cluster.router import ROUTERS
from simulator.engines import DEFAULT_ENGINE, ENGINES
from simulator.kv_cache import KV_CACHE_MANAGERS
from simulator.speculative import DRAFT_METHODS


def parse_bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("on", "true", "yes", "1"):
        return True
    if value in ("off", "false", "no", "0"):
        return False
    raise ValueError(f"expected on or off, got {short(text)}")


def _number(kind: type) -> Callable[[str], Any]:
    """A parser of `kind` from text; integers may be written 1e6 or 1_000_000 when whole."""
    def parse(text: str) -> Any:
        what = "an integer" if kind is int else "a number"
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise ValueError(f"expected {what}, got {short(text)}") from None
        if kind is float:
            return value
        if not value.is_integer():
            raise ValueError(f"expected {what}, got {short(text)}")
        try:
            return int(text)               # exact for long integers
        except ValueError:
            return int(value)
    return parse


def parse_workers(text: str) -> int | None:
    """--workers: a number of processes, or 'auto' (None)."""
    if str(text).strip().lower() == "auto":
        return None
    try:
        return _number(int)(text)
    except ValueError:
        raise ValueError(f"expected a number of processes or auto, got {short(text)}") from None


def split_items(text: str) -> list[str]:
    """Split a comma list, keeping `key=value` pieces with the value before (lognormal:mean=600,sigma=0.8 is one
    item); empty pieces stay (as '') for the caller to refuse."""
    items: list[str] = []
    for piece in str(text).split(","):
        piece = piece.strip()
        if items and ":" in items[-1] and re.match(r"^[A-Za-z_]\w*=", piece):
            items[-1] += "," + piece
        else:
            items.append(piece)
    return items


SECONDS_PER_UNIT = {"ms": 1e-3, "s": 1.0, "us": 1e-6}


def parse_seconds(text: str) -> float:
    """'500ms', '0.5s', '0.5' (seconds) -> seconds."""
    raw = str(text).strip().lower()
    unit = next((u for u in ("ms", "us", "s") if raw.endswith(u)), "")
    try:
        value = float(raw[:len(raw) - len(unit)].strip()) * SECONDS_PER_UNIT.get(unit, 1.0)
    except ValueError:
        raise ValueError(f"expected a time such as 500ms, 0.5s or 0.5 (seconds), got '{text}'") from None
    return value


GOODPUT_FIELDS = {"ttft": "slo_ttft_s", "tpot": "slo_tpot_s", "e2el": "slo_e2e_s"}


def parse_goodput(text: str) -> dict[str, float]:
    """vLLM's --goodput pairs, 'ttft:500 tpot:50' (milliseconds), -> {SimConfig SLO field: seconds}."""
    out = {}
    for pair in str(text).replace(",", " ").split():
        name, sep, value = pair.partition(":")
        if not sep or name not in GOODPUT_FIELDS:
            raise ValueError(f"expected KEY:MILLISECONDS pairs with KEY one of {', '.join(GOODPUT_FIELDS)} "
                             f"(e.g. ttft:500 tpot:50), got '{pair}'")
        try:
            ms = float(value)
        except ValueError:
            raise ValueError(f"'{pair}': the value is milliseconds, a number") from None
        if not ms >= 0:
            raise ValueError(f"'{pair}': an SLO is a non-negative number of milliseconds")
        out[GOODPUT_FIELDS[name]] = ms / 1e3
    if not out:
        raise ValueError("expected KEY:MILLISECONDS pairs such as ttft:500 tpot:50")
    return out


@dataclass(frozen=True)
class ScenarioOption:
    field: str          # SimConfig field
    flag: str           # command-line flag
    kind: type          # int, float, str or bool (bools are written on/off)
    help: str
    panel: str = "Scenario"
    parser: Callable[[str], Any] | None = None    # a custom value parser (times with units)
    metavar: str | None = None                     # what --help shows for the value (None: from kind/parser)

    @property
    def help_text(self) -> str:
        """Help with its '[default: x]' escaped, so rich markup shows it instead of eating it."""
        return self.help.replace("[default:", "\\[default:")

    @property
    def is_flag(self) -> bool:
        """An on/off option: given bare on the command line it means on."""
        return self.kind is bool

    def parse(self, text: str) -> Any:
        if self.parser is not None:
            return self.parser(text)
        if self.kind is bool:
            return parse_bool(text)
        if self.kind in (int, float):
            return _number(self.kind)(text)
        return str(text)


def _o(field: str, kind: type, help: str, panel: str, flag: str | None = None, parser=None,
       metavar: str | None = None) -> ScenarioOption:
    return ScenarioOption(field, flag or "--" + field.replace("_", "-"), kind, help, panel, parser, metavar)


HW, WL, SV, KV, MT, CL = "Hardware and model", "Workload", "Serving", "KV cache", "Metrics", "Cluster"
SP = "Speculative decoding"
SCENARIO_OPTIONS: tuple[ScenarioOption, ...] = (
    _o("gpu", str, "GPU from the catalog (see `servesim gpus`). [default: h100-sxm]", HW),
    _o("gpu_file", str, "A GPU described in a TOML/YAML file (overrides --gpu).", HW),
    _o("model", str, "Model preset (see `servesim models`). [default: llama-3.1-8b]", HW),
    _o("model_config", str, "A Hugging Face config.json read offline (overrides --model).", HW),
    _o("dtype", str, "Weight precision: bf16, fp16, fp8, int8, int4. [default: bf16]", HW),
    _o("kv_dtype", str, "KV-cache precision: bf16, fp16, fp8. [default: bf16]", HW),
    _o("tp", int, "Tensor-parallel GPUs. [default: 1]", HW),
    _o("pp", int, "Pipeline-parallel stages (layers split across GPUs). [default: 1]", HW),
    _o("link", str, f"GPU-to-GPU link for --tp/--pp: {', '.join(LINKS)}. [default: the GPU entry's]", HW),
    _o("attention", str, "Attention kernel: varlen (vLLM V1's one launch for all sequences), flash (separate "
                         "prefill and decode kernels) or naive (scores in HBM). [default: the engine's]", HW),
    _o("bandwidth_scale", float, "What-if: multiply the GPU's memory bandwidth. [default: 1]", HW),
    _o("flops_scale", float, "What-if: multiply the GPU's matrix FLOP rates. [default: 1]", HW),
    _o("cuda_graphs", bool, "CUDA graphs for decode steps: on or off. [default: on]", HW),
    _o("rate", float, "Arrival rate, requests/s (synthetic workloads); inf sends every request at time 0. "
                      "[default: 6.4]", WL),
    _o("arrival", str, "Arrival process: poisson, gamma:cv=2, constant. [default: poisson]", WL),
    _o("burstiness", float, "vLLM's arrivals: gamma gaps of shape B and mean 1/rate, scaled so the last arrives at "
                            "num-requests / rate (1 = Poisson; lower is burstier).", WL),
    _o("num_requests", int, "Requests to simulate (caps a trace too). [default: 2000 synthetic, or the whole trace]", WL),
    _o("duration_s", float, "Stop generating (or replaying) arrivals after this many seconds.", WL, "--duration"),
    _o("prompt_len", str, "Prompt tokens: 512, uniform:128:2048, lognormal:mean=600,sigma=0.8, sharegpt, arxiv, "
                          "bwb, empirical:FILE.csv[:column]. [default: sharegpt]", WL),
    _o("output_len", str, "Output tokens, same forms as --prompt-len. [default: sharegpt]", WL),
    _o("trace", str, "Replay a trace file instead of synthetic arrivals (also a `vllm bench serve "
                     "--save-detailed` result with start_times).", WL),
    _o("trace_format", str, "Trace format: auto, azure, mooncake, plain, tokens, vllm-bench. [default: auto]", WL),
    _o("dataset", str, "Prompt/output lengths from a ShareGPT JSON (sampled as vLLM samples it; tokens estimated "
                       "as characters / 4) or a vLLM bench result; arrivals from --rate.", WL),
    _o("rate_scale", float, "Multiply a trace's arrival rate by this factor. [default: 1]", WL),
    _o("seed", int, "Seed of every random draw. [default: 0]", WL),
    _o("system_prompts", str, "Shared system prompts: N:LEN[:SHARE], N prompts of LEN tokens before a share SHARE "
                              "(default 1) of the prompts (or sessions).", WL),
    _o("sessions", str, "Closed-loop sessions instead of single requests (--rate: sessions/s): "
                        "multi-turn:turns=4,think=5 (each turn re-sends the history plus a --prompt-len message, "
                        "think s after the last response), or agentic:context=6000,turns=10,tool=300,think=0.5 "
                        "(a shared context, then tool results). Optional max=TOKENS ends a session (8192).", WL),
    _o("max_concurrency", int, "At most this many requests in flight: one due while that many are running "
                               "arrives when one finishes (vllm bench serve's --max-concurrency). [default: no limit]",
       WL),
    _o("engine", str, f"Serving engine preset (scheduler rules, kernels, CUDA graphs, CPU time per step): "
                      f"{', '.join(ENGINES)}. [default: {DEFAULT_ENGINE}]", SV),
    _o("batching", str, f"Batching policy: {', '.join(BATCHING_POLICIES)}. [default: continuous]", SV),
    _o("max_model_len", int, "Longest prompt + output accepted, tokens. [default: the model's context, at most 8192]", SV),
    _o("max_num_seqs", int, "Continuous: running requests at most. [default: 256]", SV),
    _o("max_num_batched_tokens", int, "Continuous: tokens per step at most. [default: 8192, or max-model-len "
                                      "without chunked prefill]", SV),
    _o("chunked_prefill", bool, "Continuous: split prompts across steps, mixed with decodes: on or off. "
                                "[default: the engine's: on for vllm-v1, off for vllm-v0]", SV),
    _o("batch_size", int, "Static: requests per batch. [default: 8]", SV),
    _o("max_batch_size", int, "Dynamic: close a batch at this many waiting requests. [default: 8]", SV),
    _o("max_wait_s", float, "Dynamic: or once the oldest request waited this long, s. [default: 0.1]", SV,
       "--max-wait"),
    _o("preemption", str, "When KV runs out: recompute or swap. [default: recompute]", SV),
    _o("swap_space_gb", float, "Host memory for swapped KV, GB. [default: 4]", SV, "--swap-space"),
    _o("speculative_tokens", int, "Draft tokens verified per decode step (K); each verify step computes K + 1 "
                                  "tokens a request. [default: 0, off]", SP),
    _o("draft", str, f"Drafter without a model: {', '.join(DRAFT_METHODS)} (ngram is free; eagle is one extra "
                     "decoder layer and the LM head per draft token).", SP),
    _o("draft_model", str, "Or a draft model preset (see `servesim models`), run K times per step on the same "
                           "GPU.", SP),
    _o("acceptance_rate", float, "Each draft accepted with this probability given the earlier ones were "
                                 "(position i: rate^i).", SP),
    _o("acceptance_profile", str, "Or per-position acceptance rates p1,...,pK, non-increasing (e.g. "
                                  "0.8,0.6,0.4).", SP),
    _o("kv", str, f"KV-cache manager: {', '.join(KV_CACHE_MANAGERS)}. [default: paged]", KV),
    _o("block_size", int, "Paged: tokens per KV block. [default: 16]", KV),
    _o("prefix_caching", bool, "Paged + continuous: reuse cached KV blocks of shared prompt prefixes (vLLM V1's "
                               "automatic prefix caching; hits need a workload that describes its content: "
                               "Mooncake hash_ids, token ids, --system-prompts or --sessions): on or off. "
                               "[default: the engine's: on for vllm-v1 with continuous batching and a paged KV "
                               "cache, off for vllm-v0]", KV),
    _o("kv_reservation", str, "Contiguous: reserve max-model-len or request (prompt + output) per request. "
                              "[default: max-model-len]", KV),
    _o("gpu_memory_utilization", float, "Share of GPU memory servesim may use. [default: 0.9]", KV),
    _o("num_gpu_blocks", int, "Override the KV capacity in blocks.", KV),
    _o("kv_capacity_tokens", int, "Override the KV capacity in tokens.", KV),
    _o("slo_ttft_s", float, "TTFT SLO for goodput: 500ms, 0.5s; a bare number is seconds.", MT, "--slo-ttft",
       parse_seconds),
    _o("slo_tpot_s", float, "TPOT SLO for goodput: 50ms, 0.05s; a bare number is seconds.", MT, "--slo-tpot",
       parse_seconds),
    _o("slo_e2e_s", float, "End-to-end latency SLO for goodput: 20s, 20000ms; a bare number is seconds.", MT,
       "--slo-e2e", parse_seconds),

    _o("summary_only", bool, "Keep only the summary: no per-step rows, inter-token latencies in a histogram "
                             "(memory does not grow with simulated time): on or off. [default: off]", MT),
    _o("max_request_rows", int, "Per-request rows kept in memory; beyond, every row streams to Parquet (needs "
                                "pyarrow). [default: 1000000]", MT),
    _o("replicas", int, "Replicas behind a router, each a full engine on its own GPUs. [default: 1]", CL),
    _o("router", str, f"Router: {', '.join(ROUTERS)}. [default: round-robin]", CL),
    _o("router_delay_s", float, "Replicas' load reports reach the router this many seconds late. [default: 0]",
       CL, "--router-delay"),
    _o("pools", str, "A TOML/YAML file of replica groups (count, GPU, model, TP, serving settings each); "
                     "instead of --replicas.", CL),
    _o("prefill_replicas", int, "Prefill/decode disaggregation: prefill replicas (with --decode-replicas).", CL),
    _o("decode_replicas", int, "Prefill/decode disaggregation: decode replicas (with --prefill-replicas).", CL),
    _o("dp", int, "Data-parallel ranks, each a full engine with its own requests and KV, on its own tp GPUs; "
                  "without --expert-parallel: that many independent replicas. [default: 1]", CL),
    _o("expert_parallel", bool, "MoE models with --dp N: experts sharded over the N ranks, which step in lockstep "
                                "(token all-to-alls on the GPU link): on or off. [default: off]", CL),
    _o("kv_link", str, "Link the prompt KV crosses from prefill to decode, per GPU: nvlink3/4/5, pcie4-p2p, ..., "
                       "ib-ndr, ib-hdr, roce-400g/200g/100g, or rdma:<Gb/s>. [default: ib-ndr]", CL),
    _o("kv_transfer", str, "KV transfer: whole (after the prefill) or layerwise (as layers finish). "
                           "[default: whole]", CL),
    _o("workers", int, "Processes that simulate replicas at once, where the router reads no replica state "
                       "(round-robin, random); results are identical for any number: N, or auto (every core "
                       f"when the run has {AUTO_MIN_REQUESTS:,} requests or more). [default: auto]", CL,
       parser=parse_workers, metavar="N|auto"),
    _o("fast_path", bool, "Advance runs of identical decode steps at once; results are identical: on or off. "
                          "[default: on]", SV),
)
OPTIONS_BY_FIELD = {o.field: o for o in SCENARIO_OPTIONS}
OPTIONS_BY_FLAG = {o.flag: o for o in SCENARIO_OPTIONS}
# Options whose single value is itself a comma list (not several scenarios).
COMMA_VALUED = frozenset({"acceptance_profile", "metric_percentiles", "percentile_metrics"})


def coerce(field: str, value: Any) -> Any:
    """A config-file value as the field takes it: text is read as the command line reads it ("on", "5"), and a
    whole float (16.0) is an integer; every other value goes to SimConfig's strict type check unchanged."""
    opt = OPTIONS_BY_FIELD.get(field)
    if opt is None:
        return value
    if isinstance(value, str) and opt.kind is not str:
        return opt.parse(value)
    if opt.kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return value
