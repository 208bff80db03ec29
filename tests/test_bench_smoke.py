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
            "vs_plain", "vs_reference", "roofline_pct", "max_rel_err", "status"}


@pytest.mark.slow
def test_bench_quick_writes_schema_and_parity(tmp_path):
    out = tmp_path / "r.json"
    subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out), "--workload",
                    "mlp_narrow", "edsr_block", "--activations", "silu", "--reps", "2"],
                   cwd=ROOT, check=True, capture_output=True, text=True)
    result = json.loads(out.read_text())
    assert {"device", "versions", "date", "rows"} <= set(result)
    assert (tmp_path / "r.md").is_file()
    rows = result["rows"]
    assert {(r["workload"], r["mode"]) for r in rows} == {
        (w, m) for w in ("mlp_narrow", "edsr_block") for m in ("detach", "second-order")}
    for r in rows:
        assert ROW_KEYS <= set(r), sorted(ROW_KEYS - set(r))
        assert r["backend"] in {"plain", "reference", "composite", "cpp", "triton"}
        if r["status"] == "ok":
            assert r["step_ms"] > 0 and r["fwd_ms"] > 0
            if r["backend"] != "plain":
                assert r["max_rel_err"] <= 1e-4, r
        else:
            assert r["status"].split(":")[0] in {"unavailable", "unsupported", "skipped"}, r
    names = {r["backend"] for r in rows}
    assert names == {"plain", "reference", "composite", "cpp", "triton"}
