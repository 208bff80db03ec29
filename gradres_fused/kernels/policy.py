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
variant); only the tiled GEMM's tiles follow the row bucket (BLOCK_M ∈ {16, 32, 64} when rows
are its M extent, BLOCK_K ∈ {16, 32, 64} when rows are its reduction extent).

Registers: every config the default policy returns for sm_80 and sm_90 compiles without register
spills and keeps ≥ 8 warps resident per SM (ptxas, Triton 3.6). The limits below (fused row tiles
and warps, which widths and dot precisions are fused at all, GEMM tile caps) come from that
compiler's figures, quoted where they are set; bench/static.py compiles what the launch code
actually launches on the representative workloads and tests/test_gpu_static.py holds it to that
budget. The opt-in autotuner's candidates are pruned to the same tile caps but are not all
compiled by that test.

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
    gpu: bool = True  # False: Triton's interpreter (no register file to fit)


SM80 = Arch("sm_80", 166_912, 108)  # A100
SM90 = Arch("sm_90", 232_448, 132)  # H100 / H200
# Triton's interpreter on CPU: no shared memory limit, three "SMs" so persistent kernels run
# several programs, 16-row tiles so the tests' small batches still span several tiles.
INTERPRETER = Arch("interpreter", 1 << 40, 3, row_block_cap=16, gpu=False)

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
# Register budget, from ptxas on sm_90 (Triton 3.6; bench/static.py reports every launched config):
# - forward: row tiles up to 8192 elements (64 rows × 128), 8 warps from 8192 elements, 4 below
#   (bf16 D = H = 64, 64 rows × 4 warps: 148 registers, no spills); TF32 dots take at most 32
#   rows (D = H = 64 on sm_80: 64 rows × 4 warps spilled 504–564 B per thread, 64 × 8 452 B;
#   32 × 4: 137 registers, none);
# - backward: W1, W2 and the W̄1, W̄2 accumulators stay live across its row loop besides a dozen
#   row-tile intermediates, so it runs 16-row tiles — 8 warps at width 64, 4 below — and only
#   up to D, H ≤ 64 (16-bit) or 32 (TF32) on a GPU. Per thread, ptxas: bf16 D = H = 64,
#   16 × 8 no spills on sm_80 and sm_90 (182 / 229 registers); spilling were 64 × 4 (1,492 B of
#   stores, sm_90), 32 × 4 (124 B), 16 × 4 on sm_80 (16 B); D = H = 32: 16 × 4 none (148–214
#   registers, bf16 and TF32), 16 × 8 detach 8 B, 32 × 8 60 B (TF32 480 B); TF32 at 64 spills
#   even at 16 × 8 on sm_80 (relu second order: 8 B); at 128 even bf16 16 × 8 spills (104 B
#   second order) and 16 warps would cap a thread at 128 registers. Wider blocks run on the
#   tiled path (both kernels: the forward decides the path for its backward).
_FUSED_TILE_ELEMS = {"mlp_fused_fwd": 64 * FUSED_MAX_WIDTH, "mlp_fused_bwd": 16 * FUSED_MAX_WIDTH}
_FUSED_MAX_BLOCK_M = {("mlp_fused_fwd", False): 64, ("mlp_fused_fwd", True): 32,
                      ("mlp_fused_bwd", False): 16, ("mlp_fused_bwd", True): 16}
_FUSED_8_WARPS_ELEMS = 64 * FUSED_MAX_WIDTH  # forward tiles this large get 8 warps
_FUSED_BWD_8_WARPS_WIDTH = 64  # backward: 8 warps from this width
FUSED_GPU_MAX_WIDTH = {False: 64, True: 32}  # by TF32 dots


