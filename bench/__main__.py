"""`python -m bench`: parity against `reference` and timings of every backend, side by side.

For each workload × activation × mode it runs, in one process on the same inputs: `plain` (F(x)+x,
the baseline), then every backend available on the device. It reports forward and training-step
(forward + backward) times as median [20%, 80%] quantiles, the step-time ratio over `plain` and over
`reference`, and the largest relative error of y and the gradients against `reference`. CPU timings
alternate the peers round-robin so drift hits all alike; GPU timings use CUDA events.
Results go to bench/results/<device>-<YYYYMMDD>.json (or --out) and a markdown table beside it.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from typing import Dict, List

import torch

import gradres_fused as gf
from bench.workloads import WORKLOADS

HERE = os.path.dirname(os.path.abspath(__file__))


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device).replace(" ", "-")
    return f"cpu-{platform.machine()}-{os.cpu_count()}cores"


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timer(device):
    """A callable timing fn() once in milliseconds."""
    if device.type == "cuda":
        def run(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            return start.elapsed_time(end)
    else:
        def run(fn):
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
    return run


def _quantiles(samples: List[float]) -> Dict[str, float]:
    qs = statistics.quantiles(samples, n=10) if len(samples) > 1 else [samples[0]] * 9
    return {"median": statistics.median(samples), "q20": qs[1], "q80": qs[7]}


def _grads_of(fn, inputs, proj):
    y = fn(*inputs)
    grads = torch.autograd.grad((y * proj).sum(), inputs)
    return [y.detach()] + list(grads)


def _max_rel_err(got, want) -> float:
    return max(((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()
               for a, b in zip(got, want))


def run(args) -> dict:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.float32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    timer = _timer(device)
    backends = gf.available_backends(device)
    if args.backend:
        backends = [b for b in backends if b == args.backend or b == "reference"]
    modes = {"detach": [True], "second-order": [False], "both": [True, False]}[args.mode]
    workloads = [WORKLOADS[args.workload]] if args.workload else list(WORKLOADS.values())
    reps = args.reps or (5 if args.quick else 20)
    rows = []
    for wl in workloads:
        for activation in args.activations:
            for detach in modes:
                torch.manual_seed(0)
                inputs = wl.inputs(args.quick, dtype, device)
                proj = torch.randn_like(inputs[0])
                peers = {"plain": wl.plain(activation)}
                for name in backends:
                    peers[name] = (lambda op, name: lambda *a: op(
                        *a, activation=activation, detach=detach, backend=name))(wl.op(), name)
                # Parity: every peer against the reference on the same inputs (fp32 here).
                want = _grads_of(peers["reference"], inputs, proj)
                errs = {n: (_max_rel_err(_grads_of(f, inputs, proj), want) if n != "plain"
                            else None) for n, f in peers.items()}
                fwd = {n: [] for n in peers}
                step = {n: [] for n in peers}

                def fwd_only(f):
                    with torch.no_grad():
                        f(*inputs)

                def train_step(f):
                    y = f(*inputs)
                    torch.autograd.grad((y * proj).sum(), inputs, allow_unused=True)

                for _ in range(2):  # warm-up
                    for f in peers.values():
                        train_step(f)
                _sync(device)
                for _ in range(reps):  # round-robin: drift hits every peer alike
                    for n, f in peers.items():
                        fwd[n].append(timer(lambda: fwd_only(f)))
                        step[n].append(timer(lambda: train_step(f)))
                base = statistics.median(step["plain"])
                ref = statistics.median(step["reference"])
                for n in peers:
                    sq, fq = _quantiles(step[n]), _quantiles(fwd[n])
                    rows.append({
                        "workload": wl.name, "shape": wl.describe(args.quick),
                        "dtype": str(dtype).replace("torch.", ""), "activation": activation,
                        "backend": n, "mode": "detach" if detach else "second-order",
                        "fwd_ms": fq["median"], "fwd_ms_q20": fq["q20"], "fwd_ms_q80": fq["q80"],
                        "step_ms": sq["median"], "step_ms_q20": sq["q20"],
                        "step_ms_q80": sq["q80"], "peak_mem_mb": None,
                        "vs_plain": sq["median"] / base, "vs_reference": sq["median"] / ref,
                        "roofline_pct": None, "max_rel_err": errs[n], "status": "ok",
                    })
                    _print_row(rows[-1])
    return {
        "device": _device_name(device),
        "versions": {"torch": torch.__version__, "python": platform.python_version(),
                     "gradres_fused": gf.__version__},
        "date": _dt.date.today().isoformat(), "quick": args.quick, "reps": reps, "rows": rows,
    }


HEADER = ("workload", "shape", "activation", "mode", "backend", "fwd_ms", "step_ms", "vs_plain",
          "vs_reference", "max_rel_err")


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.3g}" if v < 1e-2 else f"{v:.3f}"
    return "-" if v is None else str(v)


def _print_row(row):
    if not getattr(_print_row, "done", False):
        print(" | ".join(HEADER))
        _print_row.done = True
    print(" | ".join(_fmt(row[k]) for k in HEADER), flush=True)


def markdown(result: dict) -> str:
    lines = [f"# {result['device']} — {result['date']} ({'quick' if result['quick'] else 'full'})",
             "", f"versions: {result['versions']}", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(_fmt(r[k]) for k in HEADER) + " |" for r in result["rows"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small shapes, few repeats")
    p.add_argument("--out", help="JSON path (default bench/results/<device>-<YYYYMMDD>.json)")
    p.add_argument("--workload", choices=sorted(WORKLOADS))
    p.add_argument("--backend", help="time only this backend (plus plain and reference)")
    p.add_argument("--mode", choices=["detach", "second-order", "both"], default="both")
    p.add_argument("--activations", nargs="+", default=["relu", "silu"],
                   choices=sorted(gf.ACTIVATIONS))
    p.add_argument("--reps", type=int, help="timed repeats per peer")
    p.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    args = p.parse_args(argv)
    if args.backend and args.backend not in gf.available_backends(args.device):
        p.error(f"--backend: {args.backend!r} is not available here; available: "
                f"{gf.available_backends(args.device)}")
    result = run(args)
    out = args.out or os.path.join(
        HERE, "results", f"{result['device']}-{result['date'].replace('-', '')}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.splitext(out)[0] + ".md", "w") as f:
        f.write(markdown(result))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
