"""Packaging habits: the version in one place, the license declared and shipped,
and an sdist that carries what the tests run.

The sdist is built for real (``setup.py sdist`` into a temporary folder, the
egg-info too, so the tree is left as it was) and its member list checked;
that needs setuptools and Cython, which the ``test`` extra installs.
"""
import ast
import pathlib
import subprocess
import sys
import tarfile

import pytest

import fastcells

tomllib = pytest.importorskip("tomllib")   # Python >= 3.11; CI runs 3.11

ROOT = pathlib.Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
#: what the test suite runs or reads besides the package, and the build inputs
SDIST_MUST_CARRY = [
    "LICENSE", "README.md", "pyproject.toml", "setup.py", "MANIFEST.in",
    "fastcells/_kernels.pyx", "fastcells/_kernels.pyi", "fastcells/py.typed",
    "csrc/gemm.c", "csrc/gemm_impl.h",
    "tests/conftest.py", "tests/test_examples.py", "tests/data/pickles/format1.pkl",
    "tests/data/pickles/format1_expected.npz",
    "examples/forecast_lstm.py", "examples/forecast_stock.py", "examples/classify_digits_bigru.py",
    "examples/gradient_flow.py", "examples/typed_usage.py",
    "scripts/release/smoke.py", "scripts/checks/sanitize.sh", "scripts/checks/aarch64.sh",
    "scripts/checks/aarch64_wheel.sh", "csrc/tests/test_csrc.c",
    "bench/README.md", "bench/test_bench.py", "bench/conftest.py",
    "docs/design.md", "docs/guide.md",
]
#: build products that must never ship
SDIST_MUST_NOT_CARRY = ("fastcells/_kernels.c", ".so", "__pycache__")


def test_version_lives_in_one_place():
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    attr = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "fastcells.__version__"
    # setuptools reads it statically (no import of the compiled module) when it
    # is a module-level string literal: check that it is one
    tree = ast.parse((ROOT / "fastcells" / "__init__.py").read_text(encoding="utf-8"))
    literals = [node.value.value for node in tree.body
                if isinstance(node, ast.Assign)
                and [getattr(t, "id", None) for t in node.targets] == ["__version__"]
                and isinstance(node.value, ast.Constant)]
    assert literals == [fastcells.__version__]


def test_license_file_matches_the_declared_license():
    assert PYPROJECT["project"]["license"] == "BSD-3-Clause"
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("BSD 3-Clause License")
    assert "Copyright (c) 2026, the fastcells authors" in text
    assert "Neither the name of the copyright holder" in text     # the third clause


@pytest.fixture(scope="module")
def sdist_members(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sdist")
    proc = subprocess.run(
        [sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp),
         "sdist", "--dist-dir", str(tmp)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (tarball,) = tmp.glob("fastcells-*.tar.gz")
    assert tarball.name == f"fastcells-{fastcells.__version__}.tar.gz"
    with tarfile.open(tarball) as tar:
        return {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}


def test_sdist_carries_what_the_tests_run(sdist_members):
    missing = [path for path in SDIST_MUST_CARRY if path not in sdist_members]
    assert not missing, f"the sdist lacks {missing}"
    tests = {p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").glob("*.py")}
    assert tests <= sdist_members


def test_sdist_carries_no_build_products(sdist_members):
    shipped = [m for m in sdist_members if any(bad in m for bad in SDIST_MUST_NOT_CARRY)]
    assert not shipped, shipped
