"""Percentiles of values given with repeat counts (ITL gaps are kept as (gap, count) pairs)."""
from __future__ import annotations

import numpy as np


def weighted_percentile(values: np.ndarray, counts: np.ndarray, q: float) -> float:
    """np.percentile(np.repeat(values, counts), q) (linear interpolation), without expanding the array."""
    if counts.sum() == 0:
        return float("nan")
    order = np.argsort(values)
    values, cum = values[order], np.cumsum(counts[order])
    pos = q / 100.0 * (cum[-1] - 1)
    lo, hi = int(np.floor(pos)), int(np.ceil(pos))
    v_lo = values[np.searchsorted(cum, lo, side="right")]
    v_hi = values[np.searchsorted(cum, hi, side="right")]
    return float(v_lo + (v_hi - v_lo) * (pos - lo))
