"""Length distributions for prompt and output tokens, and the spec strings that name them.

Every distribution draws int64 token counts >= 1 from an explicit numpy Generator. Empirical distributions
sample rows of a length table with replacement; when the prompt and the output come from the same table,
`sample_lengths` draws ROW indices once for both, so the real prompt/output pairing is kept.

Spec grammar (what `parse_length_spec` accepts):
    512                          fixed length
    uniform:128:2048             uniform integers, both ends included
    lognormal:mean=600,sigma=0.8 lognormal with that mean (sigma of the underlying normal)
    lognormal:median=400,sigma=0.8
    sharegpt | arxiv | bwb       bundled real lengths (prompt column for prompts, output column for outputs)
    empirical:FILE.csv[:COLUMN]  a user CSV with a header; COLUMN defaults by role (see `_pick_column`)
"""
from __future__ import annotations

import functools
import importlib.resources
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import pandas as pd

from workloads._columns import CsvColumns, check_readable
from workloads.errors import SpecError

Role = Literal["prompt", "output"]

# Bundled real length samples (see workloads/data/README.md for sources, sampling and licenses).
BUNDLED_LENGTHS: dict[str, str] = {
    "sharegpt": "sharegpt_lengths.csv",
    "arxiv": "arxiv_lengths.csv",
    "bwb": "bwb_lengths.csv",
}
LENGTH_DATASETS: tuple[str, ...] = tuple(BUNDLED_LENGTHS)
# Column names of the bundled tables (those of the etalon/vidur processed traces).
PROMPT_COLUMN, OUTPUT_COLUMN = "num_prefill_tokens", "num_decode_tokens"
# Default column of a user file by role, tried in order (servesim's plain trace names, then etalon/vidur's).
_ROLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "prompt": ("prompt_tokens", PROMPT_COLUMN),
    "output": ("output_tokens", OUTPUT_COLUMN),
}
MAX_TOKENS = 10**9         # one request's prompt or output tokens at most (any context fits; int64-safe sums)
MAX_SIGMA = 10.0
LENGTH_FORMS = (
    "N (fixed, e.g. 512), uniform:LO:HI, lognormal:mean=M,sigma=S (or median=M,sigma=S), "
    + " | ".join(LENGTH_DATASETS)
    + ", empirical:FILE.csv[:COLUMN]"
)


class LengthDist(Protocol):
    """Anything that draws `n` token counts (int64, each >= 1) from `rng`."""

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray: ...


@dataclass(frozen=True)
class FixedLength:
    """Every request has exactly `tokens` tokens (draws no randomness)."""

    tokens: int

    def __post_init__(self) -> None:
        if not 1 <= self.tokens <= MAX_TOKENS:
            raise SpecError(f"fixed length must be in 1..{MAX_TOKENS:,} tokens, got {self.tokens}")

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.full(n, self.tokens, dtype=np.int64)


@dataclass(frozen=True)
class UniformLength:
    """Integers uniform on [lo_tokens, hi_tokens], both ends included."""

    lo_tokens: int
    hi_tokens: int

    def __post_init__(self) -> None:
        if not 1 <= self.lo_tokens <= self.hi_tokens <= MAX_TOKENS:
            raise SpecError(f"uniform needs 1 <= LO <= HI <= {MAX_TOKENS:,}, got LO={self.lo_tokens} "
                            f"HI={self.hi_tokens}")

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(self.lo_tokens, self.hi_tokens + 1, size=n, dtype=np.int64)


@dataclass(frozen=True)
class LognormalLength:
    """Lognormal token counts: exp(N(mu, sigma^2)), rounded to the nearest integer and floored at 1.

    `median_tokens` fixes mu = ln(median); the mean is then median * exp(sigma^2 / 2). Use `from_mean` to give
    the mean instead. Rounding and the floor at 1 shift the mean by well under one token unless the median is
    near 1.
    """

    median_tokens: float
    sigma: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.median_tokens) and 0 < self.median_tokens <= MAX_TOKENS):
            raise SpecError(f"lognormal median must be in (0, {MAX_TOKENS:,}] tokens, got {self.median_tokens:g}")
        if not (math.isfinite(self.sigma) and 0 <= self.sigma <= MAX_SIGMA):
            raise SpecError(f"lognormal sigma must be in [0, {MAX_SIGMA:g}], got {self.sigma:g}")

    @classmethod
    def from_mean(cls, mean_tokens: float, sigma: float) -> LognormalLength:
        """The lognormal with this mean: E[X] = exp(mu + sigma^2/2), so median = mean * exp(-sigma^2/2)."""
        if not (math.isfinite(mean_tokens) and mean_tokens > 0):
            raise SpecError(f"lognormal mean must be > 0, got {mean_tokens}")
        return cls(mean_tokens * math.exp(-(sigma**2) / 2.0), sigma)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        draws = rng.lognormal(math.log(self.median_tokens), self.sigma, size=n)
        return np.clip(np.rint(draws), 1, MAX_TOKENS).astype(np.int64)


@dataclass(frozen=True, eq=False)
class EmpiricalLength:
    """Token counts sampled with replacement from `values` (one column of a length table).

    `source` names the table (`bundled:sharegpt`, `file:/abs/path.csv`); two EmpiricalLengths with the same
    source and row count are columns of one table and are sampled jointly by `sample_lengths`.
    """

    values: np.ndarray = field(repr=False)
    source: str
    column: str

    def __post_init__(self) -> None:
        if len(self.values) == 0:
            raise SpecError(f"empirical lengths from {self.source} column {self.column!r} are empty")

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.values[rng.integers(0, len(self.values), size=n)]


