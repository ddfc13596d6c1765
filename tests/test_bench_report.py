"""Smoke test of the benchmark report (``python -m fastcells.bench``) on a tiny grid.

It checks the harness, not speed: every row is present, fastcells is timed
and matches the float64 reference, every peer that is installed agrees with
fastcells (so the torch and ONNX weight layouts are right) and every ratio is
positive.  No timing is asserted.
"""
import json

import pytest

from fastcells import bench

#: tiny shapes: a batch-1 and a batched one, I != H
SHAPES = ("5,1,3,4", "4,3,6,5")


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
        if r["mode"] == "fwdbwd":
            assert not {"ort", "prepared", "fp16w"} & set(r["times"]), where
        else:       # timed only when it agrees with fastcells (bench._agree)
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


def test_plot_written(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "ratios.png"
    status, _ = _run(tmp_path, "--systems", "fastcells,reference", "--cells", "rnn",
                     "--plot", str(png))
    assert status == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv", [["--cells", "lstm,foo"], ["--systems", ""],
                                  ["--shape", "1,2,3"], ["--shape", "0,1,1,1"],
                                  ["--repeat", "0"], ["--quick", "--full"]])
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
