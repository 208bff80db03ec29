"""Timing, memory and ceiling measurements shared by the benchmark runner and its pytest suite."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List, Optional

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], object], device: torch.device) -> float:
    """Milliseconds for one call: CUDA events on GPU, perf_counter on CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def quantiles(samples: List[float]) -> Dict[str, float]:
    """Median and 20% / 80% quantiles."""
    if len(samples) == 1:
        return {"median": samples[0], "q20": samples[0], "q80": samples[0]}
    q = statistics.quantiles(samples, n=10, method="inclusive")
    return {"median": statistics.median(samples), "q20": q[1], "q80": q[7]}


def saved_tensor_mb(fn: Callable[[], torch.Tensor]) -> float:
    """MB that autograd keeps for backward after fn() (distinct storages, any device)."""
    seen: Dict[int, int] = {}

    def pack(t):
        try:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        except (RuntimeError, NotImplementedError):
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values()) / 2**20


def peak_mem_mb(fn: Callable[[], object], device: torch.device) -> Optional[float]:
    """Peak allocated CUDA memory during fn() above what was allocated before (None on CPU)."""
    if device.type != "cuda":
        return None
    sync(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def ceilings(device: torch.device, dtype: torch.dtype, quick: bool) -> Dict[str, float]:
    """Measured in this run: matmul FLOP/s of a large square GEMM and copy bytes/s of a large copy."""
    n = 1024 if (quick or device.type == "cpu") else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    elems = (2**22 if quick else 2**24) if device.type == "cpu" else 2**28
    src = torch.empty(elems, device=device, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    reps = 3 if quick else 10
    for _ in range(2):
        torch.mm(a, b)
        dst.copy_(src)
    mm = statistics.median(time_once(lambda: torch.mm(a, b), device) for _ in range(reps))
    cp = statistics.median(time_once(lambda: dst.copy_(src), device) for _ in range(reps))
    return {"matmul_tflops": 2 * n**3 / (mm * 1e-3) / 1e12,
            "copy_gbps": 2 * src.numel() * src.element_size() / (cp * 1e-3) / 1e9}


def roofline_pct(step_ms: float, flops: Optional[float], nbytes: float,
                 ceil: Dict[str, float]) -> Optional[float]:
    """100 × (the time the step needs at the measured ceilings) / (the time it took)."""
    if flops is None or step_ms <= 0:
        return None
    floor_s = max(flops / (ceil["matmul_tflops"] * 1e12), nbytes / (ceil["copy_gbps"] * 1e9))
    return 100.0 * floor_s / (step_ms * 1e-3)
