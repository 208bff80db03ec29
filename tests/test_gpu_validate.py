"""The GPU validation command's machinery, checked on CPU: tools/gpu_validate.sh parses, and its
summary names a test whose pytest-xdist worker crashed (the failure mode that once killed a whole
GPU test run) and counts passes, failures and skips from JUnit XML."""
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import validate_summary  # noqa: E402


def test_script_parses():
    subprocess.run(["bash", "-n", os.path.join(ROOT, "tools", "gpu_validate.sh")], check=True)
    subprocess.run(["bash", "-n", os.path.join(ROOT, "tools", "build_cuda.sh")], check=True)


def test_summary_names_a_crashed_test(tmp_path):
    pytest.importorskip("xdist")
    out = tmp_path / "out"
    for d in ("logs", "junit", "bench"):
        (out / d).mkdir(parents=True)
    (tmp_path / "test_victim.py").write_text(textwrap.dedent("""
        import ctypes, pytest
        def test_fine(): pass
        def test_segfaults(): ctypes.string_at(0)
        @pytest.mark.skip(reason="demo")
        def test_skipped(): pass
        def test_fails(): assert False
        """))
    with open(out / "logs" / "test_victim.log", "w") as log:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-n", "2", "--max-worker-restart", "4",
             "-p", "no:cacheprovider", "-p", "no:benchmark", "--junitxml",
             str(out / "junit" / "test_victim.xml"), "test_victim.py"],
            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, timeout=120,
            env={**os.environ, "PYTHONFAULTHANDLER": "0"})
    (out / "steps.tsv").write_text(f"test_victim\t{proc.returncode}\t1\nbench\t0\t1\n")
    assert validate_summary.main(str(out)) == 1
    text = (out / "summary.txt").read_text()
    assert "test_victim.py::test_segfaults (worker crashed)" in text
    assert "1 passed, 2 failed, 1 skipped" in text
    assert "RESULT: failed: test_victim" in text
