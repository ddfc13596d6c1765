"""The examples run and reach their scores: the README's code blocks, and the
programs of examples/ as scripts in their quick mode.

Each program runs in a subprocess, as a user runs it (so its BLAS thread
setting applies); the scores are read from what it prints.  Skipped when the
package that ships its data is not installed.  The README's blocks run as
written, each in a fresh namespace, as a reader pastes them.
"""
import contextlib
import importlib.util
import inspect
import io
import os
import pathlib
import re
import struct
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


#: the examples that train, the package that ships their data (None: no data package),
#: and whether they write a plot (take --out)
TRAINING_EXAMPLES = {"forecast_lstm": ("statsmodels", False),
                     "classify_digits_bigru": ("sklearn", False),
                     "gradient_flow": (None, True),
                     "forecast_stock": ("arch", True)}
#: a progress line: [model] epoch|step k/n  train loss L  [val metric]  seconds
PROGRESS = re.compile(r"^ +(?:(\S+) +)?(?:epoch|step) +(\d+)/(\d+) +train loss ([\d.]+)"
                      r"(?: .*)? ([\d.]+) s$", re.M)
#: the stock example's table: its header's columns, then one row per model
STOCK_COLUMNS = ("cell", "layer norm", "best/run", "val RMSE %", "test RMSE %", "vs zero",
                 "direction %", "s/epoch")
#: a model diverging on returns is far worse than predicting zero; a sane one is about as good
STOCK_SANE_RATIO = 1.5
#: the stock example's --quick epochs
QUICK_STOCK_EPOCHS = 3


def _env():
    """The environment of a script run: the fastcells of this tree, not an installed one.

    A script's own folder (examples/) is first on its path, the repository's root is not.
    """
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def _run(name, *args, cwd=None):
    proc = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py"), "--quick", *args],
                          capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd, env=_env())
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_examples_run_this_trees_fastcells():
    proc = subprocess.run([sys.executable, "-c", "import fastcells; print(fastcells.__file__)"],
                          capture_output=True, text=True, timeout=TIMEOUT, cwd=EXAMPLES,
                          env=_env())
    assert proc.returncode == 0, proc.stderr
    assert pathlib.Path(proc.stdout.strip()).parent == ROOT / "fastcells"


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """run(name, *args) -> (stdout, plot path or None): each quick run made once per module."""
    out_dir = tmp_path_factory.mktemp("examples")
    runs = {}

    def run(name, *args):
        package, plots = TRAINING_EXAMPLES[name]
        if package is not None:
            pytest.importorskip(package)
        if (name, args) not in runs:
            png = out_dir / f"{name}{len(runs)}.png" if plots else None
            runs[name, args] = (_run(name, *args, *(("--out", str(png)) if plots else ())), png)
        return runs[name, args]

    return run


def _number(pattern, text):
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in the output:\n{text}"
    return float(match.group(1))


def test_forecast_lstm_beats_naive_baseline(quick):
    out, _ = quick("forecast_lstm")
    rmse = _number(r"LSTM ([\d.]+)", out)
    naive = _number(r"naive last value ([\d.]+)", out)
    assert naive > 30            # the sunspot series' naive one-year-ahead error
    assert rmse < 0.8 * naive, out


def test_classify_digits_beats_chance(quick):
    out, _ = quick("classify_digits_bigru")
    assert _number(r"test accuracy: ([\d.]+)", out) > 0.8, out          # chance is 0.1


def test_gradient_flow_example(quick):
    out, png = quick("gradient_flow")
    for cell in ("RNN", "GRU", "LSTM"):
        # at PyTorch's initialisation every cell forgets within 64 steps
        assert _number(rf"{cell}\s+initial\s+reach\s+\d+\s+ratio ([\de.+-]+)", out) < 1e-6, out
    if importlib.util.find_spec("matplotlib") is None:
        assert "no plot" in out
    else:
        assert png.stat().st_size > 1000


def _layer_norm_cells():
    """The cells whose layer class takes layer_norm in this fastcells (the example's rule)."""
    import fastcells

    return {name for name in ("RNN", "GRU", "LSTM")
            if "layer_norm" in inspect.signature(getattr(fastcells, name)).parameters}


def _stock_table(out):
    """The stock example's table rows: {(cell, layer norm): {column: text}}."""
    lines = out.splitlines()
    header = [i for i, line in enumerate(lines) if line.split() == " ".join(STOCK_COLUMNS).split()]
    assert len(header) == 1, out
    rows = {}
    for line in lines[header[0] + 1:]:
        fields = line.split()
        if len(fields) != len(STOCK_COLUMNS) or fields[0] not in ("RNN", "GRU", "LSTM"):
            break
        rows[fields[0], fields[1]] = dict(zip(STOCK_COLUMNS, fields))
    return rows


