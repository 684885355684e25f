"""Readers for real request traces -> RequestSpecs, registered by format name in TRACE_READERS.

Formats (column mappings from the traces README shipped with the project's reference data):
- azure: Azure LLM inference trace CSV (2023; 2024 has the same columns), `TIMESTAMP,ContextTokens,GeneratedTokens`,
  TIMESTAMP a wall-clock ISO 8601 string such as `2023-11-16 18:17:03.9799600` (naive times are taken as UTC).
- mooncake: Mooncake FAST'25 JSON lines, `timestamp` in MILLISECONDS, `input_length`, `output_length`, optional
  `hash_ids` (prefix-chained ids of 512-token blocks, kvcache-ai/Mooncake FAST25-release/traces).
- plain: servesim's own format, `arrival_s,prompt_tokens,output_tokens` as CSV (.csv) or JSON lines (.jsonl/.json;
  a .json file that starts with `[` is read as one JSON array of objects).
- tokens: JSON lines with the prompt's token ids, as a served benchmark records them: `input_tok_ids` (the prompt;
  its length is the prompt length unless `input_toks` says otherwise), `output_toks`, `arrival_time_ns` (from the
  start). Equal leading token ids are a shared prefix (prefix caching hits are computed from them).
- auto: detected from the CSV header or the first JSON object.

Every reader returns the rows in file order; `read_trace` sorts them by arrival (stable), rebases the first arrival
to 0, divides by `rate_scale` and applies the caps. A malformed row raises TraceError naming file and line.
Zero token counts are malformed: a request must read at least one prompt token and generate at least one
token, and rows with 0 generated tokens are failures, not requests (Azure 2023 has none).
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from workloads._build import build_specs
from workloads._columns import CsvColumns, TraceRows, check_readable, json_float, json_int
from workloads.errors import TraceError
from workloads.files import json_records
from workloads.spec import RequestSpec
from workloads.vllm import is_bench_result, read_bench_trace

# Mooncake hash_ids cover 512 prompt tokens each (Mooncake FAST25-release trace README; len(hash_ids) ==
# ceil(input_length / 512) on every row of both released traces).
MOONCAKE_BLOCK_TOKENS = 512
AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
MOONCAKE_FIELDS = ("timestamp", "input_length", "output_length")
PLAIN_COLUMNS = ("arrival_s", "prompt_tokens", "output_tokens")
TOKENS_FIELDS = ("input_tok_ids", "output_toks", "arrival_time_ns")


def read_azure(path: Path) -> TraceRows:
    """Azure LLM trace CSV: TIMESTAMP (ISO 8601 wall clock), ContextTokens, GeneratedTokens; extra columns ignored."""
    table = CsvColumns.read(path, TraceError)
    table.require(AZURE_COLUMNS, "the azure format")
    zero_hint = " (requests must generate at least one token; drop failed rows with 0 tokens before replay)"
    return TraceRows(
        arrival_s=table.timestamps_s("TIMESTAMP"),
        prompt_tokens=table.positive_ints("ContextTokens"),
        output_tokens=table.positive_ints("GeneratedTokens", hint=zero_hint),
    )


def read_mooncake(path: Path) -> TraceRows:
    """Mooncake JSON lines: timestamp (ms), input_length, output_length, optional hash_ids (512-token blocks)."""
    arrival, prompt, output, content = [], [], [], []
    for where, record in _json_records(path):
        tokens = json_int(record, "input_length", where, TraceError)
        arrival.append(json_float(record, "timestamp", where, TraceError) / 1000.0)  # ms -> s
        prompt.append(tokens)
        output.append(json_int(record, "output_length", where, TraceError))
        content.append(mooncake_content(_hash_ids(record, tokens, where), tokens))
    return TraceRows(_floats(arrival), _ints(prompt), _ints(output), content)


def mooncake_content(hash_ids: tuple[int, ...], input_tokens: int) -> tuple[tuple[int, int], ...]:
    """Mooncake hash ids as content pieces: block i covers tokens [512 i, 512 (i + 1)) of the prompt, the last
    block only what is left of it."""
    return tuple((block_id, min(MOONCAKE_BLOCK_TOKENS, input_tokens - i * MOONCAKE_BLOCK_TOKENS))
                 for i, block_id in enumerate(hash_ids))


def _hash_ids(record: dict, input_tokens: int, where: str) -> tuple[int, ...]:
    ids = record.get("hash_ids", [])
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise TraceError(f"{where}: hash_ids must be a list of integers")
    max_blocks = math.ceil(input_tokens / MOONCAKE_BLOCK_TOKENS)
    if len(ids) > max_blocks:
        raise TraceError(
            f"{where}: {len(ids)} hash_ids but input_length {input_tokens} fills only {max_blocks} "
            f"blocks of {MOONCAKE_BLOCK_TOKENS} tokens"
        )
    return tuple(ids)


def read_plain(path: Path) -> TraceRows:
    """servesim's plain trace: arrival_s, prompt_tokens, output_tokens as .csv, or .jsonl/.json records."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_plain_csv(path)
    if suffix in (".jsonl", ".json"):
        return _read_plain_json(path)
    raise TraceError(
        f"{path.name}: the plain format is chosen by extension (.csv, .jsonl or .json), got {suffix or 'none'!r}; "
        "rename the file or use trace format auto"
    )


