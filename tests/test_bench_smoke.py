"""Smoke test of the main job, `python -m bench --quick`: output files and their schema, every
known backend present (with a status when unavailable), parity column within tolerance. No timing
assertions: benchmarks are measurements, not tests."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROW_KEYS = {"workload", "shape", "dtype", "backend", "mode", "fwd_ms", "step_ms", "peak_mem_mb",
            "vs_plain", "vs_plain_q20", "vs_plain_q80", "vs_reference", "roofline_pct",
            "max_rel_err", "status"}


@pytest.mark.slow
def test_bench_quick_writes_schema_and_parity(tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out),
                           "--workload", "mlp_narrow", "edsr_block", "--activations", "silu",
                           "--reps", "2"], cwd=ROOT, check=True, capture_output=True, text=True)
    result = json.loads(out.read_text())
    # The console table: every row led by its case's place in the run and its shape.
    table = [line.split(" | ") for line in proc.stdout.splitlines() if " | " in line]
    assert table[0][:3] == ["case", "shape", "workload"]
    assert [r[0] for r in table[1:]] == [f"[{i}/4]" for i in range(1, 5)
                                         for _ in range(len(result["rows"]) // 4)]
    assert [r[1] for r in table[1:]] == [r["shape"] for r in result["rows"]]
    assert {"device", "versions", "processor", "date", "rows", "allocator"} <= set(result)
    assert result["allocator"] == "system default"
    assert (tmp_path / "r.md").is_file()
    rows = result["rows"]
    assert {(r["workload"], r["mode"]) for r in rows} == {
        (w, m) for w in ("mlp_narrow", "edsr_block") for m in ("detach", "second-order")}
    for r in rows:
        assert ROW_KEYS <= set(r), sorted(ROW_KEYS - set(r))
        assert r["backend"] in {"plain", "reference", "composite", "cpp", "triton"}
        if r["status"] == "ok":
            assert r["step_ms"] > 0 and r["fwd_ms"] > 0
            # vs_plain: the median of per-round ratios, inside its own 20/80% quantiles; plain's
            # rounds over themselves are exactly 1.
            assert r["vs_plain_q20"] <= r["vs_plain"] <= r["vs_plain_q80"], r
            if r["backend"] == "plain":
                assert r["vs_plain"] == r["vs_plain_q20"] == r["vs_plain_q80"] == 1.0, r
            else:
                assert r["max_rel_err"] <= 1e-4, r
        else:
            assert r["status"].split(":")[0] in {"unavailable", "unsupported", "skipped"}, r
    names = {r["backend"] for r in rows}
    assert names == {"plain", "reference", "composite", "cpp", "triton"}


def test_console_row_shows_progress_and_shape(capsys, monkeypatch):
    from bench import __main__ as bench_main
    monkeypatch.setattr(bench_main.print_row, "header_done", False, raising=False)
    row = dict.fromkeys(bench_main.HEADER, None)
    row.update(workload="mlp_narrow", shape="NxDxH=8x4x4", backend="cpp", compiled=False,
               step_ms=1.5, status="ok")
    bench_main.print_row(row, "[3/16]")
    bench_main.print_row(row)
    header, first, second = capsys.readouterr().out.splitlines()
    assert header.split(" | ")[:3] == ["case", "shape", "workload"]
    assert first.split(" | ")[:3] == ["[3/16]", "NxDxH=8x4x4", "mlp_narrow"]
    assert second.split(" | ")[0] == "-"
    assert len(first.split(" | ")) == len(header.split(" | "))


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
