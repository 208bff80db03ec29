"""CI runs the README's two commands exactly as written, each in a new virtual environment
(.ci/run takes them from README's ```bash block with tools/readme_commands.py), so a package the
tests need but the test command does not install fails CI, not a new user. The other README
install lists CI uses are lines of .ci/run marked `# README`."""
import os
import re
import shlex
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import readme_commands  # noqa: E402

PIP_INSTALL = re.compile(r"pip install ([^`&\n]*)")


def packages(args: str) -> frozenset:
    """The package specs of one `pip install` argument string (no flags, no local paths)."""
    return frozenset(a for a in shlex.split(args) if not a.startswith("-") and a != ".")


def names(specs) -> frozenset:
    """Package names without version specifiers."""
    return frozenset(re.split(r"[<>=!~\[]", s, maxsplit=1)[0].lower() for s in specs)


def readme():
    return open(os.path.join(ROOT, "README.md")).read()


def the_two_commands():
    return readme_commands.commands(readme())


def command_lists(cmd: str):
    return [p for p in map(packages, PIP_INSTALL.findall(cmd)) if p]


def ci_marked_lists():
    """The pip installs of .ci/run's lines marked `# README`, as package sets."""
    marked = set()
    for line in open(os.path.join(ROOT, ".ci", "run")):
        code, _, comment = line.partition("#")
        match = PIP_INSTALL.search(code)
        if match and packages(match.group(1)) and comment.strip().startswith("README"):
            marked.add(packages(match.group(1)))
    return marked


def test_ci_runs_the_readme_commands_as_written():
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert 'for name in main tests; do' in ci
    assert 'tools/readme_commands.py "$name"' in ci
    assert '"$py" -m venv "$venvs/$name"' in ci  # a new environment per command
    assert 'bash -euo pipefail -c "$cmd"' in ci
    cmds = the_two_commands()
    for name, cmd in cmds.items():
        assert cmd.startswith("pip install torch==2.13.0 "), cmd
        assert "pip install --no-build-isolation -e ." in cmd
    assert cmds["main"].endswith("&& python -m bench")
    assert cmds["tests"].endswith("&& python -m pytest -q")


def test_every_readme_install_list_is_run_by_ci():
    """Each README `pip install` list is one of the two commands', a `# README` line of
    .ci/run, or names only packages one of the two commands installs (the short Install line)."""
    cmds = the_two_commands()
    run = {p for c in cmds.values() for p in command_lists(c)} | ci_marked_lists()
    run_names = frozenset().union(*map(names, run))
    for p in map(packages, PIP_INSTALL.findall(readme())):
        if p:
            assert p in run or names(p) <= run_names, sorted(p)


def test_readme_test_command_installs_what_the_tests_import():
    test_list = names(command_lists(the_two_commands()["tests"])[0])
    assert {"torch", "triton", "pytest", "hypothesis", "numpy", "pytest-benchmark"} <= test_list
    main_list = names(command_lists(the_two_commands()["main"])[0])
    assert {"torch", "matplotlib"} <= main_list  # the bench's chart


def test_extraction_refuses_a_third_command():
    text = "## The two commands\n\n```bash\na && python -m bench\nb && python -m pytest\nc\n```\n"
    try:
        readme_commands.commands(text)
    except ValueError as e:
        assert "expected one" in str(e)
    else:
        raise AssertionError("three commands accepted")
    assert readme_commands.commands(text.replace("c\n", "# c\n")) == {
        "main": "a && python -m bench", "tests": "b && python -m pytest"}


def test_parsing():
    assert packages('-q torch==2.13.0 "pytest>=8" --no-build-isolation -e .') == {
        "torch==2.13.0", "pytest>=8"}
    assert names({"torch==2.13.0", "pytest>=8", "ninja"}) == {"torch", "pytest", "ninja"}
    assert PIP_INSTALL.findall("`pip install tqdm scipy`, then") == ["tqdm scipy"]
