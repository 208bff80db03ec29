"""Smoke test of the main job, `python -m bench`: output files and their schema, the per-row
progress lines, the closing verdict (parity PASS/FAIL per peer against stated tolerances, exit
status 1 on FAIL), the one line naming what was not measured, and result files that never
overwrite each other. No timing assertions: benchmarks are measurements, not tests."""
import json
import os
import re
import subprocess
import sys

import pytest

from bench import __main__ as bench_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROW_KEYS = {"workload", "shape", "dtype", "backend", "mode", "fwd_ms", "step_ms", "peak_mem_mb",
            "saved_mb", "vs_plain", "vs_plain_q20", "vs_plain_q80", "vs_reference",
            "roofline_pct", "max_rel_err", "tolerance", "status"}


@pytest.mark.slow
def test_bench_quick_writes_schema_verdict_and_parity(tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out),
                           "--workload", "mlp_narrow", "edsr_block", "--activations", "silu",
                           "--reps", "2"], cwd=ROOT, check=True, capture_output=True, text=True)
    result = json.loads(out.read_text())
    lines = proc.stdout.splitlines()
    # One line per measured row as it comes, led by its case's place in the run.
    # One line opens each case (with its shape), then one line per measured row as it comes,
    # each led by its case's place in the run.
    progress = [l for l in lines if re.match(r"\[\d+/\d+\] ", l)]
    per_case = 1 + len(result["rows"]) // 4
    assert [l.split()[0] for l in progress] == [f"[{i}/4]" for i in range(1, 5)
                                               for _ in range(per_case)]
    assert [l.split()[2] for l in progress[::per_case]] == [
        r["shape"] for r in result["rows"][::per_case - 1]]
    long = [l for l in lines if len(l) > 130 and not l.startswith(("not measured", "files"))]
    assert not long, long
    assert {"device", "versions", "processor", "date", "time", "run", "rows", "allocator",
            "not_measured", "verdict"} <= set(result)
    assert result["allocator"] == "system default" and result["run"] == "quick"
    assert result["verdict"] == "PASS"
    rows = result["rows"]
    assert {(r["workload"], r["mode"]) for r in rows} == {
        (w, m) for w in ("mlp_narrow", "edsr_block") for m in ("detach", "second-order")}
    for r in rows:
        assert ROW_KEYS <= set(r), sorted(ROW_KEYS - set(r))
        assert r["status"] == "ok" and r["step_ms"] > 0 and r["fwd_ms"] > 0
        # vs_plain: the median of per-round ratios, inside its own 20/80% quantiles; plain's
        # rounds over themselves are exactly 1.
        assert r["vs_plain_q20"] <= r["vs_plain"] <= r["vs_plain_q80"], r
        if r["backend"] == "plain":
            assert r["vs_plain"] == r["vs_plain_q20"] == r["vs_plain_q80"] == 1.0, r
        else:
            assert r["max_rel_err"] <= r["tolerance"] == 1e-5, r
    # What cannot run here is one line, not rows, and says why.
    assert "triton" not in {r["backend"] for r in rows}
    assert "needs a CUDA GPU" in result["not_measured"]["triton"]
    nm = [l for l in lines if l.startswith("not measured: ")]
    assert len(nm) == 1 and "triton — needs a CUDA GPU" in nm[0]
    # The verdict: one PASS line per peer with its tolerance, the headline table, the files.
    assert [l.split()[1] for l in lines if l.startswith("  PASS  ")] == ["composite", "cpp"]
    assert any(l.startswith("case ") and "plain ms" in l and "cpp" in l for l in lines)
    assert any("memory kept for backward, MB (× plain)" in l for l in lines)
    assert lines[-1].startswith("VERDICT: PASS")
    assert any(l.startswith("files: ") and str(tmp_path / "r.json") in l for l in lines)
    assert "VERDICT: PASS" in (tmp_path / "r.md").read_text()


def _row(**over):
    row = dict(workload="mlp_narrow", shape="NxDxH=8x4x4", dtype="float32", activation="relu",
               mode="detach", backend="cpp", compiled=False, step_ms=2.0, vs_plain=1.2,
               vs_plain_q20=1.1, vs_plain_q80=1.3, saved_mb=3.0, peak_mem_mb=None,
               max_rel_err=1e-6, tolerance=1e-5)
    row.update(over)
    return row


def _result(rows):
    plain = _row(backend="plain", step_ms=1.0, vs_plain=1.0, vs_plain_q20=1.0, vs_plain_q80=1.0,
                 saved_mb=2.0, max_rel_err=None, tolerance=None)
    return {"rows": [plain] + rows, "not_measured": {"triton": "needs a CUDA GPU"}}


