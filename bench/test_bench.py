"""pytest-benchmark suite: every cell x shape x mode x system of ``fastcells.bench``.

The problems and the per-system runners are those of the report
(``fastcells.bench.make_problem`` / ``make_runner``), so both measure the
same thing.  Benchmarks of one cell, shape and mode share a group, so
pytest-benchmark's table puts the systems side by side::

    python -m pytest bench --benchmark-only
    python -m pytest bench --benchmark-only --fastcells-grid quick --fastcells-cells lstm

A system that is not installed (torch, onnxruntime), does not apply (ONNX
Runtime backward) or disagrees with fastcells is skipped with the reason.
The peers' runners are this folder's ``peers`` module, which
``fastcells.bench.make_runner`` loads from here.
"""
import pytest

from fastcells import bench


def test_bench(benchmark, problem_of, cell, shape, mode, system):
    p = problem_of(cell, shape)
    try:
        run = bench.make_runner(system, p, mode)
    except bench.Unavailable as exc:
        pytest.skip(f"{system}: {exc}")
    benchmark.group = f"{cell} {shape} {mode}"
    benchmark.extra_info.update(cell=cell, shape=str(shape), mode=mode, system=system,
                                gflop=bench.gemm_flops(cell, shape, mode) / 1e9)
    benchmark(run)
