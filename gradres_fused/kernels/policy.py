"""Triton launch policy: the compiled configuration (block sizes, num_warps, num_stages) of every
kernel launch, as a pure function of the problem. Plain Python: importing this module imports
neither Triton nor CUDA, so the policy is tested directly on any machine.

Default: a deterministic heuristic, no benchmarking at run time. Each config is a function of
(kernel, operand type — element size, and for float32 whether dots run as TF32 —, the model's
widths D/H/K, the *bucketed* row count, the arch's shared memory per block and SM count). The row count (the batch: N rows of an MLP, or the M or K extent
of a GEMM that runs over rows) enters only through `row_bucket`, the power of two at or above it,
and the kernels mark their row-count arguments `do_not_specialize`, so Triton's own
specialisation (on an integer being 1 or a multiple of 16) does not multiply compiled variants
either.

Bound: for one model (widths, dtype, activation, mode, device, torch's TF32 setting), each kernel
launch site compiles at most `MAX_VARIANTS` = 4 specialisations over any sequence of batch sizes —
a training loop over 100 distinct batch sizes included — because the policy maps every row count
to one of at most that many configs (tests/test_triton_policy.py checks it over N = 0…2^31). The
fused MLP kernels, the row passes and the conv stages use one config whatever the batch (1
variant); only the tiled GEMM's tiles follow the row bucket (BLOCK_M ∈ {16, 32, 64, 128} when rows
are its M extent, BLOCK_K ∈ {16, 32, 64} when rows are its reduction extent).

Opt-in autotuning: GRADRES_AUTOTUNE=1 (read once, when this module is imported) wraps the fused MLP
and GEMM kernels in `triton.autotune` over `candidates(kernel)`, keyed on the row bucket (never the
exact row count), pruned by shape and by the arch's shared memory (`prune`), timings cached on
disk. Its cost: every new (bucket, width, dtype) key compiles and times every surviving candidate
(seconds per key, once per cache directory).

Shared memory: every config either policy can return fits the arch's per-block limit by
`fused_shared_bytes` / `gemm_shared_bytes`, upper estimates of what Triton allocates (checked
against the compiler's own `metadata.shared` for sm_80 and sm_90 by
tests/test_triton_compile.py); a fused width no row tile fits runs on the tiled path.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

AUTOTUNE = os.environ.get("GRADRES_AUTOTUNE", "0") == "1"

MAX_VARIANTS = 4  # compiled configs per kernel launch site over all batch sizes (see docstring)
MIN_DOT = 16      # tl.dot's smallest tile extent on NVIDIA GPUs
MAX_ROWS = 2 ** 31  # the largest row count the policy is specified (and tested) for


@dataclass(frozen=True)
class Arch:
    """What the policy needs to know about a device."""

    name: str
    shared_bytes: int  # opt-in shared memory per block
    sm_count: int
    row_block_cap: Optional[int] = None  # interpreter: small row tiles, fast and multi-tile


SM80 = Arch("sm_80", 166_912, 108)  # A100
SM90 = Arch("sm_90", 232_448, 132)  # H100 / H200
# Triton's interpreter on CPU: no shared memory limit, three "SMs" so persistent kernels run
# several programs, 16-row tiles so the tests' small batches still span several tiles.
INTERPRETER = Arch("interpreter", 1 << 40, 3, row_block_cap=16)

# Per-block opt-in shared memory by compute capability, for torch builds whose device properties
# lack `shared_memory_per_block_optin` (CUDA programming guide, "Compute capabilities" table).
_SHARED_BY_CAPABILITY = {(7, 0): 98_304, (7, 5): 65_536, (8, 0): 166_912, (8, 6): 101_376,
                         (8, 7): 166_912, (8, 9): 101_376, (9, 0): 232_448, (10, 0): 232_448,
                         (12, 0): 101_376}


@functools.lru_cache(maxsize=None)
def _cuda_arch(index: int) -> Arch:
    import torch

    props = torch.cuda.get_device_properties(index)
    cap = (props.major, props.minor)
    shared = getattr(props, "shared_memory_per_block_optin", 0) or _SHARED_BY_CAPABILITY.get(
        cap, min(_SHARED_BY_CAPABILITY.values()))
    return Arch(f"sm_{props.major}{props.minor}", int(shared), props.multi_processor_count)


def device_arch(device, interpret: bool = False) -> Arch:
    """The Arch of a torch device (INTERPRETER for CPU tensors under TRITON_INTERPRET=1)."""
    if interpret or device.type != "cuda":
        return INTERPRETER
    import torch

    return _cuda_arch(device.index if device.index is not None else torch.cuda.current_device())


@dataclass(frozen=True)
class Config:
    """One compiled configuration: constexpr block sizes plus num_warps / num_stages."""

    meta: Tuple[Tuple[str, int], ...]
    num_warps: int = 4
    num_stages: int = 1

    @property
    def kwargs(self) -> Dict[str, int]:
        return dict(self.meta)

    def __getitem__(self, name: str) -> int:
        return self.kwargs[name]


def config(num_warps: int = 4, num_stages: int = 1, **meta: int) -> Config:
    return Config(tuple(sorted(meta.items())), num_warps, num_stages)


def pow2(n: int, floor: int = MIN_DOT) -> int:
    """The power of two at or above n, at least `floor`."""
    n = max(int(n), 1, floor)
    return 1 << (n - 1).bit_length()


def row_bucket(rows: int) -> int:
    """The power of two at or above `rows` (1 for 0 or 1 rows): every row count in (2^(k−1), 2^k]
    gets the same config, so a new batch size in a seen bucket compiles nothing."""
    if rows < 0 or rows > MAX_ROWS:
        raise ValueError(f"rows: expected 0 ≤ rows ≤ 2^31, got {rows}")
    return pow2(rows, floor=1)


# ---- fully fused narrow MLP (kernels/mlp_fused.py) -----------------------------------------------
FUSED_KERNELS = ("mlp_fused_fwd", "mlp_fused_bwd")
FUSED_MAX_WIDTH = 128
_FUSED_BLOCK_M = (64, 32, 16)  # largest first: fewer programs, weights reused over more rows
# Row tiles of 8192 elements (64 rows × 128) get 8 warps, so a thread holds ≤ 32 elements of each
# row-tile intermediate and the backward (a dozen such intermediates live) stays out of spills.
_FUSED_8_WARPS_ELEMS = 64 * FUSED_MAX_WIDTH


# Shared bytes per row-tile element (BLOCK_M × max(BLOCK_D, BLOCK_H)) beyond the two weight tiles,
# by (kernel, TF32 dots): fitted to the compiler's metadata.shared (Triton 3.9, sm_80 and sm_90,
# 4 and 8 warps; largest seen — IEEE float32 and 16-bit: 8.1 B forward, 16.5 B backward; TF32
# float32 dots, whose MMA operand layouts take more: 12 B forward, 52 B backward) and checked as an
# upper bound on the configs nearest each limit by tests/test_triton_compile.py.
_FUSED_ROW_TILE_BYTES = {("mlp_fused_fwd", False): 9, ("mlp_fused_bwd", False): 17,
                         ("mlp_fused_fwd", True): 16, ("mlp_fused_bwd", True): 56}


def fused_shared_bytes(kernel: str, elem: int, block_m: int, block_d: int, block_h: int,
                       tf32: bool = False) -> int:
    """Upper estimate of a fused kernel's shared memory: tl.dot stages both weight tiles (W1 and
    W2, BLOCK_D × BLOCK_H each, in the operand dtype) and the row tiles' operands and layout
    conversions (_FUSED_ROW_TILE_BYTES per row-tile element). `tf32`: float32 operands going to
    TF32 dots (torch allows TF32 matmuls)."""
    return (elem * 2 * block_d * block_h
            + _FUSED_ROW_TILE_BYTES[kernel, tf32] * block_m * max(block_d, block_h))


def _fused_config(kernel: str, elem: int, block_m: int, block_d: int, block_h: int) -> Config:
    warps = 8 if block_m * max(block_d, block_h) >= _FUSED_8_WARPS_ELEMS else 4
    return config(num_warps=warps, num_stages=1, BLOCK_M=block_m, BLOCK_D=block_d,
                  BLOCK_H=block_h)


def fused_mlp(kernel: str, elem: int, dim: int, hidden: int, rows: int, arch: Arch,
              tf32: bool = False) -> Config:
    """Config of a fused MLP kernel for rows × (D, H) operands of `elem` bytes (`tf32`: float32
    operands going to TF32 dots). One config for
    every row count: the forward's grid grows with the rows and the backward is persistent (one
    program per SM walking the row tiles), so the tile need not follow the batch."""
    _check(kernel, FUSED_KERNELS, elem, rows)
    if not 1 <= dim <= FUSED_MAX_WIDTH or not 1 <= hidden <= FUSED_MAX_WIDTH:
        raise ValueError(f"fused MLP takes 1 ≤ D, H ≤ {FUSED_MAX_WIDTH}, got D={dim}, H={hidden}")
    block_d, block_h = pow2(dim), pow2(hidden)
    width = max(block_d, block_h)
    for block_m in _FUSED_BLOCK_M:
        if arch.row_block_cap is not None and block_m > arch.row_block_cap:
            continue
        if block_m * width > _FUSED_8_WARPS_ELEMS:  # register budget of the widest tile
            continue
        if fused_shared_bytes(kernel, elem, block_m, block_d, block_h, tf32) <= arch.shared_bytes:
            return _fused_config(kernel, elem, block_m, block_d, block_h)
    raise ValueError(f"{kernel}: no row tile fits {arch.name}'s {arch.shared_bytes} B of shared "
                     f"memory at D={dim}, H={hidden} with {elem}-byte operands")


def fused_fits(elem: int, dim: int, hidden: int, arch: Arch, tf32: bool = False) -> bool:
    """Whether both fused kernels have a config for this width on this arch."""
    try:
        for kernel in FUSED_KERNELS:
            fused_mlp(kernel, elem, dim, hidden, 1, arch, tf32)
    except ValueError:
        return False
    return True


# ---- tiled GEMM with epilogues (kernels/gemm.py) -------------------------------------------------
GEMM = "gemm"
_GEMM_GROUP_M = 8


def gemm_shared_bytes(elem: int, block_m: int, block_n: int, block_k: int, stages: int) -> int:
    """Upper estimate of gemm_kernel's shared memory: `stages` buffered (A, B) tiles of the K loop
    (the dual form's second loop runs after the first and reuses them) plus one float32
    accumulator tile for the epilogue's layout conversion."""
    return stages * (block_m + block_n) * block_k * elem + block_m * block_n * 4


def _gemm_tile(extent: int, cap: int) -> int:
    return min(cap, pow2(extent))


def gemm(elem: int, m: int, n: int, k: int, arch: Arch, *, rows_in: str = "m") -> Config:
    """Config of gemm_kernel for C[M, N] = A[M, K]·B[K, N] (operands of `elem` bytes). `rows_in`
    says which extent is the batch ("m": activations GEMMs; "k": weight-gradient GEMMs); that
    extent enters as its row bucket, the other two are model widths."""
    _check(GEMM, (GEMM,), elem, m if rows_in == "m" else k)
    if rows_in not in ("m", "k"):
        raise ValueError(f"rows_in: expected 'm' or 'k', got {rows_in!r}")
    m = row_bucket(m) if rows_in == "m" else m
    k = row_bucket(k) if rows_in == "k" else k
    cap_m = 128 if arch.row_block_cap is None else arch.row_block_cap
    block_m = _gemm_tile(m, cap_m)
    block_n = _gemm_tile(n, 128 if arch.row_block_cap is None else arch.row_block_cap)
    block_k = _gemm_tile(k, (64 if elem <= 2 else 32) if arch.row_block_cap is None else
                         arch.row_block_cap)
    # Fewer output tiles than SMs: halve BLOCK_M (not below 64) so more SMs get work.
    if block_m == 128 and -(-m // 128) * -(-n // block_n) < arch.sm_count:
        block_m = 64
    warps = 8 if block_m * block_n >= 128 * 128 else 4
    for stages in (3, 2, 1):
        if gemm_shared_bytes(elem, block_m, block_n, block_k, stages) <= arch.shared_bytes:
            return config(num_warps=warps, num_stages=stages, BLOCK_M=block_m, BLOCK_N=block_n,
                          BLOCK_K=block_k, GROUP_M=_GEMM_GROUP_M)
    raise ValueError(f"gemm: no pipeline depth fits {arch.name}'s shared memory")  # unreachable


# ---- elementwise and row kernels (kernels/rows.py, kernels/conv.py) ------------------------------
ELEMENTWISE_BLOCK = 1024
ELEMENTWISE = config(num_warps=4, num_stages=1, BLOCK=ELEMENTWISE_BLOCK)


def _check(kernel: str, known, elem: int, rows: int) -> None:
    if kernel not in known:
        raise ValueError(f"kernel: expected one of {list(known)}, got {kernel!r}")
    if elem not in (2, 4, 8):
        raise ValueError(f"elem: expected an operand size of 2, 4 or 8 bytes, got {elem}")
    row_bucket(rows)


# ---- autotuning (GRADRES_AUTOTUNE=1) -------------------------------------------------------------
def candidates(kernel: str, arch: Optional[Arch] = None) -> List[Config]:
    """The configs `triton.autotune` chooses among (before `prune`); shape-independent block
    extents only: BLOCK_D/BLOCK_H of the fused kernels come from the widths at launch."""
    if kernel in FUSED_KERNELS:
        return [config(num_warps=w, num_stages=1, BLOCK_M=bm)
                for bm, w in ((16, 4), (32, 4), (64, 4), (32, 8), (64, 8))]
    if kernel == GEMM:
        return [config(num_warps=w, num_stages=st, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
                       GROUP_M=_GEMM_GROUP_M)
                for bm, bn, bk, w, st in ((128, 128, 64, 8, 3), (128, 128, 32, 8, 3),
                                          (64, 128, 64, 4, 3), (128, 64, 64, 4, 3),
                                          (64, 64, 32, 4, 4), (64, 64, 64, 4, 2))]
    raise ValueError(f"kernel: expected one of {[*FUSED_KERNELS, GEMM]}, got {kernel!r}")


def prune(kernel: str, configs, arch: Arch, elem: int, *, dim: int = 0, hidden: int = 0,
          m: int = 0, n: int = 0, k: int = 0, tf32: bool = False):
    """The candidates that fit the shape (no tile over twice the extent it covers, rows taken by
    their bucket) and the arch's shared memory. `configs` are Config or triton.Config (anything
    with .kwargs); the last-resort smallest candidate is kept if none survive."""
    def smallest(name):
        return min(c.kwargs[name] for c in configs)

    kept = []
    for cfg in configs:
        kw = cfg.kwargs
        if kernel in FUSED_KERNELS:
            block_d, block_h = pow2(dim), pow2(hidden)
            fits = (fused_shared_bytes(kernel, elem, kw["BLOCK_M"], block_d, block_h, tf32)
                    <= arch.shared_bytes and kw["BLOCK_M"] * max(block_d, block_h)
                    <= _FUSED_8_WARPS_ELEMS)
        else:
            fits = (all(kw[name] <= max(pow2(extent), smallest(name)) for name, extent in
                        (("BLOCK_M", row_bucket(m)), ("BLOCK_N", n), ("BLOCK_K", k)))
                    and gemm_shared_bytes(elem, kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"],
                                          cfg.num_stages) <= arch.shared_bytes)
        if fits:
            kept.append(cfg)
    if kept:
        return kept
    # Nothing fits (a fused width no row tile fits): the smallest candidate, which the caller's
    # own check rejects before any launch (fused_fits).
    return [min(configs, key=lambda c: (sorted(c.kwargs.values()), c.num_stages, c.num_warps))]


# ---- what the ahead-of-time compile test covers --------------------------------------------------
@dataclass(frozen=True)
class Launch:
    """One (kernel, config, operand dtype, arch) the policies can produce."""

    kernel: str
    config: Config
    dtype: str  # an OPERANDS name
    arch: Arch


# Operand types the backend serves on a GPU: (element bytes, TF32 dots). float32 goes to IEEE or
# TF32 dots as torch's matmul precision says (different code and shared memory).
OPERANDS = {"fp32-ieee": (4, False), "fp32-tf32": (4, True), "fp16": (2, False),
            "bf16": (2, False)}
_WIDTHS = (16, 32, 64, 128)  # every pow2 block extent a fused width can take


def reachable(archs=(SM80, SM90)) -> Iterator[Launch]:
    """Every (kernel, config, dtype, arch) the default policy or the autotuner (after `prune`) can
    launch on `archs`, deduplicated. Fused kernels: every (BLOCK_D, BLOCK_H); GEMM: every row
    bucket against every width bucket up to the largest tile."""
    seen = set()

    def emit(launch):
        if launch not in seen:
            seen.add(launch)
            yield launch

    for arch in archs:
        for dtype, (elem, tf32) in OPERANDS.items():
            for kernel in FUSED_KERNELS:
                for block_d in _WIDTHS:
                    for block_h in _WIDTHS:
                        if not fused_fits(elem, block_d, block_h, arch, tf32):
                            continue  # the tiled path runs this width
                        yield from emit(Launch(kernel, fused_mlp(kernel, elem, block_d, block_h,
                                                                 1, arch, tf32), dtype, arch))
                        for cfg in prune(kernel, candidates(kernel), arch, elem, dim=block_d,
                                         hidden=block_h, tf32=tf32):
                            full = _fused_config(kernel, elem, cfg["BLOCK_M"], block_d, block_h)
                            full = Config(full.meta, cfg.num_warps, cfg.num_stages)
                            yield from emit(Launch(kernel, full, dtype, arch))
            extents = [1 << e for e in range(4, 9)]  # 16 … 256: every tile clamp is reached
            for m in extents:
                for n in extents:
                    for k in extents:
                        for rows_in in ("m", "k"):
                            yield from emit(Launch(GEMM, gemm(elem, m, n, k, arch,
                                                              rows_in=rows_in), dtype, arch))
                        # rows_in only decides which extent is bucketed: these are buckets
                        for cfg in prune(GEMM, candidates(GEMM), arch, elem, m=m, n=n, k=k):
                            yield from emit(Launch(GEMM, cfg, dtype, arch))
