"""`python -m bench`: parity against `reference` and timings of every backend, side by side.

For each workload × dtype × activation × mode it runs, in one process on the same inputs and
weights: `plain` (F(x)+x, the baseline), every backend of docs/DESIGN.md §3 eagerly, and `reference` and
`composite` under torch.compile(fullgraph=True). A backend that cannot run here still gets a row,
with a status saying why. Per row: forward and training-step (forward + backward) time as median
and 20/80% quantiles, ratio over `plain` and over eager `reference`, the largest relative error of
y and every gradient against eager `reference`, memory kept for backward (any device) and peak
memory (GPU), and on GPU the % of roofline from docs/DESIGN.md §2's GEMM count and the compulsory bytes
against a matmul and a copy measured in the same run. Peers are timed round-robin so drift hits
all alike, and a ratio is the median of the per-round ratios (`vs_plain` with its 20/80%
quantiles, `vs_plain_q20`/`vs_plain_q80`; the tables show them as `1.15 (1.10–1.21)`). On GPU
the `triton` rows also record `first_call_ms`: the first training step at a batch size not seen
before (after warm-up), i.e. what the Triton launch policy costs a new batch size.

Writes bench/results/<device>-<YYYYMMDD>.json (or --out), a markdown table and a PNG chart beside it.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
from typing import Dict, List, Optional, Tuple

import torch

import gradres_fused as gf
from gradres_fused import triton_backend
from gradres_fused.backends import KNOWN, unavailable_reason
from bench.measure import (ceilings, peak_mem_mb, quantiles, roofline_pct, saved_tensor_mb, sync,
                           time_once)
from bench.workloads import WORKLOADS, Case, step_units

HERE = os.path.dirname(os.path.abspath(__file__))
COMPILED = ("reference", "composite", "cpp")  # the peers also measured under torch.compile
HEADER = ("workload", "dtype", "activation", "mode", "backend", "compiled", "fwd_ms", "step_ms",
          "vs_plain", "vs_reference", "roofline_pct", "max_rel_err", "status")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device).replace(" ", "-")
    return f"cpu-{platform.machine()}-{os.cpu_count()}cores"


def _short(e: BaseException) -> str:
    line = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {line[:200]}"


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


def _peers(case: Case, device, dtype, compile_: bool) -> Tuple[Dict, Dict]:
    """(runnable peers {(backend, compiled): forward}, skipped peers {(backend, compiled): status})."""
    peers, skipped = {("plain", False): case.forward("plain")}, {}
    for name in KNOWN:
        reason = unavailable_reason(name, device, dtype)
        if reason is None and name == "triton" and triton_backend.interpreted():
            reason = "Triton interpreter (TRITON_INTERPRET=1): a correctness tool, not timed"
        if reason is not None:
            skipped[(name, False)] = f"unavailable: {reason}"
            continue
        peers[(name, False)] = case.forward(name)
    for name in COMPILED:
        if (name, False) not in peers:
            continue
        if not compile_:
            skipped[(name, True)] = "skipped: compiled peers off (--quick or --no-compile)"
            continue
        torch._dynamo.reset()
        compiled = torch.compile(case.forward(name), fullgraph=True)
        try:
            _step(compiled, case)
            peers[(name, True)] = compiled
        except Exception as e:  # PyTorch refuses e.g. autograd.grad inside a compiled graph
            skipped[(name, True)] = f"unsupported: {_short(e)}"
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


def measure_case(wl, tier, dtype, device, activation, detach, args, ceil,
                 progress: str = "") -> List[dict]:
    torch.manual_seed(0)
    case = wl.case(tier, dtype, device, activation, detach)
    peers, skipped = _peers(case, device, dtype, args.compile)
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
    for k in list(peers) + list(skipped):
        row = dict(common, backend=k[0], compiled=k[1], fwd_ms=None, fwd_ms_q20=None,
                   fwd_ms_q80=None, step_ms=None, step_ms_q20=None, step_ms_q80=None,
                   saved_mb=None, peak_mem_mb=None, vs_plain=None, vs_plain_q20=None,
                   vs_plain_q80=None, vs_reference=None,
                   roofline_pct=None, max_rel_err=None, status=skipped.get(k, "ok"))
        if k in peers:
            fq, sq = quantiles(fwd[k]), quantiles(step[k])
            vp, vr = paired(k, ("plain", False)), paired(k, ("reference", False))
            flops = (None if case.unit_flops is None
                     else case.unit_flops * step_units(k[0], detach))
            row.update(fwd_ms=fq["median"], fwd_ms_q20=fq["q20"], fwd_ms_q80=fq["q80"],
                       step_ms=sq["median"], step_ms_q20=sq["q20"], step_ms_q80=sq["q80"],
                       saved_mb=mem[k][0], peak_mem_mb=mem[k][1],
                       vs_plain=vp["median"], vs_plain_q20=vp["q20"], vs_plain_q80=vp["q80"],
                       vs_reference=vr["median"],
                       roofline_pct=(roofline_pct(sq["median"], flops, case.min_bytes, ceil)
                                     if ceil else None),
                       max_rel_err=errs[k])
        if k == ("triton", False) and new_batch is not None:
            row.update(first_call_batch=new_batch[0], first_call_ms=new_batch[1])
        rows.append(row)
        print_row(row, progress)
    return rows


def run(args) -> dict:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    tier = "quick" if args.quick else ("gpu" if device.type == "cuda" else "cpu")
    dtypes = [torch.float32] + ([torch.bfloat16] if device.type == "cuda" else [])
    modes = {"detach": [True], "second-order": [False], "both": [True, False]}[args.mode]
    workloads = [WORKLOADS[w] for w in args.workload] if args.workload else list(WORKLOADS.values())
    # Roofline is a GPU figure: on a CPU, oneDNN's Winograd 3×3 convolutions beat a direct-FLOP
    # count and a GEMM ceiling means little, so CPU rows carry no roofline_pct.
    ceil = ({str(dt).replace("torch.", ""): ceilings(device, dt, args.quick) for dt in dtypes}
            if device.type == "cuda" else {})
    print(f"device: {device_name(device)}; ceilings: {ceil or 'not measured on cpu'}", flush=True)
    rows = []
    cases = [(wl, dtype, activation, detach) for wl in workloads for dtype in dtypes
             for activation in args.activations for detach in modes]
    for i, (wl, dtype, activation, detach) in enumerate(cases, 1):
        rows += measure_case(wl, tier, dtype, device, activation, detach, args,
                             ceil.get(str(dtype).replace("torch.", "")), f"[{i}/{len(cases)}]")
    if args.backend:
        rows = [r for r in rows if r["backend"] in (args.backend, "plain", "reference")]
    return {
        "device": device_name(device),
        "versions": {"torch": torch.__version__, "python": platform.python_version(),
                     "gradres_fused": gf.__version__,
                     "cuda": torch.version.cuda if device.type == "cuda" else None},
        "processor": processor_name(device),
        "date": _dt.date.today().isoformat(), "tier": tier, "ceilings": ceil, "rows": rows,
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


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.2e}" if (v != 0 and abs(v) < 1e-2) else f"{v:.3f}"
    return str(v)


def _cell(row: dict, key: str) -> str:
    """A row's value for the tables; vs_plain with the spread of its per-round ratios."""
    if key == "vs_plain" and row.get("vs_plain_q20") is not None:
        return f"{row['vs_plain']:.3f} ({row['vs_plain_q20']:.2f}–{row['vs_plain_q80']:.2f})"
    return _fmt(row[key])


