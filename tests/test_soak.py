"""Soak: forward and backward many times over; neither Python-visible memory
(tracemalloc, which sees NumPy's buffers) nor the process's resident set grows.

One leaked buffer per iteration would be far above the bounds: a cache's
gate activations alone are ``T*B*G*H*4`` bytes (40 KiB for the LSTM here,
20 MiB over the quick run).  The quick run (500 iterations per cell) is part
of the suite; ``FASTCELLS_LONG=1`` runs 20000 per cell and prints the figures
(``pytest -s``) summarised in docs/robustness.md, "Memory".
"""
from __future__ import annotations

import gc
import os
import tracemalloc

import numpy as np
import pytest
from conftest import CELLS, backward, forward, make_inputs, make_upstream

import fastcells

ITERATIONS = 20_000 if os.environ.get("FASTCELLS_LONG") else 500
#: iterations before the baseline is taken (allocator pools, NumPy caches)
WARMUP = 50
T, B, I, H = 20, 4, 8, 32
#: growth allowed after warm-up: tracemalloc (bytes still allocated), RSS
TRACED_GROWTH = 64 * 1024
RSS_GROWTH = 8 * 1024 * 1024


def _rss() -> int:
    """Resident set size in bytes (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - not Linux
        return None


@pytest.mark.parametrize("cell", CELLS)
def test_forward_backward_do_not_grow_memory(cell, rng):
    inputs = make_inputs(cell, rng, T, B, I, H)
    upstream = make_upstream(cell, rng, T, B, H)
    lengths = np.array([T, T - 7, 1, 0])

    def step():
        out = forward(fastcells, cell, inputs, lengths=lengths, training=True)
        grads = backward(fastcells, cell, out.cache, upstream)
        forward(fastcells, cell, inputs)        # inference path too
        return float(grads.dW_hh[0, 0])

    for _ in range(WARMUP):
        step()
    gc.collect()
    tracemalloc.start()
    try:
        base_traced, _ = tracemalloc.get_traced_memory()
        base_rss = _rss()
        first = step()
        for _ in range(ITERATIONS - 1):
            assert step() == first                   # deterministic while we are here
        gc.collect()
        traced, peak = tracemalloc.get_traced_memory()
        rss = _rss()
    finally:
        tracemalloc.stop()
    print(f"\nsoak {cell}: {ITERATIONS} iterations, traced growth {traced - base_traced} B, "
          f"peak traced {peak / 2**20:.1f} MiB, RSS {base_rss / 2**20:.1f} -> "
          f"{rss / 2**20:.1f} MiB" if rss is not None else "")
    assert traced - base_traced < TRACED_GROWTH
    if rss is not None:
        assert rss - base_rss < RSS_GROWTH
