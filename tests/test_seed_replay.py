"""The suite's random seed can be replayed: it is printed with the exact replay command at the end
of a run even under `-q` (which drops the header), and pytest-xdist workers use the controller's
seed, not one each. Runs this conftest on a tiny test file in a subprocess."""
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUMMARY = re.compile(r"gradres_fused test seed: (\d+); replay: (GRADRES_TEST_SEED=(\d+) "
                     r"python -m pytest .*)")


def run_suite(tmp_path, *args, **env_extra):
    """pytest `args` (environment plus `env_extra`) on a copy of this conftest and a file whose
    tests record the seed they saw, one record per test and xdist worker; returns
    (the finished process, {record name: seed})."""
    shutil.copy(os.path.join(ROOT, "tests", "conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_tiny.py").write_text(textwrap.dedent("""
        import os
        import pytest
        import conftest

        @pytest.mark.parametrize("i", range(4))
        def test_records_seed(i):
            worker = os.environ.get("PYTEST_XDIST_WORKER", "controller")
            with open(os.path.join("seen", f"{worker}-{i}"), "w") as f:
                f.write(str(conftest.SEED))

        def test_fails_when_asked():
            assert not os.environ.get("TINY_FAIL")
        """))
    seen = tmp_path / "seen"
    shutil.rmtree(seen, ignore_errors=True)
    seen.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "GRADRES_TEST_SEED"}
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    env.update(env_extra)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    return proc, {p.name: int(p.read_text()) for p in seen.iterdir()}


def test_quiet_run_prints_seed_and_replay_command(tmp_path):
    proc, seen = run_suite(tmp_path, "-q", "test_tiny.py", GRADRES_TEST_SEED="1234")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    match = SUMMARY.search(proc.stdout)
    assert match, proc.stdout
    assert match.group(1) == match.group(3) == "1234"
    assert match.group(2) == "GRADRES_TEST_SEED=1234 python -m pytest -p no:cacheprovider -q " \
                             "test_tiny.py"
    assert set(seen.values()) == {1234}


def test_failing_run_prints_the_seed_it_drew(tmp_path):
    proc, seen = run_suite(tmp_path, "-q", "test_tiny.py", TINY_FAIL="1")
    assert proc.returncode == 1
    match = SUMMARY.search(proc.stdout)
    assert match, proc.stdout
    assert set(seen.values()) == {int(match.group(1))}  # the printed seed is the one used


def test_xdist_workers_use_the_controllers_seed(tmp_path):
    pytest.importorskip("xdist")
    proc, seen = run_suite(tmp_path, "-q", "-n", "2", "test_tiny.py")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    match = SUMMARY.search(proc.stdout)
    assert match, proc.stdout
    assert seen and all(name.startswith("gw") for name in seen)
    assert set(seen.values()) == {int(match.group(1))}, seen
