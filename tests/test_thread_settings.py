"""fastcells' thread setting: set_num_threads / get_num_threads, FASTCELLS_NUM_THREADS,
the default (cores, limited by OpenMP's limit), and the budget shared by concurrent calls."""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import fastcells
from fastcells import _threads


@pytest.fixture(autouse=True)
def _restore_setting():
    saved = _threads._setting
    yield
    _threads._setting = saved


@pytest.mark.parametrize("n", [1, 2, 8, np.int64(3)])
def test_set_and_get(n):
    fastcells.set_num_threads(n)
    assert fastcells.get_num_threads() == int(n)
    assert type(fastcells.get_num_threads()) is int


@pytest.mark.parametrize("bad, error", [
    (0, ValueError), (-1, ValueError), (1.5, TypeError), (2.0, TypeError), (True, TypeError),
    ("2", TypeError), (None, TypeError),
])
def test_set_num_threads_refuses(bad, error):
    before = fastcells.get_num_threads()
    with pytest.raises(error, match=r"^n: expected an integer >= 1, got"):
        fastcells.set_num_threads(bad)
    assert fastcells.get_num_threads() == before


def test_default_is_the_cores_this_process_may_use():
    _threads._setting = None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert _threads.available_cores() == cores
    assert fastcells.get_num_threads() == min(cores, _threads._openmp_limit())


def test_default_follows_threadpoolctl_but_an_explicit_setting_wins():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    _threads._setting = None
    with threadpoolctl.threadpool_limits(1, user_api="openmp"):
        assert fastcells.get_num_threads() == 1
        fastcells.set_num_threads(3)
        assert fastcells.get_num_threads() == 3


def _run(code, **env):
    full = {k: v for k, v in os.environ.items() if k != "FASTCELLS_NUM_THREADS"}
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True,
                          text=True, timeout=120)


def test_environment_variable_sets_the_count():
    out = _run("import fastcells; print(fastcells.get_num_threads())", FASTCELLS_NUM_THREADS="5")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "5"


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_bad_environment_variable_fails_at_import_naming_it(value):
    out = _run("import fastcells", FASTCELLS_NUM_THREADS=value)
    assert out.returncode != 0
    assert f"FASTCELLS_NUM_THREADS: expected a positive integer, got {value!r}" in out.stderr


def test_show_config_prints_the_threads(capsys):
    fastcells.set_num_threads(4)
    fastcells.show_config()
    assert "threads:       4 per call (set by set_num_threads" in capsys.readouterr().out


def test_claim_shares_one_budget():
    fastcells.set_num_threads(3)
    assert _threads.threads_in_use() == 0
    with _threads.claim(2) as a:
        assert a == 2 and _threads.threads_in_use() == 2
        with _threads.claim(4) as b:        # one left: it gets one
            assert b == 1 and _threads.threads_in_use() == 3
            with _threads.claim(2) as c:    # none left: its own thread
                assert c == 1
        assert _threads.threads_in_use() == 2
    assert _threads.threads_in_use() == 0
    with _threads.claim(1) as d:            # single-thread calls do not count
        assert d == 1 and _threads.threads_in_use() == 0


def test_claim_is_released_when_the_call_raises():
    fastcells.set_num_threads(2)
    with pytest.raises(RuntimeError), _threads.claim(2):
        raise RuntimeError
    assert _threads.threads_in_use() == 0


def test_claim_from_many_threads_never_leaks():
    fastcells.set_num_threads(2)
    got = []

    def worker():
        for _ in range(200):
            with _threads.claim(2) as n:
                got.append(n)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _threads.threads_in_use() == 0
    assert set(got) <= {1, 2}
