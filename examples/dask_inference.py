"""Batch inference and a model sweep with fastcells on a Dask cluster of worker processes.

Inference: a 2-layer LSTM + Linear head (built with a fixed seed) runs over a
``dask.array`` of sequences ``(N, T, I)`` chunked along the batch axis, on a
``distributed.LocalCluster`` of worker processes.  The model is scattered
once to every worker (``client.scatter(model, broadcast=True)``); each chunk's
task receives the worker's own copy, so nothing is shipped per chunk.  The
result is checked bit for bit against the same calls made in this process,
and the throughput (sequences/s, median of a few repeats) is printed for this
process alone, 1 worker and 2 workers.

Threads: every worker gets ``cores // workers`` threads for fastcells
(``fastcells.set_num_threads``) AND for NumPy's BLAS (``threadpoolctl``),
and runs one task at a time (``threads_per_worker=1``).  Both limits are
needed: fastcells' kernels and the BLAS behind the Linear head each start
their own thread pool, and a worker that left either at its default would
size it for the whole machine, so 2 workers on 2 cores would run 4 or more
busy threads that take turns on the cores and evict each other's caches.
(Dask's nanny sets ``OMP_NUM_THREADS=1`` in its workers, which caps both at 1
whatever the worker's share; the explicit setting gives each worker its
share and is checked below.)

Sweep (``--sweep``): RNN, GRU and LSTM forecasters (2 recurrent layers +
Linear) x hidden sizes x seeds trained on the forecasting example's data
(the yearly sunspot numbers of statsmodels, as ``forecast_lstm.py``), one
Dask future per model, and one table of validation RMSEs.

Bad input (``--bad-input``): a chunk whose sequence length or feature size
does not fit the model raises ``ValueError`` naming the chunk's shape and the
expected one; the error reaches the client and the cluster keeps working.

Run: ``python examples/dask_inference.py`` (``--quick``: small sizes, for CI;
``--sweep``, ``--bad-input``).  Without dask, distributed or threadpoolctl it
says so and exits 0.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

import fastcells

#: the layer class of each cell, for the sweep
CELL_LAYERS: dict[str, Any] = {"rnn": fastcells.RNN, "gru": fastcells.GRU,
                               "lstm": fastcells.LSTM}
NUM_LAYERS = 2
INPUT_SIZE = 8
OUTPUTS = 1
SEED = 0
#: the worker (or actor) counts of the inference runs
WORKER_COUNTS = (1, 2)
#: timed repeats per configuration (the median is printed)
REPEATS = 3
#: (N sequences, T steps, hidden size, chunk rows) for the inference runs
FULL_SIZES = (4096, 32, 64, 256)
QUICK_SIZES = (1024, 16, 32, 128)
#: the sweep's grid and epochs: (hidden sizes, seeds, epochs)
FULL_SWEEP = ((16, 32), (0, 1), 30)
QUICK_SWEEP = ((8,), (0,), 3)
#: a training job reports an epoch when this many seconds passed since its last report
PROGRESS_SECONDS = 5.0
#: the Dask event topic of those reports (the client prints them)
PROGRESS_TOPIC = "fastcells-sweep-progress"


def cores() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):     # not Linux
        return max(1, os.cpu_count() or 1)


class SequenceRegressor:
    """A stacked recurrent layer + Linear head on the last step: (B, T, I) -> (B, outputs).

    ``seq_len`` is the sequence length the model is meant for (its training
    window), or None for any; :meth:`check_block` enforces it and the feature size.
    """

    def __init__(self, cell: str, input_size: int, hidden: int, seq_len: int | None,
                 outputs: int = OUTPUTS, seed: int = SEED) -> None:
        self.cell = cell
        self.seq_len = seq_len
        self.rnn = CELL_LAYERS[cell](input_size, hidden, num_layers=NUM_LAYERS,
                                     batch_first=True, seed=seed)
        self.head = fastcells.Linear(hidden, outputs, seed=seed + 1)
        self.layers = [self.rnn, self.head]
        #: chunks this copy of the model has run (tells whether workers reuse one copy)
        self.calls = 0

    @property
    def input_size(self) -> int:
        return int(self.rnn.input_size)

    def check_block(self, shape: tuple[int, ...], what: str = "chunk") -> None:
        """Raise ValueError unless ``shape`` is (B, seq_len, input_size)."""
        T = "T" if self.seq_len is None else self.seq_len
        if len(shape) != 3 or shape[2] != self.input_size or \
                (self.seq_len is not None and shape[1] != self.seq_len):
            raise ValueError(f"{what}: expected shape (B, T, I) = (B, {T}, {self.input_size}) "
                             f"for this model, got {tuple(shape)}")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y, _ = self.rnn(x)
        self._T = y.shape[1]
        out: np.ndarray = self.head(y[:, -1])
        return out

    def backward(self, dpred: np.ndarray) -> None:
        dlast = self.head.backward(dpred)
        dy = np.zeros((dlast.shape[0], self._T, dlast.shape[1]), np.float32)
        dy[:, -1] = dlast
        self.rnn.backward(dy)

    def train(self, mode: bool = True) -> SequenceRegressor:
        for layer in self.layers:
            layer.train(mode)
        return self


def inference_model(hidden: int, seq_len: int) -> SequenceRegressor:
    """The model the inference runs use: a 2-layer LSTM + Linear, fixed seed, eval mode."""
    return SequenceRegressor("lstm", INPUT_SIZE, hidden, seq_len).train(False)


def inference_inputs(n: int, seq_len: int) -> np.ndarray:
    """Seeded float32 sequences (n, seq_len, INPUT_SIZE)."""
    return np.random.default_rng(SEED).standard_normal((n, seq_len, INPUT_SIZE), np.float32)


# ----------------------------------------------------------------------------
# threads


def limit_threads(n: int) -> None:
    """Limit this process to ``n`` compute threads: fastcells' and NumPy's BLAS.

    Both settings are process-wide (OpenBLAS's limit and fastcells' setting),
    so calling it once in a worker covers every task the worker runs.
    """
    from threadpoolctl import threadpool_limits
    fastcells.set_num_threads(n)
    threadpool_limits(n, user_api="blas")       # kept: not used as a context manager


def thread_report() -> tuple[int, int]:
    """(fastcells threads, largest BLAS thread count) in this process."""
    from threadpoolctl import threadpool_info
    blas = [int(p["num_threads"]) for p in threadpool_info() if p["user_api"] == "blas"]
    return fastcells.get_num_threads(), max(blas, default=1)


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """fastcells and BLAS limited to ``n`` threads in this process, restored afterwards."""
    from threadpoolctl import threadpool_limits
    before = fastcells.get_num_threads()
    fastcells.set_num_threads(n)
    try:
        with threadpool_limits(n, user_api="blas"):
            yield
    finally:
        fastcells.set_num_threads(before)


# ----------------------------------------------------------------------------
# inference


def predict_block(block: np.ndarray, model: SequenceRegressor) -> np.ndarray:
    """One chunk (B, T, I) -> (B, outputs), run on a worker with its copy of the model."""
    model.check_block(block.shape)
    model.calls += 1
    return model(block)


def model_calls(key: str, dask_worker: Any = None) -> int:
    """The chunks a worker's stored copy of the model (its key) ran; run by ``client.run``."""
    return int(dask_worker.data[key].calls)


