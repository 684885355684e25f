"""Line-aware parsing of numeric columns from CSV and JSON-lines files.

CSV files are read with pandas as strings (fast for the ~20k-row Azure traces) and validated column by column
with vectorized checks; only when a check fails do we look up the first bad row, so error messages can name the
file's line number without a Python loop over every row.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
import re
from pathlib import Path

import numpy as np
import pandas as pd

# Token counts are written as plain decimal integers; 15 digits keeps int64 conversion safe.
_INT_RE = r"[+-]?\d{1,15}"
_PARSER_LINE_RE = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


class CsvColumns:
    """String columns of a CSV file (blank lines dropped) plus the file line number (1-based) of every data row.

    Build one with `CsvColumns.read(path, error)`; `error` is the ValueError subclass its checks raise.
    """

    def __init__(self, frame: pd.DataFrame, line_numbers: np.ndarray, name: str, error: type[ValueError]) -> None:
        self.frame = frame
        self.line_numbers = line_numbers
        self.name = name
        self.error = error

    @classmethod
    def read(cls, path: Path, error: type[ValueError]) -> CsvColumns:
        frame = _read_str_frame(path, error)
        # Blank lines come back as all-empty rows: skip them but keep counting them as lines.
        nonblank = (frame != "").any(axis=1).to_numpy()
        line_numbers = np.flatnonzero(nonblank) + 2  # +1 for the header, +1 for 1-based numbering
        return cls(frame[nonblank].reset_index(drop=True), line_numbers, path.name, error)

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def columns(self) -> list[str]:
        return [str(c) for c in self.frame.columns]

    def require(self, names: tuple[str, ...], fmt: str) -> None:
        """Raise unless every column in `names` is in the header."""
        missing = [n for n in names if n not in self.frame.columns]
        if missing:
            raise self.error(
                f"{self.name} line 1: missing column {missing[0]!r} ({fmt} needs columns {','.join(names)}; "
                f"header has {','.join(self.columns)})"
            )

    def fail(self, row: int, message: str) -> None:
        """Raise the one-line error for data row `row` (0-based)."""
        raise self.error(f"{self.name} line {self.line_numbers[row]}: {message}")

    def _fail_value(self, column: str, row: int, what: str) -> None:
        raw = self.frame[column].iloc[row]
        shown = "is empty" if raw.strip() == "" else f"{raw!r} {what}"
        self.fail(row, f"{column} {shown}")

    def positive_ints(self, column: str, hint: str = "") -> np.ndarray:
        """Column as int64, every value >= 1; the first bad row raises with its line number."""
        text = self.frame[column].str.strip()
        ok = text.str.fullmatch(_INT_RE).to_numpy(dtype=bool)
        if not ok.all():
            self._fail_value(column, int(np.argmin(ok)), "is not an integer")
        fits = (text.str.lstrip("+-").str.lstrip("0").str.len() <= 10).to_numpy(dtype=bool)    # int64-safe
        if not fits.all():
            self._fail_value(column, int(np.argmin(fits)), "is too large (at most 1,000,000,000)")
        values = text.astype(np.int64).to_numpy()
        if (values < 1).any():
            row = int(np.argmax(values < 1))
            self.fail(row, f"{column} must be >= 1, got {values[row]}{hint}")
        return values

    def finite_floats(self, column: str) -> np.ndarray:
        """Column as float64, every value finite."""
        values = pd.to_numeric(self.frame[column].str.strip(), errors="coerce").to_numpy(dtype=np.float64)
        ok = np.isfinite(values)
        if not ok.all():
            self._fail_value(column, int(np.argmin(ok)), "is not a finite number")
        return values

    def timestamps_s(self, column: str) -> np.ndarray:
        """ISO 8601 date-times as seconds since the earliest one (naive times are taken as UTC)."""
        try:
            stamps = pd.to_datetime(self.frame[column].str.strip(), format="ISO8601", errors="coerce", utc=True)
        except (ValueError, TypeError) as exc:  # pandas raises on some mixed inputs even with coerce
            raise self.error(f"{self.name}: cannot parse {column} as ISO 8601 date-times ({exc})") from None
        bad = stamps.isna().to_numpy()
        if bad.any():
            self._fail_value(column, int(np.argmax(bad)), "is not an ISO 8601 date-time")
        if len(stamps) == 0:
            return np.zeros(0)
        return (stamps - stamps.min()).dt.total_seconds().to_numpy(dtype=np.float64)


def _read_str_frame(path: Path, error: type[ValueError]) -> pd.DataFrame:
    try:
        return pd.read_csv(path, encoding="utf-8-sig", dtype=str, keep_default_na=False, skip_blank_lines=False)
    except pd.errors.EmptyDataError:
        raise error(f"{path.name}: file is empty (expected a CSV header line)") from None
    except pd.errors.ParserError as exc:
        match = _PARSER_LINE_RE.search(str(exc))
        if match:
            want, line, got = match.groups()
            raise error(f"{path.name} line {line}: expected {want} fields, saw {got}") from None
        raise error(f"{path.name}: not a valid CSV file ({str(exc).strip().splitlines()[-1]})") from None
    except UnicodeDecodeError:
        raise error(f"{path.name}: not a UTF-8 text file") from None


def check_readable(path: Path, error: type[ValueError], what: str) -> None:
    """Raise a one-line error unless `path` is an existing regular file."""
    if not path.exists():
        raise error(f"{what} file '{path}' not found")
    if not path.is_file():
        raise error(f"{what} file '{path}' is not a regular file")


def json_int(record: dict, key: str, where: str, error: type[ValueError]) -> int:
    """record[key] as an int >= 1 (JSON integers only; true/false and 12.5 are rejected)."""
    if key not in record:
        raise error(f"{where}: missing field {key!r}")
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(f"{where}: {key} {value!r} is not an integer")
    if value < 1:
        raise error(f"{where}: {key} must be >= 1, got {value}")
    if value >= 10**15:  # keeps int64 arrays safe; no real request is this long
        raise error(f"{where}: {key} {value} is too large")
    return value


def json_float(record: dict, key: str, where: str, error: type[ValueError]) -> float:
    """record[key] as a finite float (JSON numbers only)."""
    if key not in record:
        raise error(f"{where}: missing field {key!r}")
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise error(f"{where}: {key} {value!r} is not a finite number")
    return float(value)


@dataclass(frozen=True, eq=False)
class TraceRows:
    """A trace's columns in file order; `arrival_s` on any origin (read_trace rebases it).

    `content[i]` is row i's token content as (content id, tokens) pieces (workloads/spec.py), () for none.
    """

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    content: list[tuple[tuple[int, int], ...]] | None = None
