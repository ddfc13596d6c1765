"""Batch inference with fastcells on Ray: the weights once in the object store, read there.

The model and data are ``dask_inference.py``'s (a 2-layer LSTM + Linear head
built with a fixed seed, seeded sequences).  Its weights are put once in
Ray's object store (``ray.put`` of the state dicts); each worker process maps
them read-only and zero-copy, and the model's functional calls
(``fastcells.lstm_forward``) run on those read-only arrays as they are,
without copying them: the kernels only read weights.  A callable class,
:class:`Predictor`, holds them; it runs

- as Ray Data's ``map_batches`` worker (when ``ray.data`` imports), and
- as actors over blocks put in the object store, for the steady-state
  throughput (1 and 2 actors; median of a few repeats).

Each actor asks Ray for ``cores // actors`` CPUs and limits fastcells' and
NumPy's BLAS threads to the same number (see ``dask_inference.py`` for why
both).  Every result is checked bit for bit against the same calls made in
this process with the layers.  ``ray.shutdown()`` runs however the program
ends, so no Ray process outlives it.

Run: ``python examples/ray_inference.py`` (``--quick``: small sizes, for CI).
Without Ray or threadpoolctl it says so and exits 0.
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
import time
from typing import Any

import numpy as np

import fastcells

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dask_inference import (  # noqa: E402  (the examples folder, on the path above)
    FULL_SIZES,
    NUM_LAYERS,
    QUICK_SIZES,
    REPEATS,
    WORKER_COUNTS,
    cores,
    inference_inputs,
    inference_model,
    limit_threads,
    median_rate,
    single_process,
    thread_report,
)

#: the state-dict names of one recurrent layer's weights, in lstm_forward's order
WEIGHT_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


class Predictor:
    """The model as read-only weights: (B, T, I) batches -> (B, outputs) predictions.

    Parameters
    ----------
    state : dict or ray.ObjectRef to one
        ``{"rnn": <LSTM state dict>, "head": <Linear state dict>}``, as Ray
        hands it over from the object store: arrays that are read-only views
        of the store's shared memory, used as they are.
    threads_each : int
        The thread limit of this process (fastcells and BLAS).
    """

    def __init__(self, state: Any, threads_each: int) -> None:
        import ray
        limit_threads(threads_each)
        if isinstance(state, ray.ObjectRef):    # Ray Data passes the reference itself
            state = ray.get(state)
        self.state = state
        rnn = state["rnn"]
        self.layers = [tuple(rnn[f"{name}_l{k}"] for name in WEIGHT_NAMES)
                       for k in range(NUM_LAYERS)]
        self.weight, self.bias = state["head"]["weight"], state["head"]["bias"]

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The layers' eval-mode calls, made on the read-only weights."""
        h = np.ascontiguousarray(x.transpose(1, 0, 2))      # the LSTM runs time-major
        for weights in self.layers:
            h = fastcells.lstm_forward(h, *weights).y
        y: np.ndarray = np.matmul(h[-1], self.weight.T)     # Linear's own two operations
        y += self.bias
        return y

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Ray Data's batch call: column ``data`` in, column ``y`` out."""
        return {"y": self.predict(batch["data"])}

    def report(self) -> tuple[tuple[int, int], bool]:
        """(fastcells threads, BLAS threads), and whether every weight is read-only."""
        arrays = [a for part in self.state.values() for a in part.values()]
        return thread_report(), not any(a.flags.writeable for a in arrays)


def weights_state(model: Any) -> dict[str, dict[str, np.ndarray]]:
    """What goes to the object store: the weights only, as state dicts."""
    return {"rnn": model.rnn.state_dict(), "head": model.head.state_dict()}


def check_actors(ray: Any, actors: list[Any], threads_each: int, label: str) -> None:
    reports = ray.get([a.report.remote() for a in actors])
    limits = sorted({r[0] for r in reports})
    zero_copy = all(r[1] for r in reports)
    print(f"{label}: fastcells and BLAS threads per actor {limits} (want {threads_each}); "
          f"weights read-only views of the object store: {zero_copy}")
    assert limits == [(threads_each, threads_each)] and zero_copy, reports


