"""The scale-out examples run: Dask and Ray inference bit for bit, the Dask sweep, bad chunks.

Each example runs in a subprocess in its quick mode, as a user runs it; the
checks read what it prints.  Every run carries a marker in its environment,
which the worker processes of Dask and Ray inherit: after a run no process
with the marker may be left (a leftover is killed, by its id, and fails the test).
"""
import builtins
import importlib.util
import os
import pathlib
import re
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
#: seconds per run: starting clusters on a busy CI machine is slow
TIMEOUT = 600
#: seconds a cluster's processes may take to exit after the program returns
EXIT_GRACE = 20
MARKER = "FASTCELLS_SCALE_OUT_RUN"


def _marked(tag):
    """Ids of the processes whose environment carries ``MARKER=tag``."""
    needle = f"{MARKER}={tag}".encode()
    pids = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:          # gone, or not ours to read
                pass
    return pids


def _run(name, *args):
    """Run ``examples/<name>.py --quick *args``; its output; no process of it left behind."""
    pytest.importorskip("threadpoolctl")
    tag = uuid.uuid4().hex
    env = dict(os.environ, **{MARKER: tag})
    try:
        proc = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py"), "--quick", *args],
                              capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT,
                              env=env)
    finally:
        deadline = time.monotonic() + EXIT_GRACE
        while _marked(tag) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = _marked(tag)
        for pid in left:
            try:
                os.kill(pid, 9)
            except OSError:
                pass
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not left, f"{name} left processes behind: {left}"
    return proc.stdout


def _rates(pattern, out):
    """(count, threads, rate) per throughput line matching ``pattern``."""
    return [(int(n), int(t), float(r)) for n, t, r in re.findall(pattern, out)]


@pytest.fixture(scope="module")
def dask_inference_output():
    pytest.importorskip("dask")
    pytest.importorskip("distributed")
    return _run("dask_inference")


def test_dask_inference_is_bit_equal_on_workers(dask_inference_output):
    out = dask_inference_output
    for workers in (1, 2):
        assert f"{workers} worker(s): equal to this process's calls bit for bit: True" in out, out


def test_dask_inference_prints_throughputs(dask_inference_output):
    out = dask_inference_output
    singles = re.findall(r"single process \((\d+) thread\(s\)\): (\d+) sequences/s", out)
    assert singles and singles[0][0] == "1" and all(float(r) > 0 for _, r in singles), out
    rates = _rates(r"(\d) worker\(s\) x (\d+) thread\(s\): (\d+) sequences/s", out)
    assert [r[0] for r in rates] == [1, 2] and all(r[2] > 0 for r in rates), out


def test_dask_workers_limit_threads_to_their_share(dask_inference_output):
    out = dask_inference_output
    cores = len(os.sched_getaffinity(0))
    for workers in (1, 2):
        share = max(1, cores // workers)
        assert f"{workers} worker(s): fastcells and BLAS threads per worker " \
               f"[({share}, {share})]" in out, out


def test_dask_model_is_shipped_once_per_worker(dask_inference_output):
    """Every chunk ran on the copy each worker received once (none on a per-task copy;
    Dask may run a task twice, so the runs are at least the tasks)."""
    runs = re.findall(r"one model copy \[[\d, ]+\], (\d+) for (\d+) chunk tasks",
                      dask_inference_output)
    assert len(runs) == 2 and all(int(used) >= int(tasks) > 0 for used, tasks in runs), runs


def test_dask_bad_chunk_raises_in_the_client_and_the_cluster_survives():
    pytest.importorskip("dask")
    pytest.importorskip("distributed")
    out = _run("dask_inference", "--bad-input")
    expected = "expected shape (B, T, I) = (B, 16, 8) for this model, got (128, 17, 7)"
    # a declared shape that does not fit: before any work; a chunk that lies: on its worker
    assert f"refused before any work: X: {expected}" in out, out
    assert f"refused on the worker: chunk: {expected}" in out, out
    assert "after the errors the cluster still answers, bit for bit: True" in out, out


def test_dask_sweep_prints_its_table():
    pytest.importorskip("dask")
    pytest.importorskip("distributed")
    pytest.importorskip("statsmodels")
    out = _run("dask_inference", "--sweep")
    naive = float(re.search(r"naive validation RMSE ([\d.]+)", out)[1])
    rows = re.findall(r"^(rnn|gru|lstm)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)$", out, re.M)
    assert sorted(r[0] for r in rows) == ["gru", "lstm", "rnn"], out
    for _, hidden, _, rmse, seconds in rows:
        # a few epochs: not yet better than the naive forecast, but a forecast
        assert int(hidden) > 0 and 0 < float(rmse) < 3 * naive and float(seconds) >= 0, out


def test_ray_inference_is_bit_equal_zero_copy_and_leaves_nothing():
    pytest.importorskip("ray")
    out = _run("ray_inference")
    cores = len(os.sched_getaffinity(0))
    for actors in (1, 2):
        share = max(1, cores // actors)
        assert f"{actors} actor(s): fastcells and BLAS threads per actor [({share}, {share})] " \
               f"(want {share}); weights read-only views of the object store: True" in out, out
        assert f"{actors} actor(s): equal to this process's calls bit for bit: True" in out, out
    rates = _rates(r"(\d) actor\(s\) x (\d+) thread\(s\): (\d+) sequences/s", out)
    assert [r[0] for r in rates] == [1, 2] and all(r[2] > 0 for r in rates), out
    if "Ray Data does not import" not in out:
        assert "Ray Data map_batches, 2 actors: equal to this process's calls bit for bit: " \
               "True" in out, out


def _load(name, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))     # the examples add their folder
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example


@pytest.mark.parametrize("shape", [(4, 17, 8), (4, 16, 7), (4, 16), (4, 16, 8, 1)])
def test_a_chunk_of_another_length_or_feature_size_is_refused(monkeypatch, shape):
    """The check each worker makes before running a chunk (what --bad-input shows)."""
    example = _load("dask_inference", monkeypatch)
    model = example.inference_model(8, 16)
    pattern = re.escape(f"chunk: expected shape (B, T, I) = (B, 16, 8) for this model, "
                        f"got {shape}")
    with pytest.raises(ValueError, match=pattern):
        example.predict_block(np.zeros(shape, np.float32), model)
    assert model.calls == 0
    assert example.predict_block(np.zeros((4, 16, 8), np.float32), model).shape == (4, 1)


@pytest.mark.parametrize("name, blocked", [("dask_inference", "distributed"),
                                           ("ray_inference", "ray")])
def test_examples_exit_cleanly_without_their_cluster_package(monkeypatch, capsys, name, blocked):
    real_import = builtins.__import__

    def without(module, *args, **kwargs):
        if module.split(".")[0] == blocked:
            raise ImportError(f"No module named {module!r}", name=module)
        return real_import(module, *args, **kwargs)

    example = _load(name, monkeypatch)
    monkeypatch.setattr(builtins, "__import__", without)
    assert example.main(["--quick"]) is None
    assert f"{name}: {blocked} is not installed" in capsys.readouterr().out
