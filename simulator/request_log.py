"""Per-request rows, taken when each request finishes (or is rejected).

Rows stay in memory up to `max_rows`; past that, every row streams to a Parquet file in row groups instead
(pyarrow: the optional `parquet` extra), so memory does not grow with the number of requests. The summary
then comes from running sums and the same 0.1%-wide log histograms as summary-only ITL, for TTFT, TPOT and
E2E latency: counts, means, maxima and throughputs are exact, percentiles within a bin.
"""
from __future__ import annotations

import math
import tempfile
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from simulator.metrics import RAW_REQUEST_COLUMNS, itl_bin, itl_bin_centers, requests_frame, weighted_percentile
from simulator.request import Request, RequestStatus
from simulator.saturation import ArrivalFit

ROW_GROUP = 1 << 16                  # rows per Parquet row group


class RowLimitError(ValueError):
    """Rows must stream to Parquet but cannot; the message is one line."""


class RequestLog:
    """Collects per-request rows in typed columns; see the module docstring. `path` is where rows stream (a
    temporary file when None); `slo` decides met_slo."""

    def __init__(self, max_rows: int | None, path: str | Path | None,
                 slo: tuple[float | None, ...]) -> None:
        self.max_rows, self.path, self.slo = max_rows, path, slo
        self.writer = None
        self.sums: RequestSums | None = None
        self._reset()

    def _reset(self) -> None:
        self.cols = {name: array(code) for name, code in zip(RAW_REQUEST_COLUMNS, "qdqqbqdddqqdq")}
        self.reasons: dict[str, int] = {"": 0}
        self.pending: list[tuple] = []        # rows not yet in the columns (moved in bulk)
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def add(self, req: Request) -> None:
        """Take the row of a request that finished or was rejected."""
        if req.status == RequestStatus.FINISHED:
            self.pending.append((req.request_id, req.arrival_s, req.prompt_tokens, req.output_tokens, True, 0,
                                 req.scheduled_s, req.first_token_s, req.finish_s, req.num_preemptions,
                                 req.recomputed_tokens, req.swapped_bytes, req.num_cached_tokens))
        else:                                 # rejected: never scheduled, no token times
            reason = self.reasons.setdefault(req.reject_reason, len(self.reasons))
            self.pending.append((req.request_id, req.arrival_s, req.prompt_tokens, req.output_tokens, False, reason,
                                 math.nan, math.nan, math.nan, req.num_preemptions, req.recomputed_tokens,
                                 req.swapped_bytes, 0))
        self.count += 1
        if len(self.pending) >= 4096:
            self._move()
        if self.writer is not None:
            if self.count >= ROW_GROUP:
                self._write()
        elif self.max_rows is not None and self.count > self.max_rows:
            self.writer, self.path = _open_writer(self.path, self.max_rows)
            self.sums = RequestSums()
            self._write()

    def _move(self) -> None:
        """Pending rows into the typed columns."""
        rows, self.pending = self.pending, []
        if rows:
            for col, values in zip(self.cols.values(), zip(*rows)):
                col.extend(values)

    def frame(self) -> pd.DataFrame:
        """Every row kept in memory, by request_id, with the derived latencies (none once rows stream: then
        `path` holds them all and `sums` what the summary needs)."""
        if self.writer is None:
            return requests_frame(self._columns(), self.slo)
        self._write()
        self.writer.close()
        self._reset()
        return requests_frame(self._columns(), self.slo)

    def _columns(self) -> dict[str, np.ndarray]:
        self._move()
        cols = {name: np.frombuffer(col, dtype=np.dtype(col.typecode)).copy() if len(col)
                else np.zeros(0, np.dtype(col.typecode)) for name, col in self.cols.items()}
        cols["status"] = np.where(cols["status"].astype(bool), "finished", "rejected").astype(object)
        cols["reject_reason"] = np.asarray(list(self.reasons), dtype=object)[cols["reject_reason"]]
        return cols

    def _write(self) -> None:
        if len(self):
            chunk = requests_frame(self._columns(), self.slo)
            self._reset()
            self.writer.write_table(_pyarrow().Table.from_pandas(chunk, preserve_index=False,
                                                                 schema=self.writer.schema))
            self.sums.add(chunk)