def print_row(row: dict, progress: str = "") -> None:
    """One row of the console table, led by the case's place in the run (`progress`, "[i/n]")
    and its shape."""
    columns = ("shape",) + HEADER
    if not getattr(print_row, "header_done", False):
        print(" | ".join(("case",) + columns))
        print_row.header_done = True
    print(" | ".join([progress or "-"] + [_cell(row, k) for k in columns]), flush=True)


def markdown(result: dict) -> str:
    lines = [f"# {result['device']} — {result['date']} (tier: {result['tier']})", "",
             f"versions: {result['versions']}", "",
             f"processor: {result.get('processor', 'not recorded')}", "",
             f"ceilings: {result['ceilings']}", "",
             f"allocator: {result.get('allocator', 'system default')}", "",
             "| " + " | ".join(("shape",) + HEADER) + " |", "|" + "---|" * (len(HEADER) + 1)]
    lines += ["| " + " | ".join(_cell(r, k) for k in ("shape",) + HEADER) + " |"
              for r in result["rows"]]
    return "\n".join(lines) + "\n"


def chart(result: dict, path: str) -> Optional[str]:
    """Training-step time over `plain`, one bar group per workload/mode. None if no matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in result["rows"] if r["vs_plain"] is not None and r["backend"] != "plain"]
    groups = sorted({(r["workload"], r["dtype"], r["activation"], r["mode"]) for r in rows})
    peers = sorted({(r["backend"], r["compiled"]) for r in rows})
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(groups) + 2), 4.5))
    width = 0.8 / max(1, len(peers))
    for i, peer in enumerate(peers):
        vals = []
        for g in groups:
            match = [r["vs_plain"] for r in rows
                     if (r["workload"], r["dtype"], r["activation"], r["mode"]) == g
                     and (r["backend"], r["compiled"]) == peer]
            vals.append(match[0] if match else 0.0)
        ax.bar([j + i * width for j in range(len(groups))], vals, width,
               label=peer[0] + (" (compiled)" if peer[1] else ""))
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))])
    ax.set_xticklabels(["\n".join(g) for g in groups], fontsize=7)
    ax.set_ylabel("training step time / plain residual")
    ax.set_title(f"gradres_fused on {result['device']} ({result['date']})")
    ax.legend(fontsize=7)
    fig.tight_layout()
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="small shapes, few repeats, no compiled peers (CI smoke)")
    p.add_argument("--out", help="JSON path (default bench/results/<device>-<YYYYMMDD>.json)")
    p.add_argument("--workload", nargs="+", choices=sorted(WORKLOADS))
    p.add_argument("--backend", choices=list(KNOWN),
                   help="report only this backend (plus plain and reference)")
    p.add_argument("--mode", choices=["detach", "second-order", "both"], default="both")
    p.add_argument("--activations", nargs="+", default=["relu", "silu"],
                   choices=sorted(gf.ACTIVATIONS))
    p.add_argument("--reps", type=int, help="timed repeats per peer (default: sized by --seconds)")
    p.add_argument("--seconds", type=float, default=None,
                   help="rough timing budget per case in seconds (default 1 quick, 6 full)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="measure torch.compile peers (default: on, off with --quick)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    p.add_argument("--retain-memory", action="store_true",
                   help="CPU: glibc malloc keeps freed memory instead of returning each large "
                        "buffer to the OS (as jemalloc/tcmalloc do); recorded in the results")
    args = p.parse_args(argv)
    allocator = retain_freed_memory() if args.retain_memory else "system default"
    print(f"allocator: {allocator}", flush=True)
    args.compile = (not args.quick) if args.compile is None else args.compile
    args.seconds = args.seconds or (1.0 if args.quick else 6.0)
    result = run(args)
    result["allocator"] = allocator
    out = args.out or os.path.join(
        HERE, "results", f"{result['device']}-{result['date'].replace('-', '')}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    stem = os.path.splitext(out)[0]
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(markdown(result))
    png = chart(result, stem + ".png")
    print(f"wrote {out}, {stem}.md" + (f", {png}" if png else " (no matplotlib: no chart)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