def _read_plain_csv(path: Path) -> TraceRows:
    table = CsvColumns.read(path, TraceError)
    table.require(PLAIN_COLUMNS, "the plain format")
    return TraceRows(
        table.finite_floats("arrival_s"), table.positive_ints("prompt_tokens"), table.positive_ints("output_tokens")
    )


def _read_plain_json(path: Path) -> TraceRows:
    arrival, prompt, output = [], [], []
    for where, record in _json_records(path):
        arrival.append(json_float(record, "arrival_s", where, TraceError))
        prompt.append(json_int(record, "prompt_tokens", where, TraceError))
        output.append(json_int(record, "output_tokens", where, TraceError))
    return TraceRows(_floats(arrival), _ints(prompt), _ints(output))


def read_tokens(path: Path) -> TraceRows:
    """JSON lines with prompt token ids: input_tok_ids, output_toks, arrival_time_ns (optional input_toks)."""
    arrival, prompt, output, content = [], [], [], []
    for where, record in _json_records(path):
        ids = record.get("input_tok_ids")
        if not isinstance(ids, list) or not ids or not all(isinstance(i, int) and not isinstance(i, bool)
                                                           for i in ids):
            raise TraceError(f"{where}: input_tok_ids must be a non-empty list of integer token ids")
        tokens = json_int(record, "input_toks", where, TraceError) if "input_toks" in record else len(ids)
        if tokens != len(ids):
            raise TraceError(f"{where}: input_toks {tokens} but {len(ids)} input_tok_ids")
        arrival.append(json_float(record, "arrival_time_ns", where, TraceError) / 1e9)  # ns -> s
        prompt.append(tokens)
        output.append(json_int(record, "output_toks", where, TraceError))
        content.append(token_content(ids))
    return TraceRows(_floats(arrival), _ints(prompt), _ints(output), content)


def token_content(token_ids: list[int]) -> tuple[tuple[int, int], ...]:
    """A prompt's token ids as content pieces, one token each: prompts share KV blocks as far as their ids agree."""
    return tuple((token, 1) for token in token_ids)


def read_auto(path: Path) -> TraceRows:
    """Pick the reader from the first non-blank line: a CSV header or a JSON object (or `[` for a JSON array)."""
    first = _first_line(path)
    if first.startswith("["):
        return _read_plain_json(path)
    if first.startswith("{"):
        if is_bench_result(path):
            return read_bench_trace(path)
        try:
            keys = set(json.loads(first))
        except (json.JSONDecodeError, TypeError):
            keys = set()
        if set(MOONCAKE_FIELDS) <= keys:
            return read_mooncake(path)
        if set(TOKENS_FIELDS) <= keys:
            return read_tokens(path)
        if set(PLAIN_COLUMNS) <= keys:
            return _read_plain_json(path)
    else:
        header = {name.strip().strip('"') for name in first.split(",")}
        if set(AZURE_COLUMNS) <= header:
            return read_azure(path)
        if set(PLAIN_COLUMNS) <= header:
            return _read_plain_csv(path)
    raise TraceError(
        f"{path.name}: cannot detect the trace format from its first line {first[:60]!r}; expected a CSV header with "
        f"{','.join(AZURE_COLUMNS)} (azure) or {','.join(PLAIN_COLUMNS)} (plain), or JSON objects with "
        f"{','.join(MOONCAKE_FIELDS)} (mooncake), {','.join(TOKENS_FIELDS)} (tokens) or {','.join(PLAIN_COLUMNS)} (plain)"
    )


