"""Set-up of the pytest-benchmark suite: one thread, and the grid to run.

Run with ``python -m pytest bench --benchmark-only`` (the normal test run
collects ``tests/`` only).  ``--fastcells-grid quick|default|full`` picks the
grid of ``fastcells.bench.GRIDS`` (default: full, the report's ``--full`` grid);
``--fastcells-cells`` and ``--fastcells-systems`` narrow it.
"""
import os

# Before NumPy loads (through fastcells below): BLAS reads these only then.
# They are fastcells.bench.THREAD_VARS, which cannot be imported before NumPy.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import pytest

from fastcells import bench


def pytest_addoption(parser):
    group = parser.getgroup("fastcells benchmark grid")
    group.addoption("--fastcells-grid", default="full", choices=sorted(bench.GRIDS),
                    help="shapes of fastcells.bench.GRIDS to run (default: full)")
    group.addoption("--fastcells-cells", default=",".join(bench.CELLS),
                    help="comma-separated cells (default: all)")
    group.addoption("--fastcells-systems", default=",".join(bench.SYSTEMS),
                    help="comma-separated systems (default: all)")


def _subset(config, name, allowed):
    values = [v.strip() for v in config.getoption(name).split(",") if v.strip()]
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise pytest.UsageError(f"{name}: expected a comma-separated subset of "
                                f"{','.join(allowed)}, got {config.getoption(name)!r}")
    return values


def pytest_generate_tests(metafunc):
    """Parametrize cell x shape x mode x system from the options."""
    config = metafunc.config
    axes = {
        "cell": _subset(config, "--fastcells-cells", bench.CELLS),
        "shape": list(bench.GRIDS[config.getoption("--fastcells-grid")]),
        "mode": list(bench.MODES),
        "system": _subset(config, "--fastcells-systems", bench.SYSTEMS),
    }
    for name, values in axes.items():
        if name in metafunc.fixturenames:
            metafunc.parametrize(name, values, ids=[str(v) for v in values])


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """Pin BLAS/OpenMP pools to one thread (threadpoolctl), in case NumPy loaded first."""
    limits = bench.pin_threads()
    yield
    if limits is not None:
        limits.restore_original_limits()


@pytest.fixture(scope="session")
def problem_of():
    """``problem_of(cell, shape)``: the seeded problem, built once per session."""
    cache = {}

    def get(cell, shape):
        if (cell, shape) not in cache:
            cache[(cell, shape)] = bench.make_problem(cell, shape)
        return cache[(cell, shape)]
    return get