# Shared bytes per row-tile element (BLOCK_M × max(BLOCK_D, BLOCK_H)) beyond the two weight tiles,
# by (kernel, TF32 dots): fitted to the compiler's metadata.shared (Triton 3.9, sm_80 and sm_90,
# 4 and 8 warps; largest seen — IEEE float32 and 16-bit: 8.1 B forward, 16.5 B backward (18 B
# for the 16-row backward tiles at D = H = 64, 16-bit, 8 warps: 34,816 B on sm_90); TF32 float32
# dots, whose MMA operand layouts take more: 12 B forward, 52 B backward) and checked as an upper
# bound on the configs nearest each limit by tests/test_triton_compile.py.
_FUSED_ROW_TILE_BYTES = {("mlp_fused_fwd", False): 9, ("mlp_fused_bwd", False): 20,
                         ("mlp_fused_fwd", True): 16, ("mlp_fused_bwd", True): 56}


def fused_shared_bytes(kernel: str, elem: int, block_m: int, block_d: int, block_h: int,
                       tf32: bool = False) -> int:
    """Upper estimate of a fused kernel's shared memory: tl.dot stages both weight tiles (W1 and
    W2, BLOCK_D × BLOCK_H each, in the operand dtype) and the row tiles' operands and layout
    conversions (_FUSED_ROW_TILE_BYTES per row-tile element). `tf32`: float32 operands going to
    TF32 dots (torch allows TF32 matmuls)."""
    return (elem * 2 * block_d * block_h
            + _FUSED_ROW_TILE_BYTES[kernel, tf32] * block_m * max(block_d, block_h))


# The fused backward's persistent grid: a constant, not a function of the SM count, so its
# per-program partial sums (W̄1, W̄2, b̄, s̄, ᾱ) add up in the same order on every GPU. 264 = two
# programs per SM of an H100 SXM (132 SMs); 2.3 per SM of an H100 PCIe (114), 2.4 of an A100
# (108): an SM has a second program's loads in flight while one computes.
PERSISTENT_PROGRAMS = 264


def _fused_warps(kernel: str, block_m: int, width: int) -> int:
    if kernel == "mlp_fused_bwd":
        return 8 if width >= _FUSED_BWD_8_WARPS_WIDTH else 4
    return 8 if block_m * width >= _FUSED_8_WARPS_ELEMS else 4


def _fused_config(kernel: str, elem: int, block_m: int, block_d: int, block_h: int) -> Config:
    warps = _fused_warps(kernel, block_m, max(block_d, block_h))
    return config(num_warps=warps, num_stages=1, BLOCK_M=block_m, BLOCK_D=block_d,
                  BLOCK_H=block_h)


