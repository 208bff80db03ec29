"""Where a training step's time goes, per op: `python tools/profile_stages.py [--workload W]
[--activation A] [--mode M] [--backend B] [--device D]`.

Runs the benchmark's training step (bench/workloads.py, the `cpu` tier on a CPU) under
torch.profiler for the `plain` residual block and one backend, and prints each op's self time per
step: ATen's GEMMs/convolutions and copies, and the C++ backend's fused stages (its
`gradres::<stage>` ranges, stages_cpu.cpp / cuda/stages_cuda.cpp). A measurement tool, like
`python -m bench`: nothing here asserts a timing.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from bench.__main__ import _step  # noqa: E402
from bench.workloads import WORKLOADS  # noqa: E402


def per_op_ms(fn, steps: int, device: torch.device):
    """{op name: self milliseconds per step} and the profiled wall time per step."""
    for _ in range(3):
        fn()
    # On CPU the legacy profiler: Kineto's CPU tracing slowed 2-core steps 1.5-2x here.
    if device.type == "cuda":
        ctx = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
    else:
        ctx = torch.autograd.profiler.profile(use_kineto=False, record_shapes=True)
    with ctx as prof:
        for _ in range(steps):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    table = defaultdict(float)
    for e in prof.key_averages(group_by_input_shape=device.type == "cpu"):
        t = e.self_device_time_total if device.type == "cuda" else e.self_cpu_time_total
        shapes = f" {e.input_shapes}" if device.type == "cpu" and e.input_shapes else ""
        table[e.key + shapes[:70]] += t / 1e3 / steps
    return dict(table)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workload", default="mlp_narrow", choices=sorted(WORKLOADS))
    p.add_argument("--activation", default="relu")
    p.add_argument("--mode", default="detach", choices=["detach", "second-order"])
    p.add_argument("--backend", default="cpp")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--top", type=int, default=14)
    a = p.parse_args(argv)
    device = torch.device(a.device)
    tier = "cpu" if device.type == "cpu" else "gpu"
    torch.manual_seed(0)
    case = WORKLOADS[a.workload].case(tier, torch.float32, device, a.activation,
                                      a.mode == "detach")
    print(f"{a.workload} {WORKLOADS[a.workload].describe(tier)} {a.activation} {a.mode} "
          f"on {device} ({torch.get_num_threads()} threads), self ms per step")
    tables = {}
    for peer in ("plain", a.backend):
        fwd = case.forward(peer)
        tables[peer] = per_op_ms(lambda: _step(fwd, case), a.steps, device)
    for peer, table in tables.items():
        total = sum(table.values())
        print(f"\n{peer}: {total:.2f} ms per step (sum of self times)")
        for name, ms in sorted(table.items(), key=lambda kv: -kv[1])[: a.top]:
            print(f"  {ms:8.3f}  {100 * ms / total:5.1f}%  {name}")


if __name__ == "__main__":
    main()
