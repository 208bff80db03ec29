"""CI installs exactly what the README tells a user to install (each README `pip install` list is
one line of .ci/run marked `# README`), so a package the README's commands need but do not list
(pytest-benchmark for `pytest bench/ --benchmark-only`, once) fails CI, not a new user."""
import os
import re
import shlex

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIP_INSTALL = re.compile(r"pip install ([^`&\n]*)")


def packages(args: str) -> frozenset:
    """The package specs of one `pip install` argument string (no flags, no local paths)."""
    return frozenset(a for a in shlex.split(args) if not a.startswith("-") and a != ".")


def readme_lists():
    text = open(os.path.join(ROOT, "README.md")).read()
    return {p for p in map(packages, PIP_INSTALL.findall(text)) if p}


def ci_lists():
    """(the lines marked `# README`, the rest) of .ci/run's pip installs, as package sets."""
    marked, other = set(), set()
    for line in open(os.path.join(ROOT, ".ci", "run")):
        code, _, comment = line.partition("#")
        match = PIP_INSTALL.search(code)
        if match and packages(match.group(1)):
            (marked if comment.strip().startswith("README") else other).add(
                packages(match.group(1)))
    return marked, other


def test_ci_installs_exactly_the_readme_lists():
    marked, _ = ci_lists()
    assert marked == readme_lists()


def test_readme_test_command_installs_what_its_commands_use():
    lists = readme_lists()
    assert any({"pytest>=8", "pytest-benchmark"} <= p for p in lists)  # pytest bench/ ...
    assert any({"matplotlib"} <= p and "torch==2.13.0" in p for p in lists)  # bench chart


def test_parsing():
    assert packages('-q torch==2.13.0 "pytest>=8" --no-build-isolation -e .') == {
        "torch==2.13.0", "pytest>=8"}
    assert PIP_INSTALL.findall("`pip install tqdm scipy`, then") == ["tqdm scipy"]
