"""The examples run as scripts in their quick mode and reach their scores.

Each runs in a subprocess, as a user runs it (so its BLAS thread setting
applies); the scores are read from what it prints.  Skipped when the package
that ships its data is not installed.
"""
import importlib.util
import pathlib
import re
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
TIMEOUT = 300        # seconds per quick run: generous for a busy CI machine


def _run(name, *args, cwd=None):
    proc = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py"), "--quick", *args],
                          capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _number(pattern, text):
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in the output:\n{text}"
    return float(match.group(1))


def test_forecast_lstm_beats_naive_baseline():
    pytest.importorskip("statsmodels")
    out = _run("forecast_lstm")
    rmse = _number(r"LSTM ([\d.]+)", out)
    naive = _number(r"naive last value ([\d.]+)", out)
    assert naive > 30            # the sunspot series' naive one-year-ahead error
    assert rmse < 0.8 * naive, out


def test_classify_digits_beats_chance():
    pytest.importorskip("sklearn")
    out = _run("classify_digits_bigru")
    assert _number(r"test accuracy: ([\d.]+)", out) > 0.8, out          # chance is 0.1


def test_gradient_flow_example(tmp_path):
    png = tmp_path / "flow.png"
    out = _run("gradient_flow", "--out", str(png))
    for cell in ("RNN", "GRU", "LSTM"):
        # at PyTorch's initialisation every cell forgets within 64 steps
        assert _number(rf"{cell}\s+initial\s+reach\s+\d+\s+ratio ([\de.+-]+)", out) < 1e-6, out
    if importlib.util.find_spec("matplotlib") is None:
        assert "no plot" in out
    else:
        assert png.stat().st_size > 1000


def _load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_examples_exit_cleanly_without_their_data_package(monkeypatch, capsys):
    """Optional dependencies stay optional: no statsmodels / sklearn -> a message, no error."""
    import builtins

    real_import = builtins.__import__

    def no_data_packages(name, *args, **kwargs):
        if name.split(".")[0] in ("statsmodels", "sklearn"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_data_packages)
    assert _load("forecast_lstm").main(["--quick"]) is None
    assert _load("classify_digits_bigru").main(["--quick"]) is None
    assert capsys.readouterr().out.count("not installed") == 2
