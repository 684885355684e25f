"""Real serving runs read for `servesim validate`: what was sent, what the engine measured, how it was set up.

Two sources, each read into one `RealRun`:
- a run folder in the layout of LLMServingSim's served runs (casys-kaist/LLMServingSim, MIT license):
  `meta.json` (vLLM engine settings and hardware), `workload.jsonl` (per request `input_toks`, `output_toks`,
  `arrival_time_ns`, optionally the token ids `input_tok_ids`), `requests.jsonl` (per request the engine's
  `queued_ts`, `scheduled_ts`, `first_token_ts`, `last_token_ts`, seconds on one monotonic clock) and, optional,
  `timeseries.csv` (running and waiting requests once a second);
- a `vllm bench serve --save-result --save-detailed` JSON: `input_lens`, `output_lens`, `ttfts`, `itls`,
  `start_times` (client clock, seconds), `latencies` (or TTFT + the sum of ITLs where a version lacks them) and
  `errors`; only succeeded requests count, as vLLM counts them.

Latencies are measured from the moment the engine queued a request (run folder) or the client sent it (bench
result), and the simulated arrivals are those same moments, so real and simulated TTFT share an origin.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workloads._build import build_specs
from workloads.errors import TraceError
from workloads.files import MAX_TRACE_BYTES, json_records, read_json
from workloads.spec import RequestSpec
from workloads.traces import token_content
from workloads.vllm import non_negative_seconds, positive_count, read_bench_result

RUN_FILES = ("meta.json", "workload.jsonl", "requests.jsonl")
# vLLM dtype spellings -> servesim precisions ("auto" keeps servesim's default of the model's bf16).
DTYPES = {"bfloat16": "bf16", "bf16": "bf16", "torch.bfloat16": "bf16", "float16": "fp16", "half": "fp16",
          "fp16": "fp16", "torch.float16": "fp16"}
KV_DTYPES = {"fp8": "fp8", "fp8_e4m3": "fp8", "fp8_e5m2": "fp8", "bfloat16": "bf16", "float16": "fp16"}


class RunFileError(TraceError):
    """A run file that is missing or malformed; the message is one line naming the file."""


@dataclass(frozen=True)
class RealRun:
    """One real run: the requests to replay, what the real engine measured, and its settings.

    `requests` has one row per succeeded request: request_id, arrival_s, prompt_tokens, output_tokens, status,
    ttft_s, tpot_s, e2e_s, first_token_s, finish_s (seconds, first arrival at 0). `itl_s` holds every real
    inter-token gap when the source has them (a bench result), else None: a run folder gives only the first and
    last token of each request, whose ITL mean is still exact (sum of gaps / number of gaps).
    `settings` are SimConfig fields read from the metadata; `hints` name the model and GPU as the source spells
    them; `timeline` has time_s, num_running, num_waiting (the engine's once-a-second log) or is None.
    """

    name: str
    kind: str                                   # "run folder" or "vllm bench result"
    specs: list[RequestSpec]
    requests: pd.DataFrame
    itl_s: np.ndarray | None
    settings: dict[str, Any] = field(default_factory=dict)
    hints: dict[str, str] = field(default_factory=dict)
    timeline: pd.DataFrame | None = None
    notes: tuple[str, ...] = ()
    failed: int = 0


def load_real_run(path: str | Path) -> RealRun:
    """A run folder (a directory) or a vLLM bench result (a .json file); one-line RunFileError otherwise."""
    path = Path(path)
    if path.is_dir():
        return load_run_folder(path)
    if path.is_file():
        return load_bench_result(path)
    raise RunFileError(f"run '{path}' not found: give a run folder ({', '.join(RUN_FILES)}) or a "
                       "`vllm bench serve --save-result --save-detailed` JSON file")


# ---- run folders ----
def load_run_folder(folder: Path) -> RealRun:
    for name in RUN_FILES:
        if not (folder / name).is_file():
            raise RunFileError(f"{folder / name}: not found (a run folder needs {', '.join(RUN_FILES)})")
    meta = _read_json(folder / "meta.json")
    sent = read_workload(folder / "workload.jsonl")
    engine = _read_engine_log(folder / "requests.jsonl")
    frame = _join_run(folder, sent, engine)
    specs = build_specs(frame.arrival_s.to_numpy(), frame.prompt_tokens.to_numpy(), frame.output_tokens.to_numpy(),
                        _content(sent))
    timeline = read_timeline(folder / "timeseries.csv") if (folder / "timeseries.csv").is_file() else None
    settings, hints, notes = settings_from_meta(meta, folder / "meta.json")
    return RealRun(name=folder.name, kind="run folder", specs=specs, requests=frame, itl_s=None,
                   settings=settings, hints=hints, timeline=timeline, notes=notes)


@dataclass(frozen=True)
class SentRequests:
    """workload.jsonl: what the client sent, in file order; token ids where the file has them."""

    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    arrival_s: np.ndarray
    prompt_ids: list[list[int]] | None


def read_workload(path: Path) -> SentRequests:
    """The sent requests; `input_tok_ids` are optional (the test copy drops them) but must match input_toks."""
    prompt, output, arrival, ids = [], [], [], []
    for where, record in _json_lines(path):
        prompt.append(_int(record, "input_toks", where))
        output.append(_int(record, "output_toks", where))
        arrival.append(_number(record, "arrival_time_ns", where) / 1e9)
        tok = record.get("input_tok_ids")
        if tok is not None and (not isinstance(tok, list) or len(tok) != prompt[-1]):
            raise RunFileError(f"{where}: input_tok_ids must be a list of input_toks ({prompt[-1]}) token ids")
        ids.append(tok)
    if not prompt:
        raise RunFileError(f"{path}: no requests")
    have = sum(t is not None for t in ids)
    return SentRequests(np.asarray(prompt, np.int64), np.asarray(output, np.int64), np.asarray(arrival),
                        ids if have == len(ids) else None)


def _read_engine_log(path: Path) -> pd.DataFrame:
    keys = ("input_toks", "output_toks", "queued_ts", "first_token_ts", "last_token_ts")
    rows = []
    for where, record in _json_lines(path):
        row = {"request_id": str(record.get("request_id", len(rows)))}
        for key in keys:
            row[key] = _int(record, key, where) if key.endswith("toks") else _number(record, key, where)
        row["scheduled_ts"] = _number(record, "scheduled_ts", where) if "scheduled_ts" in record else math.nan
        if not row["queued_ts"] <= row["first_token_ts"] <= row["last_token_ts"]:
            raise RunFileError(f"{where}: timestamps out of order (queued_ts <= first_token_ts <= last_token_ts)")
        rows.append(row)
    if not rows:
        raise RunFileError(f"{path}: no requests")
    return pd.DataFrame(rows)


def _join_run(folder: Path, sent: SentRequests, engine: pd.DataFrame) -> pd.DataFrame:
    """Engine rows in workload order (line i of both files is request i); arrivals on the engine's clock."""
    if len(engine) != len(sent.prompt_tokens):
        raise RunFileError(f"{folder / 'requests.jsonl'}: {len(engine)} requests, but workload.jsonl has "
                           f"{len(sent.prompt_tokens)}")
    mismatch = np.nonzero((engine.input_toks.to_numpy() != sent.prompt_tokens)
                          | (engine.output_toks.to_numpy() != sent.output_tokens))[0]
    if len(mismatch):
        raise RunFileError(f"{folder / 'requests.jsonl'} line {mismatch[0] + 1}: token counts differ from "
                           "workload.jsonl's line of the same number")
    origin = engine.queued_ts.min()
    frame = pd.DataFrame({"request_id": np.arange(len(engine)), "arrival_s": engine.queued_ts - origin,
                          "prompt_tokens": sent.prompt_tokens, "output_tokens": sent.output_tokens,
                          "status": "finished", "first_token_s": engine.first_token_ts - origin,
                          "finish_s": engine.last_token_ts - origin,
                          "scheduled_s": engine.scheduled_ts - origin})
    return with_latencies(frame)


def with_latencies(frame: pd.DataFrame) -> pd.DataFrame:
    """ttft_s, tpot_s, e2e_s as METRICS.md defines them (TPOT undefined for one output token)."""
    frame = frame.copy()
    frame["ttft_s"] = frame.first_token_s - frame.arrival_s
    frame["e2e_s"] = frame.finish_s - frame.arrival_s
    frame["tpot_s"] = (frame.finish_s - frame.first_token_s) / (frame.output_tokens - 1).where(frame.output_tokens > 1)
    return frame


def _content(sent: SentRequests):
    """The prompts' token ids as content pieces (prefix caching hits are computed from them), or none when the
    file has no ids."""
    return None if sent.prompt_ids is None else [token_content(tokens) for tokens in sent.prompt_ids]


def read_timeline(path: Path) -> pd.DataFrame:
    """timeseries.csv: t (s), running, waiting -> time_s, num_running, num_waiting."""
    try:
        frame = pd.read_csv(path)
    except (ValueError, pd.errors.ParserError) as exc:
        raise RunFileError(f"{path}: cannot parse CSV ({' '.join(str(exc).split())})") from None
    missing = [c for c in ("t", "running", "waiting") if c not in frame.columns]
    if missing:
        raise RunFileError(f"{path}: missing column '{missing[0]}' (needs t, running, waiting)")
    out = frame[["t", "running", "waiting"]].apply(pd.to_numeric, errors="coerce")
    if out.isna().any().any():
        raise RunFileError(f"{path}: non-numeric value in t, running or waiting")
    return pd.DataFrame({"time_s": out.t, "num_running": out.running, "num_waiting": out.waiting})


def settings_from_meta(meta: dict, path: Path) -> tuple[dict[str, Any], dict[str, str], tuple[str, ...]]:
    """SimConfig fields the run's engine used, the model and GPU as the metadata names them, and notes on
    settings servesim does not model."""
    kwargs = _section(meta, "engine_kwargs", path)
    resolved = _section(meta, "resolved_config", path)
    sched, cache = _section(resolved, "scheduler_config", path), _section(resolved, "cache_config", path)
    parallel, kv = _section(resolved, "parallel_config", path), _section(meta, "kv_cache", path)

    def first(*values):
        return next((v for v in values if v is not None), None)

    settings = {"batching": "continuous", "kv": "paged", "engine": _engine(meta.get("vllm_version")),
                "max_num_seqs": first(sched.get("max_num_seqs"), kwargs.get("max_num_seqs")),
                "max_num_batched_tokens": first(sched.get("max_num_batched_tokens"),
                                                kwargs.get("max_num_batched_tokens")),
                "max_model_len": kwargs.get("max_model_len"),
                "chunked_prefill": first(sched.get("enable_chunked_prefill"), True),   # always on in vLLM V1
                "tp": first(parallel.get("tensor_parallel_size"), kwargs.get("tensor_parallel_size")),
                "pp": parallel.get("pipeline_parallel_size"),
                "num_gpu_blocks": first(kv.get("num_gpu_blocks"), cache.get("num_gpu_blocks")),
                "block_size": first(kv.get("block_size"), cache.get("block_size")),
                "gpu_memory_utilization": first(kv.get("gpu_memory_utilization"),
                                                cache.get("gpu_memory_utilization")),
                "prefix_caching": first(kv.get("enable_prefix_caching"), cache.get("enable_prefix_caching")),
                "dtype": DTYPES.get(str(kwargs.get("dtype", "auto")).lower()),
                "kv_dtype": KV_DTYPES.get(str(first(kwargs.get("kv_cache_dtype"), cache.get("cache_dtype"), "auto"))
                                          .lower())}
    if settings["kv_dtype"] is None and settings["dtype"]:
        settings["kv_dtype"] = settings["dtype"]                # "auto": the KV cache takes the weights' dtype
    settings = {k: v for k, v in settings.items() if v is not None}
    hints = {k: str(v) for k, v in (("model", first(meta.get("model"), kwargs.get("model"))),
                                    ("gpu", (meta.get("hardware") or {}).get("device_name"))) if v}
    notes = []
    if (first(parallel.get("data_parallel_size"), kwargs.get("data_parallel_size")) or 1) > 1:
        notes.append("the real engine ran data parallel replicas; servesim simulates one")
    return settings, hints, tuple(notes)


def _engine(version) -> str | None:
    """vLLM's V1 engine is the default from 0.8.0 (and the only one from 0.11); older versions ran V0."""
    try:
        major, minor = (int(part) for part in str(version).split(".")[:2])
    except ValueError:
        return None
    return "vllm-v1" if (major, minor) >= (0, 8) else "vllm-v0"


def _section(data: dict, key: str, path: Path) -> dict:
    value = data.get(key) or {}
    if not isinstance(value, dict):
        raise RunFileError(f"{path}: '{key}' must be a JSON object")
    return value


# ---- vllm bench serve results ----
def load_bench_result(path: Path) -> RealRun:
    """The succeeded requests of a saved bench result, replayed from their start times (client clock)."""
    bench = read_bench_result(path, need=("ttfts", "itls", "start_times"))
    order = np.argsort(bench.start_s, kind="stable")
    start = bench.start_s[order] - bench.start_s.min()
    frame = with_latencies(pd.DataFrame({
        "request_id": np.arange(len(order)), "arrival_s": start, "prompt_tokens": bench.prompt_tokens[order],
        "output_tokens": bench.output_tokens[order], "status": "finished",
        "first_token_s": start + bench.ttft_s[order], "finish_s": start + bench.latency_s[order],
        "scheduled_s": math.nan}))
    specs = build_specs(start, frame.prompt_tokens.to_numpy(), frame.output_tokens.to_numpy())
    gaps = np.asarray([g for request in bench.itl_s for g in request], dtype=float)
    notes = (f"{bench.failed} request(s) failed in the real run and are not replayed",) if bench.failed else ()
    return RealRun(name=path.stem, kind="vllm bench result", specs=specs, requests=frame, itl_s=gaps,
                   hints={"model": bench.model_id} if bench.model_id else {}, notes=notes, failed=bench.failed)


# ---- small readers ----
def _read_json(path: Path) -> Any:
    """A run's JSON file: bounded, UTF-8, one JSON object (workloads.files), errors as RunFileError."""
    return read_json(path, "run file", error=RunFileError, max_bytes=MAX_TRACE_BYTES)


def _json_lines(path: Path):
    return json_records(path, "run file", error=RunFileError)


def _int(record: dict, key: str, where: str) -> int:
    if key not in record:
        raise RunFileError(f"{where}: missing field '{key}'")
    return positive_count(record[key], key, where)


def _number(record: dict, key: str, where: str) -> float:
    if key not in record:
        raise RunFileError(f"{where}: missing field '{key}'")
    return non_negative_seconds(record[key], key, where)