def test_verdict_fails_a_peer_past_its_tolerance():
    lines, ok = bench_main.summary(_result([_row(), _row(compiled=True, max_rel_err=2e-5)]),
                                   ["a.json"])
    assert not ok
    assert any(l.startswith("  PASS  cpp ") and "≤ tolerance 1e-05" in l for l in lines)
    assert any(l.startswith("  FAIL  cpp compiled ") and "2.0e-05 > tolerance 1e-05" in l for l in lines)
    assert lines[-1].startswith("VERDICT: FAIL")
    nan_lines, nan_ok = bench_main.summary(_result([_row(max_rel_err=float("nan"))]), ["a"])
    assert not nan_ok


def test_headline_shows_ratio_spread_and_memory_times_plain():
    lines = bench_main.headline(_result([_row()])["rows"])
    table = lines[lines.index(next(l for l in lines if l.startswith("case"))) + 1]
    assert table.split()[:4] == ["mlp_narrow", "relu", "detach", "1.0"]
    assert "1.20 (1.10–1.30)" in table
    mem = lines[lines.index("memory kept for backward, MB (× plain)") + 2]
    assert "3.0 (1.50×)" in mem
    assert all("peak memory" not in l for l in lines)  # CPU: no peak memory column
    gpu = bench_main.headline(_result([_row(peak_mem_mb=6.0)])["rows"][:1]
                              + [_row(peak_mem_mb=6.0)])
    assert any(l.startswith("peak memory of a training step") for l in gpu)


def test_tolerances_follow_design_section_6():
    assert bench_main.parity_tol("mlp_narrow", "float32", False) == 1e-5
    assert bench_main.parity_tol("edsr_block", "float32", True) == 1e-5
    assert bench_main.parity_tol("edsr_model", "float32", False) == 2e-4
    assert bench_main.parity_tol("edsr_model_cl", "float32", True) == 1e-3
    assert bench_main.parity_tol("mlp_wide", "bfloat16", False) == 3e-3


def test_runs_never_overwrite_each_other(tmp_path, monkeypatch):
    """A default run, a --quick and a --full run of the same day get their own names in the
    git-ignored bench/runs/, and a second run in the same second gets a suffix."""
    monkeypatch.setattr(bench_main, "RUNS", str(tmp_path))
    base = {"device": "cpu-x86_64-2cores", "date": "2026-12-06", "time": "05:21:35"}
    stems = []
    for run in ("default", "quick", "full", "default"):
        stem = bench_main.output_stem(dict(base, run=run), None)
        open(stem + ".json", "w").close()
        stems.append(os.path.basename(stem))
    assert stems == ["cpu-x86_64-2cores-20261206-052135", "cpu-x86_64-2cores-20261206-052135-quick",
                     "cpu-x86_64-2cores-20261206-052135-full",
                     "cpu-x86_64-2cores-20261206-052135-2"]
    assert bench_main.output_stem(dict(base, run="quick"), "x/y.json") == "x/y"
    ignored = open(os.path.join(ROOT, ".gitignore")).read().split()
    assert "/bench/runs/" in ignored
    assert bench_main.RUNS != os.path.join(ROOT, "bench", "results")


def test_default_run_is_the_representative_subset():
    class A:
        quick = full = False
        workload = None
    assert bench_main.plan(A) == ("default", ["mlp_narrow", "edsr_block"])
    A.full = True
    assert bench_main.plan(A) == ("full", list(bench_main.WORKLOADS))


def test_console_row_shows_progress_and_shape(capsys):
    bench_main.print_row(_row(), "[3/16]")
    bench_main.print_row(_row(compiled=True))
    first, second = capsys.readouterr().out.splitlines()
    assert first.startswith("[3/16] mlp_narrow relu detach  cpp: step 2.00 ms")
    assert "× plain 1.20 (1.10–1.30)" in first and "err 1.0e-06" in first
    assert second.startswith("- ") and "cpp compiled:" in second


def test_repeated_exception_name_is_dropped():
    class Unsupported(Exception):
        pass
    assert bench_main._short(Unsupported("Unsupported: using autograd.grad\nmore")) == (
        "Unsupported: using autograd.grad")


@pytest.mark.slow
def test_bench_retain_memory_is_recorded(tmp_path):
    out = tmp_path / "r.json"
    subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out), "--retain-memory",
                    "--workload", "mlp_narrow", "--activations", "relu", "--mode", "detach",
                    "--backend", "cpp", "--reps", "1"], cwd=ROOT, check=True, capture_output=True,
                   text=True)
    result = json.loads(out.read_text())
    assert result["allocator"].startswith("glibc malloc, freed memory retained")
    assert "allocator: glibc malloc, freed memory retained" in (tmp_path / "r.md").read_text()
