"""Workloads in the forms `vllm bench serve` uses: ShareGPT datasets, saved bench results, and its arrivals.

- A ShareGPT JSON dataset (a list of entries with `conversations`): sampled as vLLM's ShareGPTDataset samples it
  (vllm/benchmarks/datasets/sharegpt.py): entries with at least two turns, shuffled with Python's `random`
  seeded by the seed, the first turn is the prompt and the second the completion, pairs kept only if
  `is_valid_sequence` holds (prompt and output at least 4 tokens, prompt at most 1024, both at most 2048), and
  when fewer pairs than requests remain, extra ones drawn at random from them (vLLM's oversampling). servesim has
  no tokenizer: a turn's length is the entry's `prompt_tokens` / `output_tokens` when given, else estimated as
  ceil(characters / 4) (about 4 characters of English per token for BPE vocabularies of 100k+ entries such as
  Llama 3's).
- A `vllm bench serve --save-result --save-detailed` result: per request `input_lens`, `output_lens` and, in
  recent versions, `start_times` (seconds on the client's clock) and `errors`; failed requests are dropped, as
  vLLM drops them from its metrics.
- Arrivals as vLLM draws them (vllm/benchmarks/serve.py, get_request): `--rate inf` sends every request at time
  0; otherwise gaps are gamma with shape = burstiness and scale = 1 / (rate x burstiness) (mean 1/rate, burstiness
  1 is Poisson), and the arrival times are then scaled so that the last one falls at num_requests / rate.
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workloads._columns import TraceRows, check_readable
from workloads.errors import TraceError
from workloads.files import MAX_TRACE_BYTES, read_json

CHARS_PER_TOKEN = 4
# vLLM's is_valid_sequence defaults (vllm/benchmarks/datasets/utils.py).
MIN_LEN, MAX_PROMPT_LEN, MAX_TOTAL_LEN = 4, 1024, 2048


@dataclass(frozen=True)
class BenchRequests:
    """The succeeded requests of a bench result in file order; `start_s` is None when it has no start_times.
    ttft_s / latency_s / itl_s are what the client measured (latency_s = TTFT + the ITLs where absent)."""

    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    start_s: np.ndarray | None
    ttft_s: np.ndarray | None
    latency_s: np.ndarray | None
    itl_s: list[list[float]] | None
    failed: int
    model_id: str | None


def read_bench_result(path: str | Path, *, need: tuple[str, ...] = ()) -> BenchRequests:
    """Read a saved `vllm bench serve` result; `need` lists keys that must be present (besides the lengths)."""
    path = Path(path)
    check_readable(path, TraceError, "vllm bench result")
    data = _load_json(path)
    if not isinstance(data, dict) or "input_lens" not in data:
        raise TraceError(f"{path}: not a `vllm bench serve --save-result --save-detailed` result (no "
                         "'input_lens'; save it with --save-detailed)")
    n = len(data["input_lens"]) if isinstance(data["input_lens"], list) else -1
    for key in ("input_lens", "output_lens", *need):
        if not isinstance(data.get(key), list):
            raise TraceError(f"{path}: '{key}' missing or not a list ({_hint(key)})")
        if len(data[key]) != n:
            raise TraceError(f"{path}: '{key}' has {len(data[key])} entries, 'input_lens' has {n}")
    errors = data["errors"] if isinstance(data.get("errors"), list) and len(data["errors"]) == n else [""] * n
    keep = [i for i in range(n) if not errors[i] and _is_count(data["output_lens"][i])]
    if not keep:
        raise TraceError(f"{path}: no succeeded request (every output length is 0 or an error is recorded)")
    def where(i: int) -> str:
        return f"{path} request {i + 1}"

    def has(key: str) -> bool:
        return isinstance(data.get(key), list) and len(data[key]) == n

    def column(key: str, check) -> np.ndarray | None:
        return np.asarray([check(data[key][i], key, where(i)) for i in keep]) if has(key) else None
    ttft = column("ttfts", non_negative_seconds)
    itl = [_gaps(data["itls"][i], where(i)) for i in keep] if has("itls") else None
    latency = column("latencies", non_negative_seconds)
    if latency is None and ttft is not None and itl is not None:
        latency = ttft + np.asarray([sum(g) for g in itl])
    return BenchRequests(prompt_tokens=column("input_lens", positive_count).astype(np.int64),
                         output_tokens=column("output_lens", positive_count).astype(np.int64),
                         start_s=column("start_times", non_negative_seconds), ttft_s=ttft, latency_s=latency,
                         itl_s=itl,
                         failed=n - len(keep), model_id=str(data["model_id"]) if data.get("model_id") else None)


def _hint(key: str) -> str:
    if key == "start_times":
        return "this vLLM version does not save start times, so arrivals cannot be replayed; --dataset takes its " \
            "lengths with --rate arrivals"
    return "save the result with --save-result --save-detailed"


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def positive_count(value: Any, key: str, where: str) -> int:
    if not _is_count(value) or value >= 10**12:
        raise TraceError(f"{where}: '{key}' must be a positive integer, got {str(value)[:40]}")
    return value


def non_negative_seconds(value: Any, key: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise TraceError(f"{where}: '{key}' must be a non-negative number, got {str(value)[:40]}")
    return float(value)


def _gaps(values: Any, where: str) -> list[float]:
    if not isinstance(values, list):
        raise TraceError(f"{where}: 'itls' entry must be a list of seconds")
    return [non_negative_seconds(v, "itls", where) for v in values]


def _load_json(path: Path) -> Any:
    return read_json(path, "JSON file", error=TraceError, max_bytes=MAX_TRACE_BYTES, want=None)


def is_bench_result(path: Path) -> bool:
    """Whether a .json file is a saved bench result: a JSON object with 'input_lens' (saved with
    --save-detailed), or with 'request_throughput' (saved without: reading it then says what is missing)."""
    if path.suffix.lower() != ".json":
        return False
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (ValueError, OSError):
        return False
    return isinstance(data, dict) and ("input_lens" in data or "request_throughput" in data)


# ---- ShareGPT ----
def read_sharegpt(path: str | Path, num_requests: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(prompt tokens, output tokens) of `num_requests` requests sampled as vLLM samples a ShareGPT file."""
    path = Path(path)
    check_readable(path, TraceError, "dataset")
    data = _load_json(path)
    if not isinstance(data, list):
        raise TraceError(f"{path}: a ShareGPT dataset is a JSON list of entries with 'conversations'")
    entries = [e for e in data if isinstance(e, dict) and isinstance(e.get("conversations"), list)
               and len(e["conversations"]) >= 2]
    random.Random(seed).shuffle(entries)          # vLLM: random.seed(seed); random.shuffle(data)
    pairs = []
    for entry in entries:
        if len(pairs) >= num_requests:
            break
        prompt, output = _entry_lengths(entry, path)
        if MIN_LEN <= prompt <= MAX_PROMPT_LEN and output >= MIN_LEN and prompt + output <= MAX_TOTAL_LEN:
            pairs.append((prompt, output))
    if not pairs:
        raise TraceError(f"{path}: no usable conversation (need two turns, prompt 4-1024 and output >= 4 tokens, "
                         "2048 at most together)")
    if len(pairs) < num_requests:                 # vLLM oversamples: random picks among the kept pairs
        rng = random.Random(seed)
        pairs += [rng.choice(pairs) for _ in range(num_requests - len(pairs))]
    prompt, output = zip(*pairs)
    return np.asarray(prompt, np.int64), np.asarray(output, np.int64)