def _pyarrow():
    import pyarrow
    import pyarrow.parquet  # noqa: F401  (the submodule is not imported with the package)
    return pyarrow


def _open_writer(path: str | Path | None, max_rows: int):
    """A Parquet writer for the request rows, with their schema; one-line error without pyarrow."""
    try:
        pa = _pyarrow()
    except ModuleNotFoundError:
        raise RowLimitError(f"more than {max_rows} request rows stream to Parquet, which needs pyarrow: "
                            "pip install 'servesim[parquet]', or raise max_request_rows") from None
    if path is None:
        with tempfile.NamedTemporaryFile(prefix="servesim-requests-", suffix=".parquet", delete=False) as f:
            path = f.name
    example = {name: np.array([v], dtype=object if isinstance(v, str) else None)
               for name, v in zip(RAW_REQUEST_COLUMNS, (0, 0.0, 1, 1, "finished", "", 0.0, 0.0, 0.0, 0, 0, 0.0, 0))}
    schema = pa.Table.from_pandas(requests_frame(example, (None, None)), preserve_index=False).schema
    return pa.parquet.ParquetWriter(str(path), schema), str(path)


class RequestSums:
    """What summarize() needs from request rows that are no longer in memory: sums, extremes, histograms."""

    def __init__(self) -> None:
        self.num_requests = self.completed = self.rejected = self.met_slo = self.preemptions = 0
        self.output_tokens = self.total_tokens = self.prompt_tokens = self.cached_tokens = 0
        self.first_arrival_s, self.last_finish_s = math.inf, -math.inf
        self.rejected_reasons: Counter[str] = Counter()
        self.latency = {name: _Latency() for name in ("ttft", "tpot", "e2e")}
        self.arrival_fit = ArrivalFit()

    def add(self, rows: pd.DataFrame) -> None:
        done = rows[rows.status == "finished"]
        self.num_requests += len(rows)
        self.completed += len(done)
        self.rejected += len(rows) - len(done)
        self.met_slo += int(rows.met_slo.sum())
        self.preemptions += int(rows.num_preemptions.sum())
        self.output_tokens += int(done.output_tokens.sum())
        self.total_tokens += int(done.prompt_tokens.sum() + done.output_tokens.sum())
        self.prompt_tokens += int(done.prompt_tokens.sum())
        self.cached_tokens += int(done.cached_tokens.sum())
        self.first_arrival_s = min(self.first_arrival_s, float(rows.arrival_s.min()))
        if len(done):
            self.last_finish_s = max(self.last_finish_s, float(done.finish_s.max()))
        self.rejected_reasons.update(rows.reject_reason[rows.status == "rejected"])
        for name, latency in self.latency.items():
            latency.add(done[f"{name}_s"].dropna().to_numpy())
        finished = (rows.status == "finished").to_numpy()
        self.arrival_fit.add(rows.arrival_s.to_numpy(), np.where(finished, rows.ttft_s.to_numpy(dtype=np.float64),
                                                                 np.nan))

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: v for k, v in vars(self).items()
                               if k not in ("latency", "rejected_reasons", "arrival_fit")}
        out["arrival_fit"] = self.arrival_fit.as_dict()
        out["rejected_reasons"] = dict(self.rejected_reasons)
        for name, latency in self.latency.items():
            out.update(latency.stats(name))
        return out


class _Latency:
    """Count, sum, maximum and log histogram of one latency."""

    def __init__(self) -> None:
        self.count, self.total, self.max = 0, 0.0, -math.inf
        self.hist = np.zeros(len(itl_bin_centers()), dtype=np.int64)

    def add(self, values: np.ndarray) -> None:
        if len(values):
            self.count += len(values)
            self.total += float(values.sum())
            self.max = max(self.max, float(values.max()))
            self.hist += np.bincount(itl_bin(values), minlength=len(self.hist))

    def stats(self, name: str) -> dict[str, float]:
        if not self.count:
            return {f"{name}_{k}_s": float("nan") for k in ("mean", "p50", "p90", "p99", "max")}
        hit = np.nonzero(self.hist)[0]
        centers, counts = itl_bin_centers()[hit], self.hist[hit]
        return {f"{name}_mean_s": self.total / self.count,
                **{f"{name}_p{q}_s": weighted_percentile(centers, counts, q) for q in (50, 90, 99)},
                f"{name}_max_s": self.max}