def predict_blocks(ray: Any, actors: list[Any], blocks: list[Any]) -> np.ndarray:
    """The blocks' predictions, the blocks dealt to the actors in turn."""
    refs = [actors[i % len(actors)].predict.remote(b) for i, b in enumerate(blocks)]
    return np.concatenate(ray.get(refs))


def run_actors(ray: Any, state_ref: Any, x: np.ndarray, chunk: int, expected: dict[int, Any],
               ncores: int) -> None:
    """Throughput and bits with 1 and 2 actors over blocks in the object store."""
    remote = ray.remote(Predictor)
    blocks = [ray.put(x[i:i + chunk]) for i in range(0, len(x), chunk)]
    for nactors in WORKER_COUNTS:
        threads_each = max(1, ncores // nactors)
        actors = [remote.options(num_cpus=threads_each).remote(state_ref, threads_each)
                  for _ in range(nactors)]
        try:
            check_actors(ray, actors, threads_each, f"{nactors} actor(s)")
            run = functools.partial(predict_blocks, ray, actors, blocks)
            same = np.array_equal(run(), expected[threads_each])
            print(f"{nactors} actor(s): equal to this process's calls bit for bit: {same}")
            assert same
            rate = median_rate(run, len(x), REPEATS)
            print(f"{nactors} actor(s) x {threads_each} thread(s): {rate:.0f} sequences/s")
        finally:
            for actor in actors:
                ray.kill(actor)


def run_data(ray: Any, state_ref: Any, x: np.ndarray, chunk: int, expected: dict[int, Any],
             ncores: int) -> None:
    """The same model as Ray Data's ``map_batches`` worker, 2 actors, batches of ``chunk``."""
    try:
        import ray.data
    except ImportError as e:
        print(f"Ray Data does not import ({e}); actors only")
        return
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True     # results in the input's order
    context.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    threads_each = max(1, ncores // 2)
    start = time.perf_counter()
    ds = ray.data.from_numpy([x[i:i + chunk] for i in range(0, len(x), chunk)]).map_batches(
        Predictor, fn_constructor_args=(state_ref, threads_each), batch_size=chunk,
        compute=ray.data.ActorPoolStrategy(size=2), num_cpus=threads_each,
        batch_format="numpy")
    result = np.concatenate([b["y"] for b in ds.iter_batches(batch_size=None,
                                                              batch_format="numpy")])
    seconds = time.perf_counter() - start
    same = np.array_equal(result, expected[threads_each])
    print(f"Ray Data map_batches, 2 actors: equal to this process's calls bit for bit: {same}")
    print(f"Ray Data map_batches, 2 actors: {len(x) / seconds:.0f} sequences/s "
          f"(one job, the actors' start included)")
    assert same


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for CI")
    args = parser.parse_args(argv)
    try:
        import ray
        import threadpoolctl  # noqa: F401
    except ImportError as e:
        print(f"ray_inference: {e.name} is not installed (pip install 'ray[data]' "
              "threadpoolctl); skipping")
        return
    n, seq_len, hidden, chunk = QUICK_SIZES if args.quick else FULL_SIZES
    ncores = cores()
    model = inference_model(hidden, seq_len)
    x = inference_inputs(n, seq_len)
    print(f"inference: {NUM_LAYERS}-layer LSTM({hidden}) + Linear, {n} sequences of "
          f"{seq_len} steps, chunks of {chunk}, {ncores} cores")
    expected = single_process(model, x, chunk, ncores)
    try:
        ray.init(num_cpus=ncores, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
        # a termination signal ends the program through the finally below, so Ray's
        # processes end with it (set after ray.init, which installs its own handler)
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
        state_ref = ray.put(weights_state(model))       # once; every actor maps it
        run_actors(ray, state_ref, x, chunk, expected, ncores)
        run_data(ray, state_ref, x, chunk, expected, ncores)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