def sample_lengths(
    prompt: LengthDist, output: LengthDist, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw `n` (prompt, output) token counts; rows of one shared table are drawn jointly."""
    if (
        isinstance(prompt, EmpiricalLength)
        and isinstance(output, EmpiricalLength)
        and prompt.source == output.source
        and len(prompt.values) == len(output.values)
    ):
        rows = rng.integers(0, len(prompt.values), size=n)
        return prompt.values[rows], output.values[rows]
    return prompt.sample(n, rng), output.sample(n, rng)


@functools.lru_cache(maxsize=None)
def bundled_table(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(prompt, output) token columns of a bundled dataset, read once from the package data."""
    if name not in BUNDLED_LENGTHS:
        raise SpecError(f"unknown length dataset {name!r}; bundled datasets: {', '.join(LENGTH_DATASETS)}")
    resource = importlib.resources.files("workloads") / "data" / BUNDLED_LENGTHS[name]
    with resource.open("r", encoding="utf-8") as handle:
        frame = pd.read_csv(handle, dtype=np.int64)
    prompt, output = frame[PROMPT_COLUMN].to_numpy(), frame[OUTPUT_COLUMN].to_numpy()
    prompt.flags.writeable = output.flags.writeable = False  # shared through the cache: keep it immutable
    return prompt, output


def parse_length_spec(text: str, role: Role = "prompt") -> LengthDist:
    """Parse a length spec string (grammar in the module docstring) for the prompt or the output role."""
    if role not in _ROLE_COLUMNS:
        raise ValueError(f"role must be 'prompt' or 'output', got {role!r}")
    spec = str(text).strip()
    kind, _, arg = spec.partition(":")
    kind = kind.strip().lower()
    if kind in BUNDLED_LENGTHS and not arg:
        prompt, output = bundled_table(kind)
        column = PROMPT_COLUMN if role == "prompt" else OUTPUT_COLUMN
        return EmpiricalLength(prompt if role == "prompt" else output, f"bundled:{kind}", column)
    if kind == "uniform":
        return _parse_uniform(spec, arg)
    if kind == "lognormal":
        return _parse_lognormal(spec, arg)
    if kind == "empirical":
        return _parse_empirical(spec, arg, role)
    if spec.lstrip("+-").isdigit():
        if not 1 <= int(spec) <= MAX_TOKENS:
            raise SpecError(f"bad length spec {text!r}: a fixed length must be in 1..{MAX_TOKENS:,} tokens; "
                            f"accepted forms: {LENGTH_FORMS}")
        return FixedLength(int(spec))
    raise SpecError(f"unknown length spec {text!r}; accepted forms: {LENGTH_FORMS}")


def _bad(spec: str, why: str) -> SpecError:
    return SpecError(f"bad length spec {spec!r}: {why}; accepted forms: {LENGTH_FORMS}")


def _parse_uniform(spec: str, arg: str) -> UniformLength:
    parts = [p.strip() for p in arg.split(":")]
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise _bad(spec, "uniform needs two integers, uniform:LO:HI")
    lo, hi = int(parts[0]), int(parts[1])
    if not 1 <= lo <= hi:
        raise _bad(spec, f"uniform needs 1 <= LO <= HI, got LO={lo} HI={hi}")
    return UniformLength(lo, hi)


def _parse_lognormal(spec: str, arg: str) -> LognormalLength:
    params: dict[str, float] = {}
    for item in filter(None, (p.strip() for p in arg.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if not eq or key not in ("mean", "median", "sigma") or key in params:
            raise _bad(spec, f"unexpected lognormal parameter {item!r}")
        try:
            params[key] = float(value)
        except ValueError:
            raise _bad(spec, f"lognormal {key} {value.strip()!r} is not a number") from None
    if "sigma" not in params or ("mean" in params) == ("median" in params):
        raise _bad(spec, "lognormal needs sigma and exactly one of mean or median")
    sigma = params["sigma"]
    if not (math.isfinite(sigma) and sigma >= 0):
        raise _bad(spec, f"lognormal sigma must be >= 0, got {sigma}")
    center = params.get("mean", params.get("median"))
    if not (math.isfinite(center) and center > 0):
        raise _bad(spec, f"lognormal mean/median must be > 0, got {center}")
    if "mean" in params:
        return LognormalLength.from_mean(center, sigma)
    return LognormalLength(center, sigma)


def _parse_empirical(spec: str, arg: str, role: str) -> EmpiricalLength:
    """`empirical:FILE.csv[:COLUMN]`; a path that exists as given wins over splitting off a column."""
    if not arg.strip():
        raise _bad(spec, "empirical needs a file, empirical:FILE.csv[:COLUMN]")
    path, column = Path(arg), None
    if not path.is_file() and ":" in arg:
        head, _, tail = arg.rpartition(":")
        path, column = Path(head), tail.strip()
    check_readable(path, SpecError, "length")
    table = CsvColumns.read(path, SpecError)
    column = column or _pick_column(table, role)
    table.require((column,), "empirical")
    source = f"file:{path.resolve()}"
    return EmpiricalLength(table.positive_ints(column), source, column)


def _pick_column(table: CsvColumns, role: str) -> str:
    for name in _ROLE_COLUMNS[role]:
        if name in table.columns:
            return name
    if len(table.columns) == 1:
        return table.columns[0]
    raise SpecError(
        f"{table.name}: say which column holds {role} lengths, empirical:FILE.csv:COLUMN "
        f"(columns: {','.join(table.columns)})"
    )