def fused_mlp(kernel: str, elem: int, dim: int, hidden: int, rows: int, arch: Arch,
              tf32: bool = False) -> Config:
    """Config of a fused MLP kernel for rows × (D, H) operands of `elem` bytes (`tf32`: float32
    operands going to TF32 dots). One config for
    every row count: the forward's grid grows with the rows and the backward is persistent
    (PERSISTENT_PROGRAMS programs walking the row tiles), so the tile need not follow the batch.

    On a GPU the fused kernels take D, H ≤ FUSED_GPU_MAX_WIDTH (64, TF32 dots 32; see the
    register budget above) and no float32 with IEEE dots: Triton lowers those dots to FMA loops whose operand
    layouts do not fit the register file (sm_90, ptxas, second order, D = H = 64: the backward
    spills at every tile tried — 64 rows × 4 warps 55,456 B of stores / 87,008 B of loads per
    thread, 16 rows × 8 warps 6,092 / 8,100 B —, the forward 2,392 / 3,984 B at 64 rows × 4
    warps). Those blocks run on the tiled path, whose GEMM tiles fit (bench/static.py)."""
    _check(kernel, FUSED_KERNELS, elem, rows)
    if not 1 <= dim <= FUSED_MAX_WIDTH or not 1 <= hidden <= FUSED_MAX_WIDTH:
        raise ValueError(f"fused MLP takes 1 ≤ D, H ≤ {FUSED_MAX_WIDTH}, got D={dim}, H={hidden}")
    if arch.gpu and elem == 4 and not tf32:
        raise ValueError(f"{kernel}: float32 with IEEE dots spills registers on {arch.name}: "
                         f"no fused config (the tiled path runs it)")
    if arch.gpu and max(dim, hidden) > FUSED_GPU_MAX_WIDTH[tf32]:
        raise ValueError(f"{kernel}: D={dim}, H={hidden} spill registers on {arch.name} above "
                         f"{FUSED_GPU_MAX_WIDTH[tf32]}: no fused config (the tiled path runs it)")
    block_d, block_h = pow2(dim), pow2(hidden)
    width = max(block_d, block_h)
    for block_m in _FUSED_BLOCK_M:
        if arch.row_block_cap is not None and block_m > arch.row_block_cap:
            continue
        if (block_m * width > _FUSED_TILE_ELEMS[kernel]
                or block_m > _FUSED_MAX_BLOCK_M[kernel, tf32]):
            continue  # register budget
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
# Register budget (ptxas, Triton 3.6, per thread): the dual-accumulator epilogues (FG, ZBAR: two
# BLOCK_M × BLOCK_N float32 accumulators and φ, φ', φ'' of z) spill at 128 × 128 × 8 warps
# (sm_90, ZBAR second order gelu: bf16 1,492 / 1,572 B of stores / loads, float32 756 / 756 B)
# and at 128 × 64 × 8 warps (silu: fp16 72 B on sm_90, bf16 24 B on sm_80; float32 gelu 8 B);
# 16-bit at 64 × 64 × 8 warps: none (128–141 registers). float32 (IEEE dots lower to FMA loops,
# TF32 to wider MMA operands): 64 × 64 × 8 warps still 4 B (TF32 silu, sm_80), 64 × 64 × 4
# warps 36 B (IEEE); 64 × 32 none (4 warps, IEEE: 128 / 152 registers; 8 warps TF32: 64). So
# tiles are at most 64 × 64 (16-bit) or 64 × 32 (float32), with 8 warps from 64 × 64. The dual
# epilogues (`dual`: FG, and ZBAR, which also rebuilds a = φ(z)) take 64 × 32 for every dtype:
# bf16 ZBAR gelu second order at 64 × 64 × 8 warps spilled 48 B on sm_80 (BLOCK_K 32: 12 B),
# and with 8 warps (64 × 32 × 4 warps: silu second order float32 16 B, fp16 12 B on sm_90; 8
# warps: 94–184 registers, none, on sm_80 and sm_90).
_GEMM_MAX_N = {2: 64, 4: 32, 8: 32}
_GEMM_MAX_N_DUAL = 32
_GEMM_MAX_M = {2: 64, 4: 64, 8: 64}
_GEMM_8_WARPS_ELEMS = 64 * 64


def gemm_shared_bytes(elem: int, block_m: int, block_n: int, block_k: int, stages: int) -> int:
    """Upper estimate of gemm_kernel's shared memory: `stages` buffered (A, B) tiles of the K loop
    (the dual form's second loop runs after the first and reuses them) plus one float32
    accumulator tile for the epilogue's layout conversion."""
    return stages * (block_m + block_n) * block_k * elem + block_m * block_n * 4


def _gemm_tile(extent: int, cap: int) -> int:
    return min(cap, pow2(extent))


def gemm(elem: int, m: int, n: int, k: int, arch: Arch, *, rows_in: str = "m",
         dual: bool = False) -> Config:
    """Config of gemm_kernel for C[M, N] = A[M, K]·B[K, N] (operands of `elem` bytes). `rows_in`
    says which extent is the batch ("m": activations GEMMs; "k": weight-gradient GEMMs); that
    extent enters as its row bucket, the other two are model widths."""
    _check(GEMM, (GEMM,), elem, m if rows_in == "m" else k)
    if rows_in not in ("m", "k"):
        raise ValueError(f"rows_in: expected 'm' or 'k', got {rows_in!r}")
    m = row_bucket(m) if rows_in == "m" else m
    k = row_bucket(k) if rows_in == "k" else k
    cap_m = _GEMM_MAX_M[elem] if arch.row_block_cap is None else arch.row_block_cap
    block_m = _gemm_tile(m, cap_m)
    block_n = _gemm_tile(n, (_GEMM_MAX_N_DUAL if dual else _GEMM_MAX_N[elem])
                         if arch.row_block_cap is None else arch.row_block_cap)
    block_k = _gemm_tile(k, (64 if elem <= 2 else 32) if arch.row_block_cap is None else
                         arch.row_block_cap)
    warps = 8 if dual or block_m * block_n >= _GEMM_8_WARPS_ELEMS else 4
    for stages in (3, 2, 1):
        if gemm_shared_bytes(elem, block_m, block_n, block_k, stages) <= arch.shared_bytes:
            return config(num_warps=warps, num_stages=stages, BLOCK_M=block_m, BLOCK_N=block_n,
                          BLOCK_K=block_k, GROUP_M=_GEMM_GROUP_M)
    raise ValueError(f"gemm: no pipeline depth fits {arch.name}'s shared memory")  # unreachable


