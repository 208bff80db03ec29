"""The README's two commands, exactly as written: the lines of the ```bash block under
"## The two commands" (comments dropped). CI runs what this prints, so the README cannot drift
from what is tested:

    python tools/readme_commands.py main    # pip install ... && python -m bench
    python tools/readme_commands.py tests   # pip install ... && python -m pytest -q
"""
from __future__ import annotations

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTION = "## The two commands"


def commands(text: str) -> dict:
    """{"main": line, "tests": line} from README text; ValueError unless there are exactly two."""
    start = text.index(SECTION)
    block = re.search(r"```bash\n(.*?)```", text[start:], re.S)
    if block is None:
        raise ValueError(f"no ```bash block under {SECTION!r}")
    lines = [l.strip() for l in block.group(1).splitlines()
             if l.strip() and not l.strip().startswith("#")]
    found = {"main": [l for l in lines if "python -m bench" in l],
             "tests": [l for l in lines if "python -m pytest" in l]}
    if len(lines) != 2 or any(len(v) != 1 for v in found.values()):
        raise ValueError(f"expected one `python -m bench` and one `python -m pytest` line under "
                         f"{SECTION!r}, got {lines}")
    return {k: v[0] for k, v in found.items()}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] not in ("main", "tests"):
        print(__doc__, file=sys.stderr)
        return 2
    with open(os.path.join(ROOT, "README.md")) as f:
        print(commands(f.read())[argv[0]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
