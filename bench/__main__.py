"""`python -m bench`: parity against `reference` and timings of every backend, side by side, with a verdict.

Default run (minutes on a 2-core CPU): one MLP and one conv workload (`mlp_narrow`,
`edsr_block`), relu and silu, both training modes. `--full`: every workload (the whole EDSR model
too, contiguous and channels_last). `--quick`: small shapes, no compiled peers (seconds; CI).

Per case (workload × dtype × activation × mode) it runs, in one process on the same inputs and
weights: `plain` (F(x)+x, the baseline), every backend of docs/DESIGN.md §3 eagerly, and
`composite` and `cpp` under torch.compile(fullgraph=True) (`reference` cannot be compiled:
torch.compile refuses torch.autograd.grad). Per row: forward and training-step (forward +
backward) time as median and 20/80% quantiles, ratio over `plain` and over eager `reference`,
the largest relative error ‖Δ‖/‖ref‖ of y and every gradient against eager `reference`, memory
kept for backward (any device) and peak memory (GPU), and on GPU the % of roofline from
docs/DESIGN.md §2's GEMM count and the compulsory bytes against a matmul and a copy measured in
the same run. Peers are timed round-robin so drift hits all alike, and a ratio is the median of
the per-round ratios (`vs_plain` with its 20/80% quantiles, shown as `1.15 (1.10–1.21)`). On GPU
the `triton` rows also record `first_call_ms`: the first training step at a batch size not seen
before (after warm-up), i.e. what the Triton launch policy costs a new batch size.

At the end: parity PASS/FAIL per peer against the tolerances of PARITY_TOL (exit status 1 on a
FAIL), the headline tables (training step ÷ plain; memory kept for backward ÷ plain), one line
naming what could not be measured here and why, and the files written: by default
bench/runs/<device>-<YYYYMMDD>-<HHMMSS>[-quick|-full].{json,md,png} (git-ignored; a run never
overwrites another), or --out.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
from typing import Dict, List, Optional, Tuple

import torch

import gradres_fused as gf
from gradres_fused import triton_backend
from gradres_fused.backends import KNOWN, unavailable_reason
from bench.measure import (ceilings, peak_mem_mb, quantiles, roofline_pct, saved_tensor_mb, sync,
                           time_once)
from bench.workloads import WORKLOADS, Case, step_units

HERE = os.path.dirname(os.path.abspath(__file__))
RUNS = os.path.join(HERE, "runs")   # default output folder, git-ignored
COMPILED = ("reference", "composite", "cpp")  # the peers also tried under torch.compile
DEFAULT_WORKLOADS = ("mlp_narrow", "edsr_block")
HEADER = ("workload", "dtype", "activation", "mode", "backend", "compiled", "fwd_ms", "step_ms",
          "vs_plain", "vs_reference", "saved_mb", "peak_mem_mb", "roofline_pct", "max_rel_err",
          "status")
# Work-count floors of docs/DESIGN.md §2 (GEMM/conv units: plain 6, detach 7, second order 9).
FLOOR = {"detach": 7 / 6, "second-order": 9 / 6}

# Parity tolerances: the largest ‖out − ref‖/‖ref‖ over y and every gradient, against eager
# `reference` on the same inputs. One block: docs/DESIGN.md §6's float32 1e-5 (measured on CPU in
# bench/results/, 32 runs of each single-block row: ≤ 4.4e-6 eager and compiled) and bf16 3e-3.
# A whole EDSR model (`--full`: 16 blocks between 4 convolutions) compounds float32 rounding
# through its depth, and Inductor reorders and fuses its reductions: measured ≤ 9.9e-5 eager and
# ≤ 4.3e-4 compiled, so 2e-4 eager and 1e-3 compiled (still 100× below a wrong formula, whose
# errors are O(1)).
def parity_tol(workload: str, dtype: str, compiled: bool) -> float:
    if dtype != "float32":
        return 3e-3 if dtype in ("bfloat16", "float16") else 1e-9
    if workload.startswith("edsr_model"):
        return 1e-3 if compiled else 2e-4
    return 1e-5


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device).replace(" ", "-")
    return f"cpu-{platform.machine()}-{os.cpu_count()}cores"


def peer_label(backend: str, compiled: bool) -> str:
    return backend + (" compiled" if compiled else "")


def _short(e: BaseException) -> str:
    """The first line of an exception, without the exception's name when the message repeats it
    (torch's "Unsupported: Unsupported: ...")."""
    line = (str(e).strip().splitlines() or [""])[0]
    name = type(e).__name__
    while line.startswith(name + ":"):
        line = line[len(name) + 1:].strip()
    return f"{name}: {line[:160]}"


def _step(fwd, case: Case):
    """One training step: y and the gradients of Σ y·proj w.r.t. the case's parameters."""
    y = fwd()
    return y, torch.autograd.grad((y * case.proj).sum(), case.params, allow_unused=True)


def _outputs(fwd, case: Case) -> List[torch.Tensor]:
    y, grads = _step(fwd, case)
    return [y.detach()] + [g for g in grads if g is not None]


def _max_rel_err(got, want) -> float:
    if len(got) != len(want):
        return float("inf")
    return max(((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()
               for a, b in zip(got, want))


def not_measured_reason(name: str, device, dtype) -> Optional[str]:
    """Why eager backend `name` is not timed here, in a user's words (None: it is)."""
    if name == "triton" and device.type == "cpu":
        # On a CPU Triton runs only in its interpreter (a correctness tool for the tests),
        # whether or not the package is installed: installing it changes nothing here.
        return "needs a CUDA GPU (on CPU only its interpreter runs, for the tests)"
    return unavailable_reason(name, device, dtype)


def _peers(case: Case, device, dtype, compile_: bool, refused: Dict,
           only: Optional[str] = None, compile_s: Optional[Dict] = None) -> Tuple[Dict, Dict]:
    """(runnable peers {(backend, compiled): forward}, not measured {(backend, compiled): why}).
    `refused` carries compile refusals across cases: a peer torch.compile refused once (it
    refuses `reference` for what it is, not for its shapes) is not traced again. `compile_s`
    gets the seconds each compiled peer's first training step took (tracing and compiling)."""
    compile_s = {} if compile_s is None else compile_s
    peers, skipped = {("plain", False): case.forward("plain")}, {}
    for name in KNOWN:
        if only and name not in (only, "reference"):
            continue
        reason = not_measured_reason(name, device, dtype)
        if reason is not None:
            skipped[(name, False)] = reason
            continue
        peers[(name, False)] = case.forward(name)
    if not compile_:
        return peers, skipped
    for name in COMPILED:
        if (name, False) not in peers or (only and name != only):
            continue
        if name in refused:
            skipped[(name, True)] = refused[name]
            continue
        torch._dynamo.reset()
        compiled = torch.compile(case.forward(name), fullgraph=True)
        t0 = time.perf_counter()
        try:
            _step(compiled, case)
            peers[(name, True)] = compiled
            compile_s[name] = time.perf_counter() - t0
        except Exception as e:  # PyTorch refuses e.g. autograd.grad inside a compiled graph
            refused[name] = skipped[(name, True)] = f"torch.compile refuses it ({_short(e)})"
    return peers, skipped


def first_call_new_batch(wl, tier, dtype, device, activation, detach) -> Tuple[int, float]:
    """(batch, ms): one `triton` training step at a batch size this process has not run (one
    less than the workload's; call after its warm-up), timed on its first call — what a new batch
    size costs under the Triton launch policy (a compile only in a new row bucket, never a
    benchmark)."""
    shape = wl.shapes[tier]
    batch = max(1, shape[0] - 1)
    case = wl.build((batch,) + tuple(shape[1:]), dtype, device, activation, detach)
    fwd = case.forward("triton")
    return batch, time_once(lambda: _step(fwd, case), device)


def measure_case(wl, tier, dtype, device, activation, detach, args, ceil, refused: Dict,
                 progress: str = "") -> Tuple[List[dict], Dict]:
    """(measured rows, {(backend, compiled): why not measured})."""
    print_case(wl, tier, dtype, activation, detach, progress or "-")
    torch.manual_seed(0)
    case = wl.case(tier, dtype, device, activation, detach)
    compile_s: Dict[str, float] = {}
    peers, skipped = _peers(case, device, dtype, args.compile, refused, args.backend, compile_s)
    want = _outputs(peers[("reference", False)], case)
    errs = {k: (None if k[0] == "plain" else _max_rel_err(_outputs(f, case), want))
            for k, f in peers.items()}
    mem = {k: (saved_tensor_mb(f), peak_mem_mb(lambda: _step(f, case), device))
           for k, f in peers.items()}

    def fwd_only(f):
        with torch.no_grad():
            f()
    for _ in range(2):  # warm-up, and a step-time estimate to size the repeats
        for f in peers.values():
            fwd_only(f)
            _step(f, case)
    sync(device)
    est = sum(time_once(lambda: _step(f, case), device) for f in peers.values())
    reps = args.reps or max(3, min(30, int(args.seconds * 1e3 / max(est, 1e-3))))
    fwd = {k: [] for k in peers}
    step = {k: [] for k in peers}
    for _ in range(reps):  # round-robin
        for k, f in peers.items():
            fwd[k].append(time_once(lambda: fwd_only(f), device))
            step[k].append(time_once(lambda: _step(f, case), device))
    new_batch = None
    if ("triton", False) in peers and device.type == "cuda":
        new_batch = first_call_new_batch(wl, tier, dtype, device, activation, detach)
        print(f"triton first call at a new batch size {new_batch[0]}: {new_batch[1]:.1f} ms",
              flush=True)

    def paired(k, over):
        """Quantiles of k's per-round step time over `over`'s in the same round: adjacent in
        time, the two share the machine's slow drift (another process, frequency, steal), which
        a ratio of the two medians would not cancel."""
        return quantiles([a / b for a, b in zip(step[k], step[over])])
    common = {"workload": wl.name, "shape": wl.describe(tier), "tier": tier,
              "dtype": str(dtype).replace("torch.", ""), "activation": activation,
              "mode": "detach" if detach else "second-order", "reps": reps}
    rows = []
    for k in peers:
        fq, sq = quantiles(fwd[k]), quantiles(step[k])
        vp, vr = paired(k, ("plain", False)), paired(k, ("reference", False))
        flops = None if case.unit_flops is None else case.unit_flops * step_units(k[0], detach)
        row = dict(common, backend=k[0], compiled=k[1],
                   fwd_ms=fq["median"], fwd_ms_q20=fq["q20"], fwd_ms_q80=fq["q80"],
                   step_ms=sq["median"], step_ms_q20=sq["q20"], step_ms_q80=sq["q80"],
                   saved_mb=mem[k][0], peak_mem_mb=mem[k][1],
                   vs_plain=vp["median"], vs_plain_q20=vp["q20"], vs_plain_q80=vp["q80"],
                   vs_reference=vr["median"],
                   roofline_pct=(roofline_pct(sq["median"], flops, case.min_bytes, ceil)
                                 if ceil else None),
                   max_rel_err=errs[k], status="ok")
        row["tolerance"] = (None if k[0] == "plain"
                            else parity_tol(wl.name, row["dtype"], k[1]))
        if k == ("triton", False) and new_batch is not None:
            row.update(first_call_batch=new_batch[0], first_call_ms=new_batch[1])
        if k[1]:
            row["compile_s"] = compile_s.get(k[0])
        rows.append(row)
        print_row(row, progress)
    return rows, skipped


def plan(args) -> Tuple[str, list]:
    """(run kind, workload names) of the options: quick, full or the default subset."""
    kind = "quick" if args.quick else ("full" if args.full else "default")
    if args.workload:
        return kind, list(args.workload)
    return kind, list(WORKLOADS) if kind in ("full", "quick") else list(DEFAULT_WORKLOADS)


def run(args) -> dict:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    tier = "quick" if args.quick else ("gpu" if device.type == "cuda" else "cpu")
    kind, names = plan(args)
    dtypes = [torch.float32] + ([torch.bfloat16] if device.type == "cuda" else [])
    modes = {"detach": [True], "second-order": [False], "both": [True, False]}[args.mode]
    workloads = [WORKLOADS[w] for w in names]
    # Roofline is a GPU figure: on a CPU, oneDNN's Winograd 3×3 convolutions beat a direct-FLOP
    # count and a GEMM ceiling means little, so CPU rows carry no roofline_pct.
    ceil = ({str(dt).replace("torch.", ""): ceilings(device, dt, args.quick) for dt in dtypes}
            if device.type == "cuda" else {})
    print(f"device: {device_name(device)} ({processor_name(device)}); run: {kind}; "
          f"ceilings: {ceil or 'not measured on cpu'}", flush=True)
    rows, not_measured, refused = [], {}, {}
    cases = [(wl, dtype, activation, detach) for wl in workloads for dtype in dtypes
             for activation in args.activations for detach in modes]
    for i, (wl, dtype, activation, detach) in enumerate(cases, 1):
        got, skipped = measure_case(wl, tier, dtype, device, activation, detach, args,
                                    ceil.get(str(dtype).replace("torch.", "")), refused,
                                    f"[{i}/{len(cases)}]")
        rows += got
        for k, why in skipped.items():
            not_measured.setdefault(peer_label(*k), why)
    if not args.compile:
        not_measured["compiled peers"] = "off (--quick or --no-compile)"
    now = _dt.datetime.now()
    return {
        "device": device_name(device),
        "versions": {"torch": torch.__version__, "python": platform.python_version(),
                     "gradres_fused": gf.__version__,
                     "cuda": torch.version.cuda if device.type == "cuda" else None},
        "processor": processor_name(device),
        "date": now.date().isoformat(), "time": now.strftime("%H:%M:%S"), "run": kind,
        "tier": tier, "ceilings": ceil, "rows": rows, "not_measured": not_measured,
    }


def processor_name(device: torch.device) -> str:
    """The CPU's model name and the widest vector ISA PyTorch uses on it, or the GPU's name:
    timings from different machines are not comparable, and machines of one kind differ."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model} ({torch.backends.cpu.get_cpu_capability()})"


# ---- verdict and tables ------------------------------------------------------------------------

def verdict(rows: List[dict]) -> List[dict]:
    """Parity per peer: {peer, rows, worst, tolerance of the worst row, ok}, in first-seen order."""
    out: Dict[str, dict] = {}
    for r in rows:
        if r["max_rel_err"] is None or (r["backend"], r["compiled"]) == ("reference", False):
            continue
        v = out.setdefault(peer_label(r["backend"], r["compiled"]),
                           {"rows": 0, "ok": True, "worst": None, "margin": -1.0})
        v["rows"] += 1
        v["ok"] = v["ok"] and r["max_rel_err"] <= r["tolerance"]  # NaN fails too
        margin = r["max_rel_err"] / r["tolerance"] if r["max_rel_err"] == r["max_rel_err"] else 1e30
        if margin > v["margin"]:
            v.update(margin=margin, worst=r["max_rel_err"], tolerance=r["tolerance"],
                     where=f"{r['workload']} {r['activation']} {r['mode']}")
    return [dict(v, peer=k) for k, v in out.items()]


def _ratio(r: Optional[dict]) -> str:
    if r is None:
        return "-"
    if r["vs_plain_q20"] is None or r["backend"] == "plain":
        return f"{r['vs_plain']:.2f}"
    return f"{r['vs_plain']:.2f} ({r['vs_plain_q20']:.2f}–{r['vs_plain_q80']:.2f})"


def _mem(r: Optional[dict], key: str, plain: Optional[dict]) -> str:
    if r is None or r.get(key) is None:
        return "-"
    base = plain.get(key) if plain else None
    times = f" ({r[key] / base:.2f}×)" if base else ""
    return f"{r[key]:.1f}{times}"


def _table(head: List[str], body: List[List[str]]) -> List[str]:
    widths = [max(len(c) for c in col) for col in zip(head, *body)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    return [fmt(head)] + [fmt(b) for b in body]


def headline(rows: List[dict]) -> List[str]:
    """The tables a reader wants first: per case (workload × dtype × activation × mode), training
    step ÷ plain for each peer, eager then compiled (like with like), with the 20–80% spread of the
    per-round ratios; then memory kept for backward (and GPU peak memory) in MB and × plain."""
    cases: Dict[tuple, Dict[tuple, dict]] = {}
    for r in rows:
        key = (r["workload"], r["dtype"], r["activation"], r["mode"])
        cases.setdefault(key, {})[(r["backend"], r["compiled"])] = r
    peers = sorted({(r["backend"], r["compiled"]) for r in rows if r["backend"] != "plain"},
                   key=lambda p: (p[1], KNOWN.index(p[0]) if p[0] in KNOWN else 99))
    dtypes = {k[1] for k in cases}
    label = lambda k: " ".join([k[0]] + ([k[1]] if len(dtypes) > 1 else []) + [k[2], k[3]])
    out = ["training step ÷ plain (median of per-round ratios, 20–80% spread); work-count floor",
           "(docs/DESIGN.md §2): detach 7/6 = 1.17, second order 9/6 = 1.50"]
    out += _table(["case", "plain ms"] + [peer_label(*p) for p in peers],
                  [[label(k), f"{c[('plain', False)]['step_ms']:.1f}"]
                   + [_ratio(c.get(p)) for p in peers] for k, c in cases.items()])
    mem_keys = [("saved_mb", "memory kept for backward, MB (× plain)")]
    if any(r.get("peak_mem_mb") is not None for r in rows):
        mem_keys.append(("peak_mem_mb", "peak memory of a training step, MB (× plain)"))
    for key, title in mem_keys:
        out += ["", title]
        out += _table(["case", "plain"] + [peer_label(*p) for p in peers],
                      [[label(k), _mem(c[("plain", False)], key, None)]
                       + [_mem(c.get(p), key, c[("plain", False)]) for p in peers]
                       for k, c in cases.items()])
    return out


def summary(result: dict, files: List[str]) -> Tuple[List[str], bool]:
    """(the closing lines: parity verdict, headline tables, what was not measured, files; ok)."""
    v = verdict(result["rows"])
    ok = all(p["ok"] for p in v) and bool(v)
    lines = ["", "parity against eager reference (largest ‖Δ‖/‖ref‖ over y and every gradient):"]
    for p in v:
        lines.append(f"  {'PASS' if p['ok'] else 'FAIL'}  {p['peer']:<20} worst {p['worst']:.1e} "
                     f"{'≤' if p['ok'] else '>'} tolerance {p['tolerance']:.0e} "
                     f"({p['where']}; {p['rows']} cases)")
    if not v:
        lines.append("  FAIL  no peer measured")
    lines += [""] + headline(result["rows"]) + [""]
    nm = result.get("not_measured") or {}
    if nm:
        lines.append("not measured: " + "; ".join(f"{k} — {why}" for k, why in nm.items()))
    lines.append("files: " + ", ".join(files))
    lines.append(f"VERDICT: {'PASS' if ok else 'FAIL'} — parity of "
                 f"{sum(p['ok'] for p in v)}/{len(v)} peers within tolerance "
                 "(timings are measurements: no pass/fail)")
    return lines, ok


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.2e}" if (v != 0 and abs(v) < 1e-2) else f"{v:.3f}"
    return str(v)


def _cell(row: dict, key: str) -> str:
    """A row's value for the markdown table; vs_plain with the spread of its per-round ratios."""
    if key == "vs_plain" and row.get("vs_plain_q20") is not None:
        return f"{row['vs_plain']:.3f} ({row['vs_plain_q20']:.2f}–{row['vs_plain_q80']:.2f})"
    return _fmt(row[key])


def print_case(wl, tier: str, dtype, activation: str, detach: bool, progress: str) -> None:
    """The line that opens a case, before its peers are compiled and timed."""
    print(f"{progress} {wl.name} {wl.describe(tier)} {str(dtype).replace('torch.', '')} "
          f"{activation} {'detach' if detach else 'second-order'}: measuring", flush=True)


def print_row(row: dict, progress: str = "") -> None:
    """One measured row as it comes, led by its case's place in the run (`progress`, "[i/n]")."""
    err = "" if row["max_rel_err"] is None else f"  err {row['max_rel_err']:.1e}"
    saved = "" if row["saved_mb"] is None else f"  saved {row['saved_mb']:.1f} MB"
    print(f"{progress or '-'} {row['workload']} {row['activation']} {row['mode']}  "
          f"{peer_label(row['backend'], row['compiled'])}: step {row['step_ms']:.2f} ms  "
          f"× plain {_ratio(row)}{err}{saved}", flush=True)


def markdown(result: dict, closing: List[str]) -> str:
    lines = [f"# {result['device']} — {result['date']} {result.get('time', '')} "
             f"(run: {result.get('run', result['tier'])})", "",
             f"versions: {result['versions']}", "",
             f"processor: {result.get('processor', 'not recorded')}", "",
             f"ceilings: {result['ceilings']}", "",
             f"allocator: {result.get('allocator', 'system default')}", "",
             "```", *closing, "```", "",
             "| " + " | ".join(("shape",) + HEADER) + " |", "|" + "---|" * (len(HEADER) + 1)]
    lines += ["| " + " | ".join(_cell(r, k) for k in ("shape",) + HEADER) + " |"
              for r in result["rows"]]
    return "\n".join(lines) + "\n"


def chart(result: dict, path: str) -> Optional[str]:
    """Training-step time over `plain`: one panel per workload (small multiples), bars per peer
    for each activation × mode with the 20–80% spread as error bars, the work-count floor of
    each mode drawn across its bars. The legend sits below the panels. None if no matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in result["rows"] if r["backend"] != "plain" and r.get("vs_plain") is not None]
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    peers = sorted({(r["backend"], r["compiled"]) for r in rows},
                   key=lambda p: (p[1], KNOWN.index(p[0]) if p[0] in KNOWN else 99))
    if not rows:
        return None
    ncols = min(3, len(workloads))
    nrows = -(-len(workloads) // ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(4.4 * ncols + 0.6, 3.6 * nrows + 0.8),
                             squeeze=False, sharey=True)
    for ax in grid.flat[len(workloads):]:
        ax.set_visible(False)
    axes = [list(grid.flat)]
    width = 0.8 / len(peers)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, wl in zip(axes[0], workloads):
        mine = [r for r in rows if r["workload"] == wl]
        groups = list(dict.fromkeys((r["dtype"], r["activation"], r["mode"]) for r in mine))
        for i, peer in enumerate(peers):
            xs, ys, lo, hi = [], [], [], []
            for j, g in enumerate(groups):
                m = [r for r in mine if (r["dtype"], r["activation"], r["mode"]) == g
                     and (r["backend"], r["compiled"]) == peer]
                if m:
                    r = m[0]
                    xs.append(j + (i - (len(peers) - 1) / 2) * width)
                    ys.append(r["vs_plain"])
                    lo.append(r["vs_plain"] - (r.get("vs_plain_q20") or r["vs_plain"]))
                    hi.append((r.get("vs_plain_q80") or r["vs_plain"]) - r["vs_plain"])
            color = colors[(KNOWN.index(peer[0]) if peer[0] in KNOWN else i) % len(colors)]
            ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, color=color,
                   hatch="//" if peer[1] else None, edgecolor="white" if peer[1] else None,
                   label=peer_label(*peer))
        for j, g in enumerate(groups):
            ax.hlines(FLOOR[g[2]], j - 0.45, j + 0.45, colors="k", linestyles="--", lw=1,
                      label="work-count floor (7/6, 9/6)" if j == 0 and ax is axes[0][0] else None)
        ax.axhline(1.0, color="grey", lw=0.6)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([f"{a}\n{m}" + (f"\n{d}" if d != "float32" else "")
                            for d, a, m in groups], fontsize=8)
        ax.set_title(f"{wl}\n{mine[0]['shape']}", fontsize=9)
    axes[0][0].set_ylabel("training step ÷ plain residual")
    axes[0][0].set_ylim(bottom=0)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8,
               frameon=False)
    fig.suptitle(f"gradres_fused on {result['device']} ({result['date']}, run: "
                 f"{result.get('run', result['tier'])})", fontsize=10)
    fig.tight_layout(rect=(0, 0.8 / (3.6 * nrows + 0.8), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def retain_freed_memory() -> str:
    """Make glibc malloc keep freed memory for reuse instead of handing every large buffer back to
    the OS (and page-faulting it in again, zero-filled, on the next allocation): the fixed
    thresholds jemalloc/tcmalloc effectively use, which PyTorch's CPU tuning guide recommends.
    Returns a description for the results; raises where the C library is not glibc."""
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    mmap_min, trim = 32 << 20, 1 << 30  # 32 MiB: glibc's largest mmap threshold
    if not (hasattr(libc, "mallopt") and libc.mallopt(_M_MMAP_THRESHOLD, mmap_min)
            and libc.mallopt(_M_TRIM_THRESHOLD, trim)):
        raise SystemExit("--retain-memory needs glibc's mallopt")
    return "glibc malloc, freed memory retained (mallopt M_MMAP_THRESHOLD=32 MiB, M_TRIM_THRESHOLD=1 GiB)"


def output_stem(result: dict, out: Optional[str]) -> str:
    """Where the files go, without extension: --out's, or a new name in bench/runs/ that no
    earlier run has (device, date, time, and the run kind unless it is the default)."""
    if out:
        return os.path.splitext(out)[0]
    name = (f"{result['device']}-{result['date'].replace('-', '')}-"
            f"{result['time'].replace(':', '')}"
            + ("" if result["run"] == "default" else f"-{result['run']}"))
    stem, n = os.path.join(RUNS, name), 2
    while os.path.exists(stem + ".json"):
        stem, n = os.path.join(RUNS, f"{name}-{n}"), n + 1
    return stem


def _shown(path: str) -> str:
    """A path as the closing lines show it: relative when it is under the current directory."""
    rel = os.path.relpath(path) if os.path.isabs(path) else path
    return path if rel.startswith("..") else rel


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--quick", action="store_true",
                      help="small shapes, every workload, few repeats, no compiled peers (CI smoke)")
    kind.add_argument("--full", action="store_true",
                      help="every workload (adds the wide MLP and the whole EDSR model, "
                           "contiguous and channels_last); ~20-30 min on 2 CPU cores")
    p.add_argument("--out", help="JSON path; .md and .png go beside it (default: a new "
                                 "bench/runs/<device>-<YYYYMMDD>-<HHMMSS>[-quick|-full].json)")
    p.add_argument("--workload", nargs="+", choices=sorted(WORKLOADS),
                   help=f"these workloads instead (default {' '.join(DEFAULT_WORKLOADS)}; "
                        "--full: all)")
    p.add_argument("--backend", choices=list(KNOWN),
                   help="time only this backend (plus plain and reference)")
    p.add_argument("--mode", choices=["detach", "second-order", "both"], default="both")
    p.add_argument("--activations", nargs="+", default=["relu", "silu"],
                   choices=sorted(gf.ACTIVATIONS))
    p.add_argument("--reps", type=int, help="timed repeats per peer (default: sized by --seconds)")
    p.add_argument("--seconds", type=float, default=None,
                   help="rough timing budget per case in seconds (default 1 quick, 2, 6 full)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="measure torch.compile peers (default: on, off with --quick)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    p.add_argument("--replot", metavar="JSON",
                   help="only draw the chart of an earlier run's JSON (beside it, as .png)")
    p.add_argument("--retain-memory", action="store_true",
                   help="CPU: glibc malloc keeps freed memory instead of returning each large "
                        "buffer to the OS (as jemalloc/tcmalloc do); recorded in the results")
    args = p.parse_args(argv)
    if args.replot:
        with open(args.replot) as f:
            png = chart(json.load(f), os.path.splitext(args.replot)[0] + ".png")
        print(f"wrote {png}" if png else "no chart: pip install matplotlib")
        return 0 if png else 1
    allocator = retain_freed_memory() if args.retain_memory else "system default"
    print(f"allocator: {allocator}", flush=True)
    args.compile = (not args.quick) if args.compile is None else args.compile
    args.seconds = args.seconds or (1.0 if args.quick else 6.0 if args.full else 2.0)
    result = run(args)
    result["allocator"] = allocator
    stem = output_stem(result, args.out)
    os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
    files = [stem + ".json", stem + ".md"]
    png = chart(result, stem + ".png")
    files += [png] if png else ["no chart (pip install matplotlib)"]
    closing, ok = summary(result, [_shown(f) for f in files])
    result["verdict"] = "PASS" if ok else "FAIL"
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(markdown(result, closing))
    print("\n".join(closing), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
