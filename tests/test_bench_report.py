"""Smoke test of the benchmark report (``python -m fastcells.bench``) on a tiny grid.

It checks the harness, not speed: every row is present, fastcells is timed
and matches the float64 reference, every peer that is installed agrees with
fastcells (so the torch and ONNX weight layouts are right) and every ratio is
positive.  No timing is asserted.  The output's form is checked too: the
default table fits :data:`fastcells.bench.MAX_WIDTH` columns, the Markdown
report carries the machine and the table, and a run without the repository's
``bench/`` folder (an installed wheel) says what is missing.
"""
import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastcells import bench

#: tiny shapes: a batch-1 and a batched one, I != H
SHAPES = ("5,1,3,4", "4,3,6,5")
#: the repository's bench/ folder, beside this tests/ folder (also when the package
#: under test is an installed wheel)
REPO_BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(autouse=True)
def _repo_bench(monkeypatch):
    """The peers and the plot come from this checkout's bench/ folder."""
    monkeypatch.setattr(bench, "BENCH_DIR", REPO_BENCH)


def _run(tmp_path, *extra):
    out = tmp_path / "report.json"
    argv = ["--quick", "--repeat", "2", "--json", str(out)]
    for s in SHAPES:
        argv += ["--shape", s]
    return bench.main(argv + list(extra)), out


def test_quick_report_json(tmp_path, capsys):
    status, out = _run(tmp_path)
    assert status == 0
    printed = capsys.readouterr().out
    assert "fastcells" in printed and "check passed" in printed
    data = json.loads(out.read_text())
    assert data["grid"] == "quick"
    assert data["machine"]["isa"] in data["machine"]["isa_available"]
    rows = data["rows"]
    keys = {(r["cell"], tuple(r["shape"]), r["mode"]) for r in rows}
    assert keys == {(c, tuple(map(int, s.split(","))), m)
                    for c in bench.CELLS for s in SHAPES for m in bench.MODES}
    for r in rows:
        where = f"{r['cell']} {r['shape']} {r['mode']}"
        assert {"fastcells", "reference", "floor"} <= set(r["times"]), where
        assert r["rel_err"] <= bench.CHECK_TOL, where
        assert all("disagrees" not in why for why in r["skipped"].values()), (where, r["skipped"])
        assert all(t["median_ms"] > 0 and t["repeats"] == 2 for t in r["times"].values()), where
        assert r["ratios"] and all(v > 0 for v in r["ratios"].values()), where
        assert r["fastcells_over_floor"] > 0 and r["gflops"] > 0, where
        peers = {s: r["times"][s]["median_ms"] for s in bench.PEERS if s in r["times"]}
        assert r["best_peer"] == (min(peers, key=peers.get) if peers else None), where
        if r["mode"] == "fwdbwd":
            assert not {"ort", "prepared", "fp16w"} & set(r["times"]), where
        else:       # timed only when it agrees with fastcells (bench.agree)
            assert "prepared" in r["times"], where
            # float16 weights: timed at batch 1 only, where they hold their contract
            assert ("fp16w" in r["times"]) == (r["shape"][1] == 1), where
            if r["shape"][1] == 1:
                assert 1e-7 < r["fp16w_rel_err"] < 1e-2, where    # rounded, and not garbage


def test_check_fails_on_error_above_tolerance(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "CHECK_TOL", 0.0)  # float32 never equals float64 exactly
    status, _ = _run(tmp_path, "--systems", "fastcells", "--cells", "gru")
    assert status == 1


@pytest.mark.parametrize("system", bench.OWN_SYSTEMS)
def test_check_fails_when_a_prepared_system_breaks_its_contract(tmp_path, monkeypatch, system):
    def broken(p, mode):
        raise bench.Unavailable(f"{system} disagrees with fastcells: relative error 1")
    monkeypatch.setitem(bench.RUNNERS, system, broken)
    status, _ = _run(tmp_path, "--systems", f"fastcells,{system}", "--cells", "gru")
    assert status == 1


