"""The examples run and reach their scores: the README's code blocks, and the
programs of examples/ as scripts in their quick mode.

Each program runs in a subprocess, as a user runs it (so its BLAS thread
setting applies); the scores are read from what it prints.  Skipped when the
package that ships its data is not installed.  The README's blocks run as
written, each in a fresh namespace, as a reader pastes them.
"""
import contextlib
import importlib.util
import io
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
README = ROOT / "README.md"
#: the size a newcomer reads in two minutes
README_MAX_BYTES = 12 * 1024
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


def _readme_blocks():
    """The README's ```python blocks, in order."""
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def _run_block(code):
    """Run one README block in a fresh namespace; return (namespace, printed text)."""
    namespace = {"__name__": "__readme__"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(README), "exec"), namespace)
    return namespace, out.getvalue()


def _block_with(text):
    blocks = [b for b in _readme_blocks() if text in b]
    assert len(blocks) == 1, f"expected one README block with {text!r}, found {len(blocks)}"
    return blocks[0]


def test_readme_is_short_and_has_its_blocks():
    assert len(README.read_bytes()) <= README_MAX_BYTES
    assert len(_readme_blocks()) >= 2


@pytest.mark.parametrize("index", range(len(_readme_blocks())))
def test_readme_block_runs(index):
    _run_block(_readme_blocks()[index])


def test_readme_forward_backward_example_matches_the_reference():
    ns, printed = _run_block(_block_with("lstm_backward"))
    out, grads, ref = ns["out"], ns["grads"], ns["ref"]
    assert out.y.dtype == np.float32 and out.y.shape == (ns["T"], ns["B"], ns["H"])
    assert float(printed) == np.abs(out.y - ref.y).max() < 1e-5
    assert grads.dW_hh.shape == ns["W_hh"].shape and np.abs(grads.dW_hh).max() > 0


def test_readme_training_example_learns():
    ns, printed = _run_block(_block_with("optim.Adam"))
    # the running mean of unit normals has variance about 0.1 (mean of 1/t, t = 1..40)
    assert ns["loss"] < 0.1 * float(np.var(ns["target"])), printed
    assert printed == f"mse {ns['loss']:.4f}\n"


def _relative_links(path):
    text = path.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if not re.match(r"[a-z]+:", target):
            yield target


@pytest.mark.parametrize("doc", [README, *sorted((ROOT / "docs").glob("*.md"))],
                         ids=lambda p: p.name)
def test_doc_links_resolve(doc):
    missing = [t for t in _relative_links(doc) if not (doc.parent / t).exists()]
    assert not missing, f"{doc.name} links to missing files: {missing}"