# Registry: format name -> reader(path) -> TraceRows. Adding a format is one reader and one line here.
TRACE_READERS: dict[str, Callable[[Path], TraceRows]] = {
    "auto": read_auto,
    "azure": read_azure,
    "mooncake": read_mooncake,
    "plain": read_plain,
    "tokens": read_tokens,
    "vllm-bench": read_bench_trace,
}
TRACE_FORMATS: tuple[str, ...] = tuple(TRACE_READERS)


def get_trace_reader(fmt: str) -> Callable[[Path], TraceRows]:
    """The reader registered for `fmt`; ValueError listing the formats otherwise."""
    try:
        return TRACE_READERS[fmt]
    except (KeyError, TypeError):
        raise TraceError(f"unknown trace format {fmt!r}; valid formats: {', '.join(TRACE_FORMATS)}") from None


def read_trace(
    path: str | Path,
    fmt: str = "auto",
    *,
    rate_scale: float = 1.0,
    max_requests: int | None = None,
    max_duration_s: float | None = None,
) -> list[RequestSpec]:
    """Replay a trace file as RequestSpecs 0..n-1, sorted by arrival (stable) with the first arrival at 0.

    `rate_scale` k divides every arrival time by k, multiplying the load by k and keeping the burst shape.
    `max_requests` keeps the first requests in arrival order; `max_duration_s` keeps those arriving at or before
    it (in scaled time). Both caps may be combined.
    """
    reader = get_trace_reader(fmt)
    _check_options(rate_scale, max_requests, max_duration_s)
    path = Path(path)
    check_readable(path, TraceError, "trace")
    rows = reader(path)
    if len(rows.arrival_s) == 0:
        raise TraceError(f"{path.name}: the trace has no requests")
    order = np.argsort(rows.arrival_s, kind="stable")
    arrival_s = rows.arrival_s[order]
    arrival_s = (arrival_s - arrival_s[0]) / rate_scale
    keep = len(arrival_s) if max_requests is None else min(int(max_requests), len(arrival_s))
    if max_duration_s is not None:
        keep = min(keep, int(np.searchsorted(arrival_s, max_duration_s, side="right")))
    order = order[:keep]
    content = None if rows.content is None else [rows.content[i] for i in order.tolist()]
    try:
        return build_specs(arrival_s[:keep], rows.prompt_tokens[order], rows.output_tokens[order], content)
    except (ValueError, TypeError) as exc:         # a request out of range (an arrival 1e308 s after the first)
        raise TraceError(f"{path.name}: {exc}") from None


def _check_options(rate_scale: float, max_requests: int | None, max_duration_s: float | None) -> None:
    if isinstance(rate_scale, bool) or not (math.isfinite(rate_scale) and rate_scale > 0):
        raise ValueError(f"rate_scale must be positive, got {rate_scale}")
    if max_requests is not None and (isinstance(max_requests, bool) or int(max_requests) != max_requests
                                     or max_requests < 1):
        raise ValueError(f"max_requests must be a positive integer, got {max_requests}")
    if max_duration_s is not None and not (math.isfinite(max_duration_s) and max_duration_s > 0):
        raise ValueError(f"max_duration_s must be positive, got {max_duration_s}")


def _json_records(path: Path) -> Iterator[tuple[str, dict]]:
    """(where, object) for each JSON line (blank lines skipped), or each element of a top-level JSON array."""
    return json_records(path, "trace", error=TraceError, label=path.name, arrays=True)


def _first_line(path: Path) -> str:
    with path.open("rb") as handle:
        for raw in handle:
            try:
                line = raw.decode("utf-8").strip().lstrip("\ufeff")
            except UnicodeDecodeError:
                raise TraceError(f"{path.name}: not a UTF-8 text file") from None
            if line:
                return line
    raise TraceError(f"{path.name}: file is empty")


def _floats(values: list[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


def _ints(values: list[int]) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)