def test_plot_written(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "ratios.png"
    status, _ = _run(tmp_path, "--systems", "fastcells,prepared,reference", "--cells", "rnn",
                     "--plot", str(png))
    assert status == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {png}" in capsys.readouterr().out


def test_plot_ticks_are_labelled_near_one_and_not_crowded():
    plot = bench.load_bench(REPO_BENCH).plot
    ticks = plot._ticks(0.6, 3.0)
    assert {0.75, 1.0, 1.25, 1.5, 2.0} <= set(ticks)     # 1.1x and 1.9x fall between labels
    wide = plot._ticks(0.5, 200.0)
    assert 1.0 in wide and len(wide) <= plot.MOST_TICKS


@pytest.mark.parametrize("argv", [["--cells", "lstm,foo"], ["--systems", ""],
                                  ["--shape", "1,2,3"], ["--shape", "0,1,1,1"],
                                  ["--repeat", "0"], ["--quick", "--full"],
                                  ["--bench-dir", "/nonexistent/bench"],
                                  ["--varlen", "4,2"], ["--scaling", "--plot", "x.png"],
                                  ["--scaling", "--wide"], ["--scaling", "--systems", "floor"]])
def test_bad_arguments_exit_with_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_systems_are_timed_in_interleaved_rounds():
    """A slow spell of the machine must fall on every system of a row alike: the
    systems take turns, round by round, and each gets exactly the calls asked for."""
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    out = bench.measure_rounds(fns, target=1.0, repeat=4, rounds=3)
    assert calls[:3] == ["a", "b", "c"]                          # one warm-up each
    assert calls[3:] == ["a", "a", "b", "b", "c", "c", "a", "b", "c", "a", "b", "c"]
    assert {name: t["repeats"] for name, t in out.items()} == {"a": 4, "b": 4, "c": 4}


# ----------------------------------------------------------------------------
# the output's form


def _synthetic_row(cell, shape, mode, ms):
    """A row as run_row makes it, every system timed at ``ms`` times a factor."""
    times = {s: {"median_ms": ms * (k + 1), "min_ms": ms, "repeats": 3}
             for k, s in enumerate(bench.SYSTEMS)}
    fc = times["fastcells"]["median_ms"]
    return {"cell": cell, "shape": list(shape), "mode": mode, "times": times, "skipped": {},
            "ratios": {s: t["median_ms"] / fc for s, t in times.items()
                       if s not in ("fastcells", "floor")},
            "best_peer": "torch", "best_peer_over_prepared": 1.5, "best_peer_over_fp16w": 1.5,
            "peer_over_prepared": {"torch": 1.5}, "fastcells_over_floor": 0.1, "gflops": 12.5,
            "abs_err": 1.5e-6, "rel_err": 2.5e-7, "fp16w_rel_err": 3.5e-4}


#: the widest values a row can hold: the largest shape, every time in four-digit seconds
WIDEST_ROWS = [_synthetic_row(c, (1000, 1024, 10000, 10000), m, 9999.999)
               for c in bench.CELLS for m in bench.MODES]
WIDEST_ROWS += [dict(_synthetic_row(bench.VARLEN_CELL, (1000, 1024, 10000, 10000), m, 9999.999),
                     varlen=True) for m in bench.MODES]


def test_default_table_fits_the_width():
    table = bench.format_table(WIDEST_ROWS)
    lines = table.splitlines()
    assert len(lines) == 2 + len(WIDEST_ROWS)
    assert max(len(line) for line in lines) <= bench.MAX_WIDTH, table
    for head in ("fastcells ms", "peer ms", "peer", "ref ms", "peer/fc", "ref/fc"):
        assert head in lines[0]
    # the legend is one line, fits too, and explains the units and the ratios
    assert "\n" not in bench.LEGEND and len(bench.LEGEND) <= bench.MAX_WIDTH
    assert len(bench.VARLEN_LEGEND) <= bench.MAX_WIDTH
    assert sum(bench.VARLEN_MARK in line for line in lines) == len(bench.MODES)
    for word in ("ms", "peer", "ref", "x/fc"):
        assert word in bench.LEGEND


def test_wide_table_has_every_column():
    head = bench.format_table(WIDEST_ROWS[:1], bench.WIDE).splitlines()[0]
    for column in bench.WIDE:
        assert column.head in head
    assert len(head) > bench.MAX_WIDTH        # which is why it is not the default


def test_default_output_fits_the_width(tmp_path, capsys):
    status, _ = _run(tmp_path, "--cells", "lstm")
    assert status == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert all(len(line) <= bench.MAX_WIDTH for line in lines), max(lines, key=len)
    assert bench.LEGEND in lines
    assert any(line.startswith("threads: every system at 1 thread") for line in lines)
    table = lines[lines.index(bench.LEGEND) + 1:]
    assert table[0].split()[:2] == ["cell", "shape"]
    assert len([line for line in table if line.startswith("lstm ")]) == 2 * len(SHAPES)


def test_wide_flag_prints_every_column(tmp_path, capsys):
    status, _ = _run(tmp_path, "--cells", "rnn", "--wide")
    assert status == 0
    printed = capsys.readouterr().out
    head = next(line for line in printed.splitlines() if line.startswith("cell "))
    assert all(c.head in head for c in bench.WIDE)
    assert bench.LEGEND not in printed


def test_markdown_report(tmp_path, capsys):
    md = tmp_path / "RESULTS.md"
    status, _ = _run(tmp_path, "--cells", "gru", "--markdown", str(md))
    assert status == 0
    assert f"wrote {md}" in capsys.readouterr().out
    text = md.read_text()
    info = bench.machine_info()
    assert text.startswith("# fastcells benchmark results")
    for fact in (f"fastcells {info['fastcells']}", info["cpu"], f"ISA: {info['isa']}",
                 "threads: every system at 1 thread", "python -m fastcells.bench",
                 " UTC "):
        assert fact in text, fact
    if info["commit"]:
        assert f"commit {info['commit']}" in text
    lines = text.splitlines()
    for table_head in ("| cell | shape (T,B,I,H) | mode | fastcells ms |", "| cell | shape"):
        assert any(line.startswith(table_head) for line in lines)
    rows = [line for line in lines if line.startswith("| gru |")]
    assert len(rows) == 2 * 2 * len(SHAPES)         # both tables
    widths = {len(line.split("|")) for line in lines if line.startswith("| gru |")}
    assert len(widths) == 2                          # the summary's columns and every column
    for column in bench.COMPACT[3:]:
        assert f"`{column.head}`: {column.meaning}" in text


def test_missing_peers_line_names_the_reason():
    row = _synthetic_row("rnn", (2, 1, 2, 2), "fwd", 1.0)
    del row["times"]["ort"]
    row["skipped"]["ort"] = "onnxruntime not installed"
    line = bench.missing_peers([row], bench.SYSTEMS)
    assert line == "peers missing: ort (onnxruntime not installed)"
    del row["times"]["torch"]
    row["skipped"]["torch"] = "torch not installed"
    assert bench.missing_peers([row], bench.SYSTEMS) == (
        "peers missing: torch (torch not installed); ort (onnxruntime not installed)")
    assert bench.missing_peers([_synthetic_row("rnn", (2, 1, 2, 2), "fwd", 1.0)],
                               bench.SYSTEMS) == "peers: torch, ort (all installed)"


def test_without_the_bench_folder_the_report_runs_and_says_what_is_missing(
        tmp_path, monkeypatch, capsys):
    """An installed wheel without the clone: no peers and no plot, the rest runs."""
    monkeypatch.setattr(bench, "BENCH_DIR", tmp_path / "no-bench")
    png = tmp_path / "plot.png"
    status, out = _run(tmp_path, "--cells", "rnn", "--plot", str(png))
    assert status == 0
    printed = capsys.readouterr().out
    assert f"peers missing: torch, ort ({bench.NO_BENCH_DIR})" in printed.splitlines()
    assert f"not writing {png}" in printed and not png.exists()
    assert "check passed" in printed
    rows = json.loads(out.read_text())["rows"]
    assert all(not set(bench.PEERS) & set(r["times"]) for r in rows)


def test_bench_dir_option_finds_the_peers(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "BENCH_DIR", tmp_path / "no-bench")
    status, out = _run(tmp_path, "--cells", "rnn", "--systems", "fastcells,torch,ort",
                       "--bench-dir", str(REPO_BENCH))
    assert status == 0
    rows = json.loads(out.read_text())["rows"]
    assert all(bench.NO_BENCH_DIR not in r["skipped"].values() for r in rows)


def test_help_explains_every_option_without_history(capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "issue" not in text.lower()
    for option in ("--quick", "--full", "--wide", "--cells", "--shape", "--modes", "--systems",
                   "--repeat", "--json", "--markdown", "--plot", "--bench-dir", "--check",
                   "--threads", "--scaling", "--varlen"):
        assert option in text, option
    for system in bench.SYSTEMS:
        assert f"\n  {system} " in text, system
    assert "bench/" in text and "wheel" in text     # what runs without the clone


def test_command_line_runs_the_peers(tmp_path):
    """``python -m fastcells.bench`` (re-executed with one BLAS thread) from the repository."""
    out = tmp_path / "cli.json"
    proc = subprocess.run(
        [sys.executable, "-m", "fastcells.bench", "--quick", "--cells", "rnn", "--modes", "fwd",
         "--shape", SHAPES[0], "--repeat", "2", "--systems", "fastcells,reference,torch,ort",
         "--json", str(out), "--bench-dir", str(REPO_BENCH)],
        check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "check passed" in proc.stdout
    row, = json.loads(out.read_text())["rows"]
    assert all("disagrees" not in why for why in row["skipped"].values()), row["skipped"]
    assert bench.NO_BENCH_DIR not in row["skipped"].values()


# ----------------------------------------------------------------------------
# threads: --threads N, --threads default, --scaling


@pytest.mark.parametrize("text, want", [("1", 1), ("2", 2), (" 16 ", 16), ("default", "default"),
                                        ("DEFAULT", "default")])
def test_threads_argument(text, want):
    assert bench._parse_args(["--threads", text]).threads == want


@pytest.mark.parametrize("text", ["0", "-1", "1.5", "two", "", "all", "true"])
def test_bad_threads_argument_names_the_option(text, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--threads", text])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--threads" in err and repr(text) in err and "positive integer" in err


def test_scaling_refuses_threads_default(capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--scaling", "--threads", "default"])
    assert exc.value.code == 2
    assert "--threads" in capsys.readouterr().err


def test_thread_environment_before_blas_loads():
    """What the re-executed program's environment holds, per --threads."""
    every = bench.THREAD_VARS
    assert bench.thread_environment([]) == dict.fromkeys(every, "1")
    assert bench.thread_environment(["--threads", "3"]) == dict.fromkeys(every, "3")
    # no settings at all: BLAS, OpenMP and fastcells pick their own
    assert bench.thread_environment(["--threads", "default"]) == dict.fromkeys(
        (*every, bench.FASTCELLS_THREAD_VAR))
    most = str(bench._threads.available_cores())
    assert bench.thread_environment(["--scaling"]) == dict.fromkeys(every, most)
    assert bench.thread_environment(["--scaling", "--threads", "8"]) == dict.fromkeys(every, "8")


@pytest.mark.parametrize("most, counts", [(1, (1,)), (2, (1, 2)), (3, (1, 2, 3)),
                                          (6, (1, 2, 4, 6)), (8, (1, 2, 4, 8)),
                                          (64, (1, 2, 4, 8, 16, 32, 64))])
def test_scaling_counts(most, counts):
    assert bench.scaling_counts(most) == counts


def _threads_line(printed):
    return next(line for line in printed.splitlines() if line.startswith("threads: "))


def test_threads_default_says_what_each_system_got_and_restores_fastcells(tmp_path, capsys):
    before = bench._threads.thread_setting()
    status, out = _run(tmp_path, "--threads", "default", "--cells", "rnn", "--modes", "fwd",
                       "--systems", "fastcells,reference,torch,ort")
    assert status == 0
    assert bench._threads.thread_setting() == before
    line = _threads_line(capsys.readouterr().out)
    assert line.startswith("threads: each system at its own default (no settings): fastcells ")
    data = json.loads(out.read_text())
    assert data["machine"]["threads"]["setting"] == "default"
    assert "fastcells" in data["machine"]["threads"]["systems"]
    assert all(r["threads"] == "default" for r in data["rows"])


def test_threads_n_in_process_restores_fastcells(tmp_path, capsys):
    before = bench._threads.thread_setting()
    status, out = _run(tmp_path, "--threads", "3", "--cells", "gru", "--systems",
                       "fastcells,prepared")
    assert status == 0
    assert bench._threads.thread_setting() == before
    assert _threads_line(capsys.readouterr().out).startswith("threads: every system at 3 threads")
    assert all(r["threads"] == 3 for r in json.loads(out.read_text())["rows"])


def test_threads_info_titles_and_blas_warning(monkeypatch):
    assert bench.threads_info(1)["title"] == "every system at 1 thread"
    assert bench.threads_info(2)["title"] == "every system at 2 threads"
    plot = bench.load_bench(REPO_BENCH).plot
    assert plot.threads_title({"threads": bench.threads_info(4)}) == "every system at 4 threads"
    assert plot.threads_title({}) == "every system at 1 thread"      # an older JSON's info
    # a BLAS that does not run what was asked for is named in a warning
    monkeypatch.setattr(bench, "_blas_pools",
                        lambda: [{"internal_api": "openblas", "num_threads": 2}])
    info = bench.threads_info(4)
    assert info["warnings"] == ["warning: openblas runs 2 threads, not the 4 asked for"]
    assert bench.threads_info(2)["warnings"] == []


def _cli(*argv):
    return subprocess.run([sys.executable, "-m", "fastcells.bench", *argv,
                           "--bench-dir", str(REPO_BENCH)],
                          check=False, capture_output=True, text=True, timeout=300)


def test_command_line_at_two_threads(tmp_path):
    """``--threads 2`` re-executes with BLAS at 2 threads; the header says 2 threads."""
    out = tmp_path / "two.json"
    proc = _cli("--quick", "--threads", "2", "--cells", "lstm", "--shape", SHAPES[1],
                "--varlen", SHAPES[1], "--repeat", "2", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "check passed" in proc.stdout
    assert _threads_line(proc.stdout).startswith("threads: every system at 2 threads")
    assert "OMP_NUM_THREADS=2" in proc.stdout and "OPENBLAS_NUM_THREADS=2" in proc.stdout
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 4 and {r["varlen"] for r in rows} == {False, True}
    for r in rows:
        assert r["threads"] == 2 and r["rel_err"] <= bench.CHECK_TOL
        assert all("disagrees" not in why for why in r["skipped"].values()), r["skipped"]


def test_command_line_scaling_quick(tmp_path):
    md = tmp_path / "SCALING.md"
    proc = _cli("--scaling", "--quick", "--modes", "fwd", "--repeat", "2", "--markdown", str(md))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert all(len(line) <= bench.MAX_WIDTH for line in lines), max(lines, key=len)
    assert "check passed" in proc.stdout
    assert _threads_line(proc.stdout).startswith("threads: fastcells and each peer at 1")
    counts = bench.scaling_counts(bench._threads.available_cores())
    head = lines.index(bench.SCALING_LEGEND) + 1
    assert lines[head].split()[:2] == ["cell", "shape"] and "fc x" in lines[head]
    (cell, shape), = bench.SCALING_GRIDS["quick"]
    body = [line.split() for line in lines[head + 2:head + 2 + len(counts)]]
    assert [(b[0], b[1], b[2], int(b[3])) for b in body] == [
        (cell, str(shape), "fwd", n) for n in counts]
    assert all(b[5] == "1.00" for b in body if b[3] == "1")     # fastcells over its own 1
    text = md.read_text()
    assert "## Scaling" in text and "threads: fastcells and each peer at 1" in text
    assert f"| {cell} | {shape} | fwd | 1 |" in text


def _scaling_row(shape, threads, ms):
    times = {s: {"median_ms": ms, "min_ms": ms, "repeats": 3} for s in bench.SCALING_SYSTEMS}
    return {"cell": "lstm", "shape": list(shape), "mode": "fwdbwd", "threads": threads,
            "times": times, "skipped": {}, "speedup": dict.fromkeys(bench.SCALING_SYSTEMS, 99.99)}


def test_scaling_table_fits_the_width():
    rows = [_scaling_row((1000, 1024, 10000, 10000), n, 99999.9) for n in (1, 64, 512)]
    lines = bench.format_table(rows, bench.SCALING).splitlines()
    assert max(len(line) for line in lines) <= bench.MAX_WIDTH, "\n".join(lines)
    assert len(bench.SCALING_LEGEND) <= bench.MAX_WIDTH


# ----------------------------------------------------------------------------
# the variable-length row


def test_varlen_problem_lengths():
    shape = bench.Shape(7, 50, 3, 4)
    p = bench.make_problem("lstm", shape, varlen=True)
    fixed = bench.make_problem("lstm", shape)
    assert p.lengths.shape == (50,)
    assert p.lengths.min() >= 4 and p.lengths.max() <= 7      # [ceil(T/2), T]
    assert len(set(p.lengths.tolist())) > 1                    # spread, not constant
    assert np.array_equal(p.lengths, bench.make_problem("lstm", shape, varlen=True).lengths)
    assert np.array_equal(p.x, fixed.x) and fixed.lengths is None
    assert p.valid().shape == (7, 50, 1) and p.valid().sum() == p.lengths.sum()


def test_peers_agree_on_valid_steps_only():
    p = bench.make_problem("lstm", bench.Shape(6, 3, 4, 5), varlen=True)
    y = bench.outputs(bench._fc, p, "fwd")["y"].copy()
    padded = ~p.valid()[:, :, 0]
    assert padded.any()
    y[padded] = 7.0                          # what a peer leaves past a sequence's end
    bench.agree("peer", y, p)
    y[0, 0, 0] += 1.0                        # a valid step wrong
    with pytest.raises(bench.Unavailable, match="disagrees"):
        bench.agree("peer", y, p)


def test_varlen_row_is_checked_and_every_peer_agrees(tmp_path, capsys):
    status, out = _run(tmp_path, "--cells", "lstm", "--varlen", "6,3,4,5")
    assert status == 0
    printed = capsys.readouterr().out
    assert bench.VARLEN_LEGEND in printed and "(<=6,3,4,5)" in printed
    rows = [r for r in json.loads(out.read_text())["rows"] if r["varlen"]]
    assert [r["mode"] for r in rows] == list(bench.MODES)
    for r in rows:
        assert 3 <= min(r["lengths"]) and max(r["lengths"]) <= 6
        assert r["rel_err"] <= bench.CHECK_TOL
        assert all("disagrees" not in why for why in r["skipped"].values()), r["skipped"]
        assert {"fastcells", "reference", "floor"} <= set(r["times"])
    # a peer that is installed is timed on the variable-length row
    for peer, module, mode in (("torch", "torch", "fwdbwd"), ("ort", "onnxruntime", "fwd")):
        if importlib.util.find_spec(module) is not None:
            assert any(peer in r["times"] for r in rows if r["mode"] == mode), peer


def test_varlen_check_fails_on_wrong_lengths_handling(tmp_path, monkeypatch):
    """The check compares fastcells with the reference at the same lengths: a fastcells
    that ignored them would fail it."""
    real = bench.outputs

    def ignoring_lengths(module, p, mode, dtype=np.float32):
        if module is bench._fc and p.lengths is not None:
            p = dataclasses.replace(p, lengths=None, _expected={})
        return real(module, p, mode, dtype)
    monkeypatch.setattr(bench, "outputs", ignoring_lengths)
    status, _ = _run(tmp_path, "--cells", "lstm", "--systems", "fastcells", "--modes", "fwd",
                     "--varlen", "6,3,4,5")
    assert status == 1


def test_layer_norm_row_is_checked_costed_and_the_torch_peer_agrees(tmp_path, capsys):
    status, out = _run(tmp_path, "--cells", "lstm", "--layer-norm", "6,3,4,5")
    assert status == 0
    printed = capsys.readouterr().out
    assert "lstm+ln" in printed and "ln cost:" in printed
    rows = [r for r in json.loads(out.read_text())["rows"] if r["layer_norm"]]
    assert [r["mode"] for r in rows] == list(bench.MODES)
    for r in rows:
        assert r["rel_err"] <= bench.CHECK_TOL
        assert all("disagrees" not in why for why in r["skipped"].values()), r["skipped"]
        # the plain cell on the same problem was timed in the same rounds
        assert bench.PLAIN in r["times"] and r["ln_over_plain"] > 0
        assert bench.PLAIN not in r["ratios"]
        assert "has no layer-normalized" in r["skipped"].get("ort", "has no layer-normalized")
    if importlib.util.find_spec("torch") is not None:
        assert all("torch" in r["times"] for r in rows)
    # the plain rows of the grid carry no layer-norm figures
    plain = [r for r in json.loads(out.read_text())["rows"] if not r["layer_norm"]]
    assert plain and all(r["ln_over_plain"] is None for r in plain)


def test_gemm_flops_count_every_product():
    """Forward: the input projection and T recurrent products (and h = W_hr m); backward
    does each of them twice more (dx and dW_ih; dh and dW_hh; dm and dW_hr)."""
    T, B, I, H, P = 5, 3, 4, 8, 2
    inp, rec = 2 * T * B * I * 4 * H, 2 * T * B * H * 4 * H
    assert bench.gemm_flops("lstm", bench.Shape(T, B, I, H), "fwd") == inp + rec
    assert bench.gemm_flops("lstm", bench.Shape(T, B, I, H), "fwdbwd") == 3 * (inp + rec)
    rec_p, out = 2 * T * B * P * 4 * H, 2 * T * B * H * P
    assert bench.gemm_flops("lstm", bench.Shape(T, B, I, H), "fwd", P) == inp + rec_p + out
    assert bench.gemm_flops("lstm", bench.Shape(T, B, I, H), "fwdbwd", P) == 3 * (
        inp + rec_p + out)


@pytest.mark.parametrize("option, dropped", [
    ("--layer-norm", lambda p: p.plain() if p.layer_norm is not None else p),
    ("--proj", lambda p: dataclasses.replace(p, W_hr=p.W_hr[:, ::-1].copy(), _expected={})
     if p.W_hr is not None else p)])
def test_check_fails_when_fastcells_drops_an_option(tmp_path, monkeypatch, option, dropped):
    """The check compares fastcells' normalized (projected) cell with the normalized
    (projected) reference: a fastcells that dropped ``layer_norm`` (or ran another
    projection than ``W_hr``) would fail it."""
    real = bench.outputs

    def dropping(module, p, mode, dtype=np.float32):
        return real(module, dropped(p) if module is bench._fc else p, mode, dtype)
    monkeypatch.setattr(bench, "outputs", dropping)
    status, _ = _run(tmp_path, "--cells", "lstm", "--systems", "fastcells", "--modes", "fwd",
                     option, "6,3,4,8")
    assert status == 1


def test_layer_norm_problem_is_seeded_and_near_the_initialisation():
    shape = bench.Shape(4, 2, 3, 5)
    p = bench.make_problem("lstm", shape, layer_norm=True)
    again = bench.make_problem("lstm", shape, layer_norm=True)
    assert [a.shape for a in p.layer_norm] == [(20,)] * 4 + [(5,)] * 2
    for a, b in zip(p.layer_norm, again.layer_norm):
        np.testing.assert_array_equal(a, b)
    gains, biases = p.layer_norm[0::2], p.layer_norm[1::2]
    assert all(abs(float(g.mean()) - 1) < 0.2 for g in gains)
    assert all(abs(float(b.mean())) < 0.2 and b.std() > 0 for b in biases)
    # the other arrays are those of the plain problem
    np.testing.assert_array_equal(p.x, bench.make_problem("lstm", shape).x)
    assert p.plain().layer_norm is None and "layer_norm" in p.options()


def test_projection_row_is_checked_and_the_torch_peer_agrees(tmp_path, capsys):
    status, out = _run(tmp_path, "--cells", "lstm", "--proj", "6,3,4,8")
    assert status == 0
    assert "lstm+p2" in capsys.readouterr().out       # P = H / PROJ_RATIO
    rows = [r for r in json.loads(out.read_text())["rows"] if r["proj_size"]]
    assert [r["mode"] for r in rows] == list(bench.MODES)
    for r in rows:
        assert r["proj_size"] == 8 // bench.PROJ_RATIO and r["rel_err"] <= bench.CHECK_TOL
        assert all("disagrees" not in why for why in r["skipped"].values()), r["skipped"]
        assert "with projection" in r["skipped"].get("ort", "with projection")
        # the floor's products and the flop count include the projection's
        assert r["gflop"] == bench.gemm_flops("lstm", bench.Shape(6, 3, 4, 8), r["mode"], 2) / 1e9
        assert r["gflop"] > bench.gemm_flops("lstm", bench.Shape(6, 3, 4, 2), r["mode"]) / 1e9

    if importlib.util.find_spec("torch") is not None:
        assert all("torch" in r["times"] for r in rows)
    assert any("prepared" in r["times"] for r in rows)


def test_projection_problem_is_seeded_and_shaped_as_pytorch_wants():
    shape = bench.Shape(4, 2, 3, 8)
    p, again = (bench.make_problem("lstm", shape, proj_size=3) for _ in range(2))
    np.testing.assert_array_equal(p.W_hr, again.W_hr)
    assert p.W_hr.shape == (3, 8) and p.W_hh.shape == (32, 3) and p.h0.shape == (2, 3)
    assert p.c0.shape == (2, 8) and p.dy.shape == (4, 2, 3) and p.proj_size == 3
    assert p.W_hh.flags.c_contiguous and "W_hr" in p.options()
    assert float(np.abs(p.W_hr).max()) <= 1 / np.sqrt(8)
    for bad in (0.5, 8, 9):
        with pytest.raises(ValueError, match="proj_size"):
            bench.make_problem("lstm", shape, proj_size=bad)
    with pytest.raises(ValueError, match="proj_size"):
        bench.make_problem("gru", shape, proj_size=3)


@pytest.mark.parametrize("cell", bench.CELLS)
def test_onnx_model_with_sequence_lens_matches_fastcells(cell):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    onnx_model = bench.load_bench(REPO_BENCH).onnx_model
    p = bench.make_problem(cell, bench.Shape(7, 5, 3, 4), varlen=True)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(onnx_model.model_bytes(p), opts,
                                providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()][:2] == ["X", onnx_model.SEQUENCE_LENS]
    Y, Y_h = sess.run(["Y", "Y_h"], onnx_model.feed(p))
    want = bench.outputs(bench._fc, p, "fwd")
    valid = p.valid()
    np.testing.assert_allclose(np.where(valid, Y[:, 0], 0), want["y"], atol=1e-5)
    np.testing.assert_allclose(Y_h[0], want["h"], atol=1e-5)   # the state at each own end
