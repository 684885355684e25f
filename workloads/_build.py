"""Turn columns of request data into RequestSpec objects quickly."""
from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator, Sequence

import numpy as np

from workloads.spec import RequestSpec


def build_specs(
    arrival_s: np.ndarray,
    prompt_tokens: np.ndarray,
    output_tokens: np.ndarray,
    content: Sequence[tuple[tuple[int, int], ...]] | None = None,
) -> list[RequestSpec]:
    """RequestSpecs numbered 0..n-1 by position. Arrays become Python floats/ints first (tolist is the fast path)."""
    columns = [range(len(arrival_s)), arrival_s.tolist(), prompt_tokens.tolist(), output_tokens.tolist()]
    if content is not None:
        columns.append(content)
    with _gc_paused():
        return list(map(RequestSpec, *columns))


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while allocating many small acyclic objects.

    Building 1M RequestSpecs otherwise triggers repeated full collections that scan every object made so far;
    measured on 1M specs: about 1.4 s with the GC on, 0.7 s paused. The previous GC state is restored.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