# Split-K for the weight-gradient GEMMs (rows are their reduction extent): an output of few tiles
# (W̄ of a narrow MLP: 64 × 64 is 2 tiles of 64 × 32) would otherwise stream all N rows through
# 2 SMs. Chunks of at least _SPLIT_MIN_K rows, enough of them that tiles × chunks reaches
# PERSISTENT_PROGRAMS: a function of the shape only, so the sum order is the same on every GPU.
_SPLIT_MIN_K = 256


def gemm_k_chunk(tiles: int, k: int, block_k: int, arch: Arch) -> Optional[int]:
    """Rows per split-K chunk for a GEMM of `tiles` output tiles reducing over k rows, or None
    (no split). The interpreter splits small problems too (so the tests cover it)."""
    target, min_k = (PERSISTENT_PROGRAMS, _SPLIT_MIN_K) if arch.gpu else (6, 16)
    splits = min(-(-target // max(tiles, 1)), k // min_k)
    if splits < 2:
        return None
    chunk = max(block_k, k // splits // block_k * block_k)  # a BLOCK_K multiple: ≥ splits chunks
    return chunk if chunk < k else None


# ---- elementwise and row kernels (kernels/rows.py, kernels/conv.py) ------------------------------
# 512 elements per program of 4 warps (4 per thread: one 16-byte float32 vector): a per-sample
# pass over an EDSR block of 16 × 64 × 48 × 48 is 4,608 programs, 2.2 waves of the 2,112 an H100
# holds at once (1,024-element programs: 1.1 waves).
ELEMENTWISE_BLOCK = 512
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
                for bm, w in ((16, 4), (32, 4), (64, 4), (16, 8), (32, 8), (64, 8))]
    if kernel == GEMM:
        return [config(num_warps=w, num_stages=st, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
                       GROUP_M=_GEMM_GROUP_M)
                for bm, bn, bk, w, st in ((64, 64, 64, 8, 3), (64, 64, 32, 8, 3),
                                          (64, 64, 32, 8, 4), (64, 32, 32, 4, 3),
                                          (64, 32, 64, 4, 2), (32, 32, 32, 4, 3))]
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
                    <= _FUSED_TILE_ELEMS[kernel]
                    and kw["BLOCK_M"] <= _FUSED_MAX_BLOCK_M[kernel, tf32]
                    and cfg.num_warps == _fused_warps(kernel, kw["BLOCK_M"],
                                                      max(block_d, block_h)))
        else:
            fits = (all(kw[name] <= max(pow2(extent), smallest(name)) for name, extent in
                        (("BLOCK_M", row_bucket(m)), ("BLOCK_N", n), ("BLOCK_K", k)))
                    and (not arch.gpu or (kw["BLOCK_M"] <= _GEMM_MAX_M[elem]
                                          and kw["BLOCK_N"] <= _GEMM_MAX_N[elem]))
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
                        for rows_in, dual in (("m", False), ("m", True), ("k", False)):
                            yield from emit(Launch(GEMM, gemm(elem, m, n, k, arch,
                                                              rows_in=rows_in, dual=dual),
                                                   dtype, arch))
                        # rows_in only decides which extent is bucketed: these are buckets
                        for cfg in prune(GEMM, candidates(GEMM), arch, elem, m=m, n=n, k=k):
                            yield from emit(Launch(GEMM, cfg, dtype, arch))
