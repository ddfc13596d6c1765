"""Threads: many threads sharing one set of weights (or one layer) in inference get
exactly the bits of a serial run.

The kernels release the GIL for the whole time loop and keep no global
state but the ISA choice (set once at import; changing it with
``_kernels.set_isa`` while other threads run kernels is not supported).
Every call allocates its own buffers, so shared inputs are only read.

A layer in eval mode is safe to share.  A layer being *trained* is not:
``forward`` keeps the activations for ``backward`` on the layer and
``backward`` accumulates into ``.grads``, so concurrent training calls on one
layer are documented as unsupported (use one layer per thread, or the
functional API, whose caches are independent and read-only).

The quick tests here take a few seconds; ``FASTCELLS_LONG=1`` runs each
for a minute (the run docs/robustness.md, "Threads", describes).
"""
from __future__ import annotations

import os
import threading
import time
from typing import NamedTuple

import numpy as np
import pytest
from conftest import CELLS, assert_same, backward, forward, make_inputs, make_upstream

import fastcells


class LayerOut(NamedTuple):
    y: np.ndarray
    h: np.ndarray
    c: np.ndarray | None


THREADS = 8
#: seconds each threaded test runs; at least one pass over the inputs either way
DURATION = 60.0 if os.environ.get("FASTCELLS_LONG") else 0.0
#: distinct problems per test; each thread walks them in its own order
PROBLEMS = 8
T, B, I, H = 40, 4, 8, 32


def _hammer(work, expected):
    """Run ``work(k)`` for k in 0..len(expected)-1 from THREADS threads (each in its own
    order, all starting together) until DURATION has passed; compare every result
    with ``expected[k]`` bitwise.  Returns the number of calls made."""
    barrier = threading.Barrier(THREADS)
    errors, counts = [], [0] * THREADS

    def run(tid):
        try:
            barrier.wait()
            order = np.random.default_rng(tid).permutation(len(expected))
            deadline = time.perf_counter() + DURATION
            while True:
                for k in order:
                    assert_same(work(k), expected[k], f"thread {tid} problem {k}: ")
                    counts[tid] += 1
                if time.perf_counter() >= deadline:
                    return
        except BaseException as exc:  # re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return sum(counts)


@pytest.mark.parametrize("cell", CELLS)
def test_shared_weights_inference_equals_serial(cell, rng):
    weights = make_inputs(cell, rng, 0, 0, I, H)           # one set of weights for all
    weights = {k: v for k, v in weights.items() if k.startswith(("W_", "b_"))}
    problems = []
    for _ in range(PROBLEMS):
        p = make_inputs(cell, rng, T, B, I, H)
        problems.append({k: v for k, v in p.items() if k not in weights})
    lengths = np.array([T, T - 3, 1, 0])

    def work(k):
        return forward(fastcells, cell, dict(problems[k], **weights), lengths=lengths)

    expected = [work(k) for k in range(PROBLEMS)]
    assert _hammer(work, expected) >= THREADS * PROBLEMS


@pytest.mark.parametrize("cell", CELLS)
def test_one_cache_backpropagated_from_many_threads(cell, rng):
    """A cache is read-only: concurrent backward passes through it agree."""
    cache = forward(fastcells, cell, make_inputs(cell, rng, T, B, I, H), training=True).cache
    upstreams = [make_upstream(cell, rng, T, B, H) for _ in range(PROBLEMS)]

    def work(k):
        return backward(fastcells, cell, cache, upstreams[k])

    expected = [work(k) for k in range(PROBLEMS)]
    _hammer(work, expected)


@pytest.mark.parametrize("layer_cls", [fastcells.RNN, fastcells.GRU, fastcells.LSTM])
def test_shared_layer_in_eval_mode_equals_serial(layer_cls, rng):
    layer = layer_cls(I, H, num_layers=2, bidirectional=True, seed=0).eval()
    xs = [rng.standard_normal((T, B, I)).astype(np.float32) for _ in range(PROBLEMS)]

    def work(k):
        y, state = layer(xs[k])
        h, c = state if isinstance(state, tuple) else (state, None)
        return LayerOut(y, h, c)

    expected = [work(k) for k in range(PROBLEMS)]
    _hammer(work, expected)
