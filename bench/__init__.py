"""fastcells' benchmark folder: what the report borrows from the repository.

``peers`` (PyTorch and ONNX Runtime runners), ``onnx_model`` (the one-node
ONNX models ONNX Runtime runs) and ``plot`` (the speed-up chart).  The
command, ``python -m fastcells.bench``, loads this package from a clone (see
``fastcells.bench.load_bench``); the pytest-benchmark suite (``conftest.py``,
``test_bench.py``) runs the same runners.  Nothing is imported here: the
suite's ``conftest.py`` must pin the BLAS threads before NumPy loads.
"""
