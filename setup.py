"""Build of the compiled part of fastcells.

One declarative table lists each extension and its sources; the Cython
directives are set once here.  FASTCELLS_DEBUG=1 builds with bounds,
wraparound and initialisation checks on and without optimisation (the debug
job).  Nothing here uses -march: csrc/ compiles each hot routine once per
instruction set with target attributes and picks one at run time.
"""
import glob
import os
import sys

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

DEBUG = os.environ.get("FASTCELLS_DEBUG", "") not in ("", "0")
#: e.g. "address,undefined": a sanitizer build for scripts/checks/sanitize.sh (not for wheels)
SANITIZE = os.environ.get("FASTCELLS_SANITIZE", "")

EXTENSIONS = {
    "fastcells._kernels": {
        "sources": ["fastcells/_kernels.pyx", "csrc/cpu.c", "csrc/gemm.c", "csrc/gemm_tn.c"],
    },
}

DIRECTIVES = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": not DEBUG,
    "embedsignature": True,
}

if sys.platform == "win32":
    COMPILE_ARGS = ["/O2"]
else:
    COMPILE_ARGS = ["-O0", "-g"] if DEBUG else ["-O3"]
    # Only the module init is exported; contraction into FMA is allowed (it is
    # what the FMA paths are for) but no -ffast-math: NaN/inf must propagate.
    COMPILE_ARGS += ["-fvisibility=hidden", "-std=gnu11"]
    if SANITIZE:
        COMPILE_ARGS = [f"-fsanitize={SANITIZE}", "-fno-omit-frame-pointer", "-O1", "-g",
                        "-fvisibility=hidden", "-std=gnu11"]
LINK_ARGS = [f"-fsanitize={SANITIZE}"] if SANITIZE and sys.platform != "win32" else []
# The kernels' parallel loops are OpenMP (Cython prange): fastcells' threads are
# then the ones threadpoolctl and OMP_NUM_THREADS already know how to limit.
OPENMP = ["/openmp"] if sys.platform == "win32" else ["-fopenmp"]
COMPILE_ARGS += OPENMP
LINK_ARGS += [] if sys.platform == "win32" else OPENMP

extensions = [
    Extension(
        name,
        sources=spec["sources"],
        # the templates are headers: a change to one must rebuild gemm.c
        depends=sorted(glob.glob("csrc/*.h")),
        include_dirs=["csrc", np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION")],
        extra_compile_args=COMPILE_ARGS,
        extra_link_args=LINK_ARGS,
        language="c",
    )
    for name, spec in EXTENSIONS.items()
]


class BuildExtSaysSo(build_ext):
    """build_ext that says what it is about to do: the compile is the long,
    silent part of an install.  The line goes to stderr, which ``pip install
    -v`` and ``python setup.py build_ext`` show (plain ``pip install`` hides a
    build's output unless it fails)."""

    def run(self) -> None:
        print("fastcells: compiling the Cython kernels and csrc/ (about a minute)...",
              file=sys.stderr, flush=True)
        super().run()


setup(
    cmdclass={"build_ext": BuildExtSaysSo},
    ext_modules=cythonize(
        extensions,
        compiler_directives=DIRECTIVES,
        # the directives are baked into the generated C, which cythonize
        # regenerates only when the .pyx changes: one folder per mode
        build_dir="build/cython-debug" if DEBUG else "build/cython",
    ),
)