def test_forecast_stock_table_plot_and_baselines(quick):
    out, png = quick("forecast_stock")
    ln_cells = _layer_norm_cells()
    rows = _stock_table(out)
    expected = {(c, "no") for c in ("RNN", "GRU", "LSTM")} | {(c, "yes") for c in ln_cells}
    assert set(rows) == expected, out
    assert ("no layer_norm: the normalized rows are skipped" in out) == (len(ln_cells) < 3)
    zero = _number(r"zero-return \(random walk\) RMSE ([\d.]+) %", out)
    up = _number(r"always up ([\d.]+) %", out)
    assert 0.3 < zero < 3 and 40 < up < 70, out      # daily S&P 500 returns: about 1 %
    for row in rows.values():
        numbers = {k: float(v) for k, v in row.items()
                   if k not in ("cell", "layer norm", "best/run")}
        assert all(np.isfinite(v) for v in numbers.values()), row
        # sane, not necessarily better than the random walk: returns are hard to predict
        assert numbers["test RMSE %"] < STOCK_SANE_RATIO * zero, row
        assert numbers["vs zero"] == pytest.approx(numbers["test RMSE %"] / zero, abs=2e-3)
        assert 0 <= numbers["direction %"] <= 100 and numbers["s/epoch"] > 0, row
        best, ran = map(int, row["best/run"].split("/"))
        assert 1 <= best <= ran == QUICK_STOCK_EPOCHS, row      # --quick stops no model early
    assert "close to unpredictable" in out and "not a trading claim" in out
    if importlib.util.find_spec("matplotlib") is None:
        assert "no plot" in out
    else:
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", data[:16]
        width, height = struct.unpack(">II", data[16:24])
        assert width > 500 and height > 500
        import matplotlib.image
        assert matplotlib.image.imread(str(png)).shape[:2] == (height, width)


def test_forecast_stock_progress_lines_every_epoch(quick):
    out, _ = quick("forecast_stock")
    epochs = {}
    for label, k, n, _, _ in PROGRESS.findall(out):
        epochs.setdefault(label, []).append((int(k), int(n)))
    labels = {c for c in ("RNN", "GRU", "LSTM")} | {c + "+LN" for c in _layer_norm_cells()}
    assert set(epochs) == labels, out
    for label, seen in epochs.items():
        assert seen == [(k, QUICK_STOCK_EPOCHS) for k in range(1, QUICK_STOCK_EPOCHS + 1)], \
            (label, seen)


def test_forecast_stock_is_reproducible_and_quiet(quick):
    loud, _ = quick("forecast_stock")
    quiet, _ = quick("forecast_stock", "--quiet")
    assert not PROGRESS.search(quiet), quiet

    def scores(out):
        # every table cell but the seconds, and the selected model's line
        return ({key: {k: v for k, v in row.items() if k != "s/epoch"}
                 for key, row in _stock_table(out).items()},
                re.findall(r"^selected by val RMSE: .*$", out, re.M))

    assert scores(quiet) == scores(loud)


@pytest.mark.parametrize("name", sorted(TRAINING_EXAMPLES))
def test_training_examples_print_progress(quick, name):
    out, _ = quick(name)
    lines = PROGRESS.findall(out)
    assert lines, f"{name} printed no progress lines:\n{out}"
    for _, k, n, loss, seconds in lines:
        assert 1 <= int(k) <= int(n)
        assert np.isfinite(float(loss)) and float(seconds) >= 0
    # the last progress line comes before the closing summary
    assert out.rstrip().splitlines()[-1] not in {m.group(0) for m in PROGRESS.finditer(out)}


def _scores(out):
    """The output without progress lines, seconds and the plot's path: what a seed fixes."""
    kept = [line for line in out.splitlines()
            if not PROGRESS.fullmatch(line) and not line.startswith("plot written to")]
    return [re.sub(r"[\d.]+ s\b", "_ s", line) for line in kept]


@pytest.mark.parametrize("name", sorted(set(TRAINING_EXAMPLES) - {"forecast_stock"}))
def test_training_examples_quiet_and_reproducible(quick, name):
    loud, _ = quick(name)
    quiet, _ = quick(name, "--quiet")
    assert not PROGRESS.search(quiet), quiet
    assert _scores(quiet) == _scores(loud)


def _load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    # registered while it runs, as an import would: dataclasses look their module up
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


@pytest.mark.parametrize("args, message", [
    (["--epochs", "0"], "--epochs: expected an integer >= 1, got '0'"),
    (["--hidden", "x"], "--hidden: expected an integer >= 1, got 'x'"),
    (["--window", "251"], "--window: expected at most 250 days, got 251"),
    (["--out", "no/such/folder/plot.png"], "--out: expected a path in an existing folder"),
])
def test_forecast_stock_refuses_bad_arguments_before_training(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _load("forecast_stock").main(["--quick", *args])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""


def test_examples_exit_cleanly_without_their_data_package(monkeypatch, capsys):
    """Optional dependencies stay optional: no statsmodels / sklearn / arch -> a message."""
    import builtins

    real_import = builtins.__import__

    def no_data_packages(name, *args, **kwargs):
        if name.split(".")[0] in ("statsmodels", "sklearn", "arch"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_data_packages)
    assert _load("forecast_lstm").main(["--quick"]) is None
    assert _load("classify_digits_bigru").main(["--quick"]) is None
    assert _load("forecast_stock").main(["--quick"]) is None
    out = capsys.readouterr().out
    assert out.count("not installed") == 3
    assert "pip install arch" in out


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
