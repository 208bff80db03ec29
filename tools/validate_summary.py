"""One-screen summary of a tools/gpu_validate.sh run: python tools/validate_summary.py OUTDIR.

Reads OUTDIR/steps.tsv (name, exit status, seconds per step), the JUnit XML of each test file, the
sanitizer logs and the bench JSON; writes OUTDIR/summary.txt and OUTDIR/summary.json and prints the
summary. Exit status 0 when every step passed.
"""
from __future__ import annotations

import glob
import json
import os
import re
import sys
import xml.etree.ElementTree as ET


def steps(out: str) -> list[dict]:
    rows = []
    with open(os.path.join(out, "steps.tsv")) as f:
        for line in f:
            name, rc, seconds = line.rstrip("\n").split("\t")
            rows.append({"step": name, "rc": int(rc), "seconds": int(seconds)})
    return rows


def junit(path: str) -> dict:
    """Counts and failing test ids of one JUnit file (pytest writes one <testsuite>)."""
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed = []
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, FileNotFoundError):
        return {**counts, "failed": [], "missing": True}
    for suite in root.iter("testsuite"):
        for k in counts:
            counts[k] += int(suite.get(k, 0))
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(f"{case.get('classname', '')}::{case.get('name', '')}")
    return {**counts, "failed": failed, "missing": False}


def crashed_workers(log: str) -> list[str]:
    """pytest-xdist's words for a worker that died inside a test (segfault, abort, kill)."""
    try:
        text = open(log, errors="replace").read()
    except FileNotFoundError:
        return []
    return sorted(set(re.findall(r"worker '\w+' crashed while running '([^']+)'", text)))


def sanitizer(log: str) -> str:
    try:
        text = open(log, errors="replace").read()
    except FileNotFoundError:
        return "not run"
    m = re.findall(r"ERROR SUMMARY: (\d+) errors?", text)
    return f"{m[-1]} errors" if m else "no ERROR SUMMARY line (see log)"


def bench_headline(out: str) -> list[str]:
    """Training step ÷ plain per workload × dtype × mode for each fused backend (median over
    activations), the numbers a reader wants first."""
    lines = []
    for path in sorted(glob.glob(os.path.join(out, "bench", "*.json"))):
        rows = json.load(open(path))["rows"]
        groups: dict = {}
        for r in rows:
            if r.get("status") != "ok" or r["backend"] == "plain" or r.get("vs_plain") is None:
                continue
            name = r["backend"] + (" (compiled)" if r.get("compiled") else "")
            key = (r["workload"], r["dtype"], r["mode"])
            groups.setdefault(key, {}).setdefault(name, []).append(r["vs_plain"])
        for (wl, dt, mode), peers in sorted(groups.items()):
            cells = ", ".join(f"{k} {sorted(v)[len(v) // 2]:.2f}x" for k, v in sorted(peers.items()))
            lines.append(f"  {wl} {dt} {mode}: {cells}")
        errs = [r["max_rel_err"] for r in rows if r.get("max_rel_err") is not None]
        lines.append(f"  parity: max_rel_err over {len(errs)} rows = {max(errs, default=0):.2e}")
    return lines


def main(out: str) -> int:
    rows = steps(out)
    report = {"steps": rows, "tests": {}, "sanitizer": {}}
    lines = [f"gpu_validate summary ({out})"]
    env = os.path.join(out, "logs", "env.txt")
    if os.path.exists(env):
        lines += ["  " + s for s in open(env).read().strip().splitlines()]
    lines.append("")
    lines.append(f"{'step':<24} {'status':<10} {'s':>5}  detail")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed_tests: list[str] = []
    for r in rows:
        status = {0: "ok", 124: "TIMEOUT", 137: "KILLED"}.get(r["rc"], f"FAIL({r['rc']})")
        detail = ""
        if r["step"].startswith("test_"):
            j = junit(os.path.join(out, "junit", r["step"] + ".xml"))
            crashes = crashed_workers(os.path.join(out, "logs", r["step"] + ".log"))
            report["tests"][r["step"]] = {**j, "crashed": crashes}
            for k in totals:
                totals[k] += j[k]
            failed_tests += j["failed"] + [f"{c} (worker crashed)" for c in crashes]
            detail = ("no junit (process died?)" if j["missing"] else
                      f"{j['tests'] - j['skipped'] - j['failures'] - j['errors']} passed, "
                      f"{j['failures'] + j['errors']} failed, {j['skipped']} skipped")
            if crashes:
                detail += f", {len(crashes)} crashed"
        elif r["step"].startswith("sanitizer"):
            detail = sanitizer(os.path.join(out, "logs", r["step"] + ".log"))
            report["sanitizer"][r["step"]] = detail
        lines.append(f"{r['step']:<24} {status:<10} {r['seconds']:>5}  {detail}")
    lines.append("")
    lines.append(f"tests: {totals['tests'] - totals['skipped'] - totals['failures'] - totals['errors']}"
                 f" passed, {totals['failures'] + totals['errors']} failed, "
                 f"{totals['skipped']} skipped")
    for t in failed_tests[:15]:
        lines.append(f"  FAILED {t}")
    if len(failed_tests) > 15:
        lines.append(f"  … and {len(failed_tests) - 15} more (junit/)")
    head = bench_headline(out)
    if head:
        lines.append("bench (training step ÷ plain, median over activations):")
        lines += head
    bad = [r["step"] for r in rows if r["rc"] != 0]
    lines.append("")
    lines.append("RESULT: " + ("all steps passed" if not bad else "failed: " + ", ".join(bad)))
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "summary.txt"), "w") as f:
        f.write(text)
    report["failed_steps"] = bad
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(text, end="")
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