def _entry_lengths(entry: dict, path: Path) -> tuple[int, int]:
    turns = entry["conversations"]
    out = []
    for role, key in ((0, "prompt_tokens"), (1, "output_tokens")):
        given = entry.get(key)
        if given is not None:
            if not _is_count(given):
                raise TraceError(f"{path}: entry {entry.get('id', '?')}: '{key}' must be a positive integer")
            out.append(given)
            continue
        turn = turns[role]
        text = turn.get("value", "") if isinstance(turn, dict) else ""
        out.append(estimate_tokens(text if isinstance(text, str) else ""))
    return out[0], out[1]


def estimate_tokens(text: str) -> int:
    """Tokens in `text` without a tokenizer: ceil(characters / 4)."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def dataset_lengths(path: str | Path, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(prompt, output) tokens of n requests from a ShareGPT JSON or a saved bench result (its requests in file
    order, oversampled as vLLM oversamples when it has fewer than n)."""
    path = Path(path)
    if not is_bench_result(path):
        return read_sharegpt(path, n, seed)
    bench = read_bench_result(path)
    pairs = list(zip(bench.prompt_tokens.tolist(), bench.output_tokens.tolist()))[:n]
    rng = random.Random(seed)
    pairs += [rng.choice(pairs) for _ in range(n - len(pairs))]
    prompt, output = zip(*pairs) if pairs else ((), ())
    return np.asarray(prompt, np.int64), np.asarray(output, np.int64)


def read_bench_trace(path: Path):
    """A bench result with start_times as a trace (the `vllm-bench` trace format)."""
    bench = read_bench_result(path, need=("start_times",))
    return TraceRows(bench.start_s, bench.prompt_tokens, bench.output_tokens)


# ---- arrivals ----
def vllm_arrival_times(rate: float, burstiness: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """vLLM's arrival times of n requests: all 0 at an infinite rate, else cumulative gamma gaps (shape
    burstiness, mean 1/rate) scaled so the last arrival is at n / rate."""
    if math.isinf(rate):
        return np.zeros(n)
    if math.isinf(burstiness):                   # vLLM: constant gaps of 1 / rate
        return np.arange(1, n + 1) / rate
    times = np.cumsum(rng.gamma(burstiness, 1.0 / (rate * burstiness), size=n))
    return times * ((n / rate) / times[-1]) if times[-1] > 0 else times