def chunk_calls(model: Callable[[np.ndarray], np.ndarray], x: np.ndarray,
                chunk: int) -> np.ndarray:
    """The calls the workers make, made here in order: one per chunk of ``chunk`` rows."""
    return np.concatenate([model(x[i:i + chunk]) for i in range(0, len(x), chunk)])


def single_process(model: SequenceRegressor, x: np.ndarray, chunk: int,
                   ncores: int) -> dict[int, np.ndarray]:
    """This process alone, chunk by chunk, at 1 thread and at each worker's share of cores.

    Prints the throughputs; returns the predictions per thread count, the bits
    the workers must reproduce.
    """
    expected = {}
    for t in sorted({1} | {max(1, ncores // k) for k in WORKER_COUNTS}):
        with threads(t):
            expected[t] = chunk_calls(model, x, chunk)
            rate = median_rate(lambda: chunk_calls(model, x, chunk), len(x), REPEATS)
        print(f"single process ({t} thread(s)): {rate:.0f} sequences/s")
    return expected


def median_rate(run: Callable[[], Any], sequences: int, repeats: int) -> float:
    """Sequences per second: ``sequences`` over the median time of ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return sequences / statistics.median(times)


def predict(X: Any, model_future: Any, model: SequenceRegressor) -> Any:
    """The lazy prediction (N, outputs) of ``X`` (N, T, I), chunked along N.

    The whole array's shape is checked here, before any work; each chunk is
    checked again on its worker (a chunk's real shape can differ from the
    one declared, e.g. a loader that reads a bad file).
    """
    model.check_block(X.shape, "X")
    return X.map_blocks(predict_block, model_future, drop_axis=(1, 2), new_axis=1,
                        chunks=(X.chunks[0], (OUTPUTS,)), dtype=np.float32,
                        meta=np.empty((0, OUTPUTS), np.float32))


@contextlib.contextmanager
def cluster(workers: int, threads_each: int) -> Iterator[Any]:
    """A client of a local cluster of ``workers`` processes, each limited to ``threads_each``."""
    from distributed import Client, LocalCluster
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as local, Client(local) as client:
        client.run(limit_threads, threads_each)
        yield client


def run_inference(quick: bool) -> None:
    import dask.array as da

    n, seq_len, hidden, chunk = QUICK_SIZES if quick else FULL_SIZES
    ncores = cores()
    model = inference_model(hidden, seq_len)
    x = inference_inputs(n, seq_len)
    print(f"inference: {NUM_LAYERS}-layer LSTM({hidden}) + Linear, {n} sequences of "
          f"{seq_len} steps x {INPUT_SIZE} features, chunks of {chunk}, {ncores} cores")
    expected = single_process(model, x, chunk, ncores)
    for workers in WORKER_COUNTS:
        threads_each = max(1, ncores // workers)
        with cluster(workers, threads_each) as client:
            limits = set(client.run(thread_report).values())
            print(f"{workers} worker(s): fastcells and BLAS threads per worker "
                  f"{sorted(limits)} (want {threads_each})")
            assert limits == {(threads_each, threads_each)}, limits
            model_future = client.scatter(model, broadcast=True)
            X = client.persist(da.from_array(x, chunks=(chunk, seq_len, INPUT_SIZE)))
            Y = predict(X, model_future, model)
            result = Y.compute()
            same = np.array_equal(result, expected[threads_each])
            print(f"{workers} worker(s): equal to this process's calls bit for bit: {same}")
            assert same, np.abs(result - expected[threads_each]).max()
            rate = median_rate(Y.compute, n, REPEATS)
            print(f"{workers} worker(s) x {threads_each} thread(s): {rate:.0f} sequences/s")
            # each worker kept one copy of the model and ran its chunks on it: a copy
            # per task would leave the stored copies' counts at zero (Dask may run a
            # task twice, e.g. when it moves between workers, hence "at least")
            calls = client.run(model_calls, model_future.key)
            tasks = len(X.chunks[0]) * (1 + REPEATS)
            print(f"{workers} worker(s): chunks run on each worker's one model copy "
                  f"{sorted(calls.values())}, {sum(calls.values())} for {tasks} chunk tasks")
            assert sum(calls.values()) >= tasks, calls


def run_bad_input() -> None:
    import dask.array as da
    from dask.delayed import delayed

    _, seq_len, hidden, chunk = QUICK_SIZES
    model = inference_model(hidden, seq_len)
    good = inference_inputs(2 * chunk, seq_len)
    wide = inference_inputs(chunk, seq_len + 1)[..., :INPUT_SIZE - 1]   # wrong T and I
    threads_each = max(1, cores() // 2)
    with cluster(2, threads_each) as client:
        model_future = client.scatter(model, broadcast=True)
        # a dask array whose declared shape is wrong: refused here, before any work
        try:
            predict(da.from_array(wide), model_future, model)
        except ValueError as e:
            print(f"refused before any work: {e}")
        # a chunk whose real shape differs from the declared one: refused on its worker
        blocks = [da.from_delayed(delayed(a), (chunk, seq_len, INPUT_SIZE), np.float32)
                  for a in (good[:chunk], wide)]
        try:
            predict(da.concatenate(blocks), model_future, model).compute()
        except ValueError as e:
            print(f"refused on the worker: {e}")
        # the cluster still answers
        X = da.from_array(good, chunks=(chunk, seq_len, INPUT_SIZE))
        result = predict(X, model_future, model).compute()
        with threads(threads_each):
            same = np.array_equal(result, chunk_calls(model, good, chunk))
        print(f"after the errors the cluster still answers, bit for bit: {same}")


# ----------------------------------------------------------------------------
# the sweep


def load_forecast_data() -> dict[str, Any] | None:
    """The forecasting example's windows, split train / validation; None without statsmodels."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import forecast_lstm
    series = forecast_lstm.load_series()
    if series is None:
        return None
    n_val = int(round(len(series) * forecast_lstm.TEST_FRACTION))
    split = len(series) - n_val
    s = np.sqrt(series)          # as forecast_lstm: sqrt tames the peaks, train-only scaling
    mean, std = s[:split].mean(), s[:split].std()
    z = (s - mean) / std
    x_train, y_train = forecast_lstm.windows(z, 0, split)
    x_val, _ = forecast_lstm.windows(z, split, len(series))
    return {"x_train": np.ascontiguousarray(x_train.transpose(1, 0, 2)), "y_train": y_train,
            "x_val": np.ascontiguousarray(x_val.transpose(1, 0, 2)),
            "truth": series[split:], "mean": mean, "std": std,
            "naive": float(np.sqrt(np.mean((series[split - 1:-1] - series[split:]) ** 2)))}


def train_one(cell: str, hidden: int, seed: int, data: dict[str, Any],
              epochs: int) -> tuple[str, int, int, float, float]:
    """Train one forecaster (runs on a worker); (cell, H, seed, val RMSE, seconds)."""
    from distributed import get_worker

    x, y = data["x_train"], data["y_train"]
    model = SequenceRegressor(cell, 1, hidden, x.shape[1], seed=seed)
    opt = fastcells.optim.Adam(model.layers, lr=1e-2)
    rng = np.random.default_rng(seed)
    batch = 32
    start = last = time.perf_counter()
    for epoch in range(epochs):
        order = rng.permutation(len(y))
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            opt.zero_grad()
            _, grad = fastcells.losses.mse(model(x[idx]), y[idx])
            model.backward(grad)
            fastcells.clip_grad_norm(model.layers, 1.0)
            opt.step()
        if epoch == epochs // 2:
            opt.lr = 3e-3
        if time.perf_counter() - last > PROGRESS_SECONDS:
            last = time.perf_counter()
            get_worker().log_event(PROGRESS_TOPIC, f"  {cell} H={hidden} seed={seed}: "
                                                   f"epoch {epoch + 1}/{epochs}")
    model.train(False)
    pred = np.maximum(model(data["x_val"])[:, 0] * data["std"] + data["mean"], 0) ** 2
    rmse = float(np.sqrt(np.mean((pred - data["truth"]) ** 2)))
    return cell, hidden, seed, rmse, time.perf_counter() - start


def run_sweep(quick: bool) -> None:
    from distributed import as_completed

    data = load_forecast_data()
    if data is None:
        print("dask_inference --sweep: statsmodels is not installed (pip install statsmodels);"
              " skipping")
        return
    hiddens, seeds, epochs = QUICK_SWEEP if quick else FULL_SWEEP
    jobs = [(cell, h, s) for cell in CELL_LAYERS for h in hiddens for s in seeds]
    workers = min(cores(), len(jobs))
    print(f"sweep: {len(jobs)} models ({'/'.join(CELL_LAYERS)} x H {hiddens} x seeds {seeds}), "
          f"{epochs} epochs each, on {workers} worker(s) x 1 thread; sunspots, naive "
          f"validation RMSE {data['naive']:.1f}")
    with cluster(workers, 1) as client:
        # the workers' progress lines, printed here as they come
        client.subscribe_topic(PROGRESS_TOPIC, lambda event: print(event[1], flush=True))
        data_future = client.scatter(data, broadcast=True)
        futures = [client.submit(train_one, *job, data_future, epochs, pure=False)
                   for job in jobs]
        rows = []
        for done, future in enumerate(as_completed(futures), 1):
            rows.append(future.result())
            print(f"  done {done}/{len(jobs)}: {rows[-1][0]} H={rows[-1][1]} "
                  f"seed={rows[-1][2]}", flush=True)
    print(f"{'cell':<6}{'H':>4}{'seed':>6}{'val RMSE':>10}{'seconds':>9}")
    for cell, hidden, seed, rmse, seconds in sorted(rows):
        print(f"{cell:<6}{hidden:>4}{seed:>6}{rmse:>10.1f}{seconds:>9.1f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for CI")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--sweep", action="store_true", help="train a small sweep as futures")
    mode.add_argument("--bad-input", action="store_true",
                      help="show that a misshapen chunk is refused and the cluster survives")
    args = parser.parse_args(argv)
    try:
        import dask.array  # noqa: F401
        import distributed  # noqa: F401
        import threadpoolctl  # noqa: F401
    except ImportError as e:
        print(f"dask_inference: {e.name} is not installed (pip install "
              "'dask[array,distributed]' threadpoolctl); skipping")
        return
    if args.sweep:
        run_sweep(args.quick)
    elif args.bad_input:
        run_bad_input()
    else:
        run_inference(args.quick)


if __name__ == "__main__":   # the guard matters: worker processes re-import this file
    main()
